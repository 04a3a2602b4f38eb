"""LLM loading errors, LoRA options, and the config checks of model construction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from minigpt4.models import MiniGPTv2
from minigpt4.models.llm import LLMLoadError, load_llm, resolve_llm_path
from minigpt4.models.minigpt_base import ModelConfigError, PromptError

FIX = r"--options model.llama_model=/path/to/llm"


@pytest.mark.parametrize("value,problem", [
    (None, "no language model is set"),
    ("", "no language model is set"),
    ("please set this value to the path of vicuna model", "this is the preset's placeholder, not a path"),
    ("/no/such/llama", "the folder /no/such/llama does not exist"),
    ("/no/such/model.gguf", "the .gguf file /no/such/model.gguf does not exist"),
])
def test_llm_path_errors_name_the_key_and_the_fix(value: Any, problem: str) -> None:
    with pytest.raises(LLMLoadError) as err:
        resolve_llm_path(value)
    message = str(err.value)
    assert message.startswith(f"model.llama_model={value!r}: {problem}")
    assert "Hugging Face LLaMA folder (config.json, weights, tokenizer.model)" in message and FIX in message


def test_folder_without_config_and_plain_file(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    with pytest.raises(LLMLoadError, match=r"has no config.json \(is it the model folder itself\?\)"):
        resolve_llm_path(str(tmp_path / "weights"))
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(LLMLoadError, match=r"is a file but not a .gguf file"):
        resolve_llm_path(str(tmp_path / "model.bin"))


def test_folder_and_gguf_paths_resolve(tiny_llama_dir: Path, tmp_path: Path) -> None:
    assert resolve_llm_path(str(tiny_llama_dir)) == (tiny_llama_dir, None)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_llm_path(str(tmp_path / "m.gguf")) == (tmp_path, "m.gguf")


def test_unset_llm_in_preset_is_reported_by_from_config(tiny_config: Callable[..., Any]) -> None:
    cfg = tiny_config("minigpt_v2")
    cfg.llama_model = "???"
    with pytest.raises(LLMLoadError, match=r"model.llama_model='\?\?\?': the preset leaves it unset.*" + FIX):
        MiniGPTv2.from_config(cfg)


def test_lora_options_come_from_config(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", lora_r=2, lora_alpha=6, lora_dropout=0.1,
                       lora_target_modules=["q_proj", "k_proj", "v_proj"])
    layer = model.llama_model.get_base_model().model.layers[0].self_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        proj = getattr(layer, name)
        assert proj.lora_A["default"].weight.shape == (2, 64)
        assert proj.scaling["default"] == 3.0 and proj.lora_dropout["default"].p == 0.1
    assert not hasattr(layer.o_proj, "lora_A")
    assert model.count_parameters()["trainable"] == 64 * 128 + 64 + 2 * 3 * 2 * (64 + 64)


def test_ln_vision_is_fresh_and_frozen_without_qformer(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2")
    ln = model.ln_vision
    assert torch.equal(ln.weight, torch.ones(32)) and torch.equal(ln.bias, torch.zeros(32)) and ln.eps == 1e-5
    assert not ln.weight.requires_grad and not ln.training
    with_qformer = tiny_model("minigpt4")  # BLIP-2's file provides ln_vision
    blip2 = torch.load(with_qformer.weight_sources["ln_vision."], weights_only=True)["model"]
    assert torch.equal(with_qformer.ln_vision.weight, blip2["ln_vision.weight"])


def test_construction_refuses_impossible_configs(tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match=r"model.q_former_model is null but model.freeze_qformer is True"):
        tiny_model("minigpt4", q_former_model=None)
    with pytest.raises(ModelConfigError, match=r"MiniGPT-v2 has no Q-Former: set model.has_qformer: False"):
        tiny_model("minigpt_v2", has_qformer=True)
    with pytest.raises(ModelConfigError, match=r"model.prompt_path='nowhere.txt': no such file"):
        tiny_model("minigpt4", prompt_path="nowhere.txt")
    prompts = tmp_path / "p.txt"
    prompts.write_text("<Img><ImageHere></Img> Describe.\n")
    with pytest.raises(PromptError, match=r"model.prompt_template='' has no '\{\}' where the instruction goes"):
        tiny_model("minigpt4", prompt_path=str(prompts), prompt_template="")


def test_prompt_path_resolves_under_the_package(tiny_model: Callable[..., Any]) -> None:
    """Upstream's ``prompts/alignment.txt`` (relative) is found under minigpt4/ as well as from the working dir."""
    model = tiny_model("minigpt4", prompt_path="prompts/alignment.txt", prompt_template="###Human: {} ###Assistant: ")
    assert len(model.prompt_list) == 4
    assert model.prompt_list[0] == "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "
