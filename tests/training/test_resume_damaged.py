"""Resume survives a damaged checkpoint: the pair checkpoint_latest.json names is verified before use.

A real tiny MiniGPT-v2 run saves two pairs (mid-epoch after 2 iterations, end of epoch after 4). Each test damages
the newest pair the way disks and copies do (truncated, zero bytes, garbage, state file deleted), resumes with
``run.resume_ckpt_path=auto`` and checks that the run continued from the older pair (one warning line names the
damaged file) and ended with the weights of the uninterrupted run. With no complete pair left, one line says so.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import train
from train_support import REPO, tiny_options
from minigpt4.runners import checkpointing as ck

TINY_V2 = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
RUN_ID = "r"


def _options(files: Dict[str, str], out: Path, *extra: str) -> List[str]:
    return tiny_options("minigpt_v2", files, out, "run.max_epoch=1", "run.iters_per_epoch=4",
                        "run.save_every_iters=2", "run.keep_last_k=3", "run.valid_splits=[]",
                        "run.deterministic=True", f"run.run_id={RUN_ID}", *extra)


@pytest.fixture(scope="module")
def finished(tiny_files: Dict[str, str], train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of an uninterrupted 4-iteration run (pairs after iteration 2 and at the epoch end)."""
    out = tmp_path_factory.mktemp("resume_base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEGPT_DATA", str(train_data))
        assert train.main(["--cfg-path", str(TINY_V2), "--options", *_options(tiny_files, out)]) == 0
    return out


def _weights(path: Path) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _damage(path: Path, fault: str) -> None:
    data = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif fault == "zero_bytes":
        path.write_bytes(b"")
    elif fault == "garbage":
        path.write_bytes(bytes((i * 131 + 7) % 256 for i in range(len(data))))
    elif fault == "deleted":
        path.unlink()


@pytest.mark.parametrize("fault, victim", [("truncated", "checkpoint_0.pth"), ("zero_bytes", "trainer_state_0.pt"),
                                           ("garbage", "checkpoint_0.pth"), ("deleted", "trainer_state_0.pt")])
def test_damaged_newest_pair_resumes_from_the_older_one(finished: Path, tiny_files: Dict[str, str],
                                                        facegpt_data_env: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture, fault: str,
                                                        victim: str) -> None:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    run_dir = tmp_path / "tiny_minigpt_v2" / RUN_ID
    assert json.loads((run_dir / ck.LATEST).read_text())["weights"] == "checkpoint_0.pth"
    _damage(run_dir / victim, fault)
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        status = train.main(["--cfg-path", str(TINY_V2), "--options",
                             *_options(tiny_files, tmp_path, "run.resume_ckpt_path=auto")])
    assert status == 0
    warnings = [r.getMessage() for r in caplog.records if "cannot resume from" in r.getMessage()]
    assert len(warnings) == 1 and victim in warnings[0] and "checkpoint_0_000002.pth" in warnings[0], warnings
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint_0_000002.pth") and summary["global_step"] == 4
    again, before = _weights(run_dir / "checkpoint_0.pth"), _weights(finished / "tiny_minigpt_v2" / RUN_ID /
                                                                      "checkpoint_0.pth")
    assert again.keys() == before.keys()
    assert all(torch.equal(again[k], before[k]) for k in before), "continued from iteration 2 to the same weights"


def test_no_complete_pair_left_is_one_line(finished: Path, tmp_path: Path) -> None:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    run_dir = tmp_path / "tiny_minigpt_v2" / RUN_ID
    _damage(run_dir / "checkpoint_0.pth", "truncated")
    _damage(run_dir / "checkpoint_0_000002.pth", "zero_bytes")
    with pytest.raises(ck.ResumeError) as info:
        ck.resolve_resume("auto", tmp_path / "tiny_minigpt_v2", RUN_ID)
    text = str(info.value)
    assert "\n" not in text and "no complete checkpoint pair left" in text and isinstance(info.value, ValueError)
    assert "checkpoint_0.pth (set by run.resume_ckpt_path) is truncated or damaged" in text
    assert "checkpoint_0_000002.pth (set by run.resume_ckpt_path) is empty (0 bytes)" in text


def test_explicit_damaged_file_falls_back_within_its_folder(finished: Path, tmp_path: Path) -> None:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    run_dir = tmp_path / "tiny_minigpt_v2" / RUN_ID
    _damage(run_dir / "trainer_state_0.pt", "truncated")
    target = ck.resolve_resume(str(run_dir / "checkpoint_0.pth"), tmp_path, None)
    assert target.weights.name == "checkpoint_0_000002.pth" and target.trainer_state.name == "trainer_state_0_000002.pt"
    by_folder = ck.resolve_resume(str(run_dir), tmp_path, None)
    assert by_folder.weights == target.weights and by_folder.run_dir == run_dir
    # a pair whose two files come from different saves is not complete either
    shutil.copy(run_dir / "trainer_state_0_000002.pt", run_dir / "trainer_state_0.pt")
    problem = ck.pair_problem(run_dir, ck.pair_names(0, None))
    assert problem is not None and "come from different saves" in problem
