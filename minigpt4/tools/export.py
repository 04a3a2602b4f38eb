"""Merge and export a FaceGPT model into folders other tools load: ``python -m minigpt4.tools.export``.

    python -m minigpt4.tools.export --cfg-path CFG --options model.ckpt=/path/checkpoint_best.pth --out DIR

``CFG`` is the run's training or chat config (paths to the base LLM and the vision weights); a FaceGPT
checkpoint's saved model section (LoRA rank, prompt format, ...) is read from ``model.ckpt``. ``DIR`` gets:

* ``llm/`` — the language model with the LoRA merged (peft ``merge_and_unload``) as a standard Hugging Face
  folder: ``config.json``, safetensors weights (sharded when large), tokenizer files. ``AutoModelForCausalLM.
  from_pretrained(DIR/llm)`` loads it. A model without LoRA (MiniGPT-4 v1) gets its base LLM saved here.
* ``adapter/`` — the LoRA alone as a PEFT adapter folder (``PeftModel.from_pretrained(base_llm, DIR/adapter)``);
  only when the model has LoRA.
* ``vision_tower.safetensors`` — EVA-ViT-g under the key names of LAVIS's ``eva_vit_g.pth`` (``model.vit_ckpt``);
  ``qformer.pth`` — ``ln_vision``, Q-Former and query tokens in BLIP-2's layout (``{"model": {...}}``, read
  with ``weights_only``; v1 with a Q-Former; ``model.q_former_model``); ``projection.safetensors`` —
  ``llama_proj`` and every other non-LLM weight under the MiniGPT checkpoint names (``model.ckpt``). Each file is
  in the layout of the config key that reads it.
* ``facegpt.yaml`` — a FaceGPT config naming these files (absolute paths, ``lora_r: 0``), with the whole model
  section (prompt format included) and the image processor: the chat demos, evaluation and ``train.py``
  (``--options model.llama_model=DIR/llm``) read it.
* ``README.md`` — a model card: architecture, files, the training config and the run's statistics
  (``summary.json`` beside the checkpoint, when present).

The paths in ``facegpt.yaml`` are absolute; after moving the folder, ``python -m minigpt4.tools.export --relocate
NEW_DIR`` points them (and the model card) at its new place. Everything is written to a hidden folder beside
``DIR`` and renamed into place at the end, so an interrupted export leaves no half-written ``DIR``. Weights are
merged in fp32 on the CPU (a 7B LLM needs about 28 GB of RAM) and saved in ``--dtype`` (``auto``: the base LLM's
own dtype from its ``config.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from minigpt4.common.checkpoint_io import atomic_torch_save, atomic_write, read_saved_config
from minigpt4.common.config import Config, add_config_args, load_config
from minigpt4.common.errors import UserError, run_main
from minigpt4.common.logger import get_logger
from minigpt4.common.metrics import SUMMARY_FILE
from minigpt4.common.precision import DTYPES

logger = get_logger(__name__)

PROG = "facegpt-export"
LLM_DIR = "llm"
ADAPTER_DIR = "adapter"
TOWER_FILE = "vision_tower.safetensors"
QFORMER_FILE = "qformer.pth"  # BLIP-2's layout is {"model": {...}}: a torch file (weights_only)
PROJECTION_FILE = "projection.safetensors"
CONFIG_FILE = "facegpt.yaml"
CARD_FILE = "README.md"
#: tokenizer files copied from an HF LLM folder into ``llm/``
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
#: storage settings the export loads the model with (merging in full precision); the exported config keeps the user's
FULL_PRECISION = {"llm_precision": "fp32", "vit_precision": "fp32", "low_resource": False, "llm_quantization": "none"}
_TORCH_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class ExportError(UserError, ValueError):
    """The export cannot proceed; the message names the path or key and the fix."""


@dataclass
class ExportResult:
    """What was written (paths inside the export folder) and how."""

    out: Path
    arch: str
    lora: bool
    dtype: str
    files: List[str] = field(default_factory=list)
    tensors: Dict[str, int] = field(default_factory=dict)  # file -> tensor count
    notes: List[str] = field(default_factory=list)  # shown in the model card


# ------------------------------------------------------------------------------------------- arguments


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    add_config_args(parser, require_cfg=False)
    parser.add_argument("--out", type=Path, help="export folder (must not exist, or be empty)")
    parser.add_argument("--relocate", type=Path, default=None, metavar="DIR",
                        help="instead of exporting: point DIR/facegpt.yaml at DIR after the folder was moved")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="dtype of the saved LLM, vision tower and Q-Former (auto: the base LLM's own); the "
                             "projection file stays fp32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --out folder")
    args = parser.parse_args(argv)
    if args.relocate is None and (args.cfg_path is None or args.out is None):
        raise SystemExit("give --cfg-path CFG and --out DIR (or --relocate DIR for a moved export folder)")
    return args


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; choose a new folder or add --overwrite")


# ------------------------------------------------------------------------------------------- model


def load_for_export(cfg: Config) -> nn.Module:
    """The model of ``cfg`` on the CPU with every weight in fp32 (merging in full precision), in eval mode."""
    from minigpt4.common.registry import registry

    for key, value in FULL_PRECISION.items():
        if key in cfg.model:
            OmegaConf.update(cfg.model, key, value)
    model = registry.get_model_class(cfg.model.arch).from_config(cfg.model)
    return model.eval()


def source_dtype(llama_model: str) -> str:
    """The dtype named in the base LLM's ``config.json`` (``fp32`` when absent, e.g. a ``.gguf`` file)."""
    config = Path(llama_model).expanduser() / "config.json"
    if not config.is_file():
        return "fp32"
    data = json.loads(config.read_text())
    name = data.get("dtype") or data.get("torch_dtype")
    return _TORCH_DTYPE_NAMES.get(str(name), "fp32")


def has_lora(model: nn.Module) -> bool:
    """True when the LLM is wrapped by peft (MiniGPT-v2 with ``lora_r > 0``)."""
    return hasattr(model.llama_model, "merge_and_unload")


def save_adapter(model: nn.Module, folder: Path) -> None:
    """The LoRA alone as a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    model.llama_model.save_pretrained(str(folder), safe_serialization=True)


def merged_llm(model: nn.Module) -> nn.Module:
    """The plain causal LM with the LoRA merged into its weights (the model's own LLM when there is no LoRA)."""
    if not has_lora(model):
        return model.llama_model
    return model.llama_model.merge_and_unload()


def plain_llm(llm: nn.Module) -> nn.Module:
    """``llm`` itself, or for an LLM read from a ``.gguf`` file (which transformers marks as quantized and refuses
    to save) a plain copy of its dequantized weights."""
    quantizer = getattr(llm, "hf_quantizer", None)
    if quantizer is None:
        return llm
    method = getattr(quantizer.quantization_config, "quant_method", None)
    if str(getattr(method, "value", method)) != "gguf":
        raise ExportError(f"the LLM is quantized ({method}); export it from a non-quantized load: "
                          "--options model.low_resource=False (and no model.llm_quantization)")
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(llm.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    try:
        plain.load_state_dict(llm.state_dict(), strict=True)
    except RuntimeError as err:
        raise ExportError("the .gguf LLM keeps its weights in GGUF blocks (a GGUF kernel is installed), so they "
                          f"cannot be saved as plain tensors: {str(err).splitlines()[0]}") from err
    logger.info("LLM read from a .gguf file: saving a plain copy of its dequantized weights")
    return plain


def save_llm(llm: nn.Module, folder: Path, dtype: str) -> None:
    """``save_pretrained`` in ``dtype`` (safetensors, shards of at most 5 GB)."""
    llm = plain_llm(llm).to(DTYPES[dtype])
    llm.config.use_cache = True  # training may have turned it off for activation checkpointing
    llm.save_pretrained(str(folder), max_shard_size="5GB", safe_serialization=True)


def save_tokenizer(model: nn.Module, llama_model: str, folder: Path) -> List[str]:
    """Tokenizer files into ``folder``: copied from an HF folder, or saved by transformers for a ``.gguf`` file."""
    source = Path(llama_model).expanduser()
    if source.is_dir():
        copied = []
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, folder / name)
                copied.append(name)
        if not copied:
            raise ExportError(f"model.llama_model={llama_model}: the folder has none of the tokenizer files "
                              f"{', '.join(TOKENIZER_FILES)}; the exported llm/ folder would have no tokenizer")
        return copied
    hf_tokenizer = getattr(model.tokenizer, "tok", None)  # HFTokenizer keeps the transformers tokenizer here
    if hf_tokenizer is None or not hasattr(hf_tokenizer, "save_pretrained"):
        raise ExportError(f"model.llama_model={llama_model}: its tokenizer cannot be saved as Hugging Face files")
    return [Path(p).name for p in hf_tokenizer.save_pretrained(str(folder))]


# ------------------------------------------------------------------------------------------- vision side


def _tensors(named: Dict[str, torch.Tensor], dtype: Optional[torch.dtype]) -> Dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared storage), floats cast to ``dtype``."""
    out = {}
    for key, value in named.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous().clone()
    return out


def write_safetensors(path: Path, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> Path:
    """Tensors to ``path`` through the one atomic writer."""
    from safetensors.torch import save

    payload = save(tensors, metadata=metadata)
    return atomic_write(path, lambda fh: fh.write(payload))


def vision_state(model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    """The non-LLM weights split by the config key that reads them: tower, BLIP-2 layout, MiniGPT checkpoint."""
    from minigpt4.models.checkpoint import learned_buffers, to_upstream_key

    state = model.state_dict()
    tower = {k[len("visual_encoder."):]: v for k, v in state.items() if k.startswith("visual_encoder.")}
    qformer: Dict[str, torch.Tensor] = {}
    if getattr(model, "Qformer", None) is not None:
        for key, value in state.items():
            if key.startswith(("Qformer.", "ln_vision.")) or key == "query_tokens":
                qformer[to_upstream_key(key)] = value
    rest = {to_upstream_key(k): v for k, v in state.items()
            if not k.startswith(("llama_model.", "visual_encoder.")) and to_upstream_key(k) not in qformer}
    persistent = {n for n, _ in model.named_parameters()}
    rest = {k: v for k, v in rest.items() if k in persistent}  # parameters (buffers are recomputed) ...
    rest.update(learned_buffers(model))  # ... except learned ones: a word-mixture model's vocabulary and groups
    return {"tower": tower, "qformer": qformer, "projection": rest}


def write_vision(model: nn.Module, staging: Path, dtype: str, result: ExportResult) -> Dict[str, Optional[str]]:
    """Write the vision-side files; returns the config keys that name them (relative file names)."""
    parts = vision_state(model)
    meta = {"format": "pt", "exported_by": "facegpt-export", "arch": result.arch}
    keys: Dict[str, Optional[str]] = {"vit_ckpt": TOWER_FILE, "q_former_model": None, "ckpt": PROJECTION_FILE}
    write_safetensors(staging / TOWER_FILE, _tensors(parts["tower"], DTYPES[dtype]),
                      {**meta, "layout": "LAVIS eva_vit_g.pth (model.vit_ckpt)"})
    result.tensors[TOWER_FILE] = len(parts["tower"])
    if parts["qformer"]:
        atomic_torch_save({"model": _tensors(parts["qformer"], DTYPES[dtype]), "exported_by": meta},
                          staging / QFORMER_FILE)
        result.tensors[QFORMER_FILE] = len(parts["qformer"])
        keys["q_former_model"] = QFORMER_FILE
    write_safetensors(staging / PROJECTION_FILE, _tensors(parts["projection"], torch.float32),
                      {**meta, "layout": "MiniGPT-4 / MiniGPT-v2 checkpoint names (model.ckpt)"})
    result.tensors[PROJECTION_FILE] = len(parts["projection"])
    return keys


# ------------------------------------------------------------------------------------------- config and card


def exported_config(cfg: Config, out: Path, file_keys: Dict[str, Optional[str]],
                    original: Dict[str, Any]) -> Dict[str, Any]:
    """The FaceGPT config of the export: the model section with this folder's files, processors, a run stub, and
    the datasets of ``cfg`` (so that the evaluation tool can score the export on the run's held-out split)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.update(original)  # the user's storage settings, not the export's fp32
    model.update({"llama_model": str(out / LLM_DIR), "lora_r": 0, "ckpt_partial": False,
                  **{k: (str(out / v) if v else None) for k, v in file_keys.items()}})
    preprocess = OmegaConf.to_container(cfg.preprocess, resolve=True)
    run = {"task": cfg.run.task or "image_text_pretrain", "precision": cfg.run.precision}
    config = {"model": model, "preprocess": preprocess, "run": run}
    if cfg.datasets:
        config["datasets"] = OmegaConf.to_container(cfg.datasets, resolve=True)
    return config


def demo_script(arch: str) -> str:
    """The chat demo of an architecture (v1: ``demo_v1_command_line.py``)."""
    return "demo_v1_command_line.py" if arch == "minigpt4" else "demo_v2_command_line.py"


def write_config(config: Dict[str, Any], path: Path, final: Path, ckpt: Optional[str]) -> None:
    """``config`` as YAML at ``path`` (its final place is ``final``), with a header saying how to use it."""
    header = (f"# FaceGPT export of {ckpt or 'the base weights'} (facegpt-export, "
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC).\n"
              f"# Chat: python {demo_script(config['model']['arch'])} --cfg-path {final} --image face.jpg\n"
              "# Paths are absolute. After moving the folder: python -m minigpt4.tools.export --relocate NEW_DIR\n")
    text = header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def run_info(ckpt: Optional[str]) -> Dict[str, Any]:
    """The checkpoint's saved config and the run's ``summary.json`` (each None when absent)."""
    if not ckpt or not Path(ckpt).is_file():
        return {"config": None, "summary": None}
    saved = read_saved_config(ckpt)
    summary_path = Path(ckpt).parent / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return {"config": saved, "summary": summary}


def model_card(result: ExportResult, cfg: Config, ckpt: Optional[str], info: Dict[str, Any]) -> str:
    """README.md of the export folder: what it is, its files, how to load it, how it was trained."""
    m = cfg.model
    lines = [f"# FaceGPT export ({m.arch}, {m.model_type})", "",
             f"Exported from `{ckpt or '(no checkpoint: base weights)'}` with `facegpt-export`. Base LLM: "
             f"`{m.llama_model}`; vision tower: " + (f"`{m.vit_ckpt}`" if m.vit_ckpt else "random init") + ".",
             "", "## Files", ""]
    lines.append(f"- `{LLM_DIR}/`: the language model " + (
        f"with the LoRA (r={original_lora(info, cfg)}) merged" if result.lora else "(no LoRA: the base LLM, saved)")
        + f", Hugging Face format, {result.dtype}. `AutoModelForCausalLM.from_pretrained(\"{LLM_DIR}\")`.")
    if result.lora:
        lines.append(f"- `{ADAPTER_DIR}/`: the LoRA alone (PEFT): `PeftModel.from_pretrained(base_llm, "
                     f"\"{ADAPTER_DIR}\")` on `{m.llama_model}`.")
    else:
        lines.append("- no `adapter/`: this model has no LoRA.")
    for name, count in result.tensors.items():
        lines.append(f"- `{name}`: {count} tensors.")
    lines += [f"- `{CONFIG_FILE}`: FaceGPT config (model section, prompt format, image processor).", "",
              "## Use", "", "```", f"python {demo_script(result.arch)} --cfg-path {result.out / CONFIG_FILE} "
              "--image face.jpg", f"python train.py --cfg-path YOUR_TRAIN.yaml --options "
              f"model.llama_model={result.out / LLM_DIR} model.vit_ckpt={result.out / TOWER_FILE} "
              f"model.ckpt={result.out / PROJECTION_FILE} model.ckpt_partial=True   # a new LoRA on the merged LLM",
              "```", "",
              "## Prompt format", "", f"- prompt_format: `{m.prompt_format}`",
              f"- prompt_template: `{m.prompt_template}`", f"- end_sym: `{m.end_sym!r}`", ""]
    lines += [f"Note: {note}." for note in result.notes] + ([""] if result.notes else [])
    lines += _training_section(info)
    return "\n".join(lines) + "\n"


def original_lora(info: Dict[str, Any], cfg: Config) -> Any:
    saved = (info.get("config") or {}).get("model") or {}
    return saved.get("lora_r", cfg.model.lora_r)


def _training_section(info: Dict[str, Any]) -> List[str]:
    lines = ["## Training", ""]
    summary = info.get("summary")
    if summary:
        keys = ("job_name", "run_id", "status", "epochs_done", "global_step", "optimizer_steps", "samples_seen",
                "skipped_images", "final_train_loss", "best_val_loss", "precision", "time_s", "world_size")
        lines += ["| statistic | value |", "|---|---|"]
        lines += [f"| {k} | {summary.get(k)} |" for k in keys if k in summary]
        if summary.get("truncation"):
            lines.append(f"| truncation | {summary['truncation']} |")
        lines.append("")
    else:
        lines += [f"No {SUMMARY_FILE} beside the checkpoint: no run statistics.", ""]
    saved = info.get("config")
    if saved:
        lines += ["Training config (saved in the checkpoint):", "", "```yaml",
                  yaml.safe_dump(saved, sort_keys=False, allow_unicode=True).rstrip(), "```"]
    else:
        lines.append("The checkpoint carries no training config (a released MiniGPT checkpoint or none).")
    return lines


# ------------------------------------------------------------------------------------------- driver


def export(cfg: Config, out: Path, dtype: str = "auto", overwrite: bool = False) -> ExportResult:
    """Write the export folder ``out`` (see the module docstring) from a loaded config; returns what was written."""
    out = out.expanduser().resolve()
    _check_out(out, overwrite)
    ckpt = cfg.model.ckpt or None
    original = {k: cfg.model[k] for k in FULL_PRECISION if k in cfg.model}
    dtype = source_dtype(cfg.model.llama_model) if dtype == "auto" else dtype
    model = load_for_export(cfg)
    result = ExportResult(out, str(cfg.model.arch), has_lora(model), dtype)
    if original.get("low_resource") or original.get("llm_quantization", "none") != "none":
        result.notes.append("the LoRA was trained on a quantized base LLM (low_resource / llm_quantization) and is "
                            "merged here into the full-precision base weights")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        _write_all(model, cfg, staging, out, result, original, ckpt)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    result.files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    logger.info("exported %s to %s: %d files", result.arch, out, len(result.files))
    return result


def _write_all(model: nn.Module, cfg: Config, staging: Path, out: Path, result: ExportResult,
               original: Dict[str, Any], ckpt: Optional[str]) -> None:
    file_keys = write_vision(model, staging, result.dtype, result)  # before the merge changes the LLM
    if result.lora:
        save_adapter(model, staging / ADAPTER_DIR)
    save_llm(merged_llm(model), staging / LLM_DIR, result.dtype)
    save_tokenizer(model, str(cfg.model.llama_model), staging / LLM_DIR)
    info = run_info(ckpt)
    write_config(exported_config(cfg, out, file_keys, original), staging / CONFIG_FILE, out / CONFIG_FILE, ckpt)
    card = model_card(result, cfg, ckpt, info)
    atomic_write(staging / CARD_FILE, lambda fh: fh.write(card.encode("utf-8")))


#: model keys of facegpt.yaml that name files of the export folder
FOLDER_KEYS = ("llama_model", "vit_ckpt", "q_former_model", "ckpt")


def relocate(folder: Path) -> Path:
    """Rewrite ``folder/facegpt.yaml`` so that its file keys name the files under ``folder`` (after a move)."""
    folder = folder.expanduser().resolve()
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"--relocate {folder}: no {CONFIG_FILE} there; give the export folder itself")
    text = path.read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    llm = Path(str((config.get("model") or {}).get("llama_model") or ""))
    if llm.name != LLM_DIR:
        raise ExportError(f"{path}: model.llama_model={str(llm)!r} is not an export's {LLM_DIR}/ folder; "
                          "relocate only works on folders written by facegpt-export")
    old = llm.parent
    for key in FOLDER_KEYS:
        value = config["model"].get(key)
        if value and Path(value).parent == old:
            config["model"][key] = str(folder / Path(value).name)
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#")).replace(str(old), str(folder))
    body = header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda fh: fh.write(body.encode("utf-8")))
    card = folder / CARD_FILE
    if card.is_file():
        moved = card.read_text(encoding="utf-8").replace(str(old), str(folder))
        atomic_write(card, lambda fh: fh.write(moved.encode("utf-8")))
    logger.info("%s: paths moved from %s to %s", path, old, folder)
    return path


def _main(argv: Optional[Sequence[str]]) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import minigpt4  # noqa: F401  (registers models and processors)

    if args.relocate is not None:
        path = relocate(args.relocate)
        print(f"{PROG}: {path} now names the files under {path.parent}")
        return 0
    _check_out(args.out.expanduser().resolve(), args.overwrite)  # before minutes of loading
    cfg = load_config(args.cfg_path, args.options, check_dataset_paths=False, checkpoint_config=True)
    result = export(cfg, args.out, args.dtype, args.overwrite)
    print(f"{PROG}: wrote {result.out} ({result.arch}, LoRA {'merged' if result.lora else 'none'}, {result.dtype})")
    for name in result.files:
        print(f"  {name}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point (``facegpt-export``): user errors are one line on stderr and exit status 2."""
    return run_main(_main, argv, prog=PROG)


if __name__ == "__main__":
    raise SystemExit(main())
