"""Small stand-ins for the model and datasets, used where the runner / task loop itself is under test.

The end-to-end tests (``test_train_e2e.py``) use the real tiny MiniGPT models and the synthetic face data; these
doubles keep the loop tests fast and let them control what the loss does (equal-size samples, NaN on demand).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from omegaconf import OmegaConf
from torch import nn

from minigpt4.common.config import Config
from minigpt4.common.schema import DatasetConfig, RunConfig
from minigpt4.runners.runner_base import RunnerBase
from minigpt4.tasks.image_text_pretrain import ImageTextPretrainTask


class RegressionDataset(torch.utils.data.Dataset):
    """``n`` items ``{"image": [3,2,2], "target": scalar, "index": i, "skipped": skip_every-based}``."""

    def __init__(self, n: int, seed: int, skip_every: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 2, 2, generator=gen)  # (n, 3, 2, 2)
        weights = torch.linspace(-1.0, 1.0, 12)
        self.y = self.x.reshape(n, 12) @ weights + 0.5  # (n, 12) @ (12,) -> (n,)
        self.skip_every = skip_every

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        skipped = 1 if self.skip_every and i % self.skip_every == 0 else 0
        return {"image": self.x[i], "target": self.y[i], "index": i, "skipped": skipped}

    def collater(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {
            "image": torch.stack([it["image"] for it in items]),  # B x (3, 2, 2) -> (B, 3, 2, 2)
            "target": torch.stack([it["target"] for it in items]),
            "index": [it["index"] for it in items],
            "skipped": sum(it["skipped"] for it in items),
        }


class RegressionModel(nn.Module):
    """Linear regression with a LayerNorm and a frozen block; loss = mean over samples of squared error.

    A per-sample mean composes exactly: the mean over a batch of 8 equals the mean of 8 batch-of-1 losses.
    ``dropout`` makes the loss depend on the torch RNG (resume must restore it). ``nan_at`` lists forward-call
    numbers (0-based) whose loss is NaN; ``seen`` records the sample indices.
    """

    def __init__(self, nan_at: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(12)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(12, 1)
        self.frozen = nn.Linear(12, 12)
        self.frozen.requires_grad_(False)
        self.nan_at = set(nan_at)
        self.calls = 0
        self.seen: List[List[int]] = []

    def forward(self, samples: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        x = samples["image"].reshape(samples["image"].shape[0], 12)  # (B, 3, 2, 2) -> (B, 12)
        pred = self.head(self.dropout(self.norm(x)) + 0.0 * self.frozen(x)).squeeze(-1)  # (B, 1) -> (B,)
        loss = ((pred - samples["target"]) ** 2).mean()
        if self.training:
            self.seen.append(list(samples.get("index", [])))
            if self.calls in self.nan_at:
                loss = loss * float("nan")
            self.calls += 1
        return {"loss": loss}


def make_config(output_dir: Path, datasets: Optional[Dict[str, Dict[str, Any]]] = None, **run: Any) -> Config:
    """A :class:`Config` with a CPU run section (progress bar off) and typed dataset entries."""
    base = {"device": "cpu", "distributed": False, "output_dir": str(output_dir), "job_name": "unit",
            "progress_bar": False, "num_workers": 0, "max_epoch": 2, "iters_per_epoch": 6, "init_lr": 0.05,
            "min_lr": 0.001, "warmup_lr": 0.001, "warmup_steps": 2, "log_freq": 1, "plot_curves": False,
            "run_id": "r0"}
    run_cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), {**base, **run})
    entries = {name: OmegaConf.merge(OmegaConf.structured(DatasetConfig), values)
               for name, values in (datasets or {"a": {"batch_size": 2}}).items()}
    return Config(OmegaConf.create({"run": run_cfg, "datasets": entries, "model": {}}))


def run_double(cfg: Config, splits: Dict[str, Dict[str, Any]], model: Optional[nn.Module] = None,
               seed: int = 0) -> tuple:
    """Build a fresh model (seeded) and train it with :class:`RunnerBase`; returns ``(runner, summary)``."""
    torch.manual_seed(seed)
    model = model if model is not None else RegressionModel()
    runner = RunnerBase(cfg, ImageTextPretrainTask(), model, splits, job_id="job")
    return runner, runner.train()


def trainable(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
