"""``run.task: image_text_align`` (stage 1 of the CPU demo): connector alignment through the real runner, then
``image_text_pretrain`` from its checkpoint, on the tiny model and the synthetic face set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CFG = REPO / "train_configs" / "tiny_minigpt_v2.yaml"


def _run(options: List[str]) -> Tuple[Dict[str, Any], Dict[str, Any], Path]:
    from minigpt4.common.config import load_config
    from minigpt4.runners.launch import run_training

    keep: Dict[str, Any] = {}
    summary = run_training(load_config(CFG, options), keep)
    assert summary["status"] == "completed", summary
    run_dir = Path(summary["run_dir"])
    latest = json.loads((run_dir / "checkpoint_latest.json").read_text())
    return summary, keep, run_dir / latest["weights"]


def _tiny_options(tiny_llama_dir: Path, tmp_path: Path, *extra: str) -> List[str]:
    """The tiny model's weights and a one-epoch, two-step CPU run under ``tmp_path``, then ``extra``."""
    from minigpt4.tools.tiny_weights import write_tiny_eva

    return [f"model.llama_model={tiny_llama_dir}", f"model.vit_ckpt={write_tiny_eva(tmp_path / 'eva.pth')}",
            f"run.output_dir={tmp_path / 'runs'}", "run.distributed=False", "run.max_epoch=1", "run.iters_per_epoch=2",
            "run.amp=False", *extra]


def test_align_stage_trains_the_projection_alone_and_stage_two_starts_from_it(
        tiny_llama_dir: Path, synth_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minigpt4.tools.tiny_weights import write_tiny_eva

    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))
    base = [f"model.llama_model={tiny_llama_dir}", f"model.vit_ckpt={write_tiny_eva(tmp_path / 'eva.pth')}",
            f"run.output_dir={tmp_path / 'runs'}", "run.distributed=False", "run.max_epoch=1", "run.iters_per_epoch=3",
            "run.amp=False"]
    from minigpt4.common.config import load_config
    from minigpt4.common.registry import registry
    from minigpt4.models.checkpoint import save_model_checkpoint

    torch.manual_seed(0)
    fresh = registry.get_model_class("minigpt_v2").from_config(load_config(CFG, base).model)
    start = save_model_checkpoint(fresh, tmp_path / "start.pth")  # stage 1 starts from known weights
    init = {k: v.clone() for k, v in torch.load(start, map_location="cpu", weights_only=True)["model"].items()}
    del fresh
    _, keep, aligned = _run([*base, f"model.ckpt={start}", "run.task=image_text_align",
                             "datasets.facegpt4vision.group_by_image=true", "run.job_name=align"])
    runner = keep["runner"]
    weights = runner.task.word_weights
    tokenizer = runner.unwrapped_model.tokenizer
    vocab = runner.unwrapped_model.llama_model.get_input_embeddings().weight.shape[0]
    assert weights is not None and weights.shape == (vocab,) and float(weights.max()) > 0
    grouped = runner.datasets["facegpt4vision"]["train"].annotation
    assert any(len(r.questions) > 1 for r in grouped), "group_by_image put an image's questions in one sample"
    records = [r for splits in runner.datasets.values() for r in splits["train"].annotation]
    every = set.intersection(*[set(tokenizer.encode(a)) for r in records for a in r.answers])
    assert every and all(float(weights[t]) == 0 for t in every)  # a word in every training answer weighs nothing
    assert all(float(weights[t]) == 0 for t in tokenizer.special_ids if t < vocab)
    state = torch.load(aligned, map_location="cpu", weights_only=True)["model"]
    lora = [k for k in state if "lora_" in k]
    assert lora and all(torch.equal(state[k], init[k]) for k in lora)  # no LLM layer ran: LoRA is untouched
    assert not torch.equal(state["llama_proj.weight"], init["llama_proj.weight"])  # the projection learned
    del keep, runner

    _, keep2, _ = _run([*base, f"model.ckpt={aligned}", "run.job_name=stage2"])
    assert keep2["runner"].task.__class__.__name__ == "ImageTextPretrainTask"


def test_align_stage_with_the_feature_cache_learns_the_same_projection_and_counts_its_hits(
        tiny_llama_dir: Path, synth_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minigpt4.common.metrics import format_summary
    from minigpt4.tools.tiny_weights import write_tiny_eva

    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))
    base = [f"model.llama_model={tiny_llama_dir}", f"model.vit_ckpt={write_tiny_eva(tmp_path / 'eva.pth')}",
            f"run.output_dir={tmp_path / 'runs'}", "run.distributed=False", "run.max_epoch=2", "run.iters_per_epoch=3",
            "run.amp=False", "run.task=image_text_align", "run.seed=5"]
    plain, _, plain_ckpt = _run([*base, "run.job_name=plain"])
    cached, _, cached_ckpt = _run([*base, "model.vit_feature_cache_mb=32", "run.job_name=cached"])
    assert plain["vision_feature_cache"] is None
    stats = cached["vision_feature_cache"]
    # FaceGPT4Vision asks several questions per image, and training and validation come back each epoch
    assert stats["hits"] > stats["misses"] > 0 and stats["hits"] + stats["misses"] > cached["samples_seen"]
    assert stats["misses"] == stats["images_held"] and stats["evicted"] == stats["resets"] == 0
    assert f"tower feature cache {stats['hits']} hits, {stats['misses']} misses" in format_summary(cached)
    want = torch.load(plain_ckpt, map_location="cpu", weights_only=True)["model"]
    got = torch.load(cached_ckpt, map_location="cpu", weights_only=True)["model"]
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6)


def test_align_stage_refuses_streamed_datasets_with_the_fix() -> None:
    from minigpt4.tasks.image_text_align import ImageTextAlignTask

    class Streamed:  # a shard dataset holds no records
        pass

    task = ImageTextAlignTask()
    task.datasets = {"facegpt4vision": {"train": Streamed()}}
    with pytest.raises(ValueError, match=r"datasets.facegpt4vision streams \(shards\).*JSON annotation files"):
        list(task._answers())


def test_align_stage_of_a_word_mixture_model_picks_its_vocabulary_and_saves_it_for_stage_two(
        tiny_llama_dir: Path, synth_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minigpt4.common.config import load_config
    from minigpt4.common.registry import registry

    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))
    base = _tiny_options(tiny_llama_dir, tmp_path, "model.image_token_space=word_mixture")
    _, keep, aligned = _run([*base, "run.task=image_text_align", "run.job_name=align"])
    runner = keep["runner"]
    weights = runner.task.word_weights
    vocab = runner.unwrapped_model.image_vocabulary()
    assert torch.equal(vocab.cpu(), torch.nonzero(weights > 0)[:, 0])  # the words some answer weighs, no other
    assert 0 < vocab.numel() < weights.shape[0]
    state = torch.load(aligned, map_location="cpu", weights_only=True)["model"]
    assert torch.equal(state["image_word_vocab"], vocab.cpu())
    del keep, runner
    cfg = load_config(CFG, [*base, f"model.ckpt={aligned}"]).model
    stage2 = registry.get_model_class("minigpt_v2").from_config(cfg)
    assert torch.equal(stage2.image_vocabulary(), vocab.cpu())


def test_align_stage_with_group_tokens_picks_a_group_per_question_and_stage_two_reads_them(
        tiny_llama_dir: Path, synth_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from minigpt4.common.config import load_config
    from minigpt4.common.registry import registry
    from minigpt4.models.connectors import ModelConfigError
    from minigpt4.models.word_align import branch_tokens
    from minigpt4.tools.synth_faces import ANSWERS

    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))
    base = _tiny_options(tiny_llama_dir, tmp_path, "model.image_token_space=word_mixture", "model.word_group_tokens=3")
    _, keep, aligned = _run([*base, "run.task=image_text_align", "run.job_name=align"])
    model = keep["runner"].unwrapped_model
    groups, vocab = model.word_groups(), model.image_vocabulary()
    want = keep["runner"].task.answer_weights.word_groups(vocab.cpu(), 3)
    assert groups.shape == (3, vocab.numel()) and torch.equal(groups.cpu(), want)
    tokenizer = model.tokenizer
    named = [{tokenizer.decode([int(vocab[i])]).strip() for i in torch.nonzero(row)[:, 0]} for row in groups]
    # the question with the fewest distinguishing words, face or not, is its answers' first pieces where they part
    # ways: "▁Y|es, this is a human face." / "▁|No, this is not a human face." -> {"Y", ""}; "No" and "not" follow
    face = [tokenizer.encode(a) for a in ANSWERS["is_face"].values()]
    assert {tokenizer.decode([t]).strip() for t in branch_tokens(face)} == {"Y", ""} and {"Y", ""} in named
    assert all(len(words) > 1 for words in named)
    del keep, model
    cfg = load_config(CFG, [*base, f"model.ckpt={aligned}"]).model
    stage2 = registry.get_model_class("minigpt_v2").from_config(cfg)
    assert torch.equal(stage2.word_groups(), groups.cpu())
    _, keep2, _ = _run([*base, f"model.ckpt={aligned}", "run.job_name=stage2"])  # the answer loss reads 4 + 3 tokens
    assert keep2["runner"].unwrapped_model.num_image_tokens == stage2.num_image_tokens
    too_many = [*base[:-1], "model.word_group_tokens=200", "run.task=image_text_align", "run.job_name=many"]
    with pytest.raises(ModelConfigError, match=r"word_group_tokens=200, but the training answers have \d+ word"):
        _run(too_many)
