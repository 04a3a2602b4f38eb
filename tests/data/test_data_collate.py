"""collate_samples: the batch contract of DESIGN.md."""

from __future__ import annotations

import pytest
import torch

from minigpt4.datasets.datasets.collate import SkippedSample, collate_samples, is_empty_batch


def _single(k: int, skipped: int = 0) -> dict:
    return {"image": torch.full((3, 4, 4), float(k)), "instruction_input": f"<Img><ImageHere></Img> q{k} ",
            "answer": f"a{k}", "image_id": str(k), "section": "S", "skipped": skipped}


def _multi(k: int) -> dict:
    return {"image": torch.zeros(3, 4, 4), "conv_q": [f"<Img><ImageHere></Img> q{k} ", "next "],
            "conv_a": [f"a{k}", "b"], "image_id": str(k), "section": "", "skipped": 2}


def test_single_turn_batch() -> None:
    batch = collate_samples([_single(1, 1), _single(2, 3)])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["image"][1, 0, 0, 0] == 2
    assert batch["instruction_input"] == ["<Img><ImageHere></Img> q1 ", "<Img><ImageHere></Img> q2 "]
    assert batch["answer"] == ["a1", "a2"] and batch["image_id"] == ["1", "2"]
    assert batch["skipped"] == 4 and isinstance(batch["skipped"], int)


def test_mixed_batch_turns_single_items_into_one_turn_conversations() -> None:
    batch = collate_samples([_single(1), _multi(2)])
    assert "instruction_input" not in batch and "answer" not in batch
    assert batch["conv_q"] == [["<Img><ImageHere></Img> q1 "], ["<Img><ImageHere></Img> q2 ", "next "]]
    assert batch["conv_a"] == [["a1"], ["a2", "b"]]
    assert batch["skipped"] == 2


def test_mismatched_keys_and_empty_batches_are_errors() -> None:
    odd = _single(1)
    del odd["section"]
    with pytest.raises(ValueError, match=r"item 1 has different keys.*section"):
        collate_samples([_single(0), odd])
    with pytest.raises(ValueError, match="empty batch"):
        collate_samples([])


def test_skip_markers_shrink_the_batch_and_an_all_skipped_batch_is_empty() -> None:
    marker = SkippedSample("ds", 7, "x.jpg", "image file not found: x.jpg")
    batch = collate_samples([_single(1), marker, _single(2, 1), None])
    assert batch["image"].shape == (2, 3, 4, 4) and batch["image_id"] == ["1", "2"]
    assert batch["skipped"] == 3, "two markers dropped here plus one counted by an item"
    empty = collate_samples([marker, None])
    assert is_empty_batch(empty) and not isinstance(empty, dict) and empty.skipped == 2
    assert not is_empty_batch(batch)
