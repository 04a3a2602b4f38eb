"""Batched generation equals generating each sample alone (greedy ids), on the tiny MiniGPT-4 (v1) and MiniGPT-v2.

``model.generate`` / ``generate_ids`` left-pad the batch (zero vectors, attention 0), run one LLM forward per
step for the whole batch and stop each row by its own stop rule. Claims: for prompts of different lengths each
row's new ids are the ids of that sample generated alone; a row that meets a stop sequence ends there (its
remaining positions are padding) while the others go on; the LLM runs one forward per generated step, not one
per row. (That the decoded answers are equal too is tested through the Python API in tests/test_api.py.)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import pytest
import torch

NEW_TOKENS = 8
QUESTIONS = ["Hi", "Describe the face in the picture in detail, please.", "Is this a human face or a drawing?"]
PROMPTS: Dict[str, str] = {  # each preset's upstream inference prompt
    "minigpt4": "###Human: <Img><ImageHere></Img> {} ###Assistant: ",
    "minigpt_v2": "<s>[INST] <Img><ImageHere></Img> {} [/INST]",
}


def _inputs(model: Any, arch: str) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    size = int(model.visual_encoder.img_size) if hasattr(model.visual_encoder, "img_size") else 224
    images = torch.randn(len(QUESTIONS), 3, size, size, generator=gen)
    texts = [PROMPTS[arch].format(q) for q in QUESTIONS]
    return {"images": images, "texts": texts}


def _alone(model: Any, images: torch.Tensor, texts: List[str], **kwargs: Any) -> List[List[int]]:
    return [model.generate_ids(images[i:i + 1], [texts[i]], max_new_tokens=NEW_TOKENS, **kwargs)[0].tolist()
            for i in range(len(texts))]


def _rows(model: Any, batched: torch.Tensor, lengths: List[int]) -> List[List[int]]:
    """Each row's new ids up to the length the sample reached alone; the rest must be padding."""
    pad = model.tokenizer.pad_id
    out = []
    for row, n in zip(batched.tolist(), lengths):
        assert all(t == pad for t in row[n:]), f"a finished row continues: {row} after {n} ids"
        out.append(row[:n])
    return out


@pytest.fixture(scope="module", params=["minigpt4", "minigpt_v2"])
def case(request: pytest.FixtureRequest, tiny_model: Callable[..., Any]) -> Dict[str, Any]:
    """A tiny model of each preset, its batch, and every sample's ids generated alone (computed once)."""
    model = tiny_model(request.param)
    inp = _inputs(model, request.param)
    return {"model": model, **inp, "alone": _alone(model, inp["images"], inp["texts"])}


def test_batched_ids_equal_each_sample_alone(case: Dict[str, Any]) -> None:
    model, alone = case["model"], case["alone"]
    img = model.encode_img(case["images"][:1])[0]
    lengths = {len(model.context_layout(t, [img])) for t in case["texts"]}
    assert len(lengths) == len(QUESTIONS), "prompt lengths differ, so the batch is left-padded"
    batched = model.generate_ids(case["images"], case["texts"], max_new_tokens=NEW_TOKENS)
    assert batched.shape == (len(QUESTIONS), max(len(a) for a in alone))
    assert _rows(model, batched, [len(a) for a in alone]) == alone
    assert len({tuple(a) for a in alone}) > 1, "the rows generate different ids (the test would see a mix-up)"


def test_each_row_stops_by_its_own_stop_rule(case: Dict[str, Any]) -> None:
    model, free = case["model"], case["alone"]
    inp = {"images": case["images"], "texts": case["texts"]}
    stop = [free[1][1]]  # the second sample's second token: that row stops after two ids
    stops = model.stop_sequences() + [stop]
    alone = _alone(model, inp["images"], inp["texts"], stop_sequences=stops)
    assert len(alone[1]) == 2 and max(len(a) for a in alone) > 2, "one row stops early, another goes on"
    batched = model.generate_ids(inp["images"], inp["texts"], max_new_tokens=NEW_TOKENS, stop_sequences=stops)
    assert _rows(model, batched, [len(a) for a in alone]) == alone


def test_one_llm_forward_per_step_for_the_whole_batch(case: Dict[str, Any]) -> None:
    model, inp = case["model"], {"images": case["images"], "texts": case["texts"]}
    calls: List[int] = []
    head = model.llama_model.get_output_embeddings()  # runs once per LLM forward
    handle = head.register_forward_hook(lambda mod, args, out: calls.append(int(out.shape[0])))
    try:
        batched = model.generate_ids(inp["images"], inp["texts"], max_new_tokens=NEW_TOKENS)
    finally:
        handle.remove()
    assert len(calls) == batched.shape[1], "one forward per new token, shared by every row"
    assert set(calls) == {len(QUESTIONS)}, "every forward carries the whole batch"
