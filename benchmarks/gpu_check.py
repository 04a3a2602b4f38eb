"""On a CUDA machine: does FaceGPT work at full size, how fast, and what does the precision policy do.

Three sections (``--sections``, all by default):

**precision** — for each (config, ``run.precision``) a few iterations through ``train.py``'s own path (task,
runner, train loop): the autocast dtype seen inside the LLM forward and the vision-tower forward (forward pre-hooks
on ``llama_model`` and ``visual_encoder``), whether a GradScaler exists, the storage dtype of the frozen LLM and
tower weights, the median step time and the peak memory.

* tiny MiniGPT-v2 (``train_configs/tiny_minigpt_v2.yaml``; tiny weights written on the fly, frozen weights
  declared half as in the full-size presets): always;
* full size (``train_configs/minigptv2_finetune_gpt4vision.yaml`` by default, ``--full-cfg``) when
  ``--llama-model`` and ``--vit-ckpt`` (or ``FACEGPT_LLAMA_MODEL`` / ``FACEGPT_VIT_CKPT``) are given;
  ``--ckpt`` / ``FACEGPT_CKPT`` optional. Data: ``FACEGPT_DATA`` when set, else a synthetic face set.

**acceptance** — MiniGPT-v2 at the real dimensions with random weights (EVA-ViT-g at 448, LLaMA-2-7B sizes,
LoRA r=64 on q/v, bf16): a random LLM folder and EVA file are written once (about 15 GB, ``--workdir``) and built
through ``from_config`` like users' weights. Training steps (AdamW on the trainable weights, under the run's bf16
policy) at batch 1 and 4 of 1024 tokens each (256 of them image embeddings), without and with LLM activation
checkpointing, and the same with the LLM in 4-bit (``model.llm_quantization: 4bit``, NF4). Per row: median step
time, tokens/s, model FLOPs of one step (``torch.utils.flop_counter`` on the step without checkpointing:
recomputation is not counted, frozen weights get no weight gradients) and model FLOPs utilisation against the
GPU's bf16 dense peak (table below by device name, or ``--peak-tflops``), peak memory, the autocast dtype seen
inside the LLM and tower forwards and whether a GradScaler is used (checked: bf16, none). Then greedy batched
generation (the model's ``generate_ids``, 64 new tokens, stop rules off) at batch 1 and 8: tokens/s. Sized to
finish within 8 minutes on one H100 (most of it writing and loading the random 7B weights; not yet timed on one);
``--tiny`` runs both sections on CPU at tiny sizes (this script's test).

**cuda-tests** — the test suite's CUDA-only tests (``pytest -k cuda``, slow ones included: autocast inside the
forwards on CUDA, FSDP2 over NCCL in bf16 against DDP, fp16 with the sharded GradScaler), which CPU CI skips.

    python benchmarks/gpu_check.py --out gpu_check.json          # CUDA: both sections
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json  # CPU, tiny, about a minute
    python benchmarks/gpu_check.py --llama-model /models/Llama-2-7b-chat-hf --vit-ckpt /models/eva_vit_g.pth

``--device cpu`` runs the precision section on CPU (a dry run). Exit status 1 when an acceptance check fails,
2 without a CUDA device (unless ``--tiny`` or ``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
FULL_CFG = REPO / "train_configs" / "minigptv2_finetune_gpt4vision.yaml"
#: FaceGPT4Vision sections the synthetic data set holds (the full config selects some it lacks)
SYNTH_SECTIONS = ["Facial Characteristics Long", "Facial Expression due to contextual cues",
                  "Feature by Feature Description", "Human or not"]


PRECISIONS_DEFAULT = ["auto", "bf16", "fp16", "fp32"]


@dataclass
class Result:
    """One measured run."""

    label: str
    requested: str
    policy: str
    llm_autocast: str
    vision_autocast: str
    grad_scaler: bool
    llm_storage: str
    vision_storage: str
    step_s: float
    peak_mib: float
    loss: Optional[float]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS_DEFAULT),
                        choices=["auto", "bf16", "fp16", "fp32"], help="run.precision values to measure")
    parser.add_argument("--steps", type=int, default=6, help="training iterations per run (first one not timed)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--full-cfg", type=Path, default=FULL_CFG, help="full-size train config")
    parser.add_argument("--llama-model", default=os.environ.get("FACEGPT_LLAMA_MODEL"),
                        help="LLM folder of the full-size config (env FACEGPT_LLAMA_MODEL)")
    parser.add_argument("--vit-ckpt", default=os.environ.get("FACEGPT_VIT_CKPT"),
                        help="eva_vit_g.pth of the full-size config (env FACEGPT_VIT_CKPT)")
    parser.add_argument("--ckpt", default=os.environ.get("FACEGPT_CKPT"),
                        help="optional MiniGPT-v2 / FaceGPT checkpoint for the full-size config (env FACEGPT_CKPT)")
    parser.add_argument("--full-precisions", nargs="+", default=["auto"], choices=["auto", "bf16", "fp16", "fp32"],
                        help="run.precision values for the full-size config (each loads the LLM again)")
    parser.add_argument("--json", type=Path, default=None, help="also write the precision rows here as JSON")
    parser.add_argument("--tiny", action="store_true",
                        help="everything on CPU at tiny sizes (the test of this script): precision checks in bf16, "
                             "the acceptance benchmark with the tiny model")
    parser.add_argument("--sections", nargs="+", default=["precision", "acceptance", "cuda-tests"],
                        choices=["precision", "acceptance", "cuda-tests"], help="what to run (default: all)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's bf16 dense peak in TFLOPs for MFU (default: from the device name)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the random weights (full size: about 15 GB; default: the temp folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the whole report here as JSON")
    args = parser.parse_args(argv)
    if args.tiny and args.precisions == PRECISIONS_DEFAULT:
        args.precisions, args.steps = ["bf16"], min(args.steps, 2)
    return args


def _hooks(model: Any, device_type: str) -> Dict[str, List[Tuple[bool, torch.dtype]]]:
    """Forward pre-hooks recording (autocast enabled, autocast dtype) inside the LLM and the vision tower."""
    seen: Dict[str, List[Tuple[bool, torch.dtype]]] = {"llm": [], "vision": []}

    def hook(name: str):
        def record(module: Any, args: Any) -> None:
            if model.training:  # training iterations only
                seen[name].append((torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)))
        return record

    model.llama_model.register_forward_pre_hook(hook("llm"))
    model.visual_encoder.register_forward_pre_hook(hook("vision"))
    return seen


def _describe(states: List[Tuple[bool, torch.dtype]]) -> str:
    names = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    kinds = sorted({names.get(dtype, str(dtype)) if enabled else "off" for enabled, dtype in states})
    return "/".join(kinds) if kinds else "not called"


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def measure(label: str, cfg_path: Path, options: List[str], precision: str, device: str, steps: int,
            out: Path) -> Result:
    """Train ``steps`` iterations of ``cfg_path`` with ``run.precision=precision``; what the policy did."""
    from minigpt4.common.config import load_config
    from minigpt4.common.metrics import read_metrics
    from minigpt4.runners.launch import build_runner

    run_id = f"{label}_{precision}"
    opts = options + [f"run.precision={precision}", f"run.device={device}", "run.distributed=False",
                      "run.max_epoch=1", f"run.iters_per_epoch={steps}", "run.valid_splits=[]", "run.log_freq=1",
                      "run.progress_bar=False", "run.plot_curves=False", f"run.output_dir={out}",
                      f"run.run_id={run_id}", "run.num_workers=2"]
    cfg = load_config(cfg_path, opts)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    runner = build_runner(cfg)
    model = runner.unwrapped_model
    seen = _hooks(model, torch.device(device).type)
    summary = runner.train()
    records = [r for r in read_metrics(Path(summary["run_dir"]) / "metrics.jsonl") if r.get("type") == "train"]
    rates = [r["it_per_s"] for r in records[1:] if r.get("it_per_s")]
    qkv = model.visual_encoder.blocks[0].attn.qkv.weight
    result = Result(label, precision, str(runner.policy), _describe(seen["llm"]), _describe(seen["vision"]),
                    runner.scaler is not None, _dtype_name(model.llama_model.get_input_embeddings().weight),
                    _dtype_name(qkv), 1.0 / statistics.median(rates) if rates else float("nan"),
                    float(summary["peak_memory_mb"]), summary.get("final_train_loss"))
    del runner, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def _data_root(tmp: Path) -> Path:
    """``FACEGPT_DATA`` when set, else a synthetic face set written under ``tmp``."""
    if os.environ.get("FACEGPT_DATA"):
        return Path(os.environ["FACEGPT_DATA"])
    from minigpt4.tools import data

    root = tmp / "data"
    if data.main(["synth", "--out", str(root), "--n", "24", "--seed", "0"]) != 0:
        raise RuntimeError("the data tool could not write the synthetic face set")
    os.environ["FACEGPT_DATA"] = str(root)
    return root


def tiny_options(tmp: Path) -> List[str]:
    """Tiny weights written under ``tmp``; frozen weights declared half as in the full-size presets."""
    from minigpt4.tools.tiny_weights import write_all

    paths = write_all(tmp / "tiny")
    return [f"model.llama_model={paths['model.llama_model']}", f"model.vit_ckpt={paths['model.vit_ckpt']}",
            "model.llm_precision=fp16", "model.vit_precision=fp16"]


def full_options(args: argparse.Namespace, synthetic: bool) -> List[str]:
    """Weight paths of the full-size config, and the synthetic set's sections when the data is synthetic."""
    opts = [f"model.llama_model={args.llama_model}", f"model.vit_ckpt={args.vit_ckpt}",
            f"model.ckpt={args.ckpt}" if args.ckpt else "model.ckpt=null"]
    if synthetic:
        opts.append("datasets.facegpt4vision.sections=[" + ",".join(f"'{s}'" for s in SYNTH_SECTIONS) + "]")
    return opts


def format_table(results: List[Result]) -> str:
    """The results as an aligned text table."""
    header = ("config", "run.precision", "policy", "LLM autocast", "vision autocast", "GradScaler", "LLM stored",
              "vision stored", "step s", "peak MiB", "loss")
    rows = [header] + [(r.label, r.requested, r.policy, r.llm_autocast, r.vision_autocast,
                        "yes" if r.grad_scaler else "no", r.llm_storage, r.vision_storage, f"{r.step_s:.3f}",
                        f"{r.peak_mib:.0f}", "n/a" if r.loss is None else f"{r.loss:.4f}") for r in results]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows)


# ============================================================================ acceptance benchmark (full size)
#: bf16 dense peak TFLOPs by device name (lower-case substring, first match wins); --peak-tflops overrides
PEAK_BF16_TFLOPS: List[Tuple[str, float]] = [
    ("gh200", 989.0), ("h200", 989.0), ("h100 pcie", 756.0), ("h100 nvl", 835.0), ("h100", 989.0), ("h800", 989.0),
    ("b200", 2250.0), ("a100", 312.0), ("a800", 312.0), ("l40s", 362.0), ("l40", 181.0), ("l4", 121.0),
    ("a10g", 70.0), ("a10", 125.0), ("rtx 6000 ada", 365.0), ("a6000", 155.0), ("rtx 4090", 165.0),
    ("rtx 3090", 71.0),
]


@dataclass
class Dims:
    """Sizes of the acceptance benchmark's model and workload."""

    model_type: str  # minigpt_v2 preset
    llm: Dict[str, int]  # LlamaConfig sizes
    vit: Optional[Dict[str, Any]]  # VitConfig overrides (None: the preset's / EVA-ViT-g)
    image_size: int
    lora_r: int
    seq_len: int  # LLM positions per sample (image slots included)
    batches: Tuple[int, ...]
    gen_batches: Tuple[int, ...]
    new_tokens: int
    steps: int  # timed training steps per row (one untimed warm-up before)


FULL = Dims("pretrain", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                             vocab_size=32000), None, 448, 64, 1024, (1, 4), (1, 8), 64, 3)
TINY = Dims("tiny", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=512), dict(embed_dim=32, depth=2, num_heads=2), 224, 4, 128, (1, 2), (1, 2), 4, 1)


@dataclass
class TrainRow:
    """One measured training configuration."""

    variant: str  # bf16 | bf16+ckpt | 4bit | 4bit+ckpt
    batch: int
    tokens: int
    status: str = "ok"  # ok | OOM | skipped: ... | error: ...
    step_s: float = float("nan")
    tokens_per_s: float = float("nan")
    model_tflop: float = float("nan")  # model FLOPs of one step (torch.utils.flop_counter, no recomputation)
    mfu: Optional[float] = None
    peak_gib: float = float("nan")
    memory_kind: str = ""
    llm_weights: str = ""  # storage of the LLM's decoder linear layers (bf16, or nf4 under 4-bit)
    llm_autocast: str = ""
    vision_autocast: str = ""
    grad_scaler: bool = False
    loss: Optional[float] = None


@dataclass
class GenRow:
    """Batched generation through the model's inference path (``generate_ids``)."""

    batch: int
    new_tokens: int
    status: str = "ok"
    seconds: float = float("nan")
    tokens_per_s: float = float("nan")


def peak_tflops(device_name: str, override: Optional[float]) -> Optional[float]:
    """``override``, else the table's bf16 peak of the first name that matches, else None."""
    if override:
        return float(override)
    name = device_name.lower()
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def write_random_weights(dims: Dims, folder: Path, device: torch.device) -> Dict[str, str]:
    """A random LLaMA folder (the tests' SentencePiece tokenizer) and a random EVA file (LAVIS layout), as the
    paths of ``model.llama_model`` / ``model.vit_ckpt``.

    Weights are initialised on ``device`` in bf16 and written once (full size: about 15 GB); the tokenizer's 512
    ids all lie inside the LLM's embedding (32000 rows at full size).
    """
    from minigpt4.tools.tiny_llm import DEFAULT_TOKENIZER, write_tokenizer_files

    folder.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    from minigpt4.common.checkpoint_io import atomic_torch_save
    from minigpt4.common.schema import VitConfig
    from minigpt4.models.eva_vit import build_eva_vit

    config = LlamaConfig(**dims.llm, num_key_value_heads=dims.llm["num_attention_heads"], max_position_embeddings=4096,
                         rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device(device):
        llm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    llm.save_pretrained(str(folder / "llm"))
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(str(folder / "llm"))
    write_tokenizer_files(folder / "llm", DEFAULT_TOKENIZER)
    del llm
    tower = build_eva_vit(VitConfig(**(dims.vit or {})), dims.image_size, precision="fp16", device=device)
    atomic_torch_save({k: v.detach().cpu() for k, v in tower.state_dict().items()}, folder / "eva.pth")
    del tower
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"llama_model": str(folder / "llm"), "vit_ckpt": str(folder / "eva.pth")}


def model_config(dims: Dims, files: Optional[Dict[str, str]] = None, quantization: str = "none") -> Any:
    """The typed MiniGPT-v2 model section of ``dims`` (the preset, its sizes, LoRA rank, half storage)."""
    from minigpt4.common.registry import registry

    overrides: Dict[str, Any] = {"model_type": dims.model_type, "image_size": dims.image_size, "lora_r": dims.lora_r,
                                 "llm_precision": "bf16", "vit_precision": "bf16", **(files or {})}
    if dims.vit:
        overrides["vit_config"] = dict(dims.vit)
    if quantization != "none":
        overrides["llm_quantization"] = quantization
    return registry.get_model_class("minigpt_v2").default_config(dims.model_type, overrides)


def build_model(dims: Dims, files: Dict[str, str], device: torch.device, quantization: str = "none"
                ) -> Tuple[Any, Any]:
    """MiniGPT-v2 through ``from_config`` (the users' path) with the run's precision policy (bf16) applied."""
    from omegaconf import OmegaConf

    from minigpt4.common.precision import configure_model_precision
    from minigpt4.common.registry import registry

    cls = registry.get_model_class("minigpt_v2")
    cfg = OmegaConf.create({"model": model_config(dims, files, quantization), "run": {"precision": "bf16"}})
    policy = configure_model_precision(cfg, device)
    model = cls.from_config(cfg.model)
    if quantization == "none":
        model = model.to(device)
    else:  # bitsandbytes placed the LLM; move the rest
        for name, child in model.named_children():
            if name != "llama_model":
                child.to(device)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()  # trainable weights in fp32, as the runner keeps them
    return model, policy


def synthetic_batch(model: Any, batch: int, seq_len: int, device: torch.device, seed: int = 0) -> Dict[str, Any]:
    """An encoded training batch of exactly ``seq_len`` LLM positions per row: BOS, 8 prompt tokens, the image
    slots, 8 more prompt tokens, then answer tokens (the trained span)."""
    from minigpt4.prompting import IGNORE_INDEX, IMAGE_SLOT_ID

    gen = torch.Generator().manual_seed(seed)
    n_img = model.num_image_tokens
    vocab = model.tokenizer.vocab_size
    cond = 1 + 8 + n_img + 8
    if cond >= seq_len:
        raise ValueError(f"seq_len {seq_len} leaves no answer tokens after {cond} condition positions")
    ids = torch.randint(3, vocab, (batch, seq_len), generator=gen)  # (B, T)
    ids[:, 0] = model.tokenizer.bos_id
    ids[:, 9:9 + n_img] = IMAGE_SLOT_ID
    labels = ids.clone()
    labels[:, :cond] = IGNORE_INDEX
    size = model.cfg.image_size
    return {"image": torch.randn(batch, 3, size, size, generator=gen).to(device),
            "input_ids": ids.to(device), "labels": labels.to(device),
            "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device),
            "input_lens": torch.full((batch,), cond - 1, dtype=torch.long)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_step_flops(model: Any, policy: Any, batch: Dict[str, Any]) -> float:
    """Model FLOPs of one forward + backward (``torch.utils.flop_counter``; frozen weights get no weight grads)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        with policy.autocast():
            loss = model(batch)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def train_row(model: Any, policy: Any, row: TrainRow, dims: Dims, device: torch.device, seen: Dict[str, list],
              flops: Optional[float], peak: Optional[float]) -> TrainRow:
    """Time ``dims.steps`` optimizer steps (after one warm-up) of ``row.batch`` x ``dims.seq_len`` tokens."""
    from minigpt4.common.metrics import peak_memory

    batch = synthetic_batch(model, row.batch, dims.seq_len, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scaler = policy.grad_scaler()
    seen["llm"].clear()
    seen["vision"].clear()
    model.train()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, loss = [], None
    for step in range(dims.steps + 1):
        _sync(device)
        start = time.perf_counter()
        with policy.autocast():
            loss = model(batch)["loss"]
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step:
            times.append(time.perf_counter() - start)
    row.step_s = statistics.median(times)
    row.tokens_per_s = row.tokens / row.step_s
    mib, row.memory_kind = peak_memory(device)
    row.peak_gib = mib / 1024
    row.llm_autocast, row.vision_autocast = _describe(seen["llm"]), _describe(seen["vision"])
    row.grad_scaler = scaler is not None
    row.loss = float(loss.detach())
    row.llm_weights = llm_weight_storage(model)
    if flops:
        row.model_tflop = flops / 1e12
        row.mfu = flops / row.step_s / (peak * 1e12) if peak else None
    del optimizer
    return row


def llm_weight_storage(model: Any) -> str:
    """``nf4`` / ``int8`` when bitsandbytes layers hold the LLM's linear weights, else their dtype."""
    for module in model.llama_model.modules():
        kind = type(module).__name__
        if kind == "Linear4bit":
            return str(getattr(module.weight, "quant_type", "4bit"))
        if kind == "Linear8bitLt":
            return "int8"
    layer = model.llama_model.get_base_model() if hasattr(model.llama_model, "get_base_model") else model.llama_model
    return str(layer.model.layers[0].mlp.down_proj.weight.dtype).replace("torch.", "")


def generation_rows(model: Any, policy: Any, dims: Dims, device: torch.device) -> List[GenRow]:
    """Greedy batched generation of exactly ``dims.new_tokens`` per row (stop rules off) at each batch size."""
    model.eval()
    prompt = model.prompt_format.wrap("<Img><ImageHere></Img> Describe this face in detail.")
    rows = []
    for batch in dims.gen_batches:
        row = GenRow(batch, dims.new_tokens)
        images = torch.randn(batch, 3, dims.image_size, dims.image_size).to(device)
        try:
            with torch.no_grad(), policy.autocast():
                model.generate_ids(images, [prompt] * batch, max_new_tokens=2, min_new_tokens=2,
                                   stop_sequences=[])  # warm-up
                _sync(device)
                start = time.perf_counter()
                ids = model.generate_ids(images, [prompt] * batch, max_new_tokens=dims.new_tokens,
                                         min_new_tokens=dims.new_tokens, stop_sequences=[])  # (B, T)
                _sync(device)
            row.seconds = time.perf_counter() - start
            row.new_tokens = int(ids.shape[1])
            row.tokens_per_s = batch * row.new_tokens / row.seconds
        except torch.cuda.OutOfMemoryError:
            row.status = "OOM"
        rows.append(row)
    return rows


def _quantization_problem(quantization: str) -> Optional[str]:
    """Why the 4-bit rows cannot run here (None when they can)."""
    import dataclasses
    import importlib.util

    from minigpt4.common.schema import ModelConfig

    if "llm_quantization" not in {f.name for f in dataclasses.fields(ModelConfig)}:
        return "skipped: needs llm_quantization"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: bitsandbytes is not installed (pip install -e .[quant])"
    return None


def run_variants(model: Any, policy: Any, dims: Dims, device: torch.device, prefix: str,
                 flops: Dict[int, float], peak: Optional[float], count_flops: bool) -> List[TrainRow]:
    """Rows without, then with, LLM activation checkpointing (enabled on the built model, as ``from_config`` does
    for ``use_grad_checkpoint_llm``)."""
    from minigpt4.models.llm import enable_llm_activation_checkpointing

    seen = _hooks(model, device.type)
    rows = []
    for ckpt in (False, True):
        if ckpt:
            enable_llm_activation_checkpointing(model.llama_model)
        for batch in dims.batches:
            row = TrainRow(prefix + ("+ckpt" if ckpt else ""), batch, batch * dims.seq_len)
            try:
                if count_flops and batch not in flops:
                    flops[batch] = count_step_flops(model, policy, synthetic_batch(model, batch, dims.seq_len, device))
                rows.append(train_row(model, policy, row, dims, device, seen, flops.get(batch), peak))
            except torch.cuda.OutOfMemoryError:
                row.status = "OOM"
                rows.append(row)
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            print(format_train_table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def acceptance(dims: Dims, device: torch.device, workdir: Path, peak: Optional[float]) -> Dict[str, Any]:
    """Training rows (bf16, bf16+ckpt, 4bit, 4bit+ckpt), generation rows and the precision checks."""
    import gc

    started = time.perf_counter()
    files = write_random_weights(dims, workdir / "random_weights", device)
    written = time.perf_counter() - started
    model, policy = build_model(dims, files, device)
    flops: Dict[int, float] = {}
    rows = run_variants(model, policy, dims, device, "bf16", flops, peak, count_flops=True)
    gen = generation_rows(model, policy, dims, device)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    problem = _quantization_problem("4bit")
    if problem is None:
        try:
            qmodel, qpolicy = build_model(dims, files, device, quantization="4bit")
            rows += run_variants(qmodel, qpolicy, dims, device, "4bit", flops, peak, count_flops=False)
            del qmodel
        except (ValueError, RuntimeError, ImportError) as err:  # one line in the table, the rest still reported
            problem = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    if problem is not None:
        rows += [TrainRow(f"4bit{c}", b, b * dims.seq_len, status=problem) for c in ("", "+ckpt") for b in dims.batches]
    measured = [r for r in rows if r.status == "ok"]
    checks = {"autocast_bf16_in_forward": bool(measured) and all(
                  (r.llm_autocast, r.vision_autocast) == ("bf16", "bf16") for r in measured),
              "no_grad_scaler": bool(measured) and not any(r.grad_scaler for r in measured),
              "policy": str(policy)}
    return {"dims": dims.__dict__, "weights_written_s": written, "train": [r.__dict__ for r in rows],
            "generation": [g.__dict__ for g in gen], "checks": checks, "seconds": time.perf_counter() - started,
            "train_rows": rows, "gen_rows": gen}


def _num(value: Optional[float], fmt: str) -> str:
    return "n/a" if value is None or value != value else fmt.format(value)  # NaN != NaN


def _table(header: Sequence[str], rows: List[Sequence[Any]]) -> str:
    rows = [tuple(header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def format_train_table(rows: List[TrainRow]) -> str:
    """Training rows as an aligned text table."""
    header = ("variant", "batch", "tokens", "status", "LLM weights", "step s", "tokens/s", "TFLOP/step", "MFU",
              "peak GiB", "LLM autocast", "vision autocast", "GradScaler", "loss")
    return _table(header, [(r.variant, r.batch, r.tokens, r.status, r.llm_weights or "-", _num(r.step_s, "{:.3f}"),
                            _num(r.tokens_per_s, "{:.0f}"), _num(r.model_tflop, "{:.3g}"),
                            _num(r.mfu, "{:.1%}"), _num(r.peak_gib, "{:.2f}"), r.llm_autocast or "-",
                            r.vision_autocast or "-", "yes" if r.grad_scaler else "no", _num(r.loss, "{:.3f}"))
                           for r in rows])


def format_gen_table(rows: List[GenRow]) -> str:
    """Generation rows as an aligned text table."""
    return _table(("generation batch", "new tokens", "status", "seconds", "tokens/s"),
                  [(g.batch, g.new_tokens, g.status, _num(g.seconds, "{:.2f}"), _num(g.tokens_per_s, "{:.1f}"))
                   for g in rows])


# ============================================================================ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure and print; 2 when no CUDA device is available (and neither ``--device cpu`` nor ``--tiny`` was
    asked for); 1 when a precision check of the acceptance benchmark fails."""
    args = parse_args(argv)
    if args.tiny:
        args.device = "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available on this machine; this script is for a CUDA GPU "
              "(use --tiny, or --device cpu for a dry run of the precision checks)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import minigpt4  # noqa: F401  (registers builders, models, tasks, runners)
    from minigpt4.common.logger import setup_logging

    setup_logging(level=logging.WARNING)  # the tables are the output
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name, args.peak_tflops)
    if device.type == "cuda":
        print(f"device: {name} | bf16 supported: {torch.cuda.is_bf16_supported()} | bf16 peak "
              f"{_num(peak, '{:.0f}')} TFLOPs | torch {torch.__version__}")
    report: Dict[str, Any] = {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=args.workdir) as tmp_name:
        tmp = Path(tmp_name)
        if "precision" in args.sections:
            report["precision"] = [r.__dict__ for r in precision_checks(args, tmp)]
        status = 0
        if "acceptance" in args.sections and (device.type == "cuda" or args.tiny):
            result = acceptance(TINY if args.tiny else FULL, device, tmp, peak)
            print()
            print(format_train_table(result.pop("train_rows")))
            print()
            print(format_gen_table(result.pop("gen_rows")))
            print()
            for key, ok in result["checks"].items():
                print(f"check {key}: {ok if key == 'policy' else ('PASS' if ok else 'FAIL')}")
            status = 0 if all(v for k, v in result["checks"].items() if k != "policy") else 1
            report["acceptance"] = result
        elif "acceptance" in args.sections:
            print("acceptance benchmark skipped: it runs on a CUDA device (or at tiny size with --tiny)")
        if "cuda-tests" in args.sections and device.type == "cuda":
            report["cuda_tests"] = cuda_tests()
            status = status or (0 if report["cuda_tests"]["exit_status"] == 0 else 1)
        elif "cuda-tests" in args.sections:
            print("CUDA tests skipped: they need a CUDA device")
    report["seconds"] = time.perf_counter() - started
    print(f"total {report['seconds']:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return status


def cuda_tests() -> Dict[str, Any]:
    """Run the suite's CUDA-only tests (``-k cuda``, slow included); their summary line and exit status."""
    import subprocess

    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", "-k", "cuda", "-rs", "tests"]
    print("\nCUDA tests: " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr.strip()[-500:]
    print(f"CUDA tests: {summary} (exit status {done.returncode})", flush=True)
    return {"summary": summary, "exit_status": done.returncode}


def precision_checks(args: argparse.Namespace, tmp: Path) -> List[Result]:
    """The per-config precision checks through ``train.py``'s path (tiny always; full size with weight paths)."""
    results: List[Result] = []
    synthetic = not os.environ.get("FACEGPT_DATA")
    _data_root(tmp)
    tiny = tiny_options(tmp)
    for precision in args.precisions:
        results.append(measure("tiny_v2", TINY_CFG, tiny, precision, args.device, args.steps, tmp / "runs"))
        print(format_table(results[-1:]).splitlines()[-1], flush=True)
    if args.llama_model and args.vit_ckpt:
        for precision in args.full_precisions:
            results.append(measure(args.full_cfg.stem, args.full_cfg, full_options(args, synthetic), precision,
                                   args.device, args.steps, tmp / "runs"))
            print(format_table(results[-1:]).splitlines()[-1], flush=True)
    else:
        print("full-size config skipped: pass --llama-model and --vit-ckpt (or FACEGPT_LLAMA_MODEL / "
              "FACEGPT_VIT_CKPT)")
    print()
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(main())
