"""The text pipeline runs in the data-loader workers: the loader's collate_fn (dataset collater + the model's sample
encoder) yields token ids, labels and image slots; the model embeds them and scatters the image embeddings once."""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import pytest
import torch

from minigpt4.datasets.datasets.collate import collate_samples
from minigpt4.prompting import IMAGE_SLOT_ID, EncodingCollater, PromptError
from minigpt4.runners.loaders import batch_collater

Q = "<Img><ImageHere></Img> [vqa] Is this a human face?"


class _Faces(torch.utils.data.Dataset):
    """Single-turn and conversation items with random pixels, collated by the package's collater."""

    def __init__(self, n: int, size: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=gen)  # (n, 3, S, S)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        answer = ["Yes.", "Yes, a human face with a long description."][i % 2]
        return {"image": self.images[i], "instruction_input": Q, "answer": answer, "image_id": str(i)}

    def collater(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        return collate_samples(items)


def test_worker_batches_are_encoded_and_give_the_in_process_loss(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", max_txt_len=12)
    data = _Faces(4, model.cfg.image_size)
    collate = batch_collater(data, model)
    assert isinstance(collate, EncodingCollater)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=1, collate_fn=collate)
    batches = list(loader)  # encoded in a worker process
    assert all({"input_ids", "labels", "attention_mask", "input_lens", "truncation"} <= set(b) for b in batches)
    with torch.no_grad():
        for k, batch in enumerate(batches):
            raw = data.collater([data[2 * k], data[2 * k + 1]])
            assert torch.equal(batch["input_ids"], model.sample_encoder.encode_batch(raw)["input_ids"])
            assert (batch["input_ids"] == IMAGE_SLOT_ID).sum() == 2 * model.num_image_tokens
            assert model(batch)["loss"].item() == pytest.approx(model(raw)["loss"].item(), abs=1e-6)
    # every second answer is longer than max_txt_len=12 tokens: the cuts travel with the batches and are added up
    lengths = [len(model.llama_tokenizer.encode(data[i]["answer"] + "</s>")) for i in range(4)]
    assert [n > 12 for n in lengths] == [False, True] * 2
    cut = sum(b["truncation"]["answers_truncated"] for b in batches)
    assert cut == 2 and model.truncation_stats["answers_truncated"] == 2 * cut  # each batch went in twice
    assert model.truncation_stats["samples"] == 2 * 4


def test_the_image_scatter_checks_the_slot_count(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2")
    data = _Faces(2, model.cfg.image_size)
    batch = model.sample_encoder.encode_batch(data.collater([data[0], data[1]]))
    too_many = dict(batch, input_ids=batch["input_ids"].clone())
    first_text = int((too_many["input_ids"][0] != IMAGE_SLOT_ID).nonzero()[-1])
    too_many["input_ids"][0, first_text] = IMAGE_SLOT_ID  # one more slot than the image has embeddings
    with pytest.raises(PromptError, match=r"hold 129 image slot\(s\) \(\[65, 64\] per row\) but the images give "
                                          r"2 x 64 embeddings"):
        model.build_llm_inputs(too_many)
    with pytest.raises(PromptError, match="encoded for 32 tokens per image but this model makes 64"):
        model.build_llm_inputs(dict(batch, image_tokens=32))
    with pytest.raises(PromptError, match=r"hold 128 image slot\(s\) but no image was given"):
        model.embed_with_images(batch["input_ids"], None)


def test_an_image_with_more_tokens_than_the_prompts_reserve_is_refused(tiny_model: Callable[..., Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that adds image tokens without counting them in num_image_tokens gets a one-line error, not its
    extra tokens silently dropped by the slot scatter (each row would read only the first 64)."""
    from minigpt4.models.connectors import ModelConfigError

    model = tiny_model("minigpt_v2")
    data = _Faces(2, model.cfg.image_size)
    batch = model.sample_encoder.encode_batch(data.collater([data[0], data[1]]))
    plain = model.llm_image_tokens
    monkeypatch.setattr(model, "llm_image_tokens", lambda p: torch.cat([plain(p), plain(p)[:, :1]], dim=1))
    with pytest.raises(ModelConfigError, match=r"the image gives 65 LLM tokens but num_image_tokens is 64"):
        model.build_llm_inputs(batch)


def test_an_empty_collated_batch_passes_through(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2")
    assert EncodingCollater(lambda items: None, model.sample_encoder)([]) is None
