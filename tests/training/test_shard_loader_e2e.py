"""``train.py`` on shards: the tiny MiniGPT-v2 trains from shard sets and validates on a separately packed val set.

The documented workflow end to end: ``facegpt-data split`` → ``facegpt-data shards`` (train and val files of each
source into their own shard sets) → ``build_info.shards`` / ``build_info.val_shards`` in ``--options``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import pytest

import train
from minigpt4.common.metrics import read_metrics
from minigpt4.tools import data
from train_support import REPO, tiny_options

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"


def _pack(files, image_root: Path, out: Path) -> Dict:
    assert data.main(["shards", *map(str, files), "--image-root", str(image_root), "--out", str(out),
                      "--shard-size", "200KB"]) == 0
    return json.loads((out / "manifest.json").read_text())


def test_tiny_v2_trains_from_shards_and_validates_on_val_shards(tiny_files: Dict[str, str], train_data: Path,
                                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACEGPT_DATA", raising=False)  # a shards-only machine: ann_path / image_path are not checked
    split = tmp_path / "split"
    assert data.main(["split", "--root", str(train_data), "--out-dir", str(split), "--val-fraction", "0.25"]) == 0
    gpt, share = train_data / "GPT4VisionData" / "Images", train_data / "ShareGPTData" / "Images"
    sets = {"g_train": _pack(sorted(split.glob("gpt4Vision*.train.json")), gpt, tmp_path / "g_train"),
            "g_val": _pack(sorted(split.glob("gpt4Vision*.val.json")), gpt, tmp_path / "g_val"),
            "s_train": _pack(sorted(split.glob("subset_*.train.json")), share, tmp_path / "s_train")}
    spec = {k: str(tmp_path / k / m["pattern"]) for k, m in sets.items()}
    options = tiny_options("minigpt_v2", tiny_files, tmp_path, "run.run_id=shards", "run.max_epoch=1",
                           "run.iters_per_epoch=6", "run.num_workers=1", "datasets.facegpt4vision.split.val_fraction=0",
                           f"datasets.facegpt4vision.build_info.shards={spec['g_train']}",
                           f"datasets.facegpt4vision.build_info.val_shards={spec['g_val']}",
                           f"datasets.sharegpt_face.build_info.shards={spec['s_train']}")
    assert train.main(["--cfg-path", str(TINY_V2), "--options", *options]) == 0
    run_dir = tmp_path / "tiny_minigpt_v2" / "shards"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 6
    assert summary["samples_seen"] == 12 and summary["skipped_images"] == 0
    val = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["type"] == "val"]
    assert val and val[-1]["val_samples"] == sets["g_val"]["records"] > 0
    saved = (run_dir / "config.yaml").read_text()
    assert spec["g_train"] in saved and spec["g_val"] in saved, "the run's config names its shard sets"


def test_facegpt_eval_says_a_shard_streamed_held_out_split_cannot_be_scored(
        tiny_files: Dict[str, str], facegpt_data_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The only held-out split streams from val shards: one line naming it and what to score instead."""
    from minigpt4.tools import evaluate

    train_data = facegpt_data_env  # sharegpt_face still reads its JSON lists (no held-out split there)
    split = tmp_path / "split"
    assert data.main(["split", "--root", str(train_data), "--out-dir", str(split), "--val-fraction", "0.25"]) == 0
    gpt = train_data / "GPT4VisionData" / "Images"
    train_set = _pack(sorted(split.glob("gpt4Vision*.train.json")), gpt, tmp_path / "g_train")
    val_set = _pack(sorted(split.glob("gpt4Vision*.val.json")), gpt, tmp_path / "g_val")
    options = tiny_options("minigpt_v2", tiny_files, tmp_path, "datasets.facegpt4vision.split.val_fraction=0",
                           f"datasets.facegpt4vision.build_info.shards={tmp_path / 'g_train' / train_set['pattern']}",
                           f"datasets.facegpt4vision.build_info.val_shards={tmp_path / 'g_val' / val_set['pattern']}",
                           "datasets.sharegpt_face.split.val_fraction=0")
    capsys.readouterr()
    status = evaluate.main(["--cfg-path", str(TINY_V2), "--options", *options, "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "facegpt4vision.val" in err and "stream from shards" in err and "--data FILE" in err
