"""Scores against values worked out by hand on tiny inputs, and the report built from them (per section, side by
side with differences, notes for sections without a label map and for references that name no label)."""

from __future__ import annotations

import pytest

from minigpt4.evaluation import metrics
from minigpt4.evaluation.labels import LabelMap, load_label_maps
from minigpt4.evaluation.report import build_report, markdown, summary_table
from minigpt4.evaluation.samples import EvalSample

REFS = ["a", "b", "a", "c"]
PREDS = ["a", "a", None, "c"]


def test_accuracy_macro_f1_confusion_by_hand() -> None:
    assert metrics.accuracy(REFS, PREDS) == pytest.approx(2 / 4)
    # a: tp 1, fp 1 (b read as a), fn 1 (unparseable) -> 2/4; b: tp 0 -> 0; c: tp 1 -> 1; mean 0.5
    assert metrics.macro_f1(REFS, PREDS) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert metrics.confusion(REFS, PREDS, ["a", "b", "c", "d"]) == [[1, 0, 0, 0, 1], [1, 0, 0, 0, 0],
                                                                   [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    scores = metrics.closed_set_scores(REFS, PREDS, ["a", "b", "c", "d"])
    assert (scores.n, scores.unparseable, scores.chance) == (4, 0.25, 0.25)
    assert (scores.majority, scores.majority_label) == (0.5, "a")
    assert metrics.macro_f1(["a", "b"], ["a", "b"]) == 1.0 and metrics.accuracy([], []) == 0.0


def test_bleu_and_chrf_are_100_for_identical_and_0_for_disjoint_texts() -> None:
    refs = ["the person looks happy and relaxed today", "a woman with long red hair and green eyes"]
    assert metrics.bleu4(refs, refs) == pytest.approx(100.0)
    assert metrics.chrf(refs, refs) == pytest.approx(100.0)
    disjoint = ["zzz qqq www xxx yyy vvv", "kkk jjj hhh ggg fff ddd"]
    assert metrics.bleu4(refs, disjoint) == pytest.approx(0.0)
    assert 0.0 <= metrics.chrf(refs, disjoint) < 5.0


def test_rouge_l_is_the_lcs_f_measure() -> None:
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 words: P = 5/5, R = 5/6, F = 10/11
    assert metrics.rouge_l(["the cat sat on the mat"], ["the cat on the mat"]) == pytest.approx(10 / 11)
    assert metrics.rouge_l(["a b c"], ["x y z"]) == 0.0


def test_cider_d_identical_distinct_texts_score_10_disjoint_0() -> None:
    refs = ["The person looks happy.", "A sad face, with a down-turned mouth!", "Fitzpatrick type IV skin."]
    assert metrics.cider_d(refs, refs) == pytest.approx(10.0)
    assert metrics.cider_d(refs, ["zebra", "quartz", "violin"]) == pytest.approx(0.0)
    assert metrics.cider_d(refs[:1], refs[:1]) == pytest.approx(0.0)  # one sample: every IDF is log(1) = 0
    assert metrics.cider_d(refs, ["", "", ""]) == pytest.approx(0.0)  # empty answers are scored, not an error
    assert metrics.simple_tokens("A sad face, with a down-turned mouth!") == "a sad face with a down turned mouth"


def test_refusal_and_hedge_rates_use_the_data_cleaner() -> None:
    answers = ["I'm sorry, but I can't help with that.", "The person looks happy.",
               "While I can't know how the person feels, the person appears to be smiling broadly.", ""]
    assert metrics.refusal_rates(answers) == {"refusal": 2 / 4, "hedge": 1 / 4}


def _samples(rows):
    return [EvalSample(f"s{k}", f"/img/{k}.png", "q", ref, section, f"file record #{k}")
            for k, (section, ref) in enumerate(rows)]


def test_report_scores_sections_side_by_side_with_differences() -> None:
    samples = _samples([("Fitzpatrick", "Fitzpatrick type I."), ("Fitzpatrick", "Fitzpatrick type II."),
                        ("Fitzpatrick", "I can't tell."), ("Describe", "a happy face"), ("Describe", "a sad face")])
    answers = {"A": ["Type I.", "Type I.", "Type V.", "a happy face", "zzz"],
               "B": ["Type I.", "Type II.", "Type V.", "a happy face", "a sad face"]}
    report = build_report(samples, answers, load_label_maps(), {"data": "test"})
    fitz, describe = report["sections"]
    assert (fitz["kind"], fitz["n"], fitz["unlabelled_references"]) == ("closed", 2, 1)
    assert "1 of 3 reference answer(s) name no label" in fitz["note"]
    assert fitz["scores"]["A"]["accuracy"] == 0.5 and fitz["scores"]["B"]["accuracy"] == 1.0
    assert fitz["chance"] == pytest.approx(1 / 6) and fitz["majority"] == 0.5
    assert fitz["difference"]["B - A"]["accuracy"] == pytest.approx(0.5)
    assert describe["kind"] == "open" and describe["n"] == 2
    assert describe["scores"]["B"]["rouge_l"] == pytest.approx(1.0)
    assert describe["difference"]["B - A"]["rouge_l"] == pytest.approx(
        describe["scores"]["B"]["rouge_l"] - describe["scores"]["A"]["rouge_l"])
    table = "\n".join(summary_table(report))
    assert "| Fitzpatrick | closed | 2 | accuracy | 50.0% | 100.0% | +50.0 pt | 16.7% | 50.0% |" in table
    text = markdown(report)
    assert "## Fitzpatrick (closed set, 6 labels)" in text and "## Describe (open-ended)" in text
    assert "| B − A |" in text


def test_a_closed_looking_section_without_a_map_is_open_ended_with_a_note() -> None:
    samples = _samples([("Glasses", "Yes."), ("Glasses", "No."), ("Glasses", "Yes."), ("Glasses", "No.")])
    report = build_report(samples, {"A": ["Yes.", "Yes.", "No.", "No."]}, load_label_maps())
    (entry,) = report["sections"]
    assert entry["kind"] == "open" and "has no label map" in entry["note"] and report["notes"] == [entry["note"]]
    maps = {"glasses": LabelMap("Glasses", {"yes": ["^yes"], "no": ["^no"]})}
    (closed,) = build_report(samples, {"A": ["Yes.", "Yes.", "No.", "No."]}, maps)["sections"]
    assert closed["kind"] == "closed" and closed["scores"]["A"]["accuracy"] == 0.5
    assert closed["scores"]["A"]["confusion"] == [[1, 1, 0], [1, 1, 0]]
