"""Linear probes: which stage of a model keeps what the image shows?

For every attribute of a synthetic data set's ``metadata.json`` (``facegpt-data synth``), a linear probe (a ridge
classifier in closed form, its regularisation chosen by cross-validation on the probe's training images) is fit on

* ``tower``: the vision tower's features after ``ln_vision``, averaged over the patch tokens (``[B, D]``), and
* ``tokens``: the projected image tokens the LLM sees, ``llama_proj`` of the connector's output (for a
  word-mixture model with its vocabulary, the word mixtures made of it), flattened (``[B, n·H]``),

and scored on held-out images, next to uniform chance and the majority label's share. With ``--baseline`` the
same probes also run on the model as the config builds it without ``model.ckpt`` (the untrained tower), so one
command shows before and after training. Reading the result: a tower probe at chance means the tower never
separates the attribute; tower above chance but tokens at chance means the connector loses it; both well above
chance while the generated answers stay at chance means the LLM side does not use the image tokens.

With ``--words`` it also scores what the image tokens *say* in the LLM's word space, with nothing fitted: for each
attribute whose answer sentences ``metadata.json`` records (``answers``), the words of a value's sentence that no
other value's sentence has ("glasses" in "The person wears glasses."); an image names the value whose word has the
highest cosine similarity to one of its image tokens. Scored on the training images and on the held-out ones: a
high training score with a low held-out one means the connector learned its training images, not the attribute.

The held-out images are those of the run's held-out splits (``task.build_datasets``: the val split of every
dataset of the config, content-clean across datasets); every other image of ``metadata.json`` trains the probe.

    python -m minigpt4.tools.probe --cfg-path train_configs/demo_smollm2.yaml --baseline \\
        --options model.llama_model=/path/SmolLM2.gguf model.ckpt=demo_output/runs/.../checkpoint_0.pth
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from minigpt4.common.errors import UserError, entry_point
from minigpt4.common.logger import get_logger, setup_logging
from minigpt4.models.word_mixture import VOCAB_BUFFER

logger = get_logger(__name__)

FEATURES = ("tower", "tokens")
LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


class ProbeSetupError(UserError, ValueError):
    """The probe cannot run on what it was given (metadata, images, split); the message names the fix."""


@dataclass
class AttributeProbe:
    """Held-out accuracy of the probes of one attribute."""

    attribute: str
    classes: List[str]
    n_train: int
    n_test: int
    chance: float
    majority: float  # share of the held-out images that carry the probe-training set's most common label
    accuracy: Dict[str, float] = field(default_factory=dict)  # "<stage>" or "<stage> (init)" -> accuracy


# ------------------------------------------------------------------------------------------- the probe
def ridge_fit_predict(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, n_classes: int,
                      lam: float) -> torch.Tensor:
    """Ridge regression onto one-hot labels (features standardised on the training rows); predicted classes.

    ``x_train`` ``[n, d]``, ``y_train`` ``[n]`` (class indices), ``x_test`` ``[m, d]`` → ``[m]``. Solved in the
    dual (an ``n x n`` system), which is exact for any ``d`` and cheap when images are fewer than features.
    """
    x_train, x_test = x_train.double(), x_test.double()
    mean, std = x_train.mean(0, keepdim=True), x_train.std(0, keepdim=True).clamp_min(1e-6)  # (1, d)
    a, b = (x_train - mean) / std, (x_test - mean) / std
    targets = torch.nn.functional.one_hot(y_train, n_classes).double()  # (n, C)
    offset = targets.mean(0, keepdim=True)  # (1, C): the intercept
    gram = a @ a.T  # (n, n)
    alpha = torch.linalg.solve(gram + lam * a.shape[1] / 100 * torch.eye(len(a), dtype=gram.dtype),
                               targets - offset)  # (n, C)
    scores = b @ (a.T @ alpha) + offset  # (m, d) @ (d, C) -> (m, C)
    return scores.argmax(1)


def choose_lambda(x: torch.Tensor, y: torch.Tensor, n_classes: int, folds: int = 3,
                  lambdas: Sequence[float] = LAMBDAS) -> float:
    """The regularisation with the best ``folds``-fold cross-validated accuracy on the probe's training rows."""
    order = torch.arange(len(y))
    best, best_acc = lambdas[0], -1.0
    for lam in lambdas:
        correct = 0
        for k in range(folds):
            test = order % folds == k
            if test.all() or not test.any():
                continue
            pred = ridge_fit_predict(x[~test], y[~test], x[test], n_classes, lam)
            correct += int((pred == y[test]).sum())
        acc = correct / len(y)
        if acc > best_acc:
            best, best_acc = lam, acc
    return best


def probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   n_classes: int) -> float:
    """Held-out accuracy of a ridge probe whose regularisation is chosen on the training rows alone."""
    lam = choose_lambda(x_train, y_train, n_classes)
    pred = ridge_fit_predict(x_train, y_train, x_test, n_classes, lam)
    return float((pred == y_test).double().mean())


# ------------------------------------------------------------------------------------------- features
@torch.no_grad()
def _has_image_vocabulary(model: Any) -> bool:
    """A word-mixture model whose vocabulary is set (an untrained one has none: its projection is probed)."""
    vocab = getattr(model, VOCAB_BUFFER, None) if getattr(model, "word_mixture", False) else None
    return vocab is not None and vocab.numel() > 0


def image_features(model: Any, pixels: torch.Tensor, batch_size: int = 32) -> Dict[str, torch.Tensor]:
    """``pixels`` ``[B, 3, S, S]`` → ``{"tower": [B, D], "tokens": [B, n*H]}`` (see the module docstring)."""
    tower, tokens = [], []
    was_training = model.training
    model.eval()
    dtype = next(model.visual_encoder.parameters()).dtype
    try:
        for start in range(0, len(pixels), batch_size):
            batch = pixels[start:start + batch_size].to(model.device, dtype)
            feats = model.vision_features(batch)  # (b, 1+N, D)
            tower.append(feats[:, 1:].float().mean(1).cpu())  # (b, N, D) -> (b, D)
            embeds = model.llama_proj(model.image_tokens(feats).to(model.llama_proj.weight.dtype))  # (b, n, H)
            if _has_image_vocabulary(model):  # a word-mixture model: the mixtures (and group tokens) the LLM reads
                embeds = model.llm_image_tokens(embeds)  # (b, n, H) -> (b, N, H)
            tokens.append(embeds.float().cpu())  # (b, N, H)
    finally:
        model.train(was_training)
    return {"tower": torch.cat(tower), "tokens": torch.cat(tokens).flatten(1)}  # (B, N, H) -> (B, N*H)


def value_words(answers: Dict[str, str], tokenizer: Any) -> Dict[str, List[int]]:
    """Per value of one attribute, the token ids of its answer sentence that no other value's sentence has."""
    ids = {value: set(tokenizer.encode(sentence)) for value, sentence in answers.items()}
    return {value: sorted(own - set().union(*(ids[v] for v in ids if v != value))) for value, own in ids.items()}


def word_predictions(token_seq: torch.Tensor, table: torch.Tensor, words: Dict[str, List[int]]) -> List[str]:
    """Per image, the value whose distinguishing word is closest (cosine) to one of its image tokens.

    ``token_seq`` ``[B, n, H]`` (the projected image tokens), ``table`` the LLM's input embeddings ``[V, H]``.
    A value without a word of its own never wins."""
    values = [v for v in words if words[v]]
    if not values:
        return ["" for _ in range(len(token_seq))]
    img = torch.nn.functional.normalize(token_seq.float(), dim=-1)  # (B, n, H)
    scores = []
    for value in values:
        emb = torch.nn.functional.normalize(table[words[value]].float(), dim=-1)  # (w, H)
        scores.append((img @ emb.T).amax(dim=(1, 2)))  # (B, n, w) -> (B,)
    best = torch.stack(scores, dim=1).argmax(dim=1)  # (B, values) -> (B,)
    return [values[int(i)] for i in best]


# ------------------------------------------------------------------------------------------- data
def read_metadata(path: Path) -> Dict[str, Any]:
    """``metadata.json`` of ``facegpt-data synth`` (one line naming the fix when it is missing or foreign)."""
    if not path.is_file():
        raise ProbeSetupError(f"{path}: no metadata.json; the probe needs a synthetic data set "
                              "(python -m minigpt4.tools.data synth --out DIR) or --metadata PATH")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or not isinstance(meta.get("images"), list) or not meta["images"]:
        raise ProbeSetupError(f"{path}: expected the synthetic set's metadata (an 'images' list with attributes)")
    return meta


def image_paths(meta: Dict[str, Any], root: Path) -> List[str]:
    """Full path of every image of ``meta`` (its copy under ``GPT4VisionData/Images``)."""
    return [str(root / "GPT4VisionData" / "Images" / im["paths"]["GPT4VisionData"]) for im in meta["images"]]


def held_out_mask(cfg: Any, paths: Sequence[str]) -> torch.Tensor:
    """``[len(paths)]`` bool: the image equals (by content) an image of a held-out split of the config's datasets."""
    from minigpt4.datasets.identity import build_run_datasets, content_key, record_image_paths

    datasets, _ = build_run_datasets(cfg)
    held: set = set()
    for splits in datasets.values():
        for split, dataset in splits.items():
            if split != "train":
                held.update(content_key(p) for p in record_image_paths(dataset) or () if p and os.path.isfile(p))
    mask = torch.tensor([content_key(p) in held for p in paths])
    if not mask.any() or mask.all():
        raise ProbeSetupError(f"{getattr(cfg, 'source', 'the config')}: {int(mask.sum())} of {len(paths)} images are "
                              "held out; the probe needs both held-out and training images (set a val split, e.g. "
                              "datasets.facegpt4vision.split.val_fraction=0.2, or use --split random)")
    return mask


def random_mask(n: int, fraction: float, seed: int) -> torch.Tensor:
    """``[n]`` bool: a seeded random ``fraction`` of the images held out."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:max(1, round(fraction * n))]] = True
    return mask


# ------------------------------------------------------------------------------------------- the run
def probe_attributes(meta: Dict[str, Any], feats: Dict[str, Dict[str, torch.Tensor]], test: torch.Tensor,
                     attributes: Optional[Sequence[str]] = None,
                     named: Optional[Dict[str, Dict[str, List[str]]]] = None) -> List[AttributeProbe]:
    """One :class:`AttributeProbe` per attribute; ``feats`` is ``{column name: {stage: [N, d]}}``, ``named``
    (``--words``) ``{column name: {attribute: the value each image's tokens name}}``."""
    names = list(attributes or meta.get("attributes") or meta["images"][0]["attributes"])
    results = []
    for attr in names:
        values = [im["attributes"].get(attr, "") for im in meta["images"]]
        classes = sorted({v for v in values if v})
        keep = torch.tensor([bool(v) for v in values])
        train, held = keep & ~test, keep & test
        if len(classes) < 2 or not train.any() or not held.any():
            logger.warning("attribute %s: skipped (%d classes, %d training and %d held-out images)", attr,
                           len(classes), int(train.sum()), int(held.sum()))
            continue
        y = torch.tensor([classes.index(v) if v else -1 for v in values])
        counts = torch.bincount(y[train], minlength=len(classes))
        result = AttributeProbe(attr, classes, int(train.sum()), int(held.sum()), 1.0 / len(classes),
                                float((y[held] == counts.argmax()).double().mean()))
        for column, stages in feats.items():
            for stage, x in stages.items():
                name = stage if not column else f"{stage} {column}"
                result.accuracy[name] = probe_accuracy(x[train], y[train], x[held], y[held], len(classes))
        for column, by_attr in (named or {}).items():
            if attr not in by_attr:
                continue
            right = torch.tensor([p == v for p, v in zip(by_attr[attr], values)])
            for part, mask in (("train", train), ("held-out", held)):
                name = f"words {part}" if not column else f"words {part} {column}"
                result.accuracy[name] = float(right[mask].double().mean())
        results.append(result)
    return results


def table(results: Sequence[AttributeProbe]) -> str:
    """The probe accuracies as a Markdown table (held-out images), chance and majority beside them."""
    columns = list(results[0].accuracy) if results else []
    head = ["attribute", "classes", "train", "held-out", "chance", "majority", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.attribute, str(len(r.classes)), str(r.n_train), str(r.n_test), f"{100 * r.chance:.1f}%",
                 f"{100 * r.majority:.1f}%", *(f"{100 * r.accuracy[c]:.1f}%" for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_pixels(paths: Sequence[str], vis_processor: Any) -> torch.Tensor:
    """The images through the model's eval image processor: ``[N, 3, S, S]``."""
    from minigpt4.processors.image_io import open_image

    opener = getattr(vis_processor, "open", open_image)
    return torch.stack([vis_processor(opener(p)) for p in paths])  # N x (3, S, S) -> (N, 3, S, S)


def build_model(cfg_path: str, options: Sequence[str], seed: int) -> Any:
    """The model as chat and evaluation build it (:func:`minigpt4.api.load_model`), on CPU, seeded init."""
    from minigpt4 import api

    torch.manual_seed(seed)
    return api.load_model(cfg_path, list(options), "cpu")


def run_probe(cfg_path: str, options: Sequence[str], *, metadata: Optional[Path] = None, split: str = "run",
              held_out_fraction: float = 0.3, seed: int = 0, baseline: bool = False,
              attributes: Optional[Sequence[str]] = None, batch_size: int = 32,
              words: bool = False) -> List[AttributeProbe]:
    """Features of every image of the synthetic set under the trained model (and, with ``baseline``, the untrained
    one), probes fit on the training images, scored on the held-out ones; with ``words``, also the values the image
    tokens name (:func:`word_predictions`) on training and held-out images."""
    from minigpt4.common.config import load_config

    root = metadata.parent if metadata else Path(os.environ.get("FACEGPT_DATA", "."))
    meta = read_metadata(metadata or root / "metadata.json")
    cfg = load_config(cfg_path, list(options), check_dataset_paths=False, checkpoint_config=True)
    paths = image_paths(meta, root)
    test = held_out_mask(cfg, paths) if split == "run" else random_mask(len(paths), held_out_fraction, seed)
    has_ckpt = bool(cfg.model.get("ckpt"))
    runs: List[Tuple[str, List[str]]] = [("" if not baseline else "trained" if has_ckpt else "init", list(options))]
    if baseline and has_ckpt:
        untrained = [*options, "model.ckpt=null"]
        if cfg.model.get("vit_init_seed") is not None:  # the checkpoint's tower is rebuilt from its seed: the same one
            untrained.append(f"model.vit_init_seed={cfg.model.vit_init_seed}")
        runs.insert(0, ("init", untrained))
    feats: Dict[str, Dict[str, torch.Tensor]] = {}
    named: Dict[str, Dict[str, List[str]]] = {}
    if words and not any(isinstance(meta.get("answers", {}).get(a), dict) for a in meta.get("attributes", {})):
        raise ProbeSetupError(f"{metadata or root / 'metadata.json'}: --words needs each attribute's answer sentences "
                              "('answers' in metadata.json, written by python -m minigpt4.tools.data synth)")
    for column, opts in runs:
        model = build_model(cfg_path, opts, seed)
        pixels = load_pixels(paths, model.engine.vis_processor)
        logger.info("probe: features of %d images (%s)", len(paths), column or "the model")
        feats[column] = image_features(model.model, pixels, batch_size)
        if words:
            named[column] = name_values(model.model, feats[column]["tokens"], meta)
        del model
    by_stage = {col: feats[col] for col in feats}
    return probe_attributes(meta, by_stage, test, attributes, named)


def name_values(model: Any, tokens: torch.Tensor, meta: Dict[str, Any]) -> Dict[str, List[str]]:
    """Per attribute with answer sentences in ``meta``, the value each image's tokens name (``tokens`` ``[N, n*H]``
    from :func:`image_features`)."""
    table = model.llama_model.get_input_embeddings().weight.detach()  # (V, H)
    token_seq = tokens.reshape(tokens.shape[0], -1, table.shape[1])  # (N, n*H) -> (N, n, H)
    named = {}
    for attr, answers in (meta.get("answers") or {}).items():
        if isinstance(answers, dict) and len(answers) > 1:
            named[attr] = word_predictions(token_seq, table, value_words(answers, model.tokenizer))
    return named


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minigpt4.tools.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--cfg-path", required=True, help="training or eval config of the model")
    parser.add_argument("--options", nargs="+", default=[], help="config overrides, e.g. model.ckpt=RUN/ckpt.pth")
    parser.add_argument("--metadata", type=Path, help="metadata.json of the synthetic set (default: "
                        "$FACEGPT_DATA/metadata.json)")
    parser.add_argument("--split", choices=("run", "random"), default="run",
                        help="held-out images: the run's held-out splits (default) or a seeded random share")
    parser.add_argument("--held-out-fraction", type=float, default=0.3, help="with --split random")
    parser.add_argument("--baseline", action="store_true",
                        help="also probe the model built without model.ckpt (before training)")
    parser.add_argument("--words", action="store_true",
                        help="also score the value each image's tokens name in the LLM's word space (training and "
                             "held-out images; needs the answer sentences of metadata.json)")
    parser.add_argument("--attributes", nargs="+", help="only these attributes (default: all in metadata.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


@entry_point("python -m minigpt4.tools.probe")
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the probes and print the table; 0 = done, 2 = a fault in the flags, config or data (one line)."""
    args = build_parser().parse_args(argv)
    if not 0 < args.held_out_fraction < 1:
        raise ProbeSetupError(f"--held-out-fraction must lie strictly between 0 and 1, got {args.held_out_fraction}")
    setup_logging()
    results = run_probe(args.cfg_path, args.options, metadata=args.metadata, split=args.split,
                        held_out_fraction=args.held_out_fraction, seed=args.seed, baseline=args.baseline,
                        attributes=args.attributes, batch_size=args.batch_size, words=args.words)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
