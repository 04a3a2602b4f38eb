"""Strict, key-accounted loading (minigpt4.models.keymap)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from minigpt4.models.keymap import (
    CheckpointKeyError,
    LoadReport,
    WeightsFileError,
    load_state_dict_strict,
    torch_load_weights,
)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)
        self.register_buffer("steps", torch.zeros(4, dtype=torch.long))
        self.register_buffer("scratch", torch.zeros(1), persistent=False)


def _state(module: nn.Module, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.randint(0, 9, v.shape, generator=gen) if v.dtype == torch.long else torch.randn(v.shape, generator=gen)
        for k, v in module.state_dict().items()
    }


def test_copies_every_tensor_and_keeps_dtype() -> None:
    module = _Tiny()
    module.proj.half()  # mixed precision module: the fp16 weight must stay fp16
    state = _state(_Tiny())
    report = load_state_dict_strict(module, state, file="w.pth")
    assert module.proj.weight.dtype == torch.float16
    assert torch.equal(module.proj.weight, state["proj.weight"].half())
    assert torch.equal(module.norm.bias, state["norm.bias"])
    assert torch.equal(module.steps, state["steps"])
    assert sorted(report.matched) == sorted(state)
    assert report.expected_absent == [] and report.intentionally_unused == {}
    assert report.summary() == "w.pth: 5 matched, 0 expected absent, 0 intentionally unused, 0 renamed"


def test_expected_absent_unused_and_renamed_are_recorded() -> None:
    module = _Tiny()
    state = _state(_Tiny())
    del state["norm.weight"], state["norm.bias"]
    state["cls.head"] = torch.zeros(3)
    report = load_state_dict_strict(
        module, state, file="w.pth",
        expected_absent=lambda key: key.startswith("norm."),
        unused={"cls.head": "LM head, discarded", "gone.x": "dropped before loading"},
        renamed={"old.steps": "steps"},
    )
    assert sorted(report.expected_absent) == ["norm.bias", "norm.weight"]
    assert report.intentionally_unused == {"cls.head": "LM head, discarded", "gone.x": "dropped before loading"}
    assert report.unused_by_reason() == {"LM head, discarded": ["cls.head"], "dropped before loading": ["gone.x"]}
    assert report.renamed == {"old.steps": "steps"}
    assert sorted(report.matched) == ["proj.bias", "proj.weight", "steps"]
    # a set works as well as a predicate
    report = load_state_dict_strict(_Tiny(), {k: v for k, v in _state(_Tiny()).items() if k != "steps"},
                                    file="w.pth", expected_absent={"steps"})
    assert report.expected_absent == ["steps"]


def test_all_problems_reported_at_once_and_nothing_copied() -> None:
    module = _Tiny()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    state = _state(_Tiny())
    state["proj.weight"] = torch.zeros(3, 2)  # transposed
    state["extra.weight"] = torch.zeros(1)
    state["renamed_in_file"] = torch.zeros(1)
    del state["norm.bias"]
    with pytest.raises(CheckpointKeyError) as info:
        load_state_dict_strict(
            module, state, file="/ckpt/w.pth",
            shape_hint=lambda key, f, m: "transposed?" if f == m[::-1] else "",
            renamed={"file.name": "renamed_in_file"},
            fix="point model.ckpt at the right file.",
        )
    message = str(info.value)
    assert message.startswith("/ckpt/w.pth does not fit the model (4 problems):")
    assert (
        "unexpected keys (2, in the file but not in the model): extra.weight, file.name (as renamed_in_file)" in message
    )
    assert "missing keys (1, the model needs them but the file lacks them): norm.bias" in message
    assert "proj.weight: file [3,2] vs model [2,3] (transposed?)" in message
    assert message.endswith("Fix: point model.ckpt at the right file.")
    assert info.value.missing == ["norm.bias"]
    for key, value in module.state_dict().items():  # the failed load changed nothing
        assert torch.equal(value, before[key]), key


def test_long_key_lists_are_shortened() -> None:
    state = _state(_Tiny())
    state.update({f"junk.{i}": torch.zeros(1) for i in range(25)})
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys \(25, .*junk\.19, \.\.\. and 5 more"):
        load_state_dict_strict(_Tiny(), state, file="w.pth")


def test_non_tensor_value_is_an_error() -> None:
    state = _state(_Tiny())
    state["steps"] = [1, 2, 3, 4]
    with pytest.raises(CheckpointKeyError, match="steps: file holds a list, not a tensor"):
        load_state_dict_strict(_Tiny(), state, file="w.pth")


def test_report_log(caplog: pytest.LogCaptureFixture) -> None:
    report = LoadReport(file="b.pth", matched=["a"], intentionally_unused={"x.1": "text part", "x.2": "text part"},
                        notes=["position embeddings resized from 16x16 to 32x32"])
    with caplog.at_level(logging.INFO, logger="facegpt"):
        report.log(logging.getLogger("facegpt.test"))
    text = caplog.text
    assert "b.pth: 1 matched, 0 expected absent, 2 intentionally unused, 0 renamed; position embeddings resized" in text
    assert "2 keys not used (text part), e.g. x.1" in text


def test_torch_load_weights_formats(tmp_path: Path) -> None:
    state = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    assert torch.equal(torch_load_weights(tmp_path / "ckpt.pth")["model"]["a"], state["a"])
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded = torch_load_weights(tmp_path / "w.safetensors")
    assert set(loaded) == {"a", "b"} and torch.equal(loaded["b"], state["b"])


def test_torch_load_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth \(set by model\.vit_ckpt\) does not exist.*expected EVA"):
        torch_load_weights(tmp_path / "nope.pth", what="EVA weights", key="model.vit_ckpt")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        torch_load_weights(tmp_path)
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(WeightsFileError, match=r"text\.pth is not a PyTorch weights file .*expected Q-Former"):
        torch_load_weights(tmp_path / "text.pth", what="Q-Former weights")
    # a pickled object (not a state dict): weights_only refuses it, the message says how to fix it
    torch.save(_Tiny(), tmp_path / "obj.pth")
    with pytest.raises(WeightsFileError, match=r"re-save model\.state_dict\(\)"):
        torch_load_weights(tmp_path / "obj.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsFileError, match="not a readable safetensors file"):
        torch_load_weights(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("fault, expected", [
    ("truncated", r"ckpt\.pth \(set by model\.ckpt\) is truncated or damaged \(\d+ bytes; its zip archive is "
                  r"incomplete\)"),
    ("empty", r"ckpt\.pth \(set by model\.ckpt\) is empty \(0 bytes\)"),
    ("garbage", r"ckpt\.pth \(set by model\.ckpt\) is not a PyTorch weights file"),
    ("legacy_truncated", r"ckpt\.pth \(set by model\.ckpt\) is truncated \(\d+ bytes; an old-format torch file"),
])
def test_damaged_file_is_one_line_naming_file_fault_and_key(tmp_path: Path, fault: str, expected: str) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"w": torch.randn(64, 64)}}, path, _use_new_zipfile_serialization=fault != "legacy_truncated")
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": bytes(range(256)) * 8,
               "legacy_truncated": data[: len(data) // 2]}[fault]
    path.write_bytes(damaged)
    with pytest.raises(WeightsFileError, match=expected) as info:
        torch_load_weights(path, what="a checkpoint", key="model.ckpt")
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_damaged_vision_files_name_their_config_keys(tmp_path: Path) -> None:
    """A truncated eva_vit_g.pth / BLIP-2 file: one line naming the file, the fault and model.vit_ckpt /
    model.q_former_model (the loaders the model builder calls)."""
    from minigpt4.models.eva_vit import build_eva_vit, build_ln_vision, load_eva_vit_weights
    from minigpt4.models.qformer import build_qformer, load_blip2_qformer
    from minigpt4.tools.tiny_weights import tiny_dims, write_tiny_blip2, write_tiny_eva

    vit_cfg, q_cfg, queries = tiny_dims()
    eva, blip2 = write_tiny_eva(tmp_path / "eva_vit_g.pth"), write_tiny_blip2(tmp_path / "blip2.pth")
    for path in (eva, blip2):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(WeightsFileError, match=r"eva_vit_g\.pth \(set by model\.vit_ckpt\) is truncated or damaged"):
        load_eva_vit_weights(build_eva_vit(vit_cfg, 224), eva)
    qformer, query_tokens = build_qformer(q_cfg, queries, vit_cfg.embed_dim)
    with pytest.raises(WeightsFileError, match=r"blip2\.pth \(set by model\.q_former_model\) is truncated or dam"):
        load_blip2_qformer(qformer, query_tokens, build_ln_vision(vit_cfg.embed_dim), blip2)
