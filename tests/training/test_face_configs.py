"""The two shipped face configs: required paths reported, every component built (full-size model on ``meta``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import pytest
from transformers import LlamaConfig

from train_support import REPO
from minigpt4.common.config import ConfigError, load_config
from minigpt4.common.optims import build_lr_scheduler, build_optimizer
from minigpt4.common.registry import registry
from minigpt4.runners.settings import check_run_settings
from minigpt4.tasks import setup_task
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask

SECTIONS = ["Facial Characteristics Long", "Interpretative Generalization", "Factual Generalization",
            "Facial Expression due to contextual cues", "Feature by Feature Description", "Human or not"]
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                vocab_size=32000)
CASES = {
    # file: (required weight keys, trainable values on the 7B layout)
    "minigptv2_finetune_gpt4vision.yaml": (["model.ckpt", "model.llama_model", "model.vit_ckpt"],
                                           32 * 2 * (4096 * 64 + 64 * 4096) + 5632 * 4096 + 4096),
    "minigpt4_stage2_finetune_gpt4vision.yaml": (["model.ckpt", "model.llama_model", "model.q_former_model",
                                                  "model.vit_ckpt"], 768 * 4096 + 4096),
}


def _fake_paths(tmp: Path, llama_dir: Path, keys: List[str]) -> List[str]:
    out = []
    for key in keys:
        if key == "model.llama_model":
            out.append(f"{key}={llama_dir}")
        else:
            fake = tmp / (key.split(".")[1] + ".pth")
            fake.write_bytes(b"")
            out.append(f"{key}={fake}")
    return out


def _all_sections_file(tmp: Path, data_root: Path) -> Path:
    """A FaceGPT4Vision file holding every section the configs select (the synthetic set has only some of them)."""
    images = sorted((data_root / "GPT4VisionData" / "Images").rglob("*.jpg"))
    rel = [str(p.relative_to(data_root / "GPT4VisionData" / "Images")) for p in images]
    sections = {name: [{"id": f"{k}-{i}", "image": rel[(k + i) % len(rel)], "conversations": [
        {"from": "human", "value": f"<image>\n{name}: describe the face."},
        {"from": "gpt", "value": "An adult face, calm, looking at the camera."}]} for i in range(2)]
        for k, name in enumerate(SECTIONS + ["Race"])}
    sections["Pre-Prompt"] = [{"id": "p0", "prompt": "You describe faces."}]
    path = tmp / "sections.json"
    path.write_text(json.dumps(sections))
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_face_config_validates_and_builds_every_component(name: str, tmp_path: Path, tiny_llama_dir: Path,
                                                          facegpt_data_env: Path) -> None:
    required, trainable_values = CASES[name]
    path = REPO / "train_configs" / name
    assert path.read_text().splitlines()[0].startswith("# FACEGPT_DATA=") and "train.py" in path.read_text()[:300]
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert sorted(p.key for p in err.value.problems) == required, str(err.value)
    assert all("required value is not set" in p.message for p in err.value.problems)
    ann = _all_sections_file(tmp_path, facegpt_data_env)
    cfg = load_config(path, _fake_paths(tmp_path, tiny_llama_dir, required)
                      + [f"datasets.facegpt4vision.build_info.ann_path={ann}"])

    check_run_settings(cfg.run)
    assert (cfg.run.accum_grad_iters, cfg.run.init_lr) == ((8, 3e-5) if "v2" in name else (1, 3e-5))
    task = setup_task(cfg)
    assert isinstance(task, ImageTextPretrainTask)
    datasets = task.build_datasets(cfg)
    assert sorted(datasets) == ["facegpt4vision", "sharegpt_face"]
    assert list(cfg.datasets.facegpt4vision.sections) == SECTIONS
    face = datasets["facegpt4vision"]["train"]
    assert len(face) == 12 and {face[i]["section"] for i in range(len(face))} == set(SECTIONS), "Race left out"

    model = registry.get_model_class(cfg.model.arch).build_on_meta(cfg.model, LlamaConfig(**LLAMA_7B))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable_values
    optimizer = build_optimizer(model, cfg.run)
    schedule = build_lr_scheduler(cfg.run, optimizer, cfg.run.iters_per_epoch)
    total = cfg.run.max_epoch * cfg.run.iters_per_epoch
    assert schedule.lr_at(0, 0) == pytest.approx(cfg.run.warmup_lr)
    last_epoch, last_step = divmod(total - 1, cfg.run.iters_per_epoch)
    end = (cfg.run.init_lr - cfg.run.min_lr) * 0.5 * (1 + math.cos(math.pi * (total - 1) / total)) + cfg.run.min_lr
    assert schedule.lr_at(last_epoch, last_step) == pytest.approx(end)
    registry.get_runner_class(cfg.run.runner)


def test_face_config_schedules_match_the_fork() -> None:
    from omegaconf import OmegaConf

    v2 = OmegaConf.load(REPO / "train_configs" / "minigptv2_finetune_gpt4vision.yaml")
    got: Dict[str, object] = {k: v2.run[k] for k in ("max_epoch", "iters_per_epoch", "accum_grad_iters", "num_workers",
                                                     "warmup_steps", "min_lr")}
    assert got == {"max_epoch": 200, "iters_per_epoch": 640, "accum_grad_iters": 8, "num_workers": 1,
                   "warmup_steps": 1000, "min_lr": 1e-6}
    assert (v2.model.max_txt_len, v2.model.lora_r, v2.model.lora_alpha, v2.model.image_size) == (3072, 64, 16, 448)
    assert v2.model.use_grad_checkpoint is True
    assert all(ds.batch_size == 1 for ds in v2.datasets.values())
