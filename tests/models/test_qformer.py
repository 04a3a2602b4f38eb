"""BLIP-2 Q-Former: architecture, LAVIS key map, BLIP-2 file loading, forward semantics, parity with upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from torch import nn

from minigpt4.common.schema import QFormerConfig, VitConfig
from minigpt4.models.eva_vit import build_eva_vit, build_ln_vision, freeze_module, load_eva_vit_weights
from minigpt4.models.keymap import CheckpointKeyError
from minigpt4.models.qformer import (
    build_qformer,
    load_blip2_qformer,
    qformer_config_from_bert,
    qformer_key_to_upstream,
    run_qformer,
    upstream_key_to_qformer,
    upstream_unused_reason,
)

TINY = QFormerConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
VISION = 32
QUERIES = 8


def _upstream_layout(layers: int, hidden: int, inter: int, vision: int) -> Dict[str, Tuple[int, ...]]:
    """Upstream (LAVIS) Q-Former keys MiniGPT-4 keeps, with shapes (§7.3), plus query_tokens."""
    keys: Dict[str, Tuple[int, ...]] = {
        "Qformer.bert.embeddings.LayerNorm.weight": (hidden,), "Qformer.bert.embeddings.LayerNorm.bias": (hidden,)
    }
    for i in range(layers):
        parts = ["attention"] + (["crossattention"] if i % 2 == 0 else [])
        for part in parts:
            width = vision if part == "crossattention" else hidden
            base = f"Qformer.bert.encoder.layer.{i}.{part}"
            keys[f"{base}.self.query.weight"] = (hidden, hidden)
            keys.update({f"{base}.self.{n}.weight": (hidden, width) for n in ("key", "value")})
            keys.update({f"{base}.self.{n}.bias": (hidden,) for n in ("query", "key", "value")})
            keys.update({f"{base}.output.dense.weight": (hidden, hidden), f"{base}.output.dense.bias": (hidden,),
                         f"{base}.output.LayerNorm.weight": (hidden,), f"{base}.output.LayerNorm.bias": (hidden,)})
        base = f"Qformer.bert.encoder.layer.{i}"
        keys.update({f"{base}.intermediate_query.dense.weight": (inter, hidden),
                     f"{base}.intermediate_query.dense.bias": (inter,),
                     f"{base}.output_query.dense.weight": (hidden, inter),
                     f"{base}.output_query.dense.bias": (hidden,),
                     f"{base}.output_query.LayerNorm.weight": (hidden,),
                     f"{base}.output_query.LayerNorm.bias": (hidden,)})
    return keys


def _upstream_state(qformer: nn.Module) -> Dict[str, Tuple[int, ...]]:
    return {qformer_key_to_upstream("Qformer." + k): tuple(v.shape) for k, v in qformer.state_dict().items()}


def test_full_size_qformer_on_meta() -> None:
    qformer, query_tokens = build_qformer(QFormerConfig(), 32, 1408, device="meta")
    assert query_tokens.shape == (1, 32, 768)
    layers = qformer.encoder.layer
    assert len(layers) == 12
    assert [i for i, layer in enumerate(layers) if layer.has_cross_attention] == [0, 2, 4, 6, 8, 10]
    assert not any(hasattr(layer, "intermediate") for layer in layers)  # no text FFN
    assert qformer.config.hidden_act == "gelu" and qformer.config.layer_norm_eps == 1e-12
    assert _upstream_state(qformer) == _upstream_layout(12, 768, 3072, 1408)
    assert layers[0].crossattention.attention.key.weight.shape == (768, 1408)
    assert sum(p.numel() for p in qformer.parameters()) == 105_137_664


def test_key_map_explicit_examples_and_round_trip() -> None:
    examples = {
        "Qformer.bert.embeddings.LayerNorm.weight": "Qformer.layernorm.weight",
        "Qformer.bert.encoder.layer.0.attention.self.query.weight":
            "Qformer.encoder.layer.0.attention.attention.query.weight",
        "Qformer.bert.encoder.layer.10.crossattention.self.value.bias":
            "Qformer.encoder.layer.10.crossattention.attention.value.bias",
        "Qformer.bert.encoder.layer.3.attention.output.LayerNorm.bias":
            "Qformer.encoder.layer.3.attention.output.LayerNorm.bias",
        "Qformer.bert.encoder.layer.2.crossattention.output.dense.weight":
            "Qformer.encoder.layer.2.crossattention.output.dense.weight",
        "Qformer.bert.encoder.layer.11.intermediate_query.dense.weight":
            "Qformer.encoder.layer.11.intermediate_query.dense.weight",
        "Qformer.bert.encoder.layer.11.output_query.LayerNorm.weight":
            "Qformer.encoder.layer.11.output_query.LayerNorm.weight",
        "query_tokens": "query_tokens",
        "ln_vision.weight": "ln_vision.weight",
        "llama_proj.bias": "llama_proj.bias",
    }
    for upstream, ours in examples.items():
        assert upstream_key_to_qformer(upstream) == ours
        assert qformer_key_to_upstream(ours) == upstream
    qformer, _ = build_qformer(QFormerConfig(), 32, 1408, device="meta")
    for key in qformer.state_dict():
        assert upstream_key_to_qformer(qformer_key_to_upstream("Qformer." + key)) == "Qformer." + key
    assert upstream_key_to_qformer("Qformer.bert.encoder.layer.0.intermediate.dense.weight") is None
    with pytest.raises(KeyError, match="Qformer.encoder.layer.0.mystery.weight has no upstream"):
        qformer_key_to_upstream("Qformer.encoder.layer.0.mystery.weight")


def test_discarded_upstream_keys_have_reasons() -> None:
    assert "text embeddings" in upstream_unused_reason("Qformer.bert.embeddings.word_embeddings.weight")
    assert "text embeddings" in upstream_unused_reason("Qformer.bert.embeddings.position_ids")
    assert "text feed-forward" in upstream_unused_reason("Qformer.bert.encoder.layer.5.output.LayerNorm.bias")
    assert "language-model head" in upstream_unused_reason("Qformer.cls.predictions.decoder.weight")
    assert upstream_unused_reason("Qformer.bert.encoder.layer.5.output_query.LayerNorm.bias") is None


# ------------------------------------------------------------------------------- BLIP-2 files


def _blip2_file(tmp_path: Path, seed: int = 0, text_parts: bool = True, **extra: torch.Tensor) -> Tuple[Path, dict]:
    """A tiny BLIP-2 checkpoint {'model': ...} with LAVIS names, text parts and BLIP-2's own heads."""
    gen = torch.Generator().manual_seed(seed)
    qformer, _ = build_qformer(TINY, QUERIES, VISION)
    state = {qformer_key_to_upstream("Qformer." + k): torch.randn(v.shape, generator=gen)
             for k, v in qformer.state_dict().items()}
    state.update({"query_tokens": torch.randn(1, QUERIES, 48, generator=gen),
                  "ln_vision.weight": torch.randn(VISION, generator=gen), "ln_vision.bias": torch.randn(VISION)})
    if text_parts:
        state.update({
            "Qformer.bert.embeddings.word_embeddings.weight": torch.randn(101, 48),
            "Qformer.bert.embeddings.position_embeddings.weight": torch.randn(512, 48),
            "Qformer.bert.embeddings.position_ids": torch.arange(512).unsqueeze(0),
            "Qformer.cls.predictions.bias": torch.zeros(101),
            "Qformer.cls.predictions.transform.dense.weight": torch.zeros(48, 48),
            "t5_proj.weight": torch.zeros(16, 48), "t5_proj.bias": torch.zeros(16),
        })
        for i in range(2):
            state[f"Qformer.bert.encoder.layer.{i}.intermediate.dense.weight"] = torch.randn(96, 48)
            state[f"Qformer.bert.encoder.layer.{i}.output.dense.weight"] = torch.randn(48, 96)
            state[f"Qformer.bert.encoder.layer.{i}.output.LayerNorm.bias"] = torch.randn(48)
    state.update(extra)
    path = tmp_path / "blip2_pretrained.pth"
    torch.save({"model": state}, path)
    return path, state


def _parts() -> Tuple[nn.Module, nn.Parameter, nn.Module]:
    qformer, query_tokens = build_qformer(TINY, QUERIES, VISION)
    return qformer, query_tokens, build_ln_vision(VISION)


def test_blip2_file_lands_everywhere_and_accounts_for_text_parts(tmp_path: Path) -> None:
    path, state = _blip2_file(tmp_path)
    qformer, query_tokens, ln_vision = _parts()
    report = load_blip2_qformer(qformer, query_tokens, ln_vision, path)
    for key, value in qformer.state_dict().items():
        assert torch.equal(value, state[qformer_key_to_upstream("Qformer." + key)]), key
    assert torch.equal(query_tokens.data, state["query_tokens"])
    assert torch.equal(ln_vision.weight, state["ln_vision.weight"])
    assert torch.equal(ln_vision.bias, state["ln_vision.bias"])
    n_qformer = len(qformer.state_dict())
    assert len(report.matched) == n_qformer + 3 and len(report.renamed) == n_qformer
    groups = report.unused_by_reason()
    assert len(report.intentionally_unused) == 3 + 2 + 2 + 6
    text_emb = [k for r, keys in groups.items() if "text embeddings" in r for k in keys]
    assert sorted(text_emb) == ["Qformer.bert.embeddings.position_embeddings.weight",
                                "Qformer.bert.embeddings.position_ids",
                                "Qformer.bert.embeddings.word_embeddings.weight"]
    assert sum(len(keys) for r, keys in groups.items() if "text feed-forward" in r) == 6
    assert report.intentionally_unused["t5_proj.weight"].startswith("BLIP-2's projection into its own LLM")
    assert report.expected_absent == []


def test_visual_encoder_keys_in_blip2_file(tmp_path: Path) -> None:
    vit_cfg = VitConfig(embed_dim=VISION, depth=1, num_heads=2)
    tower = freeze_module(build_eva_vit(vit_cfg, 224))
    cls = torch.full((1, 1, VISION), 0.25)
    path, _ = _blip2_file(tmp_path, text_parts=False, **{"visual_encoder.cls_token": cls})
    report = load_blip2_qformer(*_parts(), path, visual_encoder=tower)
    assert torch.equal(tower.cls_token.data, cls) and "visual_encoder.cls_token" in report.matched
    assert report.notes == [
        "1 visual_encoder.* tensors taken from this file (they override eva_vit_g.pth, as upstream)"
    ]
    assert "visual_encoder.pos_embed" in report.expected_absent
    report = load_blip2_qformer(*_parts(), path)  # no tower given: accounted for, not loaded
    assert "eva_vit_g.pth provides them" in report.intentionally_unused["visual_encoder.cls_token"]


def test_unexpected_missing_and_wrong_shape_fail_with_their_message(tmp_path: Path) -> None:
    path, state = _blip2_file(tmp_path, text_parts=False)
    state["Qformer.bert.encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(3, 12)
    state["query_tokens"] = torch.zeros(1, 32, 48)
    del state["ln_vision.bias"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointKeyError) as info:
        load_blip2_qformer(*_parts(), path)
    message = str(info.value)
    assert message.startswith(f"{path} does not fit the model (3 problems):")
    assert "unexpected keys (1, in the file but not in the model): " \
           "Qformer.bert.encoder.layer.0.attention.self.distance_embedding.weight" in message
    assert "missing keys (1, the model needs them but the file lacks them): ln_vision.bias" in message
    assert ("query_tokens: file [1,32,48] vs model [1,8,48] (the file has 32 query tokens: "
            "set model.num_query_token: 32)") in message
    state = _blip2_file(tmp_path, text_parts=False)[1]
    key = "Qformer.bert.encoder.layer.0.crossattention.self.key.weight"
    state[key] = torch.zeros(48, 1408)
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointKeyError, match=(
            r"layer\.0\.crossattention\.self\.key\.weight \(as Qformer\.encoder\.layer\.0\.crossattention\.attention"
            r"\.key\.weight\): file \[48,1408\] vs model \[48,32\] \(cross-attention input width")):
        load_blip2_qformer(*_parts(), path)


def test_unknown_top_level_part_and_unwrapped_file_fail(tmp_path: Path) -> None:
    path, _ = _blip2_file(tmp_path, text_parts=False, **{"mystery_head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointKeyError, match=r"unexpected keys \(1, .*\): mystery_head\.weight"):
        load_blip2_qformer(*_parts(), path)
    _, state = _blip2_file(tmp_path, text_parts=False)
    torch.save(state, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match=r"plain\.pth: expected a BLIP-2 checkpoint \{'model': \{\.\.\.\}\}"):
        load_blip2_qformer(*_parts(), tmp_path / "plain.pth")


# -------------------------------------------------------------------------------- forward


def test_run_qformer_semantics() -> None:
    torch.manual_seed(0)
    qformer, query_tokens = build_qformer(TINY, QUERIES, VISION)
    qformer.eval()
    image = torch.randn(2, 257, VISION)
    with torch.no_grad():
        out = run_qformer(qformer, query_tokens, image)
        assert out.shape == (2, QUERIES, 48)
        assert torch.equal(out, run_qformer(qformer, query_tokens, image))  # eval: no dropout
        changed_cls = image.clone()
        changed_cls[:, 0] += 1.0
        assert (run_qformer(qformer, query_tokens, changed_cls) - out).abs().max() > 1e-4  # CLS is attended
        later_query = query_tokens.detach().clone()
        later_query[:, -1] += torch.randn(48)  # not a constant: the embedding LayerNorm would remove that
        first = run_qformer(qformer, later_query, image)[:, 0]
        assert (first - out[:, 0]).abs().max() > 1e-4  # bidirectional: query 0 sees the last query
        alone = run_qformer(qformer, query_tokens, image[:1])
    assert torch.allclose(alone, out[:1], atol=1e-6)


def test_attention_implementations_agree() -> None:
    cfg = QFormerConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    outputs = {}
    torch.manual_seed(0)
    image = torch.randn(2, 17, VISION)
    for impl in ("eager", "sdpa", "lavis"):
        torch.manual_seed(1)
        qformer, query_tokens = build_qformer(cfg, 4, VISION, attn_implementation=impl)
        assert qformer.config._attn_implementation == {"lavis": "facegpt_lavis"}.get(impl, impl)
        with torch.no_grad():
            outputs[impl] = run_qformer(qformer.eval(), query_tokens, image)
    # head size 64: multiplying by 64**-0.5 and dividing by sqrt(64) are the same float operation
    assert torch.equal(outputs["eager"], outputs["lavis"])
    assert (outputs["sdpa"] - outputs["eager"]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        build_qformer(cfg, 4, VISION, attn_implementation="flash")


def test_qformer_config_from_bert(tmp_path: Path) -> None:
    bert = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu"}
    (tmp_path / "config.json").write_text(json.dumps(bert))
    assert qformer_config_from_bert(tmp_path / "config.json") == TINY
    (tmp_path / "bad.json").write_text(json.dumps({**bert, "hidden_act": "gelu_new"}))
    with pytest.raises(ValueError, match="hidden_act 'gelu_new'; the Q-Former uses exact 'gelu'"):
        qformer_config_from_bert(tmp_path / "bad.json")


# --------------------------------------------------------------------------- parity with upstream


@pytest.mark.parametrize("attn", ["eager", "lavis", "sdpa"])
def test_parity_qformer_v1(parity_root: Path, attn: str) -> None:
    folder = parity_root / "v1"
    export = json.loads((folder / "export.json").read_text())
    eva, qf = export["eva"], export["qformer"]
    vit_cfg = VitConfig(embed_dim=eva["embed_dim"], depth=eva["depth"], num_heads=eva["num_heads"],
                        mlp_ratio=eva["mlp_ratio"], patch_size=eva["patch_size"], norm_eps=eva["norm_eps"])
    tower = freeze_module(build_eva_vit(vit_cfg, eva["img_size"], precision="fp32"))
    load_eva_vit_weights(tower, folder / "eva_vit_g.pth")
    ln_vision = freeze_module(build_ln_vision(eva["embed_dim"], eps=export["ln_vision"]["eps"]))
    cfg = qformer_config_from_bert(folder / "bert-base-uncased" / "config.json", qf["cross_attention_freq"])
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.layer_norm_eps) == (48, 2, 1e-12)
    qformer, query_tokens = build_qformer(cfg, qf["num_query_token"], eva["embed_dim"], attn_implementation=attn)
    freeze_module(qformer)
    report = load_blip2_qformer(qformer, query_tokens, ln_vision, folder / "blip2_qformer.pth")
    assert len(report.matched) == 47 and list(report.intentionally_unused) == ["Qformer.bert.embeddings.position_ids"]
    expected = torch.load(folder / "intermediates.pt", weights_only=True)
    with torch.no_grad():
        from_upstream_ln = run_qformer(qformer, query_tokens, expected["ln_vision_out"])
        full_chain = run_qformer(qformer, query_tokens, ln_vision(tower(expected["image"])))
    assert full_chain.shape == expected["qformer_out"].shape == (2, 8, 48)
    assert (from_upstream_ln - expected["qformer_out"]).abs().max().item() <= 1e-6
    assert (full_chain - expected["qformer_out"]).abs().max().item() <= 1e-6
