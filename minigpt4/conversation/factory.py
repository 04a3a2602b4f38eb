"""Build the chat engine from a loaded config: image processor, model, prompt format, precision policy.

The conversation renders with the model's own prompt format (built from the ``model:`` section, the same object
training renders with); ``template=NAME`` picks one of upstream's chat templates instead (upstream's chat layout).
Image encoding and generation run under the run config's precision policy (``run.precision``).

The image processor is the model's own: the config's top-level ``preprocess.vis_processor.eval`` (filled from
the model preset YAML). Upstream's eval configs carried a ``datasets.cc_sbu_align`` block only so that the demos
could read ``vis_processor.train`` from it; such a block is still honoured when ``preprocess`` names no eval
processor, with a logged note.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from omegaconf import DictConfig, OmegaConf

from minigpt4.common.config import Config
from minigpt4.common.logger import get_logger
from minigpt4.common.precision import PrecisionPolicy, configure_model_precision, policy_from_run_config
from minigpt4.common.registry import registry
from minigpt4.conversation.chat import Chat
from minigpt4.conversation.conversation import FormatConversation, upstream_template
from minigpt4.conversation.generation import GenerationSettings
from minigpt4.models.llm import resolve_quantization

logger = get_logger(__name__)

#: upstream eval configs kept the demo's image processor here
LEGACY_PROCESSOR_DATASET = "cc_sbu_align"


class ChatSetupError(RuntimeError):
    """The chat engine cannot be built from this config; the message says which key to fix."""


def vis_processor_config(cfg: Config) -> Tuple[DictConfig, str]:
    """The eval image-processor entry and the key it came from."""
    entry = cfg.preprocess.vis_processor.eval
    if entry is not None:
        return entry, "preprocess.vis_processor.eval"
    legacy = cfg.datasets.get(LEGACY_PROCESSOR_DATASET) if cfg.datasets is not None else None
    if legacy is not None and legacy.vis_processor.train is not None:
        key = f"datasets.{LEGACY_PROCESSOR_DATASET}.vis_processor.train"
        logger.info("no preprocess.vis_processor.eval in the config: using %s (upstream eval-config layout)", key)
        return legacy.vis_processor.train, key
    raise ChatSetupError(
        f"{cfg.source}: no image processor: preprocess.vis_processor.eval is not set (the model preset YAML "
        "normally provides it); fix: --options preprocess.vis_processor.eval.name=blip2_image_eval "
        f"preprocess.vis_processor.eval.image_size={cfg.model.image_size}"
    )


def build_vis_processor(cfg: Config) -> Callable[[Any], torch.Tensor]:
    """The eval image processor named by the config (see :func:`vis_processor_config`)."""
    entry, key = vis_processor_config(cfg)
    cls = registry.get_processor_class(entry.name)
    processor = cls.from_config(entry)
    logger.info("image processor from %s: %r", key, processor)
    return processor


def resolve_device(device: Optional[str] = None, gpu_id: int = 0) -> torch.device:
    """``device`` when given, else ``cuda:<gpu_id>`` when CUDA is available, else CPU."""
    if device:
        try:
            resolved = torch.device(device)
        except RuntimeError as err:
            raise ChatSetupError(f"--device {device!r} is not a torch device ({err}); use cpu, cuda or cuda:N") \
                from None
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ChatSetupError(f"--device {device} asked for CUDA but no CUDA device is available; use --device cpu")
        return resolved
    return torch.device(f"cuda:{gpu_id}") if torch.cuda.is_available() else torch.device("cpu")


def build_model(cfg: Config, device: torch.device) -> Any:
    """The registered model of ``cfg.model.arch``, built with ``from_config``, on ``device``, in eval mode."""
    configure_model_precision(cfg, device)  # frozen weights stored in the run's compute dtype (common/precision)
    model_cfg = cfg.model
    if device.type == "cuda" and device.index is not None:
        OmegaConf.update(model_cfg, "device_8bit", device.index)  # upstream's --gpu-id for 8-bit loading
    cls = registry.get_model_class(model_cfg.arch)
    model = cls.from_config(model_cfg)
    if resolve_quantization(model_cfg.get("llm_quantization"), bool(model_cfg.low_resource)) != "none":
        _move_all_but_llm(model, device)  # the k-bit LLM was placed on cuda:<device_8bit> (or cpu) by its loader
    else:
        model = model.to(device)
    return model.eval()


def _move_all_but_llm(model: Any, device: torch.device) -> None:
    """Move the vision side, projection and direct parameters (e.g. ``query_tokens``) to ``device``."""
    for name, child in model.named_children():
        if name != "llama_model":
            child.to(device)
    for param in model.parameters(recurse=False):
        param.data = param.data.to(device)


def chat_from_config(cfg: Config, device: Union[str, torch.device] = "cpu",
                     settings: Optional[GenerationSettings] = None, template: Optional[str] = None,
                     model: Any = None, precision: Optional[PrecisionPolicy] = None) -> Chat:
    """A ready :class:`Chat`: image processor from ``cfg``, model built (or the one given), conversations in the
    model's prompt format (or upstream's chat template ``template``), precision from ``cfg.run`` (or given)."""
    device = torch.device(device)
    vis_processor = build_vis_processor(cfg)
    model = model if model is not None else build_model(cfg, device)
    conv = upstream_template(template) if template else FormatConversation.for_format(model.prompt_format)
    precision = precision or policy_from_run_config(cfg.run, device)
    logger.info("conversation template: %s; precision: %s", conv.name, precision)
    return Chat(model, vis_processor, device=device, template=conv, settings=settings, precision=precision)
