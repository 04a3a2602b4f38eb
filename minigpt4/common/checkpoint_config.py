"""Self-describing checkpoints: the model section a FaceGPT checkpoint carries, merged while a config is loaded.

A checkpoint written by the runner holds the run's resolved config under ``"config"``. When ``model.ckpt`` names
such a file, its ``model`` section (architecture, LoRA, prompt format, image size, ...) is merged between the
model preset and the user's YAML: preset < checkpoint < YAML < ``--options``. A key that the YAML or
``--options`` sets explicitly to another value than the checkpoint's is a contradiction (reported with both values
and the fix), except for paths and runtime keys (:data:`FREE_KEYS`), which may differ. Released MiniGPT-4 /
MiniGPT-v2 checkpoints carry no config: nothing is merged and the YAML decides, as upstream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from minigpt4.common.checkpoint_io import WeightsFileError, read_saved_config
from minigpt4.common.logger import get_logger

logger = get_logger(__name__)

#: model keys that name files or choose how/where the model runs: they may differ from the checkpoint's
FREE_KEYS = frozenset({
    "llama_model", "vit_ckpt", "q_former_model", "ckpt", "ckpt_partial", "prompt_path",
    "low_resource", "llm_quantization", "device_8bit", "attn_implementation", "use_grad_checkpoint",
    "use_grad_checkpoint_llm", "drop_path_rate", "max_context_len", "prompt",
})  # freeze_vit / freeze_qformer are not free: they decide which weights the checkpoint holds
#: keys of the saved section that are not carried over (training's own starting point and prompt file)
NOT_CARRIED = frozenset({"ckpt", "ckpt_partial", "prompt_path"})


def is_free_key(dotted: str) -> bool:
    """True for a model key that may differ from the checkpoint's (paths, runtime and precision settings)."""
    top = dotted.split(".", 1)[0]
    return top in FREE_KEYS or "precision" in top


def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted keys of the leaves of a DictConfig (lists are leaves)."""
    if not isinstance(node, DictConfig):
        return
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            continue  # ??? placeholders set nothing
        dotted = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from _leaves(child, dotted + ".")
        else:
            yield dotted


def _select(section: Dict[str, Any], dotted: str) -> Tuple[bool, Any]:
    """(found, value) of a dotted key in a plain nested dict."""
    node: Any = section
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _checkpoint_path(raw: DictConfig) -> Optional[Path]:
    """The file ``model.ckpt`` names, when it is set and exists (otherwise the validator reports it)."""
    try:
        value = OmegaConf.select(raw, "model.ckpt", default=None)
    except OmegaConfBaseException:
        return None
    if not isinstance(value, str) or not value.strip() or value.strip().startswith("???"):
        return None
    path = Path(value).expanduser()
    return path if path.is_file() else None


def _contradictions(saved: Dict[str, Any], raw: DictConfig, sources: Sequence[Tuple[str, DictConfig]],
                    ckpt: Path) -> List[Tuple[str, str, str]]:
    """(key, message, fix) for every explicit, non-free key whose value differs from the checkpoint's."""
    found: List[Tuple[str, str, str]] = []
    seen = set()
    for label, cfg in reversed(sources):  # --options first: it decides the effective value
        model = cfg.get("model") if isinstance(cfg, DictConfig) else None
        for dotted in _leaves(model):
            if dotted in seen or is_free_key(dotted):
                continue
            seen.add(dotted)
            known, trained = _select(saved, dotted)
            if not known:
                continue
            try:
                value = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(raw, f"model.{dotted}")}),
                                               resolve=True)["v"]
            except OmegaConfBaseException:
                continue
            if value != trained:
                key = f"model.{dotted}"
                found.append((key, f"{label} sets {key}={value!r} but checkpoint {ckpt} was trained with {trained!r}: "
                                   f"remove the key{'' if label == '--options' else f' from {label}'} or set "
                                   f"{key}={trained!r}", f"{key}={trained}"))
    return found


def _known_fields(arch: Any) -> Optional[set]:
    """Field names of the model schema of ``arch`` (None when the arch is unknown)."""
    import dataclasses

    from minigpt4.common.registry import RegistryError, registry
    from minigpt4.common.schema import ModelConfig

    try:
        cls = registry.get_model_class(str(arch))
    except RegistryError:
        return None
    schema = getattr(cls, "config_schema", None) or ModelConfig
    return {f.name for f in dataclasses.fields(schema)}


def merge_checkpoint_model(raw: DictConfig, sources: Sequence[Tuple[str, DictConfig]]
                           ) -> Tuple[DictConfig, List[Tuple[str, str, str]]]:
    """``raw`` with the checkpoint's saved model section beneath it, and the contradictions found.

    ``sources`` are the explicit layers in increasing precedence, as (label, config): the user YAML (labelled
    with its path) and ``--options``. Returns ``raw`` unchanged when ``model.ckpt`` carries no config.
    """
    ckpt = _checkpoint_path(raw)
    if ckpt is None:
        return raw, []
    try:
        saved_cfg = read_saved_config(ckpt)
    except WeightsFileError as err:
        if ckpt.stat().st_size > 0:
            raise  # truncated or garbage: one line now, before minutes of model building
        logger.debug("no saved config read from %s: %s", ckpt, err)  # an empty stand-in: the model load reports it
        return raw, []
    if saved_cfg is None:
        return raw, []
    saved = {k: v for k, v in saved_cfg["model"].items() if k not in NOT_CARRIED}
    fields = _known_fields(OmegaConf.select(raw, "model.arch", default=None) or saved.get("arch"))
    if fields is not None:
        dropped = sorted(set(saved) - fields)
        if dropped:
            logger.info("%s: saved model keys this version does not know are ignored: %s", ckpt, dropped)
        saved = {k: v for k, v in saved.items() if k in fields}
    problems = _contradictions(saved, raw, sources, ckpt)
    logger.info("model settings from the checkpoint's saved config (%s): arch %s, model_type %s, %d keys",
                ckpt, saved.get("arch"), saved.get("model_type"), len(saved))
    return OmegaConf.merge(OmegaConf.create({"model": saved}), raw), problems
