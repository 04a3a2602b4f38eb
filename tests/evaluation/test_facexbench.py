"""FaceXBench in its own format, on a small fixture written here (synthetic faces, four dataset files).

Claims: every answer-parsing rule of the benchmark's published scoring holds on strings; prompts are built in the
benchmark's order (tools_use context, optional prepend text, question, postpend text, option lines); a file in
another layout or a missing image is a one-line user error naming the file (and the question); on the tiny
MiniGPT-v2 the run answers every one-image question (the answers are the model's answers to those prompts), skips
the two-image question and counts it, writes predictions as it goes and resumes without redoing kept answers;
the report's counts per category, sub-category, dataset file and num_images equal counts made here from the
fixture and the predictions file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from PIL import Image

from minigpt4.common.errors import is_user_error
from minigpt4.evaluation.facexbench import (
    PREDICTIONS_FILE,
    REPORT_JSON,
    REPORT_MD,
    SKIP_SEVERAL_IMAGES,
    SKIP_TOO_LONG,
    BenchmarkLayoutError,
    MissingImageError,
    load_benchmark,
    parse_answer,
    parse_answer_rule,
    run_facexbench,
)
from minigpt4.tools.synth_faces import synthetic_face

REPO = Path(__file__).resolve().parents[2]
TINY_V2 = REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml"
NEW_TOKENS = 6
POSTPEND = "Please answer the question and provide only the correct option letter, e.g., A, B, C, D."
CONTEXT = "Ignore the black image provided.\n1. Age Estimation:\n    api_name: api_1"
EXPRESSIONS = ["fear", "sad", "neutral", "anger"]

#: file -> (category, sub-category, num_images, prepend_text, [(id, image count, question, options, correct)])
FIXTURE: Dict[str, Tuple[str, str, str, str, List[Tuple[str, int, str, List[str], str]]]] = {
    "affectnet_single_mcq.json": ("attributes_expression", "expression", "single", "Recognise the expression.", [
        ("1", 1, "Identify the primary expression.", EXPRESSIONS, "B"),
        ("2", 1, "Which expression is shown?", ["happy", "sad", "neutral", "surprise"], "D"),
        ("3", 1, "What is the main expression?", ["disgust", "contempt", "happy", "anger"], "A"),
    ]),
    "fairface_single_mcq_gender_test.json": ("bias_fairness", "gender", "single", "Predict the gender.", [
        ("1", 1, "What is the gender of the person?", ["male", "female"], "B"),
        ("2", 1, "Is this person male or female?", ["male", "female"], "A"),
    ]),
    "lfw_multiple_mcq.json": ("face_recognition", "hr_fr", "multiple", "Recognise faces.", [
        ("1", 2, "Do the two images show the same person?", ["yes", "no", "unsure", "both"], "A"),
        ("7", 1, "How many faces are in the image?", ["1", "2", "3", "4"], "A"),
    ]),
    "tools_retrieval.json": ("tools_use", "tools_retrieval", "zero", "Select API calls.", [
        ("1", 1, "Which call estimates the age?", ["api_1-predict_age", "api_2-classify_gender"], "A"),
    ]),
}
#: crafted answers for the scoring test: key -> (answer, the option it names by the published rules, or None)
CRAFTED = {
    "affectnet_single_mcq.json#1": ("B. sad", "B"),  # right, letter at the start
    "affectnet_single_mcq.json#2": ("I would say the answer is (D)", "D"),  # right, letter inside
    "affectnet_single_mcq.json#3": ("contempt", "B"),  # wrong, by the option's text
    "fairface_single_mcq_gender_test.json#1": ("hard to tell", None),  # unparseable
    "fairface_single_mcq_gender_test.json#2": ("Option A", "A"),  # right
    "lfw_multiple_mcq.json#7": ("there are 3 faces", "C"),  # wrong, option text "3"
    "tools_retrieval.json#1": ("api_1-predict_age", "A"),  # right, option text
}


def write_fixture(root: Path) -> Path:
    """The fixture in FaceXBench's layout: JSON files at ``root``, images under ``root/images/<file stem>/``."""
    seed = 0
    for name, (category, sub, num_images, prepend, questions) in FIXTURE.items():
        stem = name[:-len(".json")]
        (root / "images" / stem).mkdir(parents=True, exist_ok=True)
        data: Dict[str, Any] = {"category": category, "sub-category": sub, "dataset": stem.split("_")[0],
                                "question_type": "MCQ", "num_images": num_images, "prepend_text": prepend,
                                "postpend_text": POSTPEND, "questions": {}}
        if category == "tools_use":
            data["context"] = CONTEXT
        for qid, count, text, options, correct in questions:
            paths = []
            for k in range(count):
                rel = f"images/{stem}/question_{qid}_{k + 1}.png"
                image = Image.new("RGB", (64, 64)) if category == "tools_use" else synthetic_face(seed, size=64)
                image.save(root / rel)
                paths.append(rel)
                seed += 1
            data["questions"][qid] = {"image_paths": paths, "question_text": text, "options": options,
                                      "correct_answer_option": correct, "answer": options[ord(correct) - 65]}
        (root / name).write_text(json.dumps(data, indent=4))
    return root


def expected_counts(answers: Dict[str, Optional[str]]) -> Dict[str, Dict[str, Dict[str, int]]]:
    """Counts per grouping made from the fixture and ``answers`` (key -> named option; absent: not answered)."""
    out: Dict[str, Dict[str, Dict[str, int]]] = {"by_category": {}, "by_sub_category": {}, "by_file": {},
                                                 "by_num_images": {}}
    for name, (category, sub, num_images, _, questions) in FIXTURE.items():
        for qid, _, _, _, correct in questions:
            key = f"{name}#{qid}"
            for group, value in (("by_category", category), ("by_sub_category", sub), ("by_file", name),
                                 ("by_num_images", num_images)):
                row = out[group].setdefault(value, {"questions": 0, "answered": 0, "correct": 0, "unparseable": 0,
                                                    "skipped": 0})
                row["questions"] += 1
                if key not in answers:
                    row["skipped"] += 1
                    continue
                row["answered"] += 1
                row["correct"] += int(answers[key] == correct)
                row["unparseable"] += int(answers[key] is None)
    return out


def assert_counts(report: Dict[str, Any], answers: Dict[str, Optional[str]]) -> None:
    expected = expected_counts(answers)
    for group, rows in expected.items():
        assert set(report[group]) == set(rows), group
        for value, row in rows.items():
            got = report[group][value]
            assert {k: got[k] for k in row} == row, (group, value)
            assert got["accuracy"] == (row["correct"] / row["answered"] if row["answered"] else None)
    for key in ("questions", "answered", "correct", "unparseable", "skipped"):  # overall = the sum over files
        assert report["overall"][key] == sum(row[key] for row in expected["by_file"].values()), key


# ------------------------------------------------------------------------------------------- parsing rules
OPTIONS = ["fear", "sad", "neutral", "anger"]


@pytest.mark.parametrize("answer,label", [
    ("A", "A"), ("(B)", "B"), ("Option C", "C"), ("D.", "D"), ("A:", "A"), ("B - sad", "B"),
    ("  C  ", "C"), ("(B) sad, clearly", "B"), ("A person who looks sad", "A"),  # the published scorer's reading
])
def test_letter_at_the_start(answer: str, label: str) -> None:
    assert parse_answer_rule(answer, OPTIONS) == (label, "start")


@pytest.mark.parametrize("answer,label", [
    ("The answer is (C).", "C"), ("I think it is D", "D"), ("Answer: B", "B"), ("**C**", "C"),
    ("Option E, so B", "B"),  # E is no option here: the start rule passes, B inside counts
    ("It is not B, it is C", "B"),  # the first standalone letter wins, as published
])
def test_letter_anywhere(answer: str, label: str) -> None:
    assert parse_answer_rule(answer, OPTIONS) == (label, "anywhere")


@pytest.mark.parametrize("answer,label", [
    ("sad", "B"), ("The person looks neutral to me", "C"), ("(a) fear", "A"),
    ("E. anger", "D"),  # E is not an option letter: the option text decides
    ("fearful and sad", "A"),  # options are tried in order, contained text counts
])
def test_option_text(answer: str, label: str) -> None:
    assert parse_answer_rule(answer, OPTIONS) == (label, "option_text")


@pytest.mark.parametrize("answer", ["", "hard to tell", "a", "b.", "Bx", "B1", "Happy!", "E", "Option F"])
def test_unparseable(answer: str) -> None:
    assert parse_answer_rule(answer, OPTIONS) == (None, "unparseable")
    assert parse_answer(answer, OPTIONS) is None


def test_letters_beyond_the_options_do_not_count() -> None:
    assert parse_answer("C", ["male", "female"]) is None
    assert parse_answer("C, or rather B", ["male", "female"]) == "B"


# ------------------------------------------------------------------------------------------- prompts, layout
def test_prompts_follow_the_benchmark_order(tmp_path: Path) -> None:
    root = write_fixture(tmp_path)
    plain = {q.key: q for q in load_benchmark(root)}
    first = plain["affectnet_single_mcq.json#1"]
    assert first.prompt == (f"Identify the primary expression.\n{POSTPEND}\n(A) fear\n(B) sad\n(C) neutral\n"
                            "(D) anger\n")
    with_prepend = {q.key: q for q in load_benchmark(root, prepend_text=True)}
    assert with_prepend[first.key].prompt == "Recognise the expression.\n" + first.prompt
    tools = with_prepend["tools_retrieval.json#1"]
    assert tools.prompt == (f"{CONTEXT}\nSelect API calls.\nWhich call estimates the age?\n{POSTPEND}\n"
                            "(A) api_1-predict_age\n(B) api_2-classify_gender\n")
    assert plain["tools_retrieval.json#1"].prompt.startswith(f"{CONTEXT}\nWhich call")  # context even without
    assert [q.key for q in load_benchmark(tmp_path.parent / tmp_path.name)] == list(plain)  # files in name order
    assert plain["lfw_multiple_mcq.json#1"].skip_reason and plain["lfw_multiple_mcq.json#7"].skip_reason is None


def test_a_clone_of_the_repository_is_found_through_benchmark(tmp_path: Path) -> None:
    write_fixture(tmp_path / "benchmark")
    assert len(load_benchmark(tmp_path)) == sum(len(f[4]) for f in FIXTURE.values())


def _edit(root: Path, name: str, change: Any) -> Path:
    path = root / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name,change,pattern", [
    ("affectnet_single_mcq.json", lambda d: d.pop("questions"), r"affectnet_single_mcq.json: not a FaceXBench file: "
                                                                r"missing key 'questions'"),
    ("affectnet_single_mcq.json", lambda d: d.pop("sub-category"), r"affectnet_single_mcq.json: .*missing key "
                                                                   r"'sub-category'"),
    ("tools_retrieval.json", lambda d: d.pop("context"), r"tools_retrieval.json: a tools_use file without the key "
                                                         r"'context'"),
    ("affectnet_single_mcq.json", lambda d: d["questions"]["2"].pop("options"),
     r"affectnet_single_mcq.json: question 2: missing key 'options'"),
    ("fairface_single_mcq_gender_test.json", lambda d: d["questions"]["1"].update(correct_answer_option="C"),
     r"fairface_single_mcq_gender_test.json: question 1: correct_answer_option 'C' is not one of A, B"),
])
def test_unknown_layout_is_one_line_naming_file_and_key(tmp_path: Path, name: str, change: Any,
                                                         pattern: str) -> None:
    root = write_fixture(tmp_path)
    _edit(root, name, change)
    with pytest.raises(BenchmarkLayoutError, match=pattern) as info:
        load_benchmark(root)
    assert is_user_error(info.value) and "\n" not in str(info.value)


def test_a_folder_without_benchmark_files_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkLayoutError, match="no FaceXBench JSON files here nor in .*benchmark"):
        load_benchmark(tmp_path)


# ------------------------------------------------------------------------------------------- runs on the tiny model
@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path) -> Any:
    from minigpt4 import load_model

    torch.manual_seed(0)
    return load_model(TINY_V2, options=[f"model.llama_model={tiny_llama_dir}"], device="cpu")


def test_missing_image_names_file_and_question(tmp_path: Path, model: Any) -> None:
    root = write_fixture(tmp_path / "bench")
    (root / "images" / "fairface_single_mcq_gender_test" / "question_2_1.png").unlink()
    with pytest.raises(MissingImageError, match=r"fairface_single_mcq_gender_test.json: question 2: image .*"
                                                r"question_2_1.png not found") as info:
        run_facexbench(model, root, tmp_path / "out", max_new_tokens=NEW_TOKENS)
    assert is_user_error(info.value)
    assert not (tmp_path / "out" / PREDICTIONS_FILE).exists()  # nothing generated before the check


def _rows(path: Path) -> Dict[str, Dict[str, Any]]:
    return {row["key"]: row for row in map(json.loads, path.read_text().splitlines())}


def test_run_answers_one_image_questions_skips_the_rest_and_resumes(tmp_path: Path, model: Any) -> None:
    root = write_fixture(tmp_path / "bench")
    out = tmp_path / "out"
    report = run_facexbench(model, root, out, batch_size=4, max_new_tokens=NEW_TOKENS)
    rows = _rows(out / PREDICTIONS_FILE)
    one_image = [f"{n}#{q[0]}" for n, f in FIXTURE.items() for q in f[4] if q[1] == 1]
    assert sorted(rows) == sorted(one_image)
    assert report["overall"]["skipped"] == 1 and report["by_num_images"]["multiple"]["skipped"] == 1
    assert [s["key"] for s in report["skipped_questions"]] == ["lfw_multiple_mcq.json#1"]
    assert report["skipped_questions"][0]["reason"] == SKIP_SEVERAL_IMAGES
    first = rows["affectnet_single_mcq.json#1"]
    assert first["answer"] == model.chat(first["image"], first["prompt"], max_new_tokens=NEW_TOKENS)
    assert_counts(report, {k: parse_answer(r["answer"], r["options"]) for k, r in rows.items()})
    assert json.loads((out / REPORT_JSON).read_text())["overall"] == report["overall"]
    markdown = (out / REPORT_MD).read_text()
    assert "| dataset file |" in markdown and "| lfw_multiple_mcq.json | 2 | 1 |" in markdown

    # a killed run: two answers kept (one of them altered, to see it is not generated again), a cut line
    lines = (out / PREDICTIONS_FILE).read_text().splitlines()
    kept = json.loads(lines[0])
    kept["answer"] = "(B) kept from the first run"
    (out / PREDICTIONS_FILE).write_text(json.dumps(kept) + "\n" + lines[1] + "\n" + lines[2][:25])
    resumed = run_facexbench(model, root, out, batch_size=4, resume=True, max_new_tokens=NEW_TOKENS)
    again = _rows(out / PREDICTIONS_FILE)
    assert sorted(again) == sorted(rows) and len((out / PREDICTIONS_FILE).read_text().splitlines()) == len(rows)
    assert again[kept["key"]]["answer"] == "(B) kept from the first run"
    assert all(again[k]["answer"] == rows[k]["answer"] for k in rows if k != kept["key"])
    assert_counts(resumed, {k: parse_answer(r["answer"], r["options"]) for k, r in again.items()})


def test_report_counts_equal_counts_made_from_fixture_and_answers(tmp_path: Path, model: Any) -> None:
    root = write_fixture(tmp_path / "bench")
    out = tmp_path / "out"
    out.mkdir()
    questions = {q.key: q for q in load_benchmark(root)}
    lines = []
    for key, (answer, _) in CRAFTED.items():
        q = questions[key]
        lines.append(json.dumps({"key": key, "prompt": q.prompt, "image": str(q.images[0]), "answer": answer,
                                 "options": list(q.options)}))
    (out / PREDICTIONS_FILE).write_text("\n".join(lines) + "\n")
    report = run_facexbench(model, root, out, resume=True, max_new_tokens=NEW_TOKENS)  # nothing left to answer
    assert {k: r["answer"] for k, r in _rows(out / PREDICTIONS_FILE).items()} == {k: a for k, (a, _) in
                                                                                  CRAFTED.items()}
    named = {key: label for key, (_, label) in CRAFTED.items()}
    assert_counts(report, named)
    assert report["overall"]["correct"] == 4 and report["overall"]["unparseable"] == 1
    assert report["overall"]["accuracy"] == pytest.approx(4 / 7)
    assert report["overall"]["accuracy_all_questions"] == pytest.approx(4 / 8)
    assert report["parsed_by"] == {"start": 2, "anywhere": 1, "option_text": 3, "unparseable": 1}
    assert report["by_category"]["attributes_expression"]["chance"] == pytest.approx(0.25)
    assert list(report["by_category"]) == ["bias_fairness", "face_recognition", "attributes_expression", "tools_use"]
    assert "Single-image accuracy: **57.14%** (4/7 answered questions; chance" in (out / REPORT_MD).read_text()


def test_a_prompt_longer_than_the_context_is_skipped_and_counted(tmp_path: Path, model: Any) -> None:
    root = write_fixture(tmp_path / "bench")
    _edit(root, "tools_retrieval.json", lambda d: d.update(context="\n".join([CONTEXT] * 40)))
    questions = {q.key: q for q in load_benchmark(root)}
    engine = model.engine
    lengths = {}
    for key in ("tools_retrieval.json#1", "affectnet_single_mcq.json#1"):
        conv, img_list = engine.new_conversation(), []
        engine.upload_img(str(questions[key].images[0]), conv, img_list)
        engine.encode_img(img_list)
        engine.ask(questions[key].prompt, conv)
        conv.append_message(conv.roles[1], None)
        lengths[key] = len(engine.context_ids(conv, img_list))
    budget = (lengths["tools_retrieval.json#1"] + lengths["affectnet_single_mcq.json#1"]) // 2  # the others fit
    report = run_facexbench(model, root, tmp_path / "out", batch_size=8, max_new_tokens=NEW_TOKENS,
                            max_length=budget + NEW_TOKENS)
    skipped = {s["key"]: s["reason"] for s in report["skipped_questions"]}
    assert skipped["tools_retrieval.json#1"] == SKIP_TOO_LONG
    tools = report["by_category"]["tools_use"]
    assert (tools["questions"], tools["answered"], tools["skipped"], tools["accuracy"]) == (1, 0, 1, None)
    assert report["overall"]["answered"] == 6 and report["overall"]["skipped"] == 2
    assert report["skipped_by_reason"] == {SKIP_SEVERAL_IMAGES: 1, SKIP_TOO_LONG: 1}
    assert "tools_retrieval.json#1" not in _rows(tmp_path / "out" / PREDICTIONS_FILE)


def test_facegpt_eval_benchmark_command(tmp_path: Path, tiny_llama_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from minigpt4.tools import evaluate

    root = write_fixture(tmp_path / "bench")
    out = tmp_path / "out"
    status = evaluate.main(["--cfg-path", str(TINY_V2), "--options", f"model.llama_model={tiny_llama_dir}",
                            "--benchmark", "facexbench", "--root", str(root), "--out", str(out), "--prepend-text",
                            "--max-new-tokens", "4", "--batch-size", "4", "--device", "cpu", "--no-progress"])
    assert status == 0
    assert "# FaceXBench" in capsys.readouterr().out
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["prepend_text"] is True and report["generation"]["max_new_tokens"] == 4
    rows = _rows(out / PREDICTIONS_FILE)
    assert len(rows) == 7 and rows["affectnet_single_mcq.json#1"]["prompt"].startswith("Recognise the expression.\n")


def test_facegpt_eval_reports_a_bad_benchmark_folder_before_loading_the_model(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    """The model named here does not exist: the folder fault must be the one reported (the model is never loaded)."""
    from minigpt4.tools import evaluate

    empty = tmp_path / "empty"
    empty.mkdir()
    status = evaluate.main(["--cfg-path", str(tmp_path / "no_such_config.yaml"), "--benchmark", "facexbench",
                            "--root", str(empty), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert "no FaceXBench JSON files" in err and "no_such_config" not in err
