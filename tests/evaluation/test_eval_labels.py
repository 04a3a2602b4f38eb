"""Label maps: the shipped maps read the synthetic demo answers and real-style GPT-4V answers; whole words,
synonyms, negations ("not smiling", "no glasses"), longest phrase first, anchored phrases; users add or replace a
section's map with a YAML folder; a faulty YAML is a one-line error naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from minigpt4.common.errors import is_user_error
from minigpt4.evaluation.labels import LabelMap, LabelMapError, find_label_map, load_label_maps

EXPRESSION = "Facial Expression due to contextual cues"


@pytest.fixture(scope="module")
def maps():
    return load_label_maps()


@pytest.mark.parametrize("section, answer, label", [
    # the synthetic demo's answers (tools/data_synth.py)
    (EXPRESSION, "The person looks happy.", "happy"),
    (EXPRESSION, "The person looks surprised.", "surprised"),
    ("Fitzpatrick", "Fitzpatrick type IV.", "IV"),
    ("Fitzpatrick", "Fitzpatrick type I.", "I"),
    ("Fitzpatrick", "Fitzpatrick type VI.", "VI"),
    ("Human or not", "Yes, this is a human face.", "human"),
    ("Human or not", "No, this is not a human face.", "not human"),
    # real GPT-4V answer styles
    ("Fitzpatrick", "Fitzpatrick Type III: the skin is light olive and appears to tan easily.", "III"),
    ("Fitzpatrick", "Type I: very pale skin with freckles and red hair.", "I"),
    ("Fitzpatrick", "the skin appears medium brown, consistent with Fitzpatrick Type IV or V.", "IV"),
    ("Human or not", "No, it is a marble statue of a face.", "not human"),
    ("Human or not", "There is no doubt: this is a human face.", "human"),
    ("Human or not", "This is a non-human face, a robot.", "not human"),
    (EXPRESSION, "The person is smiling broadly with visible teeth, which suggests genuine happiness.", "happy"),
    (EXPRESSION, "Angry: the brows are drawn together and the teeth are bared.", "angry"),
    ("Intensity", "The expression is of high intensity: the eyes are squeezed shut.", "high"),
    ("Intensity", "the expression appears only mildly intense, with a slight frown.", "low"),
    ("Posture", "The person is sitting upright with their shoulders back.", "sitting"),
    ("Gender", "The person appears to be a young woman with long black hair and bangs.", "female"),
    ("Race", "The person appears to be of Middle Eastern descent, with olive skin and black hair.", "Middle Eastern"),
    ("Race", "A Southeast Asian man.", "Southeast Asian"),
])
def test_shipped_maps_read_answers(maps, section: str, answer: str, label: str) -> None:
    assert find_label_map(maps, section).parse(answer) == label


def test_sections_are_found_stripped_and_case_insensitive_and_by_alias(maps) -> None:
    assert find_label_map(maps, "  fitzpatrick ").section == "Fitzpatrick"
    assert find_label_map(maps, "Intensity of the emotion").section == "Intensity"
    assert find_label_map(maps, "Facial Characteristics Short ") is None  # open-ended: no map


def test_whole_words_only(maps) -> None:
    expression, gender = find_label_map(maps, EXPRESSION), find_label_map(maps, "Gender")
    assert expression.parse("He looks unhappy.") == "sad"  # "happy" inside "unhappy" does not count
    assert gender.parse("A woman.") == "female"            # "man" inside "woman" does not count
    assert gender.parse("A female.") == "female"           # "male" inside "female" does not count
    assert find_label_map(maps, "Fitzpatrick").parse("Type II skin.") == "II"  # "type I" is not in "type II"
    assert find_label_map(maps, "Race").parse("She has black hair and wears a white shirt.") is None


def test_negations_do_not_count(maps) -> None:
    expression = find_label_map(maps, EXPRESSION)
    assert expression.parse("The person is not smiling.") is None
    assert expression.parse("The person isn't very happy; the mouth turns down in sadness.") == "sad"
    assert expression.parse("Not smiling, but clearly happy.") == "happy"  # punctuation ends the negation
    assert expression.parse("The person is not smiling but looks happy.") == "happy"  # so does a conjunction
    glasses = LabelMap("Glasses", {"glasses": ["glasses", "spectacles"], "none": ["bare face"]})
    assert glasses.parse("The person wears no glasses.") is None
    assert glasses.parse("A face without spectacles.") is None
    assert glasses.parse("The person wears glasses.") == "glasses"


def test_first_named_label_wins_and_refusals_are_unparseable(maps) -> None:
    expression = find_label_map(maps, EXPRESSION)
    assert expression.parse("Sad or perhaps surprised.") == "sad"
    assert expression.parse("Surprised, maybe sad.") == "surprised"
    assert expression.parse("I'm sorry, but I can't tell how the person is feeling from this image.") is None
    assert expression.parse("") is None


def test_anchored_phrase_matches_only_at_the_start() -> None:
    yes_no = LabelMap("Q", {"yes": ["^yes"], "no": ["^no"]})
    assert yes_no.parse("  No, it is not.") == "no"
    assert yes_no.parse('"Yes"') == "yes"
    assert yes_no.parse("There is no face, yes.") is None


def test_user_folder_adds_and_replaces_maps(tmp_path: Path) -> None:
    (tmp_path / "glasses.yaml").write_text(
        "section: Accessories\naliases: [Eyewear]\nlabels:\n  glasses: [glasses, spectacles]\n"
        "  earrings: [earrings]\n  none: [no accessories]\nnegations: [lacks]\n")
    (tmp_path / "fitz.yml").write_text("section: fitzpatrick\nlabels:\n  light: [light, fair]\n  dark: [dark]\n")
    maps = load_label_maps([tmp_path])
    accessories = find_label_map(maps, "eyewear")
    assert accessories.parse("The person wears earrings.") == "earrings"
    assert accessories.parse("The person wears no accessories.") == "none"  # the phrase itself starts with "no"
    assert accessories.parse("The person lacks glasses.") is None          # the map's own negation word
    assert find_label_map(maps, "Fitzpatrick").parse("Fair skin.") == "light"  # the later folder wins
    assert find_label_map(load_label_maps(), "Fitzpatrick").parse("Fair skin.") is None


@pytest.mark.parametrize("text, message", [
    ("section: X\nlabels: {a: [x]}\n", "at least two labels"),
    ("labels: {a: [x], b: [y]}\n", "section must name"),
    ("section: X\nlabels: {a: [x], b: []}\n", "labels.b must be a non-empty list"),
    ("section: X\nlabel: {a: [x], b: [y]}\n", "unknown key(s) ['label']"),
    ("section: X\nlabels: {a: [x], b: [y]\n", "cannot read the label map"),
])
def test_a_faulty_map_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(LabelMapError) as caught:
        load_label_maps([tmp_path])
    assert is_user_error(caught.value) and str(tmp_path / "bad.yaml") in str(caught.value)
    assert message in str(caught.value) and "\n" not in caught.value.one_line()


def test_two_maps_for_one_section_in_one_folder_is_an_error(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("section: Gender\nlabels: {f: [woman], m: [man]}\n")
    with pytest.raises(LabelMapError, match="already has a label map in the same folder"):
        load_label_maps([tmp_path])
    with pytest.raises(LabelMapError, match="not a folder"):
        load_label_maps([tmp_path / "missing"])
