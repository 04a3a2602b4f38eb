"""How a run starts: distributed-mode decisions, evaluate-only runs, optional sinks, streaming datasets, bad configs."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Iterator, List

import pytest
import torch
from omegaconf import OmegaConf

from minigpt4.common import dist_utils as du
from minigpt4.common.logger import get_logger
from minigpt4.common.schema import RunConfig
from minigpt4.runners.loaders import ResumableLoader
from train_doubles import RegressionDataset, make_config, run_double


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def captured() -> Iterator[_Capture]:
    handler = _Capture()
    log = get_logger()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(level)


def _run_cfg(**kw: object) -> object:
    return OmegaConf.merge(OmegaConf.structured(RunConfig), {"device": "cpu", **kw})


@pytest.fixture()
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_distributed_true_without_torchrun_says_it_uses_one_process(no_launcher: pytest.MonkeyPatch,
                                                                    captured: _Capture) -> None:
    run = _run_cfg(distributed=True)
    info = du.init_distributed_mode(run)
    assert (info.distributed, info.world_size, run.distributed) == (False, 1, False)
    assert any("training in ONE process" in m and "torchrun --nproc_per_node" in m for m in captured.messages)


def test_distributed_false_is_one_process(no_launcher: pytest.MonkeyPatch, captured: _Capture) -> None:
    info = du.init_distributed_mode(_run_cfg(distributed=False))
    assert not info.distributed and info.device == torch.device("cpu")
    assert any("Not using distributed mode" in m for m in captured.messages)


def test_torchrun_with_distributed_false_is_refused(no_launcher: pytest.MonkeyPatch) -> None:
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="started 2 processes but run.distributed is False"):
        du.init_distributed_mode(_run_cfg(distributed=False))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_device_without_cuda_names_the_fix(no_launcher: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match=r"--options run.device=cpu"):
        du.init_distributed_mode(_run_cfg(device="cuda"))


def test_evaluate_only_reports_validation_loss_without_training(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, evaluate=True, valid_splits=["val"])
    runner, summary = run_double(cfg, {"a": {"train": RegressionDataset(20, 1), "val": RegressionDataset(7, 2)}})
    assert summary["global_step"] == 0 and summary["optimizer_steps"] == 0
    assert summary["last_val_loss"] is not None and runner.unwrapped_model.seen == []
    assert summary["checkpoint_best"] is None and summary["checkpoint_latest"] is None, "evaluation writes no weights"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb installed: would log in")
def test_wandb_log_without_wandb_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"pip install wandb.*run.wandb_log=False"):
        run_double(make_config(tmp_path, wandb_log=True), {"a": {"train": RegressionDataset(20, 1)}})


def test_progress_bar_run_completes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, summary = run_double(make_config(tmp_path, progress_bar=True, max_epoch=1, iters_per_epoch=3),
                            {"a": {"train": RegressionDataset(20, 1)}})
    assert summary["status"] == "completed" and "epoch 1/1" in capsys.readouterr().err


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[dict]:
        return iter({"index": i, "image": torch.zeros(3, 2, 2)} for i in range(self.n))


def test_streaming_dataset_resumes_by_rereading_to_the_position() -> None:
    make = lambda: ResumableLoader("s", _Stream(7), batch_size=2, num_workers=0, seed=0, rank=0,  # noqa: E731
                                   world_size=1)
    loader = make()
    seen = [next(loader)["index"].tolist() for _ in range(4)]
    assert seen == [[0, 1], [2, 3], [4, 5], [0, 1]], "3 full batches per pass, then a new pass"
    state = loader.state()
    again = make()
    again.load_state(state)
    assert next(again)["index"].tolist() == next(loader)["index"].tolist() == [2, 3]


def test_train_py_bad_config_exits_2_with_the_missing_keys(capsys: pytest.CaptureFixture) -> None:
    import train

    repo = Path(__file__).resolve().parents[2]
    assert train.main(["--cfg-path", str(repo / "train_configs" / "tiny_minigpt_v2.yaml")]) == 2
    err = capsys.readouterr().err
    assert "model.llama_model: required value is not set" in err and "fix: --options model.vit_ckpt=" in err
