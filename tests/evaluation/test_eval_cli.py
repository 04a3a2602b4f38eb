"""``facegpt-eval`` end to end on the tiny MiniGPT-v2 and the synthetic face set (train_configs/tiny_minigpt_v2.yaml).

Claims: a held-out run writes predictions.jsonl, report.json, report.md and a confusion PNG per closed-set section,
its answers are the API's batched greedy answers and its scores are those of the label maps on those answers; a
run stopped after a few samples (last line cut) and continued with --resume equals one uninterrupted run; two
checkpoints are scored side by side with their differences; images seen in training are refused (or scored with a
loud warning under --allow-seen); a checkpoint of another model, an unknown file layout and a missing image are
one-line errors naming the file / record.

The first run builds the model through the command line's real path (``minigpt4.api.load_model``); later runs reuse
the model built for the same (config, options, device) so that the file stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

import minigpt4.api
from minigpt4.evaluation.labels import find_label_map, load_label_maps
from minigpt4.tools import evaluate

REPO = Path(__file__).resolve().parents[2]
TRAIN_CFG = REPO / "train_configs" / "tiny_minigpt_v2.yaml"
SECTION_FILE = "GPT4VisionData/Annotations/gpt4VisionCalls_Cleaned_BySection.json"
SECTIONS = ["Human or not", "Fitzpatrick", "Facial Characteristics Short"]
FAST = ["--max-new-tokens", "4", "--batch-size", "3", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def options(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> List[str]:
    from minigpt4.tools.tiny_weights import write_tiny_eva

    eva = write_tiny_eva(tmp_path_factory.mktemp("eval_weights") / "eva_vit_g.pth")
    return [f"model.llama_model={tiny_llama_dir}", f"model.vit_ckpt={eva}"]


@pytest.fixture(scope="module")
def built() -> Dict[Any, Any]:
    return {}


@pytest.fixture(autouse=True)
def reuse_model(built: Dict[Any, Any], synth_data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[Any, Any]:
    """``load_model`` builds once per (config, options, device); the data root is the synthetic set."""
    real = minigpt4.api.load_model
    monkeypatch.setenv("FACEGPT_DATA", str(synth_data_root))

    def load_once(cfg: Any, options: Any = None, device: Any = None, settings: Any = None) -> Any:
        key = (str(cfg), tuple(options or ()), str(device))
        if key not in built:
            torch.manual_seed(0)
            built[key] = real(cfg, options, device, settings)
        return built[key]

    monkeypatch.setattr(minigpt4.api, "load_model", load_once)
    return built


def _run(options: List[str], *extra: str) -> int:
    return evaluate.main(["--cfg-path", str(TRAIN_CFG), "--options", *options, *FAST, *extra])


def _rows(out: Path, cut: int = 0) -> List[Dict[str, Any]]:
    """The JSON lines of the log; exactly ``cut`` lines may be cut short (by a killed run)."""
    rows, broken = [], 0
    for line in (out / "predictions.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            broken += 1
    assert broken == cut
    return rows


def _one_line(err: str) -> List[str]:
    return [ln for ln in err.splitlines() if ln.startswith("python -m minigpt4.tools.evaluate: ")]


def test_heldout_run_writes_every_file_with_the_apis_answers_scored_by_the_label_maps(
        options: List[str], built: Dict[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert _run(options, "--sections", *SECTIONS, "--max-per-section", "2", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text() in printed
    sections = {e["section"]: e for e in report["sections"]}
    assert sorted(sections) == sorted(SECTIONS) and report["checkpoints"] == ["A"]
    for section in ("human_or_not", "fitzpatrick"):
        assert (out / f"confusion_{section}_A.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(out)
    assert len(rows) == sum(e["n"] for e in report["sections"]) == 6 and len({r["id"] for r in rows}) == 6
    (model,) = built.values()
    predicted = model.predict([r["image"] for r in rows], [r["question"] for r in rows], batch_size=6,
                              max_new_tokens=4)
    assert [r["answer"] for r in rows] == predicted  # greedy: the batch the answer was in does not matter
    maps = load_label_maps()
    for entry in (sections["Human or not"], sections["Fitzpatrick"]):
        mine = [r for r in rows if r["section"] == entry["section"]]
        label_map = find_label_map(maps, entry["section"])
        right = sum(label_map.parse(r["answer"]) == label_map.parse(r["reference"]) for r in mine)
        assert entry["kind"] == "closed" and entry["scores"]["A"]["accuracy"] == pytest.approx(right / len(mine))
    assert sections[SECTIONS[2]]["kind"] == "open" and set(sections[SECTIONS[2]]["scores"]["A"]) >= {
        "bleu4", "chrf", "rouge_l", "cider_d", "answer_words", "refusal", "hedge"}


def test_a_resumed_run_equals_one_uninterrupted_run(options: List[str], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    select = ["--sections", *SECTIONS, "--max-per-section", "2"]
    assert _run(options, *select, "--out", str(whole)) == 0
    assert _run(options, *select, "--limit", "4", "--out", str(resumed)) == 0
    log = resumed / "predictions.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) == 4
    log.write_text("".join(lines[:3]) + lines[3][:25])  # killed while writing the 4th line
    capsys.readouterr()
    assert _run(options, *select, "--out", str(resumed)) == 2  # a used folder needs --resume
    assert "add --resume to continue" in _one_line(capsys.readouterr().err)[0]
    assert _run(options, *select, "--out", str(resumed), "--resume") == 0
    assert {r["id"]: r["answer"] for r in _rows(resumed, cut=1)} == {r["id"]: r["answer"] for r in _rows(whole)}
    assert len(_rows(resumed, cut=1)) == 6  # 3 kept + 3 answered (the cut one again)
    strip = lambda path: {k: v for k, v in json.loads(path.read_text()).items() if k != "meta"}  # noqa: E731
    assert strip(resumed / "report.json") == strip(whole / "report.json")
    capsys.readouterr()
    assert _run(options, *select, "--out", str(resumed), "--resume", "--max-new-tokens", "5") == 2
    (line,) = _one_line(capsys.readouterr().err)
    assert "--resume" in line and "other generation" in line


def test_two_checkpoints_side_by_side(options: List[str], built: Dict[Any, Any], tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    from minigpt4.runners.checkpointing import save_weights

    assert _run(options, "--sections", "Fitzpatrick", "--max-per-section", "1", "--out", str(tmp_path / "warm")) == 0
    model = next(iter(built.values()))
    base, tuned = tmp_path / "base.pth", tmp_path / "tuned.pth"
    save_weights(model.model, base, {"config": model.config.to_dict()})
    proj = model.model.llama_proj.weight
    kept = proj.detach().clone()
    with torch.no_grad():
        proj.add_(torch.randn(proj.shape, generator=torch.Generator().manual_seed(3)))
    save_weights(model.model, tuned, {"config": model.config.to_dict()})
    with torch.no_grad():
        proj.copy_(kept)
    out = tmp_path / "out"
    assert _run(options, "--sections", *SECTIONS, "--max-per-section", "2", "--ckpt", str(base), "--ckpt",
                str(tuned), "--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoints"] == ["A", "B"] and report["meta"]["checkpoint_paths"] == [str(base), str(tuned)]
    for entry in report["sections"]:
        a, b, diff = entry["scores"]["A"], entry["scores"]["B"], entry["difference"]["B - A"]
        assert diff and all(diff[k] == pytest.approx(b[k] - a[k]) for k in diff)
    rows = _rows(out)
    assert sorted({r["checkpoint"] for r in rows}) == sorted([str(base), str(tuned)]) and len(rows) == 12
    mine = [r for r in rows if r["checkpoint"] == str(base)]
    assert [r["answer"] for r in mine] == model.predict([r["image"] for r in mine], [r["question"] for r in mine],
                                                        max_new_tokens=4)  # A holds the built model's weights
    md = (out / "report.md").read_text()
    assert "| section | kind | n | metric | A | B | B − A | chance | majority |" in md
    assert (out / "confusion_fitzpatrick_B.png").is_file()


def test_images_seen_in_training_are_refused_unless_allowed(options: List[str], synth_data_root: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = ["--data", str(synth_data_root / SECTION_FILE), "--image-root", str(synth_data_root / "GPT4VisionData"
                                                                                / "Images")]
    assert _run(options, *data, "--sections", "Fitzpatrick") == 2
    (line,) = _one_line(capsys.readouterr().err)
    assert "image(s) to score are training images" in line and "--allow-seen" in line
    seen, total = (int(x) for x in line.split(": ", 2)[2].split(" image(s)")[0].split(" of "))
    assert 0 < seen <= total
    assert _run(options, *data, "--sections", "Fitzpatrick", "--limit", "2", "--allow-seen",
                "--out", str(tmp_path / "seen")) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "training images" in err
    assert json.loads((tmp_path / "seen" / "report.json").read_text())["sections"][0]["n"] <= 2


def test_a_checkpoint_of_another_model_is_a_one_line_error(options: List[str], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    from minigpt4.common.checkpoint_io import atomic_torch_save

    from minigpt4.common.config import load_config

    config = load_config(TRAIN_CFG, options).to_dict()
    config["model"]["arch"] = "minigpt4"
    other = atomic_torch_save({"model": {}, "config": config}, tmp_path / "v1.pth")
    assert _run(options, "--sections", "Fitzpatrick", "--limit", "1", "--ckpt", str(other)) == 2
    (line,) = _one_line(capsys.readouterr().err)
    assert "model.arch" in line and "minigpt4" in line


def test_bad_data_files_are_one_line_errors(options: List[str], synth_data_root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    odd = tmp_path / "odd.json"
    odd.write_text('"just a string"')
    assert _run(options, "--data", str(odd)) == 2
    (line,) = _one_line(capsys.readouterr().err)
    assert str(odd) in line and "a JSON list of records or a JSON object of sections" in line
    records = [{"id": "x1", "image": "faces/there.png", "conversations": [
        {"from": "human", "value": "<image>\nIs this a human face?"}, {"from": "gpt", "value": "Yes."}]},
               {"id": "x2", "image": "faces/gone.png", "conversations": [
                   {"from": "human", "value": "<image>\nIs this a human face?"}, {"from": "gpt", "value": "No."}]}]
    (tmp_path / "faces").mkdir()
    from api_helpers import face_picture

    face_picture(tmp_path / "faces" / "there.png", 1)
    llava = tmp_path / "list.json"
    llava.write_text(json.dumps(records))
    assert _run(options, "--data", str(llava)) == 2
    (line,) = _one_line(capsys.readouterr().err)
    assert f"{llava} record #1" in line and "gone.png not found" in line
    assert _run(options, "--sections", "Nope") == 2
    (line,) = _one_line(capsys.readouterr().err)
    assert "--sections ['nope'] not in the data" in line and "Fitzpatrick" in line
    assert _run(options, "--benchmark", "facexbench") == 2
    (line,) = _one_line(capsys.readouterr().err)
    assert "--benchmark facexbench needs --root DIR" in line
    assert _run(options, "--resume") == 2
    assert "--resume continues the run in --out" in _one_line(capsys.readouterr().err)[0]


def test_a_llava_list_is_scored_with_an_eval_config(tiny_llama_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """A chat config has no training datasets: the file is scored, with a warning that seen images are unchecked."""
    from api_helpers import TINY_EVAL, face_picture, tiny_options

    records = []
    for k, answer in enumerate(["Yes, this is a human face.", "A smiling face.", "No, this is not a human face."]):
        face_picture(tmp_path / f"f{k}.png", k + 1)
        records.append({"id": k, "image": f"f{k}.png", "conversations": [
            {"from": "human", "value": "Is this a human face?\n<image>"}, {"from": "gpt", "value": answer}]})
    data = tmp_path / "list.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "out"
    status = evaluate.main(["--cfg-path", str(TINY_EVAL["minigpt_v2"]), "--options", *tiny_options(tiny_llama_dir),
                            "--data", str(data), "--out", str(out), *FAST])
    assert status == 0
    (entry,) = json.loads((out / "report.json").read_text())["sections"]
    assert (entry["section"], entry["kind"], entry["n"]) == ("(no section)", "open", 3)
    assert [r["id"] for r in _rows(out)] == [f"list/(no section)#{k}" for k in range(3)]
    assert "were seen in training" in capsys.readouterr().err
