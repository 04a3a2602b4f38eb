"""Generation settings and answer clean-up (finished and streamed)."""

from __future__ import annotations

import pytest

from minigpt4.conversation.generation import AnswerCleaner, GenerationSettings, SettingsError, find_stop
from minigpt4.models.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok(tokenizer_model_path):
    return load_tokenizer(tokenizer_model_path.parent)


def test_default_settings_are_greedy_and_only_relevant_kwargs_are_passed() -> None:
    s = GenerationSettings()
    assert s.do_sample is False
    kwargs = s.generate_kwargs()
    assert kwargs["do_sample"] is False and "temperature" not in kwargs and "top_p" not in kwargs
    assert "length_penalty" not in kwargs
    sampled = s.with_assignments(["sample=true", "temperature=0.7", "top_p=0.5", "num_beams=3"]).generate_kwargs()
    assert sampled["do_sample"] is True and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.5
    assert sampled["num_beams"] == 3 and sampled["length_penalty"] == 1.0


def test_settings_assignments_convert_types_and_reject_bad_input() -> None:
    s = GenerationSettings().with_assignments(["max_new_tokens=7", "seed=3", "do_sample=off"])
    assert (s.max_new_tokens, s.seed, s.do_sample) == (7, 3, False)
    assert GenerationSettings(seed=5).with_assignments(["seed=none"]).seed is None
    with pytest.raises(SettingsError, match="unknown generation setting 'temprature'"):
        s.with_assignments(["temprature=1"])
    with pytest.raises(SettingsError, match="max_new_tokens must be an integer, got 'many'"):
        s.with_assignments(["max_new_tokens=many"])
    with pytest.raises(SettingsError, match="expected key=value"):
        s.with_assignments(["temperature"])
    with pytest.raises(SettingsError, match="temperature must be > 0"):
        s.with_assignments(["temperature=0"])
    with pytest.raises(SettingsError, match=r"max_length \(10\) must exceed max_new_tokens \(20\)"):
        GenerationSettings(max_new_tokens=20, max_length=10)
    assert GenerationSettings(max_new_tokens=20, max_length=50).context_limit == 30


def test_find_stop_returns_the_earliest_match() -> None:
    assert find_stop([5, 7, 8, 2, 9], [[2], [7, 8]]) == 1
    assert find_stop([5, 6], [[2]]) is None


def test_cleaner_cuts_at_stop_ids_and_stop_text(tok) -> None:
    cleaner = AnswerCleaner(tok, [[tok.eos_id], tok.encode("###")], ["###"], "Assistant: ")
    assert "###" in cleaner.stop_texts
    ids = tok.encode("Hello world") + [tok.eos_id] + tok.encode("more")
    assert cleaner.text(ids) == "Hello world"
    ids = tok.encode("Hello") + tok.encode("a###")[1:] + tok.encode("Human: next")  # "###" glued to text
    assert cleaner.text(ids) == "Hello"
    assert cleaner.text(tok.encode("Assistant: fine")) == "fine"  # a leading role marker is dropped


def test_streamed_pieces_add_up_to_the_final_answer(tok) -> None:
    cleaner = AnswerCleaner(tok, [[tok.eos_id], tok.encode("###")], ["###"], "Assistant: ")
    ids = tok.encode("Hello world and more") + tok.encode("a###")[1:] + tok.encode("Human: x")
    shown = ""
    for n in range(1, len(ids) + 1):
        partial = cleaner.partial(ids[:n])
        assert partial.startswith(shown), f"the visible text went back at step {n}: {shown!r} -> {partial!r}"
        assert "#" not in partial, "a possible start of the stop text was shown"
        shown = partial
    assert cleaner.text(ids) == "Hello world and more"
    assert cleaner.text(ids).startswith(shown)


def test_partial_holds_back_a_possible_role_marker(tok) -> None:
    cleaner = AnswerCleaner(tok, [[tok.eos_id]], [], " [/INST] ")
    assert cleaner.partial(tok.encode("[/IN")) == ""
    assert cleaner.partial(tok.encode("[/INST] ok then")) == "ok then"
    assert cleaner.text(tok.encode("[/INST] ok then")) == "ok then"
