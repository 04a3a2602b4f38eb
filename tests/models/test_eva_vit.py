"""EVA-ViT-g: architecture, eva_vit_g.pth loading, precision, freezing, checkpointing, parity with upstream."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
import torch.nn.functional as F
from parity_tolerance import fp32_tolerance
from torch import nn

from minigpt4.common.schema import VitConfig
from minigpt4.models.eva_vit import (
    EvaViT,
    LayerNormFp32,
    build_eva_vit,
    build_ln_vision,
    freeze_module,
    init_vision_encoder,
    is_frozen,
    load_eva_vit_weights,
    load_ln_vision,
)
from minigpt4.models.keymap import CheckpointKeyError

TINY = VitConfig(embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.3637, patch_size=14, norm_eps=1e-6)


# ------------------------------------------------------------------------------------ full size


def _original_layout(depth: int, width: int, mlp: int, tokens: int) -> Dict[str, Tuple[int, ...]]:
    """Key → shape of LAVIS's eva_vit_g.pth as the reference lists it (§7.2)."""
    keys = {"cls_token": (1, 1, width), "pos_embed": (1, tokens, width),
            "patch_embed.proj.weight": (width, 3, 14, 14), "patch_embed.proj.bias": (width,)}
    for i in range(depth):
        keys.update({
            f"blocks.{i}.norm1.weight": (width,), f"blocks.{i}.norm1.bias": (width,),
            f"blocks.{i}.attn.q_bias": (width,), f"blocks.{i}.attn.v_bias": (width,),
            f"blocks.{i}.attn.qkv.weight": (3 * width, width),
            f"blocks.{i}.attn.proj.weight": (width, width), f"blocks.{i}.attn.proj.bias": (width,),
            f"blocks.{i}.norm2.weight": (width,), f"blocks.{i}.norm2.bias": (width,),
            f"blocks.{i}.mlp.fc1.weight": (mlp, width), f"blocks.{i}.mlp.fc1.bias": (mlp,),
            f"blocks.{i}.mlp.fc2.weight": (width, mlp), f"blocks.{i}.mlp.fc2.bias": (width,),
        })
    return keys


@pytest.mark.parametrize("img_size, tokens", [(224, 257), (448, 1025)])
def test_full_size_tower_on_meta(img_size: int, tokens: int) -> None:
    model = build_eva_vit(VitConfig(), img_size, device="meta")
    assert model.num_features == 1408 and len(model.blocks) == 39
    attn = model.blocks[0].attn
    assert attn.num_heads == 16 and attn.head_dim == 88 and attn.scale == 88 ** -0.5
    assert model.blocks[0].mlp.fc1.out_features == 6144
    assert isinstance(model.blocks[0].mlp.act, nn.GELU) and model.blocks[0].mlp.act.approximate == "none"
    assert model.blocks[0].norm1.eps == 1e-6
    assert isinstance(model.norm, nn.Identity) and isinstance(model.head, nn.Identity)
    layout = _original_layout(39, 1408, 6144, tokens)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(torch.Size(shape).numel() for shape in layout.values())
    # 985,894,528 at 224; the larger position table at 448 adds 768 x 1408
    assert count == {224: 985_894_528, 448: 986_975_872}[img_size]
    assert round(count / 1e6, 1) == {224: 985.9, 448: 987.0}[img_size]


def test_frozen_tower_keeps_upstream_names_as_attribute() -> None:
    parent = nn.Module()
    parent.visual_encoder = freeze_module(build_eva_vit(VitConfig(), 224, device="meta"))
    parent.ln_vision = freeze_module(build_ln_vision(1408))
    keys = list(parent.state_dict())
    assert keys[:4] == ["visual_encoder.cls_token", "visual_encoder.pos_embed",
                        "visual_encoder.patch_embed.proj.weight", "visual_encoder.patch_embed.proj.bias"]
    assert "visual_encoder.blocks.38.mlp.fc2.bias" in keys and keys[-2:] == ["ln_vision.weight", "ln_vision.bias"]


# ------------------------------------------------------------------------------- tiny weight files


def _eva_file(tmp_path: Path, img_size: int = 224, extra: bool = True, seed: int = 0) -> Tuple[Path, dict]:
    """A tiny eva_vit_g.pth in the original layout; ``extra`` adds a 40th-style block, a final norm and a head."""
    gen = torch.Generator().manual_seed(seed)
    donor = build_eva_vit(TINY, img_size)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in donor.state_dict().items()}
    if extra:
        for key, value in list(state.items()):
            if key.startswith("blocks.1."):
                state[key.replace("blocks.1.", "blocks.2.")] = torch.randn(value.shape, generator=gen)
        state.update({"norm.weight": torch.ones(32), "norm.bias": torch.zeros(32), "head.weight": torch.zeros(5, 32)})
    path = tmp_path / "eva_vit_g.pth"
    torch.save(state, path)
    return path, state


def test_load_places_every_tensor_and_accounts_for_extras(tmp_path: Path) -> None:
    path, state = _eva_file(tmp_path)
    model = build_eva_vit(TINY, 224)
    report = load_eva_vit_weights(model, path, 224)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert len(report.matched) == 30 and report.expected_absent == [] and report.renamed == {}
    assert sorted(report.intentionally_unused) == sorted([k for k in state if k.startswith("blocks.2.")]
                                                         + ["norm.weight", "norm.bias", "head.weight"])
    assert all("second-to-last layer" in reason for reason in report.intentionally_unused.values())
    assert report.summary().startswith(f"{path}: 30 matched, 0 expected absent, 16 intentionally unused")


def test_unexpected_key_and_wrong_shape_fail_with_their_message(tmp_path: Path) -> None:
    _, state = _eva_file(tmp_path, extra=False)
    state["blocks.0.attn.relative_position_bias_table"] = torch.zeros(3)
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 32)
    del state["blocks.0.norm2.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointKeyError) as info:
        load_eva_vit_weights(build_eva_vit(TINY, 224), path)
    message = str(info.value)
    assert message.startswith(f"{path} does not fit the model (3 problems):")
    assert ("unexpected keys (1, in the file but not in the model): "
            "blocks.0.attn.relative_position_bias_table") in message
    assert "missing keys (1, the model needs them but the file lacks them): blocks.0.norm2.bias" in message
    assert "blocks.1.mlp.fc1.weight: file [100,32] vs model [139,32] (check vit_config against the file)" in message
    assert "Fix: use LAVIS's eva_vit_g.pth" in message


def test_more_than_one_extra_block_is_an_error(tmp_path: Path) -> None:
    _, state = _eva_file(tmp_path)
    state["blocks.3.norm1.weight"] = torch.ones(32)
    torch.save(state, tmp_path / "deep.pth")
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys \(1, .*\): blocks\.3\.norm1\.weight"):
        load_eva_vit_weights(build_eva_vit(TINY, 224), tmp_path / "deep.pth")


def test_wrapped_file_is_rejected(tmp_path: Path) -> None:
    _, state = _eva_file(tmp_path, extra=False)
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    with pytest.raises(ValueError, match=r"wrapped\.pth: expected a plain state dict of tensors .*\['model'\]"):
        load_eva_vit_weights(build_eva_vit(TINY, 224), tmp_path / "wrapped.pth")


def test_pos_embed_resized_224_to_448_like_bicubic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, state = _eva_file(tmp_path)
    model = build_eva_vit(TINY, 448)
    with caplog.at_level(logging.INFO, logger="facegpt"):
        report = load_eva_vit_weights(model, path, 448)
    grid = state["pos_embed"][:, 1:].reshape(1, 16, 16, 32).permute(0, 3, 1, 2)  # (1, 256, 32) -> (1, 32, 16, 16)
    resized = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    expected = torch.cat([state["pos_embed"][:, :1], resized.permute(0, 2, 3, 1).reshape(1, 1024, 32)], dim=1)
    assert model.pos_embed.shape == (1, 1025, 32)
    assert torch.equal(model.pos_embed.data, expected)
    assert torch.equal(model.pos_embed.data[:, 0], state["pos_embed"][:, 0])
    assert report.notes == ["position embeddings resized from 16x16 to 32x32"]
    assert "position embeddings resized from 16x16 to 32x32" in caplog.text
    assert torch.equal(model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    with pytest.raises(ValueError, match="img_size 224 differs from the tower's 448"):
        load_eva_vit_weights(model, path, 224)


# -------------------------------------------------------------------------------- behaviour


def test_forward_returns_all_tokens_and_checks_size() -> None:
    model = build_eva_vit(TINY, 224).eval()
    out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 257, 32)
    with pytest.raises(ValueError, match=r"expects images \[B, 3, 224, 224\] .*got \[1, 3, 448, 448\]"):
        model(torch.randn(1, 3, 448, 448))


def test_exact_attention_switch_matches_sdpa() -> None:
    torch.manual_seed(0)
    model = build_eva_vit(TINY, 224, exact_attention=True).eval()
    assert model.exact_attention and not model.blocks[1].attn.fused_attn
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        exact = model(images)
        model.exact_attention = False
        fused = model(images)
    assert model.blocks[0].attn.fused_attn and not model.exact_attention
    assert (exact - fused).abs().max() < 1e-5


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_casts_only_linear_and_conv(precision: str, dtype: torch.dtype) -> None:
    model = build_eva_vit(TINY, 224, precision=precision)
    for name, param in model.named_parameters():
        in_linear_or_conv = name.endswith(("qkv.weight", "proj.weight", "proj.bias", "fc1.weight", "fc1.bias",
                                           "fc2.weight", "fc2.bias"))
        assert param.dtype == (dtype if in_linear_or_conv else torch.float32), name
    assert model.cls_token.dtype == model.pos_embed.dtype == model.blocks[0].attn.q_bias.dtype == torch.float32
    with pytest.raises(ValueError, match="vit_precision must be one of"):
        build_eva_vit(TINY, 224, precision="int8")


def test_bf16_tower_runs_under_autocast() -> None:
    model = build_eva_vit(TINY, 224, precision="bf16").eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 257, 32) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layernorm_fp32_computes_in_fp32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    ln = build_ln_vision(32)
    assert isinstance(ln, LayerNormFp32) and ln.eps == 1e-5
    with torch.no_grad():
        ln.weight.normal_()
        x = (torch.randn(2, 5, 32) * 30 + 100).to(dtype)
        out = ln(x)
        reference = F.layer_norm(x.float(), (32,), ln.weight, ln.bias, 1e-5).to(dtype)
    assert out.dtype == dtype and torch.equal(out, reference)


def test_freeze_keeps_eval_mode_and_names() -> None:
    torch.manual_seed(0)
    parent = nn.Module()
    parent.visual_encoder = freeze_module(build_eva_vit(TINY, 224, drop_path_rate=0.5))
    parent.proj = nn.Linear(32, 4)
    parent.train()
    assert parent.training and parent.proj.training
    assert not parent.visual_encoder.training and not any(m.training for m in parent.visual_encoder.modules())
    assert not any(p.requires_grad for p in parent.visual_encoder.parameters())
    assert is_frozen(parent.visual_encoder) and isinstance(parent.visual_encoder, EvaViT)
    images = torch.randn(1, 3, 224, 224)
    assert torch.equal(parent.visual_encoder(images), parent.visual_encoder(images))  # drop-path stays off
    assert list(parent.state_dict())[0] == "visual_encoder.cls_token"
    clone = copy.deepcopy(parent)
    clone.train()
    assert is_frozen(clone.visual_encoder) and not clone.visual_encoder.training
    assert not is_frozen(build_eva_vit(TINY, 224))


def test_grad_checkpointing_same_output_and_gradients() -> None:
    torch.manual_seed(0)
    plain = build_eva_vit(TINY, 224).train()
    ckpt = build_eva_vit(TINY, 224, use_grad_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    images = torch.randn(2, 3, 224, 224)
    outputs = []
    for model in (plain, ckpt):
        out = model(images)
        out.square().mean().backward()
        outputs.append(out.detach())
    assert torch.equal(outputs[0], outputs[1])
    for (name, p1), (_, p2) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert p1.grad is not None and torch.allclose(p1.grad, p2.grad, rtol=0, atol=1e-7), name


def test_init_vision_encoder_freezes_and_loads(tmp_path: Path) -> None:
    path, state = _eva_file(tmp_path, extra=False)
    tower, ln, report = init_vision_encoder(TINY, 224, precision="fp16", freeze=True, ckpt_path=path)
    assert is_frozen(tower) and is_frozen(ln) and report is not None and len(report.matched) == 30
    assert tower.blocks[0].mlp.fc1.weight.dtype == torch.float16
    assert torch.equal(tower.blocks[0].mlp.fc1.weight, state["blocks.0.mlp.fc1.weight"].half())
    tower, ln, report = init_vision_encoder(TINY, 224, precision="fp16", freeze=False)
    assert report is None and not is_frozen(tower) and tower.blocks[0].mlp.fc1.weight.dtype == torch.float32
    assert all(p.requires_grad for p in tower.parameters())


# --------------------------------------------------------------------------- parity with upstream


def _tower_from_export(folder: Path, exact_attention: bool) -> EvaViT:
    eva = json.loads((folder / "export.json").read_text())["eva"]
    cfg = VitConfig(embed_dim=eva["embed_dim"], depth=eva["depth"], num_heads=eva["num_heads"],
                    mlp_ratio=eva["mlp_ratio"], patch_size=eva["patch_size"], norm_eps=eva["norm_eps"])
    tower = build_eva_vit(cfg, eva["img_size"], precision="fp32", exact_attention=exact_attention).eval()
    load_eva_vit_weights(tower, folder / "eva_vit_g.pth", eva["img_size"])
    return tower


@pytest.mark.parametrize("exact_attention", [True, False], ids=["exact", "sdpa"])
@pytest.mark.parametrize("variant", ["v1", "v1_llama2", "v2"])
def test_parity_vit_and_ln_vision(parity_root: Path, variant: str, exact_attention: bool) -> None:
    folder = parity_root / variant
    tower = _tower_from_export(folder, exact_attention)
    ln_vision = build_ln_vision(tower.num_features)
    if variant == "v1":
        from minigpt4.models.qformer import build_qformer, load_blip2_qformer, qformer_config_from_bert

        qcfg = qformer_config_from_bert(folder / "bert-base-uncased" / "config.json")
        qformer, query_tokens = build_qformer(qcfg, 8, tower.num_features)
        load_blip2_qformer(qformer, query_tokens, ln_vision, folder / "blip2_qformer.pth")
    else:
        report = load_ln_vision(ln_vision, folder / "ln_vision.pth")
        assert report.matched == ["weight", "bias"]
    expected = torch.load(folder / "intermediates.pt", weights_only=True)
    with torch.no_grad():
        vit_out = tower(expected["image"])
        ln_out = ln_vision(vit_out)
    assert vit_out.shape == expected["vit_out"].shape
    assert (vit_out - expected["vit_out"]).abs().max().item() <= fp32_tolerance(expected["vit_out"])
    assert (ln_out - expected["ln_vision_out"]).abs().max().item() <= fp32_tolerance(expected["ln_vision_out"])
