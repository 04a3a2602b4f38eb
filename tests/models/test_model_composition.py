"""v1 and v2 are presets of one composed model: the same parts (vision tower, connector, LLM, prompt format), what
trains decided in one place, and one preset-merge path for ``--cfg-path`` and ``from_config(dict)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common.config import load_config
from minigpt4.models import MiniGPT4, MiniGPTv2
from minigpt4.models.connectors import MergeConnector, ModelConfigError, QFormerConnector, image_token_count


def _model_keys(tiny_weights: Dict[str, str]) -> Dict[str, Any]:
    return {"arch": "minigpt_v2", "model_type": "tiny", "llama_model": tiny_weights["llama_model"],
            "vit_ckpt": tiny_weights["vit_ckpt"], "lora_r": 2, "max_txt_len": 40,
            "prompt_template": "<user> {} <bot>", "end_sym": "<end>"}


def test_from_config_dict_and_cfg_path_build_the_same_model(tiny_weights: Dict[str, str], tmp_path: Path) -> None:
    keys = _model_keys(tiny_weights)
    path = tmp_path / "cfg.yaml"
    OmegaConf.save(OmegaConf.create({"model": keys, "run": {"task": "image_text_pretrain"}}), path)
    from_file = load_config(path).model
    from_dict = MiniGPTv2.typed_config(dict(keys))
    assert OmegaConf.to_container(from_file) == OmegaConf.to_container(from_dict)
    assert from_dict.image_size == 224 and from_dict.chat_template is True  # preset values, not schema defaults
    models = []
    for cfg in (from_file, dict(keys)):
        torch.manual_seed(0)
        models.append(MiniGPTv2.from_config(cfg))
    a, b = (m.state_dict() for m in models)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert models[0].prompt_format == models[1].prompt_format
    assert models[1].prompt_format.to_config()["prompt_template"] == "<user> {} <bot>"


def test_presets_differ_by_their_parts(tiny_model: Callable[..., Any]) -> None:
    v1, v2 = tiny_model("minigpt4"), tiny_model("minigpt_v2")
    assert isinstance(v1.connector, QFormerConnector) and isinstance(v2.connector, MergeConnector)
    assert v1.num_image_tokens == image_token_count(v1.cfg) == 4
    assert v2.num_image_tokens == image_token_count(v2.cfg) == (224 // 14) ** 2 // 4
    assert (v1.prompt_format.name, v2.prompt_format.name) == ("vicuna0", "minigptv2")
    assert "connector" not in dict(v1.named_children()), "the connector registers no module of its own"
    assert {n.split(".")[0] for n, _ in v1.named_parameters()} == {
        "llama_model", "visual_encoder", "ln_vision", "Qformer", "query_tokens", "llama_proj"}


def test_merge_tokens_sets_how_many_patches_make_one_llm_token(tiny_model: Callable[..., Any]) -> None:
    default, wide = tiny_model("minigpt_v2", image_size=112), tiny_model("minigpt_v2", image_size=112, merge_tokens=16)
    patches = (112 // 14) ** 2
    assert wide.num_image_tokens == image_token_count(wide.cfg) == patches // 16
    assert wide.llama_proj.in_features == 16 * default.llama_proj.in_features // 4
    image = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        feats = wide.visual_encoder(image)  # (2, 1+N, D)
        tokens = wide.connector.tokens(wide, feats)
        embeds = wide.encode_img(image)[0]
    # token j is the concatenation of patches 16j .. 16j+15 (raster order), CLS dropped
    assert tokens.shape == (2, patches // 16, 16 * feats.shape[-1])
    assert torch.equal(tokens[1, 3], feats[1, 1 + 48:1 + 64].reshape(-1))
    assert embeds.shape[:2] == (2, patches // 16)
    with pytest.raises(ModelConfigError, match="merge_tokens=7 does not divide the 64 patches"):
        image_token_count(MiniGPTv2.typed_config({**OmegaConf.to_container(default.cfg), "merge_tokens": 7}))


@pytest.mark.parametrize("arch,overrides,expected", [
    ("minigpt4", {}, {"llama_proj"}),
    ("minigpt4", {"freeze_qformer": False}, {"llama_proj", "Qformer", "query_tokens"}),
    ("minigpt_v2", {}, {"llama_proj", "llama_model"}),
    ("minigpt_v2", {"freeze_vit": False, "lora_r": 0}, {"llama_proj", "visual_encoder", "ln_vision"}),
])
def test_trainability_follows_the_config(tiny_model: Callable[..., Any], arch: str, overrides: Dict[str, Any],
                                         expected: set) -> None:
    model = tiny_model(arch, **overrides)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == expected
    assert all("lora_" in n for n in trainable if n.startswith("llama_model."))
    frozen_modules = [m for name in ("visual_encoder", "ln_vision", "Qformer")
                      if (m := getattr(model, name)) is not None and not any(p.requires_grad for p in m.parameters())]
    model.train()
    assert all(not m.training for m in frozen_modules), "frozen parts stay in eval mode"


def test_v2_refuses_a_qformer(tiny_weights: Dict[str, str]) -> None:
    from minigpt4.models.connectors import ModelConfigError

    with pytest.raises(ModelConfigError, match="MiniGPT-v2 has no Q-Former"):
        MiniGPTv2.from_config({**_model_keys(tiny_weights), "has_qformer": True})
    assert MiniGPT4.typed_config({"arch": "minigpt4", "model_type": "pretrain_llama2"}).has_qformer is False


def test_vit_init_seed_rebuilds_the_same_frozen_random_tower(tiny_weights: Dict[str, str]) -> None:
    keys = {**_model_keys(tiny_weights), "vit_ckpt": None, "freeze_vit": True}
    with pytest.raises(ModelConfigError, match="model.vit_init_seed=0"):
        MiniGPTv2.from_config(dict(keys))
    towers, trainable, after = [], [], []
    for run_seed, init_seed in ((1, 7), (2, 7), (1, 8)):
        torch.manual_seed(run_seed)  # the run's random state differs; the tower follows vit_init_seed alone
        model = MiniGPTv2.from_config({**keys, "vit_init_seed": init_seed})
        towers.append(model.visual_encoder.state_dict())
        trainable.append(set(model.trainable_state_dict()))
        after.append(torch.rand(1))
    assert torch.equal(after[0], after[2]), "the tower's draws leave the run's random stream alone"
    (a, b, c) = towers
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not any(k.startswith("visual_encoder") for k in trainable[0]), "a frozen tower is not in checkpoints"
