"""``facegpt-data render``: one training sample as the model will see it.

The sample goes through the dataset (image processor included), the collater and the model's sample encoder, as in
training. Printed: the token sequence as text, with the image slots and the trained (label) spans marked; the token
counts; and what ``max_txt_len`` / ``max_context_len`` cut. Only the tokenizer of ``model.llama_model`` is loaded
(no LLM, vision or checkpoint weights)::

    python -m minigpt4.tools.data render --cfg-path train_configs/tiny_minigpt_v2.yaml \\
        --options model.llama_model=/path/to/llm_folder --section "Human or not"
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from minigpt4.prompting import IGNORE_INDEX, IMAGE_SLOT_ID, PromptFormat, SampleEncoder

#: weight files of the model section, not needed to render (only model.llama_model's tokenizer is read)
WEIGHT_KEYS = ("vit_ckpt", "q_former_model", "ckpt")
#: marks around trained (label) spans in the printed text
TRAINED_OPEN, TRAINED_CLOSE = "⟦", "⟧"


class RenderError(ValueError):
    """The sample cannot be picked (unknown dataset, split, index or section); the message names the fix."""


@dataclass
class Rendered:
    """One encoded sample: its marked-up text and counts."""

    text: str
    counts: Dict[str, int]
    truncation: Dict[str, int]
    limits: Dict[str, int]
    header: Dict[str, Any]

    def report(self) -> str:
        """The printout: header lines, the marked text, counts and truncation."""
        lines = [f"{k}: {v}" for k, v in self.header.items()]
        lines += ["", self.text, ""]
        lines.append("tokens: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        cuts = [f"answer block cut at max_txt_len={self.limits['max_txt_len']}"] \
            if self.truncation.get("answers_truncated") else []
        cuts += [f"condition cut at max_context_len={self.limits['max_context_len']}"] \
            if self.truncation.get("contexts_truncated") else []
        lines.append("truncation: " + ("; ".join(cuts) if cuts else "none (max_txt_len="
                                       f"{self.limits['max_txt_len']}, max_context_len={self.limits['max_context_len']})"))
        lines.append(f"legend: {TRAINED_OPEN}trained span{TRAINED_CLOSE}, <|image x N|> = N image slots")
        return "\n".join(lines)


def sample_encoder(model_cfg: Any) -> SampleEncoder:
    """The model's sample encoder from its config, with the tokenizer only (no weights loaded)."""
    from minigpt4.models.connectors import image_token_count
    from minigpt4.models.parts import load_prompt_list
    from minigpt4.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(model_cfg.llama_model, pad_token=model_cfg.pad_token)
    fmt = PromptFormat.from_config(model_cfg, tokenizer)
    return SampleEncoder(fmt, image_token_count(model_cfg), int(model_cfg.max_txt_len),
                         int(model_cfg.max_context_len), load_prompt_list(model_cfg, fmt))


def marked_text(tokenizer: Any, ids: List[int], labels: List[int], attention: List[int]) -> str:
    """The attended positions as text: image slots as ``<|image x N|>``, trained spans between marks."""
    out: List[str] = []
    run: List[int] = []
    kind = None
    for tok, lab, att in zip(ids, labels, attention):
        if not att:
            continue
        now = "image" if tok == IMAGE_SLOT_ID else "trained" if lab != IGNORE_INDEX else "text"
        if now != kind and run:
            out.append(_show(tokenizer, kind, run))
            run = []
        kind = now
        run.append(tok)
    if run:
        out.append(_show(tokenizer, kind, run))
    return "".join(out)


def _show(tokenizer: Any, kind: Optional[str], run: List[int]) -> str:
    if kind == "image":
        return f"<|image x {len(run)}|>"
    text = tokenizer.decode(run, skip_special_tokens=False)
    return f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if kind == "trained" else text


def pick_index(dataset: Any, index: Optional[int], section: Optional[str]) -> int:
    """``index``, or the first record of ``section`` (names compared after trimming)."""
    if section is None:
        index = 0 if index is None else index
        if not 0 <= index < len(dataset):
            raise RenderError(f"--index {index} is out of range: the split has {len(dataset)} samples")
        return index
    records = getattr(dataset, "annotation", [])
    found = [i for i, r in enumerate(records) if str(getattr(r, "section", "")).strip() == section.strip()]
    if not found:
        names = sorted({str(getattr(r, "section", "")).strip() for r in records})
        raise RenderError(f"--section {section!r}: no sample of that section; sections here: {names}")
    return found[0]


def render_sample(cfg: Any, dataset_name: str, split: str, index: Optional[int] = None,
                  section: Optional[str] = None) -> Rendered:
    """Encode one sample of ``cfg``'s dataset ``dataset_name`` / ``split`` as training does."""
    from minigpt4.common.registry import registry

    if dataset_name not in cfg.datasets:
        raise RenderError(f"--dataset {dataset_name!r} is not in the config's datasets: {list(cfg.datasets)}")
    splits = registry.get_builder_class(dataset_name)(cfg.datasets[dataset_name]).build_datasets()
    if split not in splits:
        raise RenderError(f"dataset {dataset_name} has splits {sorted(splits)}, not {split!r}")
    dataset = splits[split]
    i = pick_index(dataset, index, section)
    item = dataset[i]
    if not isinstance(item, dict):
        raise RenderError(f"{dataset_name}/{split} sample {i}: its image cannot be used ({item}); pick another")
    encoder = sample_encoder(cfg.model)
    batch = encoder.encode_batch(dataset.collater([item]))
    ids, labels, att = (batch[k][0].tolist() for k in ("input_ids", "labels", "attention_mask"))
    counts = {"total": sum(att), "image slots": ids.count(IMAGE_SLOT_ID),
              "trained": sum(lab != IGNORE_INDEX for lab in labels)}
    header = {"config": cfg.source, "dataset": f"{dataset_name}/{split}", "index": i,
              "section": item.get("section", ""), "image_id": item.get("image_id", ""),
              "prompt format": encoder.prompt_format.name}
    limits = {"max_txt_len": encoder.max_txt_len, "max_context_len": encoder.max_context_len}
    text = marked_text(encoder.tokenizer, ids, labels, att)
    return Rendered(text, counts, dict(batch["truncation"]), limits, header)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``render``'s flags."""
    from minigpt4.common.config import add_config_args

    add_config_args(p)
    p.add_argument("--dataset", default=None, help="dataset entry of the config (default: the first one)")
    p.add_argument("--split", default="train")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--index", type=int, default=None, help="sample index in the split (default 0)")
    group.add_argument("--section", default=None, help="the first sample of this section")


def run(args: argparse.Namespace) -> Tuple[int, str]:
    """Load the config (paths of weights are not needed) and render; returns (status, printout)."""
    from minigpt4.common.config import load_config

    no_weights = [f"model.{key}=null" for key in WEIGHT_KEYS]  # never loaded here; the user's options come after
    cfg = load_config(args.cfg_path, no_weights + list(args.options or []), check_paths=False)
    name = args.dataset or next(iter(cfg.datasets), None)
    if name is None:
        raise RenderError(f"{cfg.source} has no datasets section")
    return 0, render_sample(cfg, name, args.split, args.index, args.section).report()
