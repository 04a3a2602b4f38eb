"""Merge and export (``python -m minigpt4.tools.export``): the exported folder answers as the checkpoint did.

Tiny MiniGPT-v2 (LoRA) and MiniGPT-4 v1 (Q-Former, no LoRA) are trained a few steps through ``train.main``, exported
through the tool's ``main``, and the exported folder is then read the ways users read it: the chat engine and the
v2 demo with ``--cfg-path DIR/facegpt.yaml`` (same greedy ids as the checkpoint), ``AutoModelForCausalLM`` and
``PeftModel`` (same logits as LoRA on the base LLM), and a training config with ``model.llama_model=DIR/llm``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import train
from train_support import REPO, tiny_options
from minigpt4.common.checkpoint_io import read_weights
from minigpt4.common.config import load_config
from minigpt4.common.registry import registry
from minigpt4.conversation.factory import chat_from_config
from minigpt4.conversation.session import ChatSession
from minigpt4.tools import export

TINY_CFG = {"minigpt_v2": REPO / "train_configs" / "tiny_minigpt_v2.yaml",
            "minigpt4": REPO / "train_configs" / "tiny_minigpt4.yaml"}
QUESTION = "Describe the face."
TEMPLATE = "Face question {} Answer"  # not the tiny preset's: the export must carry the trained prompt format


def _train(arch: str, files: Dict[str, str], data: Path, out: Path, *extra: str) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEGPT_DATA", str(data))
        argv = ["--cfg-path", str(TINY_CFG[arch]), "--options",
                *tiny_options(arch, files, out, "run.max_epoch=1", "run.iters_per_epoch=3", "run.valid_splits=[]",
                              "run.run_id=ex", "run.init_lr=3e-2", *extra)]
        assert train.main(argv) == 0
    return next(out.rglob("ex/checkpoint_0.pth"))


def _export(ckpt: Path, out: Path) -> Path:
    argv = ["--cfg-path", str(ckpt.parent / "config.yaml"), "--options", f"model.ckpt={ckpt}", "--out", str(out)]
    assert export.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def v2(tiny_files: Dict[str, str], train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("export_v2")
    ckpt = _train("minigpt_v2", tiny_files, train_data, root / "run", f"model.prompt_template={TEMPLATE}")
    return {"ckpt": ckpt, "out": _export(ckpt, root / "exported")}


@pytest.fixture(scope="module")
def v1(tiny_files: Dict[str, str], train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("export_v1")
    ckpt = _train("minigpt4", tiny_files, train_data, root / "run")
    return {"ckpt": ckpt, "out": _export(ckpt, root / "exported")}


def _image(data: Path) -> Path:
    return next(p for p in sorted(data.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def _ask(cfg_path: Path, options: List[str], image: Path) -> tuple:
    cfg = load_config(cfg_path, options, check_dataset_paths=False)
    session = ChatSession(chat_from_config(cfg, "cpu"))
    session.load_image(image)
    reply = session.ask(QUESTION, max_new_tokens=10)
    return reply.ids, reply.prompt, reply.text


def _demo_v2(argv: List[str]) -> int:
    spec = importlib.util.spec_from_file_location("demo_v2_command_line", REPO / "demo_v2_command_line.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main(argv)


def test_v2_export_answers_with_the_checkpoints_greedy_ids(v2: Dict[str, Path], train_data: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    lora_b = [v for k, v in read_weights(v2["ckpt"])["model"].items() if "lora_B" in k]
    assert lora_b and any(float(t.abs().max()) > 0 for t in lora_b), "the LoRA trained: the merge changes weights"
    image = _image(train_data)
    expected = _ask(v2["ckpt"].parent / "config.yaml", [f"model.ckpt={v2['ckpt']}"], image)
    got = _ask(v2["out"] / "facegpt.yaml", [], image)
    assert len(expected[0]) > 0 and got[:2] == expected[:2], "same prompt (trained template), same greedy ids"
    assert TEMPLATE.split("{}")[0].strip() in got[1]

    capsys.readouterr()
    assert _demo_v2(["--cfg-path", str(v2["out"] / "facegpt.yaml"), "--image", str(image), "--device", "cpu",
                     "--max-new-tokens", "10", "--format", "jsonl", "--prompt", QUESTION]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == expected[2]


def test_v2_folders_load_with_transformers_and_peft(v2: Dict[str, Path], tiny_files: Dict[str, str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = v2["out"]
    for name in ("llm/config.json", "llm/model.safetensors", "llm/tokenizer.model", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "vision_tower.safetensors", "projection.safetensors",
                 "facegpt.yaml", "README.md"):
        assert (out / name).is_file(), name
    merged = AutoModelForCausalLM.from_pretrained(str(out / "llm")).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_files["llama_model"]).eval()
    base_q = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with_adapter = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    with torch.no_grad():
        a, b = merged(ids).logits, with_adapter(ids).logits  # (1, 8, V)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), float((a - b).abs().max())
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base_q), "LoRA merged into q_proj"
    assert "lora_r: 0" in (out / "facegpt.yaml").read_text()


def test_training_config_continues_from_the_export(v2: Dict[str, Path], train_data: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGPT_DATA", str(train_data))
    out = v2["out"]
    cfg = load_config(TINY_CFG["minigpt_v2"], [f"model.llama_model={out / 'llm'}",
                                               f"model.vit_ckpt={out / 'vision_tower.safetensors'}",
                                               f"model.ckpt={out / 'projection.safetensors'}",
                                               "model.ckpt_partial=True"])
    model = registry.get_model_class(cfg.model.arch).from_config(cfg.model)
    trained = read_weights(v2["ckpt"])["model"]
    assert torch.equal(model.llama_proj.weight, trained["llama_proj.weight"]), "the projection continues"
    exported = read_weights(out / "llm" / "model.safetensors")
    q_key = next(k for k in exported if k.endswith("layers.0.self_attn.q_proj.weight"))
    base_q = model.llama_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(base_q, exported[q_key]), "a fresh LoRA on top of the merged weights"
    assert model.count_parameters()["trainable"] > 0
    lora_b = [p for n, p in model.llama_model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().max()) == 0 for p in lora_b), "the new LoRA starts at zero"


def test_model_card_has_the_training_config_and_statistics(v2: Dict[str, Path]) -> None:
    card = (v2["out"] / "README.md").read_text()
    summary = json.loads((v2["ckpt"].parent / "summary.json").read_text())
    assert f"| final_train_loss | {summary['final_train_loss']} |" in card
    assert TEMPLATE in card and "adapter/" in card and "LoRA (r=4) merged" in card


def test_v1_export_has_no_adapter_and_answers_alike(v1: Dict[str, Path], train_data: Path) -> None:
    out = v1["out"]
    assert not (out / "adapter").exists() and (out / "qformer.pth").is_file()
    assert "no `adapter/`: this model has no LoRA" in (out / "README.md").read_text()
    image = _image(train_data)
    expected = _ask(v1["ckpt"].parent / "config.yaml", [f"model.ckpt={v1['ckpt']}"], image)
    assert len(expected[0]) > 0 and _ask(out / "facegpt.yaml", [], image)[:2] == expected[:2]


def test_moved_folder_is_relocated(v1: Dict[str, Path], train_data: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "facegpt_v1"
    shutil.copytree(v1["out"], moved)
    assert export.main(["--relocate", str(moved)]) == 0
    text = (moved / "facegpt.yaml").read_text()
    assert str(v1["out"]) not in text and str(v1["out"]) not in (moved / "README.md").read_text()
    cfg = load_config(moved / "facegpt.yaml", [], check_dataset_paths=False)
    assert [cfg.model[k] for k in ("llama_model", "vit_ckpt", "q_former_model", "ckpt")] == [
        str(moved / name) for name in ("llm", "vision_tower.safetensors", "qformer.pth", "projection.safetensors")]
    image = _image(train_data)
    assert _ask(moved / "facegpt.yaml", [], image)[:2] == _ask(v1["out"] / "facegpt.yaml", [], image)[:2]


def test_non_empty_out_folder_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    status = export.main(["--cfg-path", str(TINY_CFG["minigpt_v2"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert f"--out {out} exists and is not empty; choose a new folder or add --overwrite" in err
    assert (out / "keep.txt").read_text() == "x"


def test_evaluation_scores_the_export_as_the_checkpoint(v2: Dict[str, Path], train_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation tool reads the export's config (its datasets are the run's) and scores as the checkpoint."""
    from minigpt4.tools import evaluate

    monkeypatch.setenv("FACEGPT_DATA", str(train_data))
    reports = []
    for name, argv in (("ckpt", ["--cfg-path", str(v2["ckpt"].parent / "config.yaml"), "--options",
                                 f"model.ckpt={v2['ckpt']}"]),
                       ("export", ["--cfg-path", str(v2["out"] / "facegpt.yaml")])):
        assert evaluate.main([*argv, "--max-per-section", "3", "--json", str(tmp_path / f"{name}.json")]) == 0
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert reports[0] == reports[1] and reports[0]["sections"], reports


@pytest.mark.slow  # SmolLM2-135M from its .gguf file: 3-4 minutes on 2 busy cores
def test_smollm2_gguf_llm_exports_as_a_plain_hf_folder(tmp_path: Path, train_data: Path) -> None:
    """The demo's LLM is read from a .gguf file (transformers marks it quantized): the export saves plain weights
    and the exported folder chats with the same greedy ids."""
    from minigpt4.models.llm import smollm2_gguf_path

    cfg_path = REPO / "eval_configs" / "demo_smollm2_eval.yaml"
    # untrained: free image tokens (a word-mixture model needs the vocabulary its first stage picks)
    options = [f"model.llama_model={smollm2_gguf_path()}", "model.ckpt=''", "model.image_token_space=free",
               "model.word_group_tokens=0"]
    torch.manual_seed(0)  # the demo's tower is random: the export and the reference build the same one
    assert export.main(["--cfg-path", str(cfg_path), "--options", *options, "--out", str(tmp_path / "smol")]) == 0
    assert (tmp_path / "smol" / "llm" / "tokenizer.json").is_file()
    torch.manual_seed(0)
    image = _image(train_data)
    expected = _ask(cfg_path, options, image)
    assert _ask(tmp_path / "smol" / "facegpt.yaml", [], image)[:2] == expected[:2]


def test_word_mixture_export_carries_the_image_vocabulary_and_word_groups(
        tiny_files: Dict[str, str], train_data: Path, tmp_path: Path) -> None:
    from minigpt4.models.word_mixture import GROUPS_BUFFER, VOCAB_BUFFER

    ckpt = _train("minigpt_v2", tiny_files, train_data, tmp_path / "run", "run.task=image_text_align",
                  "model.image_token_space=word_mixture", "model.word_group_tokens=2")
    out = _export(ckpt, tmp_path / "exported")
    saved = read_weights(ckpt)["model"]
    exported = read_weights(out / export.PROJECTION_FILE)
    assert torch.equal(exported[VOCAB_BUFFER], saved[VOCAB_BUFFER]) and VOCAB_BUFFER in saved
    assert torch.equal(exported[GROUPS_BUFFER], saved[GROUPS_BUFFER]) and saved[GROUPS_BUFFER].shape[0] == 2
    image = _image(train_data)
    expected = _ask(ckpt.parent / "config.yaml", [f"model.ckpt={ckpt}"], image)
    assert _ask(out / "facegpt.yaml", [], image)[:2] == expected[:2]
