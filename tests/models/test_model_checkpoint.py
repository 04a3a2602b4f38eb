"""MiniGPT checkpoints in their original formats (tiny sizes, real key names): strict loading and saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch
from model_helpers import LLAMA_7B, LLAMA_13B

from minigpt4.models import MiniGPT4
from minigpt4.models.checkpoint import load_model_checkpoint, save_model_checkpoint
from minigpt4.models.keymap import CheckpointKeyError

V1_BUFFERS = [f"llama_model.model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]
V2_PREFIX = "llama_model.base_model.model.model.layers"


def _inv_freq(head_dim: int = 16, theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def _lora_keys(spelling: str) -> Dict[str, tuple]:
    """Upstream v2 LoRA keys of the tiny LLM (2 layers, hidden 64) for rank 4: key → shape."""
    keys = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            keys[f"{V2_PREFIX}.{layer}.self_attn.{proj}.lora_A{spelling}.weight"] = (4, 64)
            keys[f"{V2_PREFIX}.{layer}.self_attn.{proj}.lora_B{spelling}.weight"] = (64, 4)
    return keys


def _logits(model: Any, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(1, 3, 224, 224, generator=gen),
             "instruction_input": ["<Img><ImageHere></Img> Describe the face."], "answer": ["A smiling person."]}
    with torch.no_grad():
        inputs = model.build_llm_inputs(batch)
        return model.llama_model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask).logits


def test_minigpt4_release_format(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    """``{'model': {llama_proj.*, rotary inv_freq buffers, Q-Former position_ids}}`` as upstream's runner saved."""
    model = tiny_model("minigpt4")
    state = {"llama_proj.weight": torch.randn(64, 32), "llama_proj.bias": torch.randn(64),
             "Qformer.bert.embeddings.position_ids": torch.arange(512)[None], **{k: _inv_freq() for k in V1_BUFFERS}}
    torch.save({"model": state, "optimizer": {}, "epoch": 3}, tmp_path / "pretrained_minigpt4.pth")
    report = load_model_checkpoint(model, tmp_path / "pretrained_minigpt4.pth")
    assert torch.equal(model.llama_proj.weight, state["llama_proj.weight"])
    assert torch.equal(model.llama_proj.bias, state["llama_proj.bias"])
    assert sorted(report.matched) == ["llama_proj.bias", "llama_proj.weight"]
    assert sorted(report.intentionally_unused) == sorted(V1_BUFFERS + ["Qformer.bert.embeddings.position_ids"])
    assert len(report.expected_absent) == len(model.state_dict()) - 2
    assert "2 matched" in report.summary()
    # a plain state dict (no 'model' wrapper) loads the same way
    torch.save(state, tmp_path / "plain.pth")
    plain = load_model_checkpoint(model, tmp_path / "plain.pth")
    assert sorted(plain.matched) == ["llama_proj.bias", "llama_proj.weight"]


@pytest.mark.parametrize("spelling", ["", ".default"], ids=["peft-0.2.0", "peft-default"])
def test_minigpt_v2_release_format_each_lora_spelling(tiny_model: Callable[..., Any], tmp_path: Path,
                                                       spelling: str) -> None:
    model = tiny_model("minigpt_v2")
    state = {k: torch.randn(shape) for k, shape in _lora_keys(spelling).items()}
    state.update({"llama_proj.weight": torch.randn(64, 128), "llama_proj.bias": torch.randn(64)})
    state.update({f"{V2_PREFIX}.{i}.self_attn.rotary_emb.inv_freq": _inv_freq() for i in range(2)})
    torch.save({"model": state}, tmp_path / "minigptv2_checkpoint.pth")
    report = load_model_checkpoint(model, tmp_path / "minigptv2_checkpoint.pth")
    params = dict(model.named_parameters())
    for key, value in state.items():
        if "lora_" in key:
            ours = key if spelling else key.replace(".weight", ".default.weight")
            assert torch.equal(params[ours], value), key
    assert torch.equal(model.llama_proj.weight, state["llama_proj.weight"])
    assert len(report.matched) == 10 and len(report.intentionally_unused) == 2
    short = 8 if not spelling else 0
    assert f"8 LoRA tensors matched ({short} in peft 0.2.0 spelling, {8 - short} with '.default')" in report.summary()


def test_unexpected_key_fails_with_its_name(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    model = tiny_model("minigpt4")
    torch.save({"model": {"llama_proj.weight": torch.randn(64, 32), "llama_proj.bias": torch.randn(64),
                          "llama_proj.extra": torch.zeros(3)}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys \(1, in the file but not in the model\): "
                                                 r"llama_proj.extra"):
        load_model_checkpoint(model, tmp_path / "bad.pth")


def test_wrong_shape_fails_naming_the_llm_size(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    model = tiny_model("minigpt4")
    torch.save({"model": {"llama_proj.weight": torch.randn(80, 32), "llama_proj.bias": torch.randn(80)}},
               tmp_path / "wide.pth")
    with pytest.raises(CheckpointKeyError, match=r"llama_proj.weight: file \[80,32\] vs model \[64,32\] \(this "
                                                 r"checkpoint was trained with a hidden-80 LLM"):
        load_model_checkpoint(model, tmp_path / "wide.pth")
    assert not torch.equal(model.llama_proj.weight[:, :2], torch.zeros(64, 2))  # nothing was copied


def test_full_size_shape_messages_on_meta(tmp_path: Path) -> None:
    """A 13B checkpoint on a 7B config, and a Q-Former checkpoint on a LLaMA-2 (no Q-Former) config."""
    vicuna7b = MiniGPT4.build_on_meta(MiniGPT4.default_config("pretrain_vicuna0"), LLAMA_7B)
    torch.save({"model": {"llama_proj.weight": torch.zeros(5120, 768), "llama_proj.bias": torch.zeros(5120)}},
               tmp_path / "vicuna13b.pth")
    with pytest.raises(CheckpointKeyError) as err:
        load_model_checkpoint(vicuna7b, tmp_path / "vicuna13b.pth")
    assert ("this checkpoint was trained with a 13B LLM (hidden 5120); model.llama_model points at a hidden-4096 "
            "(7B) model") in str(err.value)
    llama2 = MiniGPT4.build_on_meta(MiniGPT4.default_config("pretrain_llama2"), LLAMA_7B)
    torch.save({"model": {"llama_proj.weight": torch.zeros(4096, 768), "llama_proj.bias": torch.zeros(4096)}},
               tmp_path / "vicuna7b.pth")
    with pytest.raises(CheckpointKeyError, match=r"Q-Former checkpoint \(projection input 768\) with a no-Q-Former "
                                                 r"config \(input 5632 = 4 merged patches\); check model_type"):
        load_model_checkpoint(llama2, tmp_path / "vicuna7b.pth")
    vicuna13b = MiniGPT4.build_on_meta(MiniGPT4.default_config("pretrain_vicuna0"), LLAMA_13B)
    assert load_model_checkpoint(vicuna13b, tmp_path / "vicuna13b.pth").matched == ["llama_proj.weight",
                                                                                   "llama_proj.bias"]


def test_missing_lora_is_an_error_unless_partial(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    model = tiny_model("minigpt_v2")
    torch.save({"model": {"llama_proj.weight": torch.randn(64, 128), "llama_proj.bias": torch.randn(64)}},
               tmp_path / "v1_llama2.pth")
    with pytest.raises(CheckpointKeyError, match=r"(?s)missing keys \(8, .*lora_A.default.weight.*the file has no LoRA "
                                                 r"weights \(a MiniGPT-4 v1 checkpoint\?\)"):
        load_model_checkpoint(model, tmp_path / "v1_llama2.pth")
    report = load_model_checkpoint(model, tmp_path / "v1_llama2.pth", partial=True)
    assert "8 trainable tensors not in the file keep their initialisation" in report.summary()
    # LoRA weights in a model without LoRA
    state = {k: torch.randn(s) for k, s in _lora_keys("").items()}
    torch.save({"model": {**state, "llama_proj.weight": torch.randn(64, 32), "llama_proj.bias": torch.randn(64)}},
               tmp_path / "v2.pth")
    with pytest.raises(CheckpointKeyError, match=r"the file holds LoRA weights \(a MiniGPT-v2 checkpoint\) but the "
                                                 r"model has no LoRA"):
        load_model_checkpoint(tiny_model("minigpt4"), tmp_path / "v2.pth")


def test_wrong_rotary_buffer_is_refused(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    model = tiny_model("minigpt4")
    state = {"llama_proj.weight": torch.randn(64, 32), "llama_proj.bias": torch.randn(64),
             V1_BUFFERS[0]: _inv_freq(theta=500000.0)}
    torch.save({"model": state}, tmp_path / "rope.pth")
    with pytest.raises(ValueError, match=r"rotary frequencies differ from this LLM's"):
        load_model_checkpoint(model, tmp_path / "rope.pth")


def test_save_load_round_trip_and_upstream_format(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    model = tiny_model("minigpt_v2")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:  # as after training: LoRA B no longer zero
                param.add_(0.05 * torch.randn_like(param))
    before = _logits(model)
    path = save_model_checkpoint(model, tmp_path / "out" / "checkpoint_0.pth", extra={"epoch": 0, "config": {"a": 1}})
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # the temp file is gone
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 0 and saved["config"] == {"a": 1}
    # upstream names: llama_proj.* and peft 0.2.0 LoRA keys (no adapter name), as MiniGPT-4 itself expects
    assert sorted(saved["model"]) == sorted(["llama_proj.weight", "llama_proj.bias", *_lora_keys("")])
    fresh = tiny_model("minigpt_v2")
    assert not torch.equal(_logits(fresh), before)
    report = load_model_checkpoint(fresh, path)
    assert len(report.matched) == 10
    assert torch.equal(_logits(fresh), before)
    with pytest.raises(ValueError, match="'model' in extra"):
        save_model_checkpoint(model, tmp_path / "x.pth", extra={"model": {}})


def test_from_config_loads_ckpt_and_trainable_qformer_uses_upstream_names(tiny_model: Callable[..., Any],
                                                                          tmp_path: Path) -> None:
    model = tiny_model("minigpt4", freeze_qformer=False)
    saved = save_model_checkpoint(model, tmp_path / "qformer.pth")
    keys = list(torch.load(saved, weights_only=True)["model"])
    assert "query_tokens" in keys and "Qformer.bert.encoder.layer.0.crossattention.self.key.weight" in keys
    reloaded = tiny_model("minigpt4", freeze_qformer=False, ckpt=str(saved))
    assert torch.equal(reloaded.query_tokens, model.query_tokens)
    assert torch.equal(_logits(reloaded), _logits(model))
