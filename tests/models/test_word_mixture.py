"""``model.image_token_space: word_mixture``: image tokens as mixtures of the LLM's word embeddings, their alignment
loss, the question-wise word weights, and the image vocabulary's trip through a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict

import pytest
import torch
import torch.nn.functional as F

from minigpt4.models.connectors import ModelConfigError
from minigpt4.models.word_align import question_rarity_weights
from minigpt4.models.word_mixture import VOCAB_BUFFER, mix_words, word_logits, word_mixture_loss

V2_Q = "<Img><ImageHere></Img> [vqa] What colour is the hair?"


def _batch(answers: list, size: int, seed: int = 0) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    n = len(answers)
    return {"image": torch.randn(n, 3, size, size, generator=gen), "instruction_input": [V2_Q] * n,
            "answer": list(answers), "image_id": [str(i) for i in range(n)], "section": [""] * n, "skipped": 0}


def test_mixed_tokens_are_softmax_mixtures_of_the_words_at_the_given_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    words = torch.randn(5, 8, generator=gen)  # (W, H)
    tokens = torch.randn(2, 3, 8, generator=gen)  # (B, N, H)
    logits = word_logits(tokens, words, temperature=0.5)
    for b in range(2):
        for n in range(3):
            for w in range(5):
                cos = float(F.cosine_similarity(tokens[b, n], words[w], dim=0))
                assert math.isclose(float(logits[b, n, w]), cos / 0.5, rel_tol=1e-5, abs_tol=1e-6)
    out = mix_words(logits, words, norm=3.0)
    want = torch.einsum("bnw,wh->bnh", logits.softmax(-1), words)  # each token a convex mixture of the words
    torch.testing.assert_close(F.normalize(out, dim=-1), F.normalize(want, dim=-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((2, 3), 3.0), rtol=1e-5, atol=1e-6)
    # a token pointing at word 2, sharply: the LLM reads (nearly) word 2 itself
    sharp = mix_words(word_logits(words[2].expand(1, 1, 8) * 7.0, words, 0.01), words, float(words[2].norm()))
    torch.testing.assert_close(sharp[0, 0], words[2], rtol=1e-3, atol=1e-3)


def test_word_mixture_loss_is_the_cross_entropy_against_the_tokens_mean_distribution() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 6, generator=gen)  # (B, N, W)
    targets = torch.zeros(3, 6)
    targets[0, 1], targets[0, 4] = 1.0, 3.0
    targets[2, 0] = 0.5  # row 1 has no weighted word: left out of the mean
    loss = word_mixture_loss(logits, targets)
    want = []
    for row in (0, 2):
        mean = logits[row].softmax(-1).mean(0)  # (W,)
        dist = targets[row] / targets[row].sum()
        want.append(-sum(float(dist[w]) * math.log(float(mean[w])) for w in range(6) if dist[w] > 0))
    assert math.isclose(float(loss), sum(want) / 2, rel_tol=1e-5)
    empty = word_mixture_loss(logits.requires_grad_(), torch.zeros(3, 6))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_word_mixture_loss_teaches_free_tokens_to_name_their_images_words() -> None:
    gen = torch.Generator().manual_seed(2)
    words = torch.randn(6, 16, generator=gen)  # (W, H)
    tokens = torch.randn(4, 2, 16, generator=gen, requires_grad=True)  # (B, N, H)
    targets = torch.zeros(4, 6)
    for row, word in enumerate([0, 3, 5, 3]):
        targets[row, word] = 1.0
    opt = torch.optim.Adam([tokens], lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        word_mixture_loss(word_logits(tokens, words, 0.1), targets).backward()
        opt.step()
    named = word_logits(tokens, words, 0.1).softmax(-1).mean(1).argmax(-1)  # (B,): the word each image names
    assert named.tolist() == [0, 3, 5, 3]


def test_question_rarity_weights_are_the_largest_rarity_among_answers_to_the_same_question() -> None:
    # "hair" (1) is in every answer to the hair question (ten answers): 0 there; in a third of the pooled answers
    # of the short questions it is rare; "blond" (2) is in half the hair answers: log 2
    hair = [("faces", "What colour is the hair?", [1, 2 if i % 2 else 3]) for i in range(10)]
    pooled = [("faces", "Hat?", [1, 5]), ("faces", "Shoes?", [4, 5]), ("faces", "Coat?", [4, 5])]  # 3 questions < 10
    other = [("captions", "What colour is the hair?", [1, 2])]  # another dataset: its own pool
    weights = question_rarity_weights(hair + pooled + other, vocab_size=8)
    assert float(weights[2]) == pytest.approx(math.log(2))
    assert float(weights[3]) == pytest.approx(math.log(2))
    assert float(weights[1]) == pytest.approx(math.log(3))  # 0 among hair answers, log(3/1) in the pool
    assert float(weights[4]) == pytest.approx(math.log(3 / 2))
    assert float(weights[5]) == 0.0 and float(weights[0]) == 0.0 and float(weights[7]) == 0.0
    spaced = [("faces", "  what COLOUR is the  hair? ", ids) for _, _, ids in hair]  # case and spacing ignored
    torch.testing.assert_close(question_rarity_weights(spaced + pooled + other, 8), weights)
    alone = question_rarity_weights(hair, vocab_size=8, min_answers=11)  # too few: pooled per dataset, same set
    assert float(alone[1]) == 0.0
    with pytest.raises(ValueError, match="training split is empty"):
        question_rarity_weights([], vocab_size=8)


def test_a_word_mixture_model_reads_its_vocabularys_words_and_refuses_to_run_without_one(
        tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", image_token_space="word_mixture", word_align_temperature=0.2)
    size = model.cfg.image_size
    images = torch.randn(2, 3, size, size)
    with pytest.raises(ModelConfigError, match="needs its image vocabulary: train a first stage with "
                                               "run.task=image_text_align"):
        model.encode_img(images)
    vocab = torch.tensor([7, 11, 12, 40, 41])
    model.set_image_vocabulary(vocab)
    table = model.llama_model.get_input_embeddings().weight  # (V, H)
    with torch.no_grad():
        out, atts = model.encode_img(images)  # (B, N, H)
        projected = model.project_image(images)
    want = mix_words(word_logits(projected, table[vocab], 0.2), table[vocab], model.text_embedding_norm())
    torch.testing.assert_close(out, want)
    assert atts.shape == out.shape[:-1] == (2, model.num_image_tokens)
    # every token lies in the span of the five words: its residual after projecting on them is zero
    basis = torch.linalg.qr(table[vocab].T.float())[0]  # (H, 5)
    residual = out - (out @ basis) @ basis.T
    assert float(residual.abs().max()) < 1e-4 * float(out.abs().max())
    with pytest.raises(ModelConfigError, match=r"at least one token id in \[0, "):
        model.set_image_vocabulary(torch.tensor([3, table.shape[0]]))
    with pytest.raises(ModelConfigError, match="needs model.image_token_space=word_mixture"):
        tiny_model("minigpt_v2").set_image_vocabulary(vocab)


def test_the_align_step_of_a_word_mixture_model_is_the_mixture_loss_on_the_projection_only(
        tiny_model: Callable[..., Any]) -> None:
    from minigpt4.models.word_align import answer_word_weights
    from minigpt4.prompting import IGNORE_INDEX

    model = tiny_model("minigpt_v2", image_token_space="word_mixture", word_align_temperature=0.1).train()
    answers = ["Red red hair.", "Grey hair."]
    batch = _batch(answers, model.cfg.image_size)
    table = model.llama_model.get_input_embeddings().weight
    weights = question_rarity_weights([("d", "q", model.tokenizer.encode(a)) for a in answers], table.shape[0],
                                      min_answers=1)
    vocab = torch.nonzero(weights > 0)[:, 0]
    model.set_image_vocabulary(vocab)
    out = model.word_align_step(batch, weights)
    encoded = model.encode_batch(batch)
    rows, cols = torch.nonzero(encoded["labels"] != IGNORE_INDEX, as_tuple=True)
    ids = encoded["labels"][rows, cols]
    present = answer_word_weights(rows, ids, torch.ones(ids.shape), 2, table.shape[0], model.tokenizer.special_ids) > 0
    logits = word_logits(model.project_image(batch["image"]), table[vocab], 0.1)
    torch.testing.assert_close(out["loss"], word_mixture_loss(logits, (present.float() * weights)[:, vocab]))
    model.zero_grad()
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and float(g.abs().sum()) > 0 for n, g in grads.items() if n.startswith("llama_proj"))
    assert all(g is None for n, g in grads.items() if n.startswith("llama_model"))


def test_the_image_vocabulary_travels_in_the_checkpoint_and_only_into_a_word_mixture_model(
        tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    from minigpt4.models.checkpoint import load_model_checkpoint, save_model_checkpoint

    trained = tiny_model("minigpt_v2", image_token_space="word_mixture")
    with pytest.raises(ModelConfigError):  # nothing to save yet: no vocabulary in the file either
        trained.image_vocabulary()
    assert VOCAB_BUFFER not in trained.trainable_state_dict()
    trained.set_image_vocabulary(torch.tensor([5, 9, 30]))
    with torch.no_grad():
        trained.llama_proj.weight.mul_(3.0)  # weights that differ from a fresh model's
    path = save_model_checkpoint(trained, tmp_path / "mix.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert state[VOCAB_BUFFER].tolist() == [5, 9, 30]
    fresh = tiny_model("minigpt_v2", image_token_space="word_mixture")
    report = load_model_checkpoint(fresh, path)
    assert VOCAB_BUFFER in report.matched and fresh.image_vocabulary().tolist() == [5, 9, 30]
    images = torch.randn(1, 3, fresh.cfg.image_size, fresh.cfg.image_size)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_img(images)[0], trained.encode_img(images)[0])
    with pytest.raises(ModelConfigError, match=r"mix\.pth holds an image vocabulary .*trained with "
                                               r"model.image_token_space=word_mixture; set that in the config"):
        load_model_checkpoint(tiny_model("minigpt_v2"), path)


def test_each_answer_weighs_its_words_by_its_own_questions_answers() -> None:
    from minigpt4.models.word_align import AnswerWordWeights

    vocab = {w: i for i, w in enumerate("<s> yes no this is a human face not hair blond red dark".split())}

    def tokenize(text: str) -> list:
        return [0] + [vocab[w] for w in text.lower().replace(",", "").replace(".", "").split()]  # 0: a special

    face = [("d", "Is this a human face?", "Yes, this is a human face." if i % 4 else "No, this is not a human face.")
            for i in range(12)]
    hair = [("d", "The hair?", "Blond hair." if i % 2 else "Red hair.") for i in range(10)]
    shared = [("sharegpt", "Describe it.", "A human face, blond hair."), ("sharegpt", "Anything?", "Dark hair.")]
    weights = AnswerWordWeights(face + hair + shared, tokenize, vocab_size=len(vocab), exclude_ids=[0])
    yes = weights.per_answer["Yes, this is a human face."]
    assert yes[vocab["human"]] == 0.0 and yes[vocab["face"]] == 0.0  # every answer to its question has them
    assert yes[vocab["yes"]] == pytest.approx(math.log(12 / 9)) and 0 not in yes
    assert float(weights.overall[vocab["human"]]) == pytest.approx(math.log(2))  # rare among ShareGPT's answers
    rows = weights.rows([["Yes, this is a human face.", "Blond hair."], ["A human face, blond hair."],
                         ["Dark red hair."]])  # the last: not a training answer, its words at their overall weight
    # each answer an equal share: "Yes, ..." has one word with weight (yes), "Blond hair." one (blond)
    assert float(rows[0, vocab["yes"]]) == pytest.approx(1.0) and float(rows[0, vocab["blond"]]) == pytest.approx(1.0)
    assert float(rows[0, vocab["human"]]) == 0.0 and float(rows[0].sum()) == pytest.approx(2.0)
    shared_words = weights.per_answer["A human face, blond hair."]
    assert float(rows[1, vocab["human"]]) == pytest.approx(shared_words[vocab["human"]] / sum(shared_words.values()))
    assert float(rows[1, vocab["yes"]]) == 0.0 and float(rows[1].sum()) == pytest.approx(1.0)
    dark, red = float(weights.overall[vocab["dark"]]), float(weights.overall[vocab["red"]])
    assert dark == pytest.approx(math.log(2)) and red == pytest.approx(math.log(2))
    assert float(rows[2, vocab["dark"]]) == pytest.approx(dark / (dark + red)) and float(rows[2, 0]) == 0.0
    overall = question_rarity_weights([(d, q, [t for t in tokenize(a) if t]) for d, q, a in face + hair + shared],
                                      vocab_size=len(vocab))
    torch.testing.assert_close(weights.overall, overall)


def test_group_tokens_mix_each_groups_words_by_the_images_distribution_inside_the_group() -> None:
    from minigpt4.models.word_mixture import group_distributions, group_tokens

    gen = torch.Generator().manual_seed(3)
    words = torch.randn(6, 8, generator=gen)  # (W, H)
    logits = torch.randn(2, 3, 6, generator=gen) * 2  # (B, N, W)
    groups = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0]], dtype=torch.bool)  # (K, W)
    dist = group_distributions(logits, groups)
    mean = logits.softmax(-1).mean(1)  # (B, W)
    for b in range(2):
        for g, cols in enumerate(([0, 1], [2, 3, 4])):
            want = torch.zeros(6)
            want[cols] = mean[b, cols] / mean[b, cols].sum()
            torch.testing.assert_close(dist[b, g], want)
    out = group_tokens(logits, groups, words, norm=2.5)  # (B, K, H)
    assert out.shape == (2, 2, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((2, 2), 2.5))
    torch.testing.assert_close(F.normalize(out[:, 1], dim=-1), F.normalize(dist[:, 1] @ words, dim=-1))
    # a group token is made of its own words only: word 5 (in no group) and group 0's words are not in group 1's
    basis = torch.linalg.qr(words[[2, 3, 4]].T)[0]  # (H, 3)
    residual = out[:, 1] - (out[:, 1] @ basis) @ basis.T
    assert float(residual.abs().max()) < 1e-4
    # however little of an image's mass a group has, its token is as sharp as the group's own distribution
    one = logits[:, :1]  # (B, 1, W): one token, so the restricted distribution is the token's own
    faint = one.clone()
    faint[..., 5] += 20.0  # word 5 takes nearly all the mass
    assert float(faint.softmax(-1)[:, 0, :5].sum(-1).max()) < 1e-4
    torch.testing.assert_close(group_distributions(faint, groups), group_distributions(one, groups))


def test_group_mixture_loss_is_each_groups_cross_entropy_over_the_rows_that_have_its_words() -> None:
    from minigpt4.models.word_mixture import group_distributions, group_mixture_loss

    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 2, 5, generator=gen)  # (B, N, W)
    groups = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    targets = torch.zeros(3, 5)
    targets[0, 0], targets[0, 3] = 2.0, 1.0  # row 0: both groups
    targets[1, 2] = 1.0  # row 1: group 0 only
    targets[2, 4] = 0.0  # row 2: none
    loss = group_mixture_loss(logits, targets, groups)
    dist = group_distributions(logits, groups)
    g0 = (-math.log(float(dist[0, 0, 0])) - math.log(float(dist[1, 0, 2]))) / 2  # mean over rows 0 and 1
    g1 = -math.log(float(dist[0, 1, 3]))  # row 0 only
    assert math.isclose(float(loss), (g0 + g1) / 2, rel_tol=1e-5)
    # learning: a few steps on the loss make each group name the target word, whatever the other group does
    free = torch.zeros(3, 2, 5, requires_grad=True)
    opt = torch.optim.SGD([free], lr=5.0)
    for _ in range(50):
        opt.zero_grad()
        group_mixture_loss(free, targets, groups).backward()
        opt.step()
    learned = group_distributions(free.detach(), groups)
    assert float(learned[0, 0, 0]) > 0.9 and float(learned[0, 1, 3]) > 0.9 and float(learned[1, 0, 2]) > 0.9
    empty = group_mixture_loss(logits.requires_grad_(), torch.zeros(3, 5), groups)
    assert float(empty) == 0.0 and empty.requires_grad


def test_a_model_with_group_tokens_reads_them_after_the_mixtures_and_carries_its_groups_in_the_checkpoint(
        tiny_model: Callable[..., Any], tmp_path: Path) -> None:
    from minigpt4.models.checkpoint import load_model_checkpoint, save_model_checkpoint
    from minigpt4.models.word_mixture import GROUPS_BUFFER, group_tokens

    plain = tiny_model("minigpt_v2", image_token_space="word_mixture")
    model = tiny_model("minigpt_v2", image_token_space="word_mixture", word_group_tokens=2, word_align_temperature=0.2)
    assert model.num_image_tokens == plain.num_image_tokens + 2
    assert model.sample_encoder.image_tokens == model.num_image_tokens
    vocab = torch.tensor([7, 11, 12, 40, 41])
    model.set_image_vocabulary(vocab)
    images = torch.randn(2, 3, model.cfg.image_size, model.cfg.image_size)
    with pytest.raises(ModelConfigError, match=r"model.word_group_tokens=2 needs 2 word groups, and this model has 0: "
                                               r"train a first stage with run.task=image_text_align"):
        model.encode_img(images)
    with pytest.raises(ModelConfigError, match=r"shape \(3, 5\); this model needs \(2, 5\).*word_group_tokens=3"):
        model.set_word_groups(torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ModelConfigError, match="every word group needs at least one word"):
        model.set_word_groups(torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool))
    groups = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    model.set_word_groups(groups)
    table = model.llama_model.get_input_embeddings().weight
    with torch.no_grad():
        out, atts = model.encode_img(images)  # (B, 4 + 2, H)
        logits = model.image_word_logits(model.project_image(images))
    assert out.shape[1] == atts.shape[1] == model.num_image_tokens
    n = plain.num_image_tokens
    torch.testing.assert_close(out[:, :n], mix_words(logits, table[vocab], model.text_embedding_norm()))
    torch.testing.assert_close(out[:, n:], group_tokens(logits, groups, table[vocab], model.text_embedding_norm()))

    path = save_model_checkpoint(model, tmp_path / "groups.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    assert torch.equal(state[GROUPS_BUFFER], groups)
    fresh = tiny_model("minigpt_v2", image_token_space="word_mixture", word_group_tokens=2, word_align_temperature=0.2)
    report = load_model_checkpoint(fresh, path)
    assert GROUPS_BUFFER in report.matched and torch.equal(fresh.word_groups(), groups)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode_img(images)[0], out)
    with pytest.raises(ModelConfigError, match=r"set model.word_group_tokens=2 to load them"):
        load_model_checkpoint(tiny_model("minigpt_v2", image_token_space="word_mixture"), path)
    with pytest.raises(ModelConfigError, match="the word groups are over 4 words but the image vocabulary has 5"):
        fresh.set_word_groups(torch.ones(2, 4, dtype=torch.bool))
    fresh.set_image_vocabulary(torch.tensor([3, 4]))  # another vocabulary: its groups must be set again
    with pytest.raises(ModelConfigError, match="needs 2 word groups, and this model has 0"):
        fresh.word_groups()
    with pytest.raises(ModelConfigError, match="group tokens are >= 0 and need model.image_token_space=word_mixture"):
        tiny_model("minigpt_v2", word_group_tokens=2)


def test_word_groups_are_the_words_that_tell_one_questions_answers_apart_fewest_words_first() -> None:
    from minigpt4.models.word_align import AnswerWordWeights

    names = "<s> the head is upright tilted to left right hair blond red grey a face with and".split()
    vocab = {w: i for i, w in enumerate(names)}

    def tokenize(text: str) -> list:
        return [0] + [vocab[w] for w in text.lower().replace(",", "").replace(".", "").split()]

    tilt = ["The head is upright.", "The head is tilted to the left.", "The head is tilted to the right."]
    answers = [("d", "How is the head held?", tilt[i % 3]) for i in range(12)]
    answers += [("d", "Is the head tilted?", tilt[i % 3]) for i in range(12)]  # another wording: the same group
    answers += [("d", "The hair?", ["Blond hair.", "Red hair.", "Grey hair."][i % 3]) for i in range(12)]
    answers += [("d", "Describe.", ["A face with blond hair.", "A face with red hair and grey hair.",
                                    "A face, upright head.", "Grey hair and a tilted head."][i % 4])
                for i in range(12)]
    weights = AnswerWordWeights(answers, tokenize, vocab_size=len(vocab), exclude_ids=[0])
    image_vocab = torch.nonzero(weights.overall > 0)[:, 0]
    position = {int(t): i for i, t in enumerate(image_vocab.tolist())}

    def words(row: torch.Tensor) -> set:
        return {names[int(image_vocab[i])] for i in torch.nonzero(row)[:, 0]}

    two = weights.word_groups(image_vocab, 2)
    assert two.shape == (2, len(position))
    # "the" is in every tilt answer: it tells nothing apart; "to" follows from "tilted": the image does not choose it
    assert [words(r) for r in two] == [{"upright", "tilted", "left", "right"}, {"blond", "red", "grey"}]
    three = weights.word_groups(image_vocab, 3)  # the description's words come last: it has the most
    assert words(three[2]) == {"grey", "with", "upright", "blond", "red"}  # "a" is in every description
    with pytest.raises(ValueError, match=r"word_group_tokens=4, but the training answers have 3 word group\(s\).*"
                                         r"set model.word_group_tokens=3 or lower"):
        weights.word_groups(image_vocab, 4)


def test_branch_tokens_are_where_answers_part_ways_not_the_pieces_that_follow() -> None:
    from minigpt4.models.word_align import branch_tokens

    # "The person wears" = 1 2 3; glasses 4; no accessories 5 6; e|arr|ings 7 8 9 (a word in three pieces)
    answers = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3, 7, 8, 9], [1, 2, 3, 4]]
    assert branch_tokens(answers) == {4, 5, 7}
    # an answer that ends where another goes on: the continuation is a choice ("blond" vs "blond, curly")
    assert branch_tokens([[10, 11], [10, 11, 12], [13]]) == {10, 13, 12}
    assert branch_tokens([[1, 2, 3]]) == frozenset()  # one answer: nothing to choose


def test_branch_tokens_match_their_definition_on_random_answer_sets() -> None:
    """Against the definition, by brute force over every pair of answers: token t at position k of answer a is a
    branch token when some answer b shares a[:k] and differs at k (or ends there)."""
    import random

    from minigpt4.models.word_align import branch_tokens

    rng = random.Random(0)
    for _ in range(200):
        answers = [[rng.randrange(4) for _ in range(rng.randrange(0, 6))] for _ in range(rng.randrange(1, 7))]
        want = {a[k] for a in answers for b in answers for k in range(len(a))
                if b[:k] == a[:k] and (len(b) == k or b[k] != a[k])}
        assert branch_tokens(answers) == want, answers
