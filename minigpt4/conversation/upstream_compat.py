"""Upstream MiniGPT-4's chat names, for code written against a MiniGPT-4 checkout (e.g. VLMEvalKit's wrapper).

VLMEvalKit's ``vlmeval/vlm/minigpt4.py`` puts a MiniGPT-4 checkout on ``sys.path`` and uses, from it:

* ``from minigpt4.common.registry import registry``: ``registry.get_model_class(cfg.model.arch).from_config(
  cfg.model)`` on a config read with ``OmegaConf.load`` (after ``cfg.model.device_8bit = <gpu index>``), then
  ``.to(device)`` and ``.eval()``; ``registry.get_processor_class(name).from_config(cfg)`` for
  ``cfg.datasets.cc_sbu_align.vis_processor.train``;
* ``from minigpt4.conversation.conversation import Chat, StoppingCriteriaSub, CONV_VISION_Vicuna0,
  CONV_VISION_minigptv2``;
* ``StoppingCriteriaSub(stops=[tensor, ...])`` inside a transformers ``StoppingCriteriaList``;
* ``Chat(model, vis_processor, device=<gpu index>)`` or with ``stopping_criteria=...``; ``CONV.copy()``,
  ``chat.upload_img(path, conv, img_list)``, ``chat.encode_img(img_list)``, ``chat.ask(prompt, conv)``, then
  ``chat.answer(conv=conv, img_list=img_list)[0]`` (current) or, in older versions,
  ``chat.answer_prepare(conv, img_list, **kwargs)`` → ``chat.model_generate(**kwargs)[0]`` →
  ``chat.model.llama_tokenizer.decode(ids, skip_special_tokens=True)``.

:class:`Chat` here is FaceGPT's chat engine (:class:`minigpt4.conversation.chat.Chat`, unchanged) with upstream's
constructor and the two methods upstream had beyond it (``answer_prepare``, ``model_generate``). The model's own
stop rule (EOS, ``end_sym``) always applies; a ``stopping_criteria`` of :class:`StoppingCriteriaSub` adds its stop
ids to it. Differences from upstream: answers are greedy unless ``do_sample=True`` is given (upstream's
``answer_prepare`` always sampled), and a prompt longer than ``max_length - max_new_tokens`` drops old turns or
raises :class:`~minigpt4.conversation.chat.ContextTooLongError` instead of cutting embeddings off its front.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from minigpt4.common.precision import PrecisionPolicy, resolve_precision_name
from minigpt4.conversation.chat import Chat as EngineChat
from minigpt4.conversation.conversation import Conversation
from minigpt4.conversation.generation import AnswerCleaner, GenerationSettings

_HALF = {torch.float16: "fp16", torch.bfloat16: "bf16"}


class StoppingCriteriaSub(StoppingCriteria):
    """Upstream's stop rule: stop once the last generated ids equal one of ``stops`` (1-D id tensors).

    As upstream, one stop ends the whole batch (every row must end with it). Given to :class:`Chat`, the stops join
    the model's own stop rule, which is applied per row.
    """

    def __init__(self, stops: Sequence[torch.Tensor] = (), encounters: int = 1) -> None:
        super().__init__()
        self.stops = list(stops)
        self.encounters = encounters  # kept for upstream's signature; upstream never read it either

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        done = False
        for stop in self.stops:
            n = int(stop.numel())
            if n and input_ids.shape[1] >= n and bool(torch.all(input_ids[:, -n:] == stop.to(input_ids.device))):
                done = True
                break
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def stop_ids(self) -> List[List[int]]:
        """The stops as id lists."""
        return [[int(i) for i in stop.reshape(-1).tolist()] for stop in self.stops if stop.numel()]


def stop_ids_from_criteria(criteria: Union[None, StoppingCriteria, Sequence[StoppingCriteria]]) -> List[List[int]]:
    """The stop id sequences of a :class:`StoppingCriteriaSub` (or a list of them, e.g. a ``StoppingCriteriaList``)."""
    if criteria is None:
        return []
    items = [criteria] if isinstance(criteria, StoppingCriteria) else list(criteria)
    stops: List[List[int]] = []
    for item in items:
        if not isinstance(item, StoppingCriteriaSub):
            raise TypeError(f"stopping_criteria: only StoppingCriteriaSub is understood, not {type(item).__name__} "
                            "(the model's own stop rule, EOS and end_sym, always applies)")
        stops += item.stop_ids()
    return stops


def precision_for(model: Any, device: torch.device) -> PrecisionPolicy:
    """Compute in the dtype the LLM is stored in when it is half precision (a model built by ``from_config``
    outside the chat factory keeps its preset's storage), else the device's default (fp32 on CPU)."""
    llm = getattr(model, "llama_model", None)
    param = next(iter(llm.parameters()), None) if llm is not None else None
    name = _HALF.get(param.dtype) if param is not None else None
    return PrecisionPolicy(name or resolve_precision_name("auto", device), device.type)


class Chat(EngineChat):
    """FaceGPT's chat engine with upstream's constructor, ``answer_prepare`` and ``model_generate``."""

    def __init__(self, model: Any, vis_processor: Callable[[Any], torch.Tensor],
                 device: Union[str, int, torch.device] = "cuda:0",
                 stopping_criteria: Optional[Union[StoppingCriteria, StoppingCriteriaList]] = None,
                 **engine_options: Any) -> None:
        device = torch.device(device)
        engine_options.setdefault("precision", precision_for(model, device))
        super().__init__(model, vis_processor, device=device, **engine_options)
        self.stopping_criteria = stopping_criteria
        self.extra_stops = stop_ids_from_criteria(stopping_criteria)

    # ---------------------------------------------------------------------- upstream's two extra methods
    def answer_prepare(self, conv: Conversation, img_list: list, max_new_tokens: int = 300, num_beams: int = 1,
                       min_length: int = 1, top_p: float = 0.9, repetition_penalty: float = 1.05,
                       length_penalty: float = 1, temperature: float = 1.0, max_length: int = 2000,
                       **more: Any) -> Dict[str, Any]:
        """Open the assistant slot, embed the context and return ``generate`` keyword arguments (upstream's keys:
        ``inputs_embeds``, ``max_new_tokens``, ``stopping_criteria``, ``num_beams``, ``do_sample``, ``min_length``,
        ``top_p``, ``repetition_penalty``, ``length_penalty``, ``temperature``) for :meth:`model_generate`."""
        settings = self.settings.replace(
            max_new_tokens=max_new_tokens, num_beams=num_beams, min_length=min_length, top_p=top_p,
            repetition_penalty=repetition_penalty, length_penalty=float(length_penalty),
            temperature=float(temperature), max_length=max_length, **more)
        embs, _, _ = self.prepare_context(conv, img_list, settings)
        return {"inputs_embeds": embs, "max_new_tokens": settings.max_new_tokens,
                "stopping_criteria": self.stopping_criteria, "num_beams": settings.num_beams,
                "do_sample": settings.do_sample, "min_length": settings.min_length, "top_p": settings.top_p,
                "repetition_penalty": settings.repetition_penalty, "length_penalty": settings.length_penalty,
                "temperature": settings.temperature}

    def model_generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Generate from :meth:`answer_prepare`'s arguments under the engine's precision; the new ids ``[1, T]``."""
        if args:
            raise TypeError("model_generate takes keyword arguments only (those answer_prepare returns)")
        embs = kwargs.pop("inputs_embeds")
        mask = kwargs.pop("attention_mask", None)
        stops = self.model.stop_sequences() + stop_ids_from_criteria(kwargs.pop("stopping_criteria", None))
        if not kwargs.get("do_sample"):
            kwargs = {k: v for k, v in kwargs.items() if k not in ("top_p", "temperature")}  # greedy: unused
        if kwargs.get("num_beams", 1) == 1:
            kwargs.pop("length_penalty", None)
        with torch.inference_mode(), self.precision.autocast():
            return self.model.generate_from_embeds(embs, mask, stop_sequences=stops, **kwargs)

    # ---------------------------------------------------------------------- the constructor's stops
    def _generate(self, embs: torch.Tensor, settings: GenerationSettings,
                  streamer: Optional[BaseStreamer] = None) -> List[int]:
        if not self.extra_stops:
            return super()._generate(embs, settings, streamer)
        if settings.do_sample and settings.seed is not None:
            torch.manual_seed(settings.seed)
        mask = torch.ones(embs.shape[:2], dtype=torch.long, device=embs.device)  # (1, L)
        with torch.inference_mode(), self.precision.autocast():
            out = self.model.generate_from_embeds(embs, mask, streamer=streamer,
                                                  stop_sequences=self.model.stop_sequences() + self.extra_stops,
                                                  **settings.generate_kwargs())
        return [int(i) for i in out[0].tolist()]

    def _cleaner(self, conv: Conversation) -> AnswerCleaner:
        cleaner = super()._cleaner(conv)
        if self.extra_stops:
            cleaner.stops += [list(s) for s in self.extra_stops]
        return cleaner


__all__ = ["Chat", "StoppingCriteriaSub", "precision_for", "stop_ids_from_criteria"]
