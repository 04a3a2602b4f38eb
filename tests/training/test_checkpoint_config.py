"""Self-describing checkpoints: chat reads the model section (LoRA rank, prompt template, ...) a run saved.

A tiny MiniGPT-v2 is trained a few steps with a non-default prompt template and LoRA rank; the demo then chats with
only ``model.ckpt``, ``model.llama_model`` and ``model.vit_ckpt`` given and must answer exactly as a chat built
from the training config does. A key that contradicts the checkpoint is an error naming both values.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import train
from train_support import REPO, tiny_options
from minigpt4.common.checkpoint_io import atomic_torch_save
from minigpt4.common.config import ConfigError, load_config
from minigpt4.conversation.factory import chat_from_config
from minigpt4.conversation.session import ChatSession

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
TINY_EVAL = REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml"
TEMPLATE = "Face question {} Answer"  # not the tiny preset's '[INST] {} [/INST]'
LORA_R = 6  # not the tiny preset's 4
QUESTION = "Describe the face."


@pytest.fixture(scope="module")
def trained(tiny_files: Dict[str, str], train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoint_0.pth of a 3-step tiny v2 run with TEMPLATE and LORA_R."""
    out = tmp_path_factory.mktemp("ckcfg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEGPT_DATA", str(train_data))
        argv = ["--cfg-path", str(TINY_V2), "--options",
                *tiny_options("minigpt_v2", tiny_files, out, "run.max_epoch=1", "run.iters_per_epoch=3",
                              "run.valid_splits=[]", "run.run_id=ck", "run.init_lr=3e-2", f"model.lora_r={LORA_R}",
                              f"model.lora_alpha={2 * LORA_R}", f"model.prompt_template={TEMPLATE}")]
        assert train.main(argv) == 0
    return out / "tiny_minigpt_v2" / "ck" / "checkpoint_0.pth"


def _image(train_data: Path) -> Path:
    return next(p for p in sorted(train_data.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def _demo_main(argv: List[str]) -> int:
    spec = importlib.util.spec_from_file_location("demo_v2_command_line", REPO / "demo_v2_command_line.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.main(argv)


def _three(files: Dict[str, str], ckpt: Path) -> List[str]:
    return [f"model.ckpt={ckpt}", f"model.llama_model={files['llama_model']}", f"model.vit_ckpt={files['vit_ckpt']}"]


def test_chat_with_only_paths_answers_as_the_training_config(trained: Path, tiny_files: Dict[str, str],
                                                             train_data: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEGPT_DATA", str(train_data))
    image = _image(train_data)
    stock = load_config(TINY_EVAL, _three(tiny_files, trained), checkpoint_config=False)
    assert stock.model.lora_r != LORA_R and stock.model.prompt_template != TEMPLATE, "the eval YAML alone differs"

    # the demo's default eval config (eval_configs/minigptv2_eval.yaml, no --cfg-path); its 8-bit LLM
    # (low_resource: True) needs CUDA, so this CPU test turns that runtime setting off
    monkeypatch.chdir(REPO)
    argv = ["--options", *_three(tiny_files, trained), "model.low_resource=False", "--image", str(image),
            "--device", "cpu", "--max-new-tokens", "8", "--format", "jsonl", "--prompt", QUESTION]
    assert _demo_main(argv) == 0
    answer = json.loads(capsys.readouterr().out)["answer"]

    training_cfg = load_config(trained.parent / "config.yaml", [f"model.ckpt={trained}"], checkpoint_config=False)
    session = ChatSession(chat_from_config(training_cfg, "cpu"))
    session.load_image(image)
    expected = session.ask(QUESTION, max_new_tokens=8)
    assert answer == expected.text and len(expected.ids) > 0

    demo_cfg = load_config(REPO / "eval_configs" / "minigptv2_eval.yaml",
                           _three(tiny_files, trained) + ["model.low_resource=False"], check_dataset_paths=False)
    demo_session = ChatSession(chat_from_config(demo_cfg, "cpu"))
    demo_session.load_image(image)
    reply = demo_session.ask(QUESTION, max_new_tokens=8)
    assert reply.ids == expected.ids and reply.prompt == expected.prompt, "same prompt, same generated ids"
    assert TEMPLATE.split("{}")[0].strip() in reply.prompt


def test_default_demo_config_reads_the_checkpoint(trained: Path, tiny_files: Dict[str, str]) -> None:
    """The demo's default eval config restates nothing the checkpoint owns (low_resource: 8-bit needs CUDA)."""
    cfg = load_config(REPO / "eval_configs" / "minigptv2_eval.yaml",
                      _three(tiny_files, trained) + ["model.low_resource=False"], check_dataset_paths=False)
    assert (cfg.model.model_type, cfg.model.lora_r, cfg.model.prompt_template) == ("tiny", LORA_R, TEMPLATE)
    assert cfg.model.image_size == 224 and cfg.preprocess.vis_processor.eval.image_size == 224


def test_contradicting_key_names_both_values(trained: Path, tiny_files: Dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(TINY_EVAL, _three(tiny_files, trained) + ["model.lora_r=4"])
    text = str(info.value)
    assert f"--options sets model.lora_r=4 but checkpoint {trained} was trained with {LORA_R}" in text
    assert f"model.lora_r={LORA_R}" in text
    yaml = tmp_path / "x.yaml"
    yaml.write_text(TINY_EVAL.read_text().replace("  ckpt: \"\"", "  ckpt: \"\"\n  prompt_template: '[INST] {} [/INST]'"))
    with pytest.raises(ConfigError, match=rf"{yaml} sets model.prompt_template='\[INST\] {{}} \[/INST\]' but "
                                          rf"checkpoint .* was trained with 'Face question"):
        load_config(yaml, _three(tiny_files, trained))
    with pytest.raises(ConfigError, match=rf"{TINY_EVAL} sets model.freeze_vit=False but checkpoint .* was trained "
                                          "with True"):
        load_config(TINY_EVAL, _three(tiny_files, trained))  # its random-tower setting does not fit this checkpoint
    same = load_config(TINY_EVAL, _three(tiny_files, trained) + [f"model.lora_r={LORA_R}", "model.low_resource=False",
                                                                  "model.max_context_len=100", "model.freeze_vit=True"])
    assert same.model.max_context_len == 100, "equal values, runtime keys and paths are no contradiction"


def test_checkpoint_without_config_keeps_the_yaml(tiny_files: Dict[str, str], tmp_path: Path) -> None:
    """Released upstream checkpoints carry no config: the eval YAML decides, as before."""
    plain = atomic_torch_save({"model": {"llama_proj.weight": torch.zeros(2, 2)}}, tmp_path / "released.pth")
    cfg = load_config(TINY_EVAL, _three(tiny_files, plain))
    assert cfg.model.lora_r == 4 and cfg.model.prompt_template == "[INST] {} [/INST]"
    released = load_config(REPO / "eval_configs" / "minigptv2_eval.yaml", _three(tiny_files, plain),
                           check_dataset_paths=False)
    model = released.model
    assert (model.model_type, model.lora_r, model.lora_alpha, model.prompt_template, model.end_sym, model.image_size) \
        == ("pretrain", 64, 16, "[INST] {} [/INST]", "</s>", 448), "upstream's MiniGPT-v2 eval settings"


def test_damaged_ckpt_is_one_line_naming_the_key(tiny_files: Dict[str, str], tmp_path: Path) -> None:
    from minigpt4.common.checkpoint_io import WeightsFileError
    from minigpt4.common.registry import registry

    bad = tmp_path / "checkpoint_3.pth"
    atomic_torch_save({"model": {"w": torch.randn(32, 32)}, "config": {"model": {}}}, bad)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(WeightsFileError, match=r"checkpoint_3\.pth \(set by model\.ckpt\) is truncated or damaged"):
        load_config(TINY_EVAL, [f"model.ckpt={bad}", f"model.llama_model={tiny_files['llama_model']}"])
    bad.write_bytes(b"")  # an empty stand-in passes the config check; loading the model names the fault
    cfg = load_config(TINY_EVAL, [f"model.ckpt={bad}", f"model.llama_model={tiny_files['llama_model']}"])
    with pytest.raises(WeightsFileError, match=r"checkpoint_3\.pth \(set by model\.ckpt\) is empty \(0 bytes\)"):
        registry.get_model_class(cfg.model.arch).from_config(cfg.model)


def test_training_config_is_not_overridden_by_its_starting_checkpoint(trained: Path, tiny_files: Dict[str, str],
                                                                      facegpt_data_env: Path, tmp_path: Path) -> None:
    """A run that starts from a FaceGPT checkpoint may change its settings: train configs do not read it."""
    cfg = load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, f"model.ckpt={trained}",
                                            "model.ckpt_partial=True"))
    assert cfg.model.lora_r == 4 and cfg.model.prompt_template == "[INST] {} [/INST]"
    evaluated = load_config(TINY_V2, tiny_options("minigpt_v2", tiny_files, tmp_path, f"model.ckpt={trained}"),
                            checkpoint_config=True)  # what the evaluation tool asks for
    assert (evaluated.model.lora_r, evaluated.model.prompt_template) == (LORA_R, TEMPLATE)


def test_demo_reports_a_truncated_ckpt_in_one_line(trained: Path, tiny_files: Dict[str, str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "checkpoint_0.pth"
    bad.write_bytes(trained.read_bytes()[:4096])
    monkeypatch.chdir(REPO)
    status = _demo_main(["--options", *_three(tiny_files, bad), "model.low_resource=False", "--device", "cpu",
                         "--image", str(REPO / "README.md"), "--prompt", QUESTION])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err, err
    assert f"{bad} (set by model.ckpt) is truncated or damaged (4096 bytes" in err[-1] and "Traceback" not in err[-1]
