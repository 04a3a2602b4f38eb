"""Closed-set evaluation: candidates ranked by the model's own loss, open-ended sections skipped, baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

from minigpt4.common.registry import registry
from minigpt4.tools.evaluate import candidate_losses, closed_sets, evaluate_closed_set

Q = "<Img><ImageHere></Img> How does this person feel? "


class _Items:
    """A minimal dataset: a list of items (no annotation records, so answers are read from the items)."""

    def __init__(self, items: List[Dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.items[i]


@pytest.fixture(scope="module")
def tiny_v2(tiny_llama_dir: Path) -> Any:
    cls = registry.get_model_class("minigpt_v2")
    cfg = cls.default_config("tiny", {"llama_model": str(tiny_llama_dir), "vit_ckpt": None, "freeze_vit": False})
    torch.manual_seed(0)
    return cls.from_config(cfg).eval()


def _image(seed: int, size: int) -> torch.Tensor:
    return torch.randn(3, size, size, generator=torch.Generator().manual_seed(seed))


def test_candidate_losses_equal_the_models_own_loss_per_sample(tiny_v2: Any) -> None:
    size = tiny_v2.cfg.image_size
    images = torch.stack([_image(0, size), _image(1, size)])
    cands = ["The person looks happy.", "The person looks sad."]
    losses = candidate_losses(tiny_v2, images, [Q, Q], cands)
    assert losses.shape == (2, 2)
    with torch.no_grad():
        for i in range(2):
            for k, cand in enumerate(cands):
                own = tiny_v2({"image": images[i:i + 1], "instruction_input": [Q], "answer": [cand]})["loss"]
                assert losses[i, k].item() == pytest.approx(own.item(), rel=1e-5)


def test_closed_sets_skip_open_ended_sections() -> None:
    pairs = [("Expr", "happy"), ("Expr", "sad"), ("Expr", "happy"), ("Long", "a"), ("Long", "b"), ("Long", "c"),
             ("One", "only")]
    sets, skipped = closed_sets(pairs, max_candidates=2)
    assert sets == {"Expr": ["happy", "sad"]}
    assert skipped == {"Long": 3, "One": 1}


def test_accuracy_is_the_share_of_lowest_loss_picks_with_chance_and_majority(tiny_v2: Any) -> None:
    size = tiny_v2.cfg.image_size
    answers = ["The person looks happy.", "The person looks sad.", "The person looks happy."]
    items = [{"image": _image(i, size), "instruction_input": Q, "answer": a, "section": "Expr"}
             for i, a in enumerate(answers)]
    items.append({"image": _image(9, size), "instruction_input": Q, "answer": "free text", "section": "Open"})
    report = evaluate_closed_set(tiny_v2, _Items(items), max_candidates=2, batch_size=2)
    (result,) = report.sections
    cands = sorted(set(answers))
    losses = candidate_losses(tiny_v2, torch.stack([it["image"] for it in items[:3]]), [Q] * 3, cands)
    expected = sum(cands[int(losses[i].argmin())] == answers[i] for i in range(3))
    assert (result.section, result.n, result.correct) == ("Expr", 3, expected)
    assert result.chance == pytest.approx(0.5) and result.majority == pytest.approx(2 / 3)
    assert report.skipped == {"Open": 1}
    assert "Expr" in report.table() and "open-ended" in report.table()
    limited = evaluate_closed_set(tiny_v2, _Items(items), max_candidates=2, max_per_section=1)
    assert limited.sections[0].n == 1


def test_candidate_losses_run_under_the_precision_policy_given(tiny_v2: Any) -> None:
    from minigpt4.common.precision import PrecisionPolicy

    seen: List[bool] = []
    hook = tiny_v2.llama_model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    images = _image(0, tiny_v2.cfg.image_size)[None]
    try:
        candidate_losses(tiny_v2, images, [Q], ["Happy."])
        candidate_losses(tiny_v2, images, [Q], ["Happy."], precision=PrecisionPolicy("bf16", "cpu"))
    finally:
        hook.remove()
    assert seen == [False, True]  # fp32 by default; the policy's autocast when given (the model opens none)


def test_rank_mode_of_the_command_line_keeps_the_loss_ranking_table(tiny_llama_dir: Path, synth_data_root: Path,
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture) -> None:
    import json

    from minigpt4.tools import evaluate
    from minigpt4.tools.tiny_weights import write_tiny_eva

    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))
    eva = write_tiny_eva(tmp_path / "eva_vit_g.pth")
    cfg = Path(__file__).resolve().parents[1] / "train_configs" / "tiny_minigpt_v2.yaml"
    status = evaluate.main(["--cfg-path", str(cfg), "--options", f"model.llama_model={tiny_llama_dir}",
                            f"model.vit_ckpt={eva}", "--mode", "rank", "--max-per-section", "1", "--device", "cpu",
                            "--json", str(tmp_path / "rank.json")])
    assert status == 0
    report = json.loads((tmp_path / "rank.json").read_text())
    names = {r["section"].strip() for r in report["sections"]}
    assert {"Human or not", "Fitzpatrick"} <= names and all(r["n"] == 1 for r in report["sections"])
    assert "Facial Characteristics Long" in report["skipped"]  # free text: not ranked
    assert "question type" in capsys.readouterr().out


def test_rank_mode_reads_the_checkpoint_given_with_ckpt(tiny_llama_dir: Path, synth_data_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """``--ckpt`` reaches rank mode (it once scored the config's model and ignored the flag): a checkpoint of another
    model is refused, and so are two checkpoints."""
    from minigpt4.common.checkpoint_io import atomic_torch_save
    from minigpt4.common.config import load_config
    from minigpt4.tools import evaluate
    from minigpt4.tools.tiny_weights import write_tiny_eva

    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))
    cfg = Path(__file__).resolve().parents[1] / "train_configs" / "tiny_minigpt_v2.yaml"
    options = [f"model.llama_model={tiny_llama_dir}", f"model.vit_ckpt={write_tiny_eva(tmp_path / 'eva.pth')}"]
    config = load_config(cfg, options).to_dict()
    config["model"]["arch"] = "minigpt4"
    other = atomic_torch_save({"model": {}, "config": config}, tmp_path / "v1.pth")
    base = ["--cfg-path", str(cfg), "--options", *options, "--mode", "rank", "--max-per-section", "1", "--device",
            "cpu"]
    assert evaluate.main([*base, "--ckpt", str(other)]) == 2
    assert "minigpt4" in capsys.readouterr().err
    assert evaluate.main([*base, "--ckpt", str(other), "--ckpt", str(other)]) == 2
    assert "one checkpoint" in capsys.readouterr().err
