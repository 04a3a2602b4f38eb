"""``facegpt-data render``: a training sample as the model sees it, from the tiny config and the synthetic data,
with only a tokenizer folder as the LLM (no weights of any kind are read)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from minigpt4.tools import data

CFG = str(Path(__file__).resolve().parents[2] / "train_configs" / "tiny_minigpt_v2.yaml")
SECTION = "Human or not"


@pytest.fixture(scope="module")
def tokenizer_only(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Path:
    """The tiny LLaMA folder without its weights: tokenizer files only."""
    folder = tmp_path_factory.mktemp("tok_only") / "llm"
    folder.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny_llama_dir / name).is_file():
            shutil.copy(tiny_llama_dir / name, folder / name)
    return folder


def _render(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, root: Path, llm: Path,
            *args: str, options: tuple = ()) -> tuple:
    monkeypatch.setenv("FACEGPT_DATA", str(root))
    status = data.main(["render", "--cfg-path", CFG, *args, "--options", f"model.llama_model={llm}", *options])
    out = capsys.readouterr()
    return status, out.out, out.err


def _section_answers(root: Path, section: str) -> set:
    annotations = root / "GPT4VisionData" / "Annotations" / "gpt4VisionCalls_Cleaned_BySection.json"
    by_section = json.loads(annotations.read_text())
    records = next(v for k, v in by_section.items() if k.strip() == section)
    return {r["conversations"][1]["value"] for r in records}


def test_render_marks_image_slots_and_the_trained_answer(monkeypatch, capsys, synth_data_root: Path,
                                                         tokenizer_only: Path) -> None:
    status, out, _ = _render(monkeypatch, capsys, synth_data_root, tokenizer_only, "--section", SECTION)
    assert status == 0
    assert f"section: {SECTION}" in out and "prompt format: minigptv2" in out
    line = next(ln for ln in out.splitlines() if "<|image x" in ln)
    assert line.startswith("<s>[INST] <Img><|image x 64|></Img> ") and "[/INST]⟦" in line
    trained = re.findall(r"⟦(.*?)⟧", line)
    assert len(trained) == 1 and trained[0].endswith("</s>")
    assert trained[0][:-len("</s>")] in _section_answers(synth_data_root, SECTION)
    counts = re.search(r"tokens: total (\d+), image slots (\d+), trained (\d+)", out)
    assert counts and int(counts[2]) == 64 and int(counts[3]) > 0 and int(counts[1]) > 64 + int(counts[3])
    assert "truncation: none (max_txt_len=64" in out


def test_render_reports_truncation_and_bad_choices(monkeypatch, capsys, synth_data_root: Path,
                                                   tokenizer_only: Path) -> None:
    status, out, _ = _render(monkeypatch, capsys, synth_data_root, tokenizer_only, "--index", "0",
                             options=("model.max_txt_len=3",))
    assert status == 0 and "truncation: answer block cut at max_txt_len=3" in out
    assert re.search(r"trained 3\b", out)
    status, _, err = _render(monkeypatch, capsys, synth_data_root, tokenizer_only, "--section", "Nope")
    assert status == 2 and "--section 'Nope': no sample of that section; sections here: [" in err
    assert len(err.strip().splitlines()) == 1
