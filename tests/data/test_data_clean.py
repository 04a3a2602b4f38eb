"""Refusal cleaning: the detector on a hand-labelled set of GPT-4V-style face answers, the cleaned text, the CLI.

``tests/fixtures/data/refusals_labelled.json`` holds outright refusals, hedge + answer, disclaimer sentence +
answer, plain answers and answers that merely mention "I" or "cannot". Its ``split`` field says when each part
was written: ``dev`` before the rules, each ``holdoutN`` after the rules of round N-1 and before those of round N.
The rules were tuned on every part but the last one, which stays unseen so that the benchmark can show how the
rules generalise (``python benchmarks/bench_refusal_detector.py``).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from data_helpers import FIXTURES
from minigpt4.tools.data import main
from minigpt4.tools.data_clean import classify_answer, clean_record, is_refusal, score_labelled

LABELLED = FIXTURES / "refusals_labelled.json"
UNTUNED_SPLIT = "holdout5"  # written last; the rules were not changed after it was scored
KINDS = {"refusal": "refusal", "hedge": "answer", "disclaimer": "answer", "plain": "answer", "mention": "answer"}
SECTIONS = {"Facial Expression due to contextual cues", "Facial Characteristics Long", "Facial Characteristics Short",
            "Feature by Feature Description", "Human or not", "Fitzpatrick", "Race", "Gender", "Race and Gender",
            "Posture", "Movement", "Intensity", "Interpretative Generalization", "Factual Generalization",
            "Multi-Person Interaction"}
CONNECTIVE = re.compile(r"^(?:however|but|that said|that being said|nevertheless|nonetheless|still|instead|yet|"
                        r"though|although)\b", re.I)


@pytest.fixture(scope="module")
def labelled() -> List[Dict[str, Any]]:
    return json.loads(LABELLED.read_text(encoding="utf-8"))


def _by_id(labelled: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {e["id"]: e for e in labelled}


# ----------------------------------------------------------------------------------------------- the labelled set
def test_labelled_set_is_consistent_and_covers_the_sections(labelled) -> None:
    assert len(labelled) >= 60 and len({e["id"] for e in labelled}) == len(labelled)
    assert {e["kind"] for e in labelled} == set(KINDS)
    assert all(KINDS[e["kind"]] == e["label"] for e in labelled)
    assert {e["section"].strip() for e in labelled} == SECTIONS
    for e in labelled:
        hedged = e["kind"] in ("hedge", "disclaimer")
        assert ("cleaned" in e) == hedged, e["id"]
        if hedged:
            text = e["cleaned"]
            assert text != e["answer"] and text[0].isupper() and text[-1] in ".!?", e["id"]
            assert not CONNECTIVE.match(text), f"{e['id']}: expected text starts with a connective"
    splits = [e["split"] for e in labelled]
    assert splits[0] == "dev" and splits[-1] == UNTUNED_SPLIT and splits == sorted(splits, key=splits.index)
    assert sum(e["split"] == UNTUNED_SPLIT for e in labelled) >= 20


def test_refusal_detection_precision_and_recall_at_least_95_percent(labelled) -> None:
    scores = score_labelled(labelled)
    assert scores["tp"] + scores["fn"] == sum(e["label"] == "refusal" for e in labelled)
    assert scores["precision"] >= 0.95 and scores["recall"] >= 0.95, (scores["precision"], scores["recall"],
                                                                      scores["errors"])
    unseen = score_labelled([e for e in labelled if e["split"] == UNTUNED_SPLIT])
    assert unseen["precision"] >= 0.9 and unseen["recall"] >= 0.9, unseen["errors"]


def test_hedged_answers_are_cleaned_to_the_expected_text(labelled) -> None:
    """Every hedge / disclaimer of the tuned parts gives exactly the expected text; over all parts >= 95 %."""
    wrong = []
    for e in labelled:
        if "cleaned" in e and e["split"] != UNTUNED_SPLIT:
            got = classify_answer(e["answer"])
            if got != ("stripped", e["cleaned"]):
                wrong.append((e["id"], got, e["cleaned"]))
    assert not wrong, wrong
    scores = score_labelled(labelled)
    assert scores["hedged_exact"] / scores["hedged"] >= 0.95


def test_answers_that_answer_are_kept_byte_for_byte(labelled) -> None:
    kept = [e for e in labelled if e["kind"] in ("plain", "mention") and e["split"] != UNTUNED_SPLIT]
    assert len(kept) >= 40
    assert [e["id"] for e in kept if classify_answer(e["answer"]) != ("ok", e["answer"])] == []
    odd = "  The person cannot be seen clearly from the waist down,  but the shoulders are relaxed.\n"
    assert classify_answer(odd) == ("ok", odd), "no disclaimer: not even whitespace changes"


def test_cleaned_text_is_well_formed(labelled) -> None:
    """Whatever the expected strings say: a stripped answer starts with a capital, not with a connective, and ends
    with an end mark, with no doubled spaces or orphan commas."""
    stripped = [classify_answer(e["answer"]) for e in labelled]
    texts = [text for verdict, text in stripped if verdict == "stripped"]
    assert len(texts) >= 60
    for text in texts:
        assert text[0].isupper() and text[-1] in ".!?'\"", text
        assert not CONNECTIVE.match(text) and "  " not in text and " ," not in text and ",." not in text, text


# ----------------------------------------------------------------------------------------- rules, built here
@pytest.mark.parametrize("answer, expected", [
    ("While I can't determine race, gender, or age, the person appears to be smiling.",
     "The person appears to be smiling."),
    ("I can\u2019t know how she feels; however, she is laughing.", "She is laughing."),
    ("The man is frowning, though I can't be certain of his mood.", "The man is frowning."),
    ("I cannot identify people. But yes, it's a human face!", "Yes, it's a human face!"),
])
def test_the_hedge_clause_goes_and_a_sentence_is_left(answer: str, expected: str) -> None:
    assert classify_answer(answer) == ("stripped", expected)


def test_paragraphs_and_quotes_survive_stripping() -> None:
    answer = ('Her shirt reads "Sorry, I can\'t help." She is smiling.\n\nI cannot determine her ethnicity from '
              'an image.\n\nShe has long dark hair.')
    assert classify_answer(answer) == ("stripped", 'Her shirt reads "Sorry, I can\'t help." She is smiling.\n\n'
                                                   'She has long dark hair.')
    assert not is_refusal("The person appears to be a woman; her T-shirt reads 'I cannot tell a lie'.")


def test_a_refusal_with_an_offer_or_commentary_is_still_a_refusal() -> None:
    assert is_refusal("I'm sorry, I can't determine someone's race. However, I can describe other aspects of the "
                      "image if you'd like.")
    assert is_refusal("I cannot determine gender from an image. Gender identity is personal and varies.")
    assert is_refusal("\u201cI\u2019m sorry, but I can\u2019t help with that.\u201d") is False, \
        "a quoted sentence is someone else's words"


def test_a_multi_turn_record_loses_only_the_refused_pair() -> None:
    record = {"id": 7, "image": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is the race of this person?"},
        {"from": "gpt", "value": "I'm sorry, I can't help with that."},
        {"from": "human", "value": "How does the person feel?"},
        {"from": "gpt", "value": "While I can't know how the person feels, the person appears to be smiling."}]}
    outcome, out, stripped = clean_record(record)
    assert (outcome, stripped) == ("ok", 1)
    assert out["conversations"] == [{"from": "human", "value": "<image>\nHow does the person feel?"},
                                    {"from": "gpt", "value": "The person appears to be smiling."}]
    assert record["conversations"][3]["value"].startswith("While"), "the input record is not modified"


def test_score_labelled_counts_and_rejects_bad_labels() -> None:
    scores = score_labelled([
        {"id": "a", "answer": "I'm sorry, I can't help with that.", "label": "refusal"},  # TP
        {"id": "b", "answer": "The person is smiling.", "label": "refusal"},  # FN
        {"id": "c", "answer": "I can't identify people.", "label": "answer"},  # FP
        {"id": "d", "answer": "I can't identify people. She smiles.", "label": "answer", "cleaned": "She smiles."},
    ])
    assert (scores["tp"], scores["fn"], scores["fp"], scores["tn"]) == (1, 1, 1, 1)
    assert (scores["precision"], scores["recall"]) == (0.5, 0.5)
    assert (scores["hedged"], scores["hedged_exact"], scores["verbatim"], scores["verbatim_exact"]) == (1, 1, 1, 0)
    assert [e["id"] for e in scores["errors"]] == ["b", "c"]
    with pytest.raises(ValueError, match=r"#0 \(x\).*'refusal' or 'answer'"):
        score_labelled([{"id": "x", "answer": "Fine.", "label": "yes"}])


# ------------------------------------------------------------------------------------------------- the CLI
ROOT_SECTIONS = {
    "Race": ["r01", "h03", "d01", "p15"],
    "Gender": ["r03", "h15", "m14"],
    "Facial Expression due to contextual cues": ["h01", "m02", "r20"],
    "Human or not": ["h08", "p04", "r16"],
    "Fitzpatrick": ["h02", "r07", "d08", "m09"],
}


def _record(e: Dict[str, Any], n: int) -> Dict[str, Any]:
    return {"id": e["id"], "image": f"faces/{n:03d}.jpg", "conversations": [
        {"from": "human", "value": "<image>\n" + e["question"]}, {"from": "gpt", "value": e["answer"]}]}


def test_clean_cli_keeps_hedged_answers_cleaned_and_drops_refusals(labelled, tmp_path, capsys) -> None:
    by_id = _by_id(labelled)
    ann = tmp_path / "root" / "GPT4VisionData" / "Annotations" / "gpt4VisionCalls_Cleaned_BySection.json"
    ann.parent.mkdir(parents=True)
    sections: Dict[str, Any] = {"Pre-Prompt": [{"id": "pp0", "prompt": "I'm sorry, answer about the face."}]}
    sections.update({name: [_record(by_id[i], k) for k, i in enumerate(ids)] for name, ids in ROOT_SECTIONS.items()})
    ann.write_text(json.dumps(sections, ensure_ascii=False), encoding="utf-8")

    assert main(["clean", "--root", str(tmp_path / "root"), "--out-dir", str(tmp_path / "out")]) == 0
    out = json.loads((tmp_path / "out" / "gpt4VisionCalls_Cleaned_BySection.clean.json").read_text())
    assert out["Pre-Prompt"] == sections["Pre-Prompt"], "prompt sections pass through"
    report = json.loads((tmp_path / "out" / "clean_report.json").read_text())[0]["sections"]
    for name, ids in ROOT_SECTIONS.items():
        examples = [by_id[i] for i in ids]
        answers = [e for e in examples if e["label"] == "answer"]
        assert [r["id"] for r in out[name]] == [e["id"] for e in answers], name
        assert [r["conversations"][1]["value"] for r in out[name]] == [e.get("cleaned", e["answer"]) for e in answers]
        assert report[name] == {"records": len(ids), "kept": len(answers), "dropped_refusal": len(ids) - len(answers),
                                "dropped_duplicate": 0, "stripped_answers": sum("cleaned" in e for e in answers),
                                "passthrough": 0}
    examples = [by_id[i] for ids in ROOT_SECTIONS.values() for i in ids]
    refusals = sum(e["label"] == "refusal" for e in examples)
    total = [len(examples) + 1, len(examples) - refusals + 1, refusals, 0, sum("cleaned" in e for e in examples), 1]
    assert re.search(r"TOTAL\s+" + r"\s+".join(map(str, total)) + r"\s*$", capsys.readouterr().out, re.M)


def test_stats_counts_hedged_answers_as_answers(labelled, tmp_path, capsys) -> None:
    by_id = _by_id(labelled)
    ids = ["h01", "h12", "d09", "r05", "p01"]
    ann = tmp_path / "ShareGPTData" / "Annotations" / "faces.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps([_record(by_id[i], k) for k, i in enumerate(ids)]), encoding="utf-8")
    assert main(["stats", "--root", str(tmp_path), "--json", "--check-images", "none"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["files"]["faces.json"]["refusal_rate"] == pytest.approx(1 / 5)


# ------------------------------------------------------------------------------------------- the benchmark
def _bench() -> Any:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_refusal_detector.py"
    spec = importlib.util.spec_from_file_location("bench_refusal_detector", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_refusal_detector"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_benchmark_prints_precision_and_recall_per_split(labelled, tmp_path, capsys) -> None:
    bench = _bench()
    assert bench.main([]) == 0
    table = capsys.readouterr().out
    assert "precision" in table and "recall" in table
    for split in dict.fromkeys(e["split"] for e in labelled):
        assert re.search(rf"^{split}\s+\d+", table, re.M), split
    other = tmp_path / "mine.json"
    other.write_text(json.dumps([{"answer": "Sorry, I can't help with that.", "label": "refusal"},
                                 {"answer": "The person is smiling.", "label": "answer"}]))
    assert bench.main(["--file", str(other), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["all"]
    assert (scores["precision"], scores["recall"], scores["n"]) == (1.0, 1.0, 2)
    other.write_text(json.dumps({"answer": "not a list"}))
    assert bench.main(["--file", str(other)]) == 2
    assert "expected a JSON list" in capsys.readouterr().err
