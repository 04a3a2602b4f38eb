"""The Python API: load a FaceGPT model once, then chat about an image or answer many questions in batches.

Example::

    from minigpt4 import load_model

    model = load_model("eval_configs/facegpt_v2_eval.yaml", options=["model.ckpt=/path/to/checkpoint.pth"])
    model = load_model("/path/to/checkpoint.pth")           # a FaceGPT checkpoint carries its model section
    answer = model.chat("face.jpg", "How old is this person?")
    follow_up = model.chat("face.jpg", "And the hair colour?", history=[("How old is this person?", answer)])
    answers = model.predict(["a.jpg", "b.png"], ["Describe the face.", "Is the person smiling?"], batch_size=8)

Everything runs through the chat engine of the command-line demos (:class:`~minigpt4.conversation.chat.Chat`):
the same prompt format, image processor, precision policy, stop rules and answer clean-up. :meth:`FaceGPTModel.predict`
encodes each question as a one-turn conversation, left-pads the batch (zero vectors, attention 0) and runs the
model's batched generation; with greedy decoding each answer equals :meth:`FaceGPTModel.chat` of that question alone.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from minigpt4.common.checkpoint_io import read_saved_config
from minigpt4.common.config import LIBRARY_ROOT, Config, load_config
from minigpt4.common.errors import UserError
from minigpt4.common.logger import get_logger
from minigpt4.conversation.chat import Chat, ContextTooLongError
from minigpt4.conversation.conversation import Conversation
from minigpt4.conversation.factory import chat_from_config, resolve_device
from minigpt4.conversation.generation import GenerationSettings, padded_generate_kwargs
from minigpt4.processors.image_io import ImageOpenError, open_image, to_rgb

logger = get_logger(__name__)

ImageLike = Union[str, Path, bytes, bytearray, Image.Image]
Options = Union[None, Sequence[str], Mapping[str, Any]]

#: the eval config a FaceGPT checkpoint of each architecture is loaded with (paths come from the checkpoint)
EVAL_CONFIG_FOR_ARCH = {"minigpt_v2": "facegpt_v2_eval.yaml", "minigpt4": "facegpt_v1_eval.yaml"}
#: where the shipped eval configs live (the repository checkout beside the package)
EVAL_CONFIG_DIR = Path(LIBRARY_ROOT).parent / "eval_configs"
CONFIG_SUFFIXES = (".yaml", ".yml")


class LoadModelError(UserError, ValueError):
    """``load_model`` cannot tell what to build from its argument; the message names the file and the fix."""


class BadImageError(UserError, ValueError):
    """An image given to :meth:`FaceGPTModel.chat` / :meth:`FaceGPTModel.predict` cannot be read."""


class PromptTooLongError(ContextTooLongError):
    """A batch's question ``index`` does not fit ``max_length - max_new_tokens`` positions (with its image)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclass
class Prediction:
    """One batched answer: its text, the answer's token count (before the stop sequence) and the batch's time."""

    answer: str
    tokens: int
    seconds: float


# ---------------------------------------------------------------------------------------------- loading
def options_list(options: Options) -> List[str]:
    """``--options`` items from a list of ``key=value`` strings or a ``{key: value}`` dict."""
    if options is None:
        return []
    if isinstance(options, str):
        raise LoadModelError(f"options must be a list of key=value strings or a dict, not the string {options!r}")
    if isinstance(options, Mapping):
        return [f"{key}={_option_value(value)}" for key, value in options.items()]
    return [str(item) for item in options]


def _option_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def checkpoint_eval_config(checkpoint: Path) -> Path:
    """The shipped eval config for a FaceGPT checkpoint, chosen by the architecture saved in it."""
    saved = read_saved_config(checkpoint, key="load_model(checkpoint)")
    if saved is None:
        raise LoadModelError(
            f"{checkpoint} carries no saved model config (a released MiniGPT-4 / MiniGPT-v2 checkpoint?); pass an "
            f"eval YAML instead: load_model('eval_configs/minigptv2_eval.yaml', options=['model.ckpt={checkpoint}'])")
    arch = saved["model"].get("arch")
    if arch not in EVAL_CONFIG_FOR_ARCH:
        raise LoadModelError(f"{checkpoint}: saved model.arch {arch!r} is not one of {sorted(EVAL_CONFIG_FOR_ARCH)}")
    path = EVAL_CONFIG_DIR / EVAL_CONFIG_FOR_ARCH[arch]
    if not path.is_file():
        raise LoadModelError(f"{path} (the eval config for arch {arch}) is missing: run from a FaceGPT checkout, or "
                             f"pass your eval YAML with options=['model.ckpt={checkpoint}']")
    return path


def resolve_source(cfg_path_or_checkpoint: Union[str, Path], options: Options) -> Tuple[Path, List[str]]:
    """The config path and ``--options`` for a YAML config or a FaceGPT checkpoint path."""
    source = Path(cfg_path_or_checkpoint).expanduser()
    items = options_list(options)
    if not source.is_file():
        raise LoadModelError(f"{source}: no such file; give an eval config YAML or a FaceGPT checkpoint (.pth)")
    if source.suffix.lower() in CONFIG_SUFFIXES:
        return source, items
    return checkpoint_eval_config(source), [f"model.ckpt={source}"] + items


def load_model(cfg_path_or_checkpoint: Union[str, Path], options: Options = None,
               device: Union[None, str, torch.device] = None,
               settings: Optional[GenerationSettings] = None) -> "FaceGPTModel":
    """Build a FaceGPT model for inference.

    Args:
        cfg_path_or_checkpoint: an eval config YAML (as ``--cfg-path`` of the demos), or a FaceGPT checkpoint
            (``.pth`` written by training): its saved model section decides the model, loaded with the shipped
            ``eval_configs/facegpt_v2_eval.yaml`` / ``facegpt_v1_eval.yaml`` of its architecture.
        options: config overrides, ``["model.llama_model=/path", ...]`` or ``{"model.llama_model": "/path"}``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available, else CPU.
        settings: default generation settings (greedy, 300 new tokens unless given); per call, pass
            ``max_new_tokens=...`` etc. to :meth:`FaceGPTModel.chat` / :meth:`FaceGPTModel.predict`.
    """
    cfg_path, items = resolve_source(cfg_path_or_checkpoint, options)
    cfg = load_config(cfg_path, items, check_dataset_paths=False, checkpoint_config=True)
    resolved = resolve_device(str(device) if device is not None else None)
    logger.info("building %s (%s) on %s from %s", cfg.model.arch, cfg.model.model_type, resolved, cfg_path)
    return FaceGPTModel(chat_from_config(cfg, resolved, settings), cfg)


# ---------------------------------------------------------------------------------------------- images
def _describe(image: Any, index: Optional[int]) -> str:
    where = f"image #{index}" if index is not None else "image"
    if isinstance(image, (str, Path)):
        return f"{where} ({image})"
    return f"{where} ({type(image).__name__})"


def read_image(image: ImageLike, opener: Any = open_image, index: Optional[int] = None) -> Image.Image:
    """An RGB PIL image from a path, PIL image or encoded bytes; :class:`BadImageError` names which one failed."""
    try:
        if isinstance(image, (str, Path)):
            return opener(Path(image).expanduser())
        if isinstance(image, (bytes, bytearray)):
            with Image.open(io.BytesIO(bytes(image))) as img:
                img.load()
                return to_rgb(img)
        if isinstance(image, Image.Image):
            return image if image.mode == "RGB" else to_rgb(image)
    except ImageOpenError as err:
        raise BadImageError(f"{_describe(image, index)}: {err}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(f"{_describe(image, index)}: cannot decode image bytes: {type(err).__name__}: {err}") \
            from None
    raise BadImageError(f"{_describe(image, index)}: expected a path, a PIL image or encoded image bytes, "
                        f"not {type(image).__name__}")


# ---------------------------------------------------------------------------------------------- the model
class FaceGPTModel:
    """A loaded model with ``chat`` (one image, multi-turn) and ``predict`` (many images, batched)."""

    def __init__(self, engine: Chat, config: Optional[Config] = None) -> None:
        self.engine = engine
        self.config = config  # the loaded config the model was built from

    @property
    def model(self) -> Any:
        """The underlying ``nn.Module``."""
        return self.engine.model

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.engine.device

    @property
    def settings(self) -> GenerationSettings:
        """The default generation settings (override per call with keyword arguments)."""
        return self.engine.settings

    def open_image(self, image: ImageLike, index: Optional[int] = None) -> Image.Image:
        """``image`` as an RGB PIL image, opened as the model's image processor opens files."""
        return read_image(image, getattr(self.engine.vis_processor, "open", open_image), index)

    def chat(self, image: ImageLike, question: str, history: Optional[Sequence[Tuple[str, str]]] = None,
             **generation: Any) -> str:
        """The answer to ``question`` about ``image``, after the earlier ``(question, answer)`` pairs of
        ``history``; ``generation``: settings such as ``max_new_tokens=64`` or ``do_sample=True``."""
        chat = self.engine
        conv, img_list = chat.new_conversation(), []
        chat.upload_img(self.open_image(image), conv, img_list)
        for turn, (asked, answered) in enumerate(history or ()):
            if not isinstance(asked, str) or not isinstance(answered, str):
                raise ValueError(f"history[{turn}] must be a (question, answer) pair of strings")
            chat.ask(asked, conv)
            conv.append_message(conv.roles[1], answered)
        chat.ask(question, conv)
        return chat.reply(conv, img_list, **generation).text

    def predict(self, images: Sequence[ImageLike], questions: Sequence[str], batch_size: int = 8,
                **generation: Any) -> List[str]:
        """One answer per ``(image, question)``, in order, generated ``batch_size`` at a time."""
        return [p.answer for p in self.predict_details(images, questions, batch_size, **generation)]

    def predict_details(self, images: Sequence[ImageLike], questions: Sequence[str], batch_size: int = 8,
                        **generation: Any) -> List[Prediction]:
        """Like :meth:`predict` with each answer's token count and its batch's time."""
        if len(images) != len(questions):
            raise ValueError(f"predict got {len(images)} images but {len(questions)} questions; give one each")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        settings = self.settings.replace(**generation) if generation else self.settings
        out: List[Prediction] = []
        for start in range(0, len(images), batch_size):
            stop = start + batch_size
            pils = [self.open_image(img, start + k) for k, img in enumerate(images[start:stop])]
            out += self.predict_batch(pils, list(questions[start:stop]), settings)
        return out

    def predict_batch(self, images: Sequence[Image.Image], questions: Sequence[str],
                      settings: Optional[GenerationSettings] = None) -> List[Prediction]:
        """Answer one batch of opened images (one model call); see the module docstring for the layout."""
        settings = settings or self.settings
        started = time.perf_counter()
        chat = self.engine
        embeds = self._encode(images)  # (B, N, H)
        convs = [self._one_turn(embeds[i:i + 1], q) for i, q in enumerate(questions)]  # each image [1, N, H]
        rows = [chat.context_ids(conv, [embeds[i:i + 1]]) for i, conv in enumerate(convs)]
        budget = chat.context_budget(settings)
        for i, row in enumerate(rows):
            if len(row) > budget:
                raise PromptTooLongError(i, f"question #{i} of the batch needs {len(row)} prompt positions but only "
                                         f"{budget} are available (max_length {settings.max_length} - "
                                         f"max_new_tokens {settings.max_new_tokens}); ask a shorter question or "
                                         "raise max_length")
        ids = self._generate(rows, embeds, settings)
        seconds = time.perf_counter() - started
        result = []
        for conv, row in zip(convs, ids):
            cleaner = chat.answer_cleaner(conv)
            result.append(Prediction(cleaner.text(row), len(cleaner.ids_before_stop(row)), seconds))
        return result

    def _encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.engine.vis_processor(img) for img in images])  # B x (3, S, S) -> (B, 3, S, S)
        with torch.inference_mode(), self.engine.precision.autocast():
            embeds, _ = self.model.encode_img(pixels.to(self.device))
        return embeds

    def _one_turn(self, image_embeds: torch.Tensor, question: str) -> Conversation:
        """A conversation holding the encoded image's turn, ``question`` and the open assistant slot."""
        conv = self.engine.new_conversation()
        self.engine.attach_encoded(image_embeds, conv, [])
        self.engine.ask(question, conv)
        conv.append_message(conv.roles[1], None)
        return conv

    def _generate(self, rows: List[List[int]], embeds: torch.Tensor, settings: GenerationSettings) -> List[List[int]]:
        """Left-pad ``rows`` (pad id, attention 0, zero vectors), fill the image slots, generate; new ids per row."""
        length = max(len(r) for r in rows)
        pad = self.model.tokenizer.pad_id
        ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows], dtype=torch.long)  # (B, L)
        mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows],
                            dtype=torch.long, device=self.device)  # (B, L)
        if settings.do_sample and settings.seed is not None:
            torch.manual_seed(settings.seed)
        kwargs = padded_generate_kwargs(settings, mask)
        with torch.inference_mode(), self.engine.precision.autocast():
            embs = self.model.embed_with_images(ids, embeds)  # (B, L, H)
            embs = embs * mask[..., None].to(embs.dtype)  # padding positions are zero vectors
            out = self.model.generate_from_embeds(embs, mask, **kwargs)  # (B, T)
        return [[int(i) for i in row] for row in out.tolist()]


__all__ = ["BadImageError", "FaceGPTModel", "LoadModelError", "Prediction", "PromptTooLongError", "load_model",
           "read_image"]
