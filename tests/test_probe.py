"""``python -m minigpt4.tools.probe``: linear probes on a tiny model's vision features and image tokens."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from minigpt4.tools import probe

REPO = Path(__file__).resolve().parents[1]
EVAL_CFG = REPO / "eval_configs" / "tiny_minigpt_v2_eval.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_set(root: Path, n: int = 60, seed: int = 0) -> Path:
    """Noisy images, each mostly red or mostly blue ("colour": trivially separable), and a fair coin per image
    that nothing in the image shows ("coin"); the synthetic set's metadata layout."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    images: List[Dict] = []
    folder = root / "GPT4VisionData" / "Images" / "probe"
    folder.mkdir(parents=True)
    for i in range(n):
        colour, coin = rng.choice(["red", "blue"]), rng.choice(["heads", "tails"])
        base = np.array([200, 40, 40] if colour == "red" else [40, 40, 200], dtype=np.float32)
        pixels = np.clip(base + noise.normal(0, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
        images.append({"index": i, "attributes": {"colour": colour, "coin": coin},
                       "paths": {"GPT4VisionData": f"probe/{i:03d}.png"}})
    meta = root / "metadata.json"
    answers = {"colour": {"red": "The picture is red.", "blue": "The picture is blue."},
               "coin": {"heads": "The coin shows heads.", "tails": "The coin shows tails."}}
    meta.write_text(json.dumps({"attributes": {"colour": ["red", "blue"], "coin": ["heads", "tails"]},
                                "answers": answers, "images": images}))
    return meta


def test_probe_learns_what_the_image_shows_and_not_a_coin(tmp_path: Path, tiny_llama_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    meta = _write_set(tmp_path / "data")
    out = tmp_path / "probe.json"
    status = probe.main(["--cfg-path", str(EVAL_CFG), "--options", f"model.llama_model={tiny_llama_dir}",
                         "--metadata", str(meta), "--split", "random", "--held-out-fraction", "0.4", "--baseline",
                         "--json", str(out)])
    assert status == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| attribute |") and "| colour |" in table and "| coin |" in table
    results = {r["attribute"]: r for r in json.loads(out.read_text())}
    assert set(results["colour"]["accuracy"]) == {"tower init", "tokens init"}  # no model.ckpt: one column each
    for stage, acc in results["colour"]["accuracy"].items():
        assert acc > 0.95, (stage, acc)
    for stage, acc in results["coin"]["accuracy"].items():
        assert acc < 0.75, (stage, acc)
    assert results["coin"]["chance"] == 0.5 and results["colour"]["n_test"] == 24


def test_probe_words_scores_training_and_held_out_images(tmp_path: Path, tiny_llama_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    meta = _write_set(tmp_path / "data", n=30)
    out = tmp_path / "probe.json"
    assert probe.main(["--cfg-path", str(EVAL_CFG), "--options", f"model.llama_model={tiny_llama_dir}",
                       "--metadata", str(meta), "--split", "random", "--held-out-fraction", "0.4", "--words",
                       "--json", str(out)]) == 0
    assert "words held-out" in capsys.readouterr().out.splitlines()[0]
    for r in json.loads(out.read_text()):
        assert set(r["accuracy"]) == {"tower", "tokens", "words train", "words held-out"}
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
    bare = json.loads(meta.read_text())
    del bare["answers"]
    meta.write_text(json.dumps(bare))
    assert probe.main(["--cfg-path", str(EVAL_CFG), "--options", f"model.llama_model={tiny_llama_dir}",
                       "--metadata", str(meta), "--split", "random", "--words"]) == 2
    assert "--words needs" in capsys.readouterr().err


def test_ridge_probe_separates_a_linear_rule_and_not_noise() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 20, generator=gen)
    rule = (x[:, 3] - x[:, 7] > 0).long()
    noise = torch.randint(0, 3, (200,), generator=gen)
    assert probe.probe_accuracy(x[:120], rule[:120], x[120:], rule[120:], 2) > 0.85
    assert probe.probe_accuracy(x[:120], noise[:120], x[120:], noise[120:], 3) < 0.5


def test_probe_argument_and_data_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert probe.main(["--cfg-path", str(EVAL_CFG), "--held-out-fraction", "1.5"]) == 2
    assert "--held-out-fraction" in capsys.readouterr().err
    missing = tmp_path / "nowhere" / "metadata.json"
    assert probe.main(["--cfg-path", str(EVAL_CFG), "--metadata", str(missing), "--split", "random",
                       "--options", "model.llama_model=/unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metadata.json" in err[0] and "synth" in err[0], err


def test_words_name_the_value_whose_own_word_an_image_token_is_near(tiny_llama_dir: Path) -> None:
    """``--words``: the words that tell a value's sentence apart, and an image names the value whose word is
    closest to one of its tokens; tokens near no value's word name values at chance."""
    from minigpt4.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_dir)
    answers = {"glasses": "The person wears glasses.", "earrings": "The person wears earrings.",
               "none": "The person wears no accessories."}
    words = probe.value_words(answers, tokenizer)
    shared = set(tokenizer.encode("The person wears"))
    for value, ids in words.items():
        assert ids and not set(ids) & shared, (value, ids)  # only the value's own words
        assert set(ids) <= set(tokenizer.encode(answers[value]))
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(max(max(i) for i in words.values()) + 1, 32, generator=gen)  # (V, H)
    truth = [list(answers)[i % 3] for i in range(60)]
    seq = torch.randn(60, 4, 32, generator=gen)  # (B, n, H): 4 image tokens of noise
    for i, value in enumerate(truth):
        seq[i, i % 4] = table[words[value][0]] + 0.3 * torch.randn(32, generator=gen)  # one token names the value
    assert probe.word_predictions(seq, table, words) == truth
    noise = probe.word_predictions(torch.randn(60, 4, 32, generator=gen), table, words)
    assert sum(p == t for p, t in zip(noise, truth)) < 35  # ~20 of 60 by chance
