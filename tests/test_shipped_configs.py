"""Every YAML in train_configs/ and eval_configs/ loads into the schema and names only registered parts.

Required weight paths (``???`` in the shipped files) are filled from fixtures — a tiny LLaMA folder for
``model.llama_model`` and small files for the other weights — and the data root comes from a synthetic
data set written by the data tool, as a user would set ``FACEGPT_DATA``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from minigpt4.common.config import ConfigError, load_config
from minigpt4.common.registry import registry

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "train_configs").glob("*.yaml")) + sorted((REPO / "eval_configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"minigpt4_stage2_finetune_gpt4vision.yaml", "minigptv2_finetune_gpt4vision.yaml"} <= names
    assert {"minigpt4_eval.yaml", "minigpt4_llama2_eval.yaml", "minigptv2_eval.yaml", "facegpt_v1_eval.yaml",
            "facegpt_v2_eval.yaml"} <= names


def _fills(problems: list, weights: Path, llama_dir: Path) -> list[str]:
    fills = []
    for p in problems:
        assert "required value is not set" in p.message, f"shipped config has a real problem: {p}"
        value = llama_dir if p.key == "model.llama_model" else weights
        fills.append(f"{p.key}={value}")
    return fills


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_shipped_config_validates(path: Path, tmp_path: Path, tiny_llama_dir: Path, synth_data_root: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#") and (".py" in first_line or "make" in first_line), (
        f"{path.name} must start with a comment giving the command that runs it"
    )
    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    try:
        cfg = load_config(path)
    except ConfigError as err:
        cfg = load_config(path, _fills(err.problems, weights, tiny_llama_dir))
    registry.get_model_class(cfg.model.arch)
    for name, ds in cfg.datasets.items():
        registry.get_builder_class(name)
        for proc in (ds.vis_processor.train, ds.vis_processor.eval, ds.text_processor.train, ds.text_processor.eval):
            if proc is not None:
                registry.get_processor_class(proc.name)
    if path.parent.name == "train_configs":
        assert len(cfg.datasets) >= 1
        registry.get_task_class(cfg.run.task)
        registry.get_runner_class(cfg.run.runner)
        registry.get_lr_scheduler_class(cfg.run.lr_sched)
    else:
        assert cfg.preprocess.vis_processor.eval is not None, "chat takes its image processor from preprocess"
