"""``model.word_align_weight``: the word-alignment loss of the image tokens, and the answer-positions-only LM head."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest
import torch
import torch.nn.functional as F

from minigpt4.models.connectors import ModelConfigError
from minigpt4.models.word_align import answer_word_weights, document_frequency_weights, word_align_loss
from minigpt4.prompting import IGNORE_INDEX

V2_Q = "<Img><ImageHere></Img> [vqa] What colour is the hair?"


def _batch(answers: list, size: int = 224, seed: int = 0) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    n = len(answers)
    return {"image": torch.randn(n, 3, size, size, generator=gen), "instruction_input": [V2_Q] * n,
            "answer": list(answers), "image_id": [str(i) for i in range(n)], "section": [""] * n, "skipped": 0}


def test_answer_word_weights_sum_each_rows_token_weights_without_specials() -> None:
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    ids = torch.tensor([5, 7, 5, 3, 2, 12])  # 2 is special, 12 is outside a 10-word table
    weights = torch.tensor([0.5, 1.0, 0.25, 2.0, 9.0, 9.0])
    table = answer_word_weights(rows, ids, weights, batch=3, vocab_size=10, exclude_ids=[2])
    want = torch.zeros(3, 10)
    want[0, 5], want[0, 7], want[1, 3] = 0.75, 1.0, 2.0
    assert torch.equal(table, want)


def _loop_reference(images: torch.Tensor, weights: torch.Tensor, table: torch.Tensor, tau: float) -> torch.Tensor:
    """The loss written out row by row and word by word."""
    losses = []
    for row in range(images.shape[0]):
        words = [w for w in range(weights.shape[1]) if float(weights[row, w]) > 0]
        if not words:
            continue
        sims = torch.stack([torch.stack([F.cosine_similarity(tok, vec, dim=0) for vec in table])
                            for tok in images[row]]) / tau  # (N, V)
        pooled = torch.log(torch.exp(sims).sum(dim=0))  # (V,)
        logp = pooled - torch.log(torch.exp(pooled).sum())
        losses.append(-sum(weights[row, w] * logp[w] for w in words) / sum(weights[row, w] for w in words))
    return torch.stack(losses).mean()


def test_word_align_loss_equals_the_written_out_definition() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(3, 4, 8, generator=gen)  # (B, N, H)
    table = torch.randn(12, 8, generator=gen)  # (V, H)
    weights = torch.zeros(3, 12)
    weights[0, 4], weights[0, 9], weights[2, 1], weights[2, 4] = 1.5, 0.25, 2.0, 0.5  # row 1 has no words
    got = word_align_loss(images, weights, table, temperature=0.2)
    torch.testing.assert_close(got, _loop_reference(images, weights, table, 0.2), rtol=1e-5, atol=1e-5)


def test_word_align_loss_trains_the_image_tokens_only_and_pulls_them_to_their_words() -> None:
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(20, 16, generator=gen)
    table.requires_grad_(True)  # even a trainable table gets no gradient: the loss reads it detached
    images = torch.randn(2, 3, 16, generator=gen, requires_grad=True)
    weights = torch.zeros(2, 20)
    weights[0, 4], weights[0, 11], weights[1, 7] = 1.0, 1.0, 2.0
    optimizer = torch.optim.Adam([images], lr=0.05)
    first = None
    for _ in range(60):
        optimizer.zero_grad()
        loss = word_align_loss(images, weights, table, temperature=0.1)
        loss.backward()
        first = float(loss) if first is None else first
        optimizer.step()
    assert table.grad is None
    assert float(loss) < 0.5 * first
    cos = F.normalize(images.detach(), dim=-1) @ F.normalize(table.detach(), dim=-1).T  # (B, N, V)
    best = cos.max(dim=1).values  # (B, V): the best-matching token per word
    assert best[0].topk(2).indices.sort().values.tolist() == [4, 11]
    assert int(best[1].argmax()) == 7


def test_no_weighted_word_gives_zero_with_a_graph() -> None:
    images = torch.randn(2, 3, 4, requires_grad=True)
    loss = word_align_loss(images, torch.zeros(2, 6), torch.randn(6, 4), temperature=0.05)
    loss.backward()
    assert float(loss) == 0.0 and images.grad is not None and float(images.grad.abs().sum()) == 0.0


def test_answer_loss_equals_the_llms_own_labels_loss(tiny_model: Callable[..., Any]) -> None:
    """The LM head runs at answer positions only; the value is the LLM's ``labels=`` loss."""
    model = tiny_model("minigpt_v2")
    batch = _batch(["Red.", "The person has grey hair and a striped shirt."])
    with torch.no_grad():
        inputs = model.build_llm_inputs(batch)
        want = model.llama_model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                 labels=inputs.labels, return_dict=True).loss
        got = model(batch)
    assert set(got) == {"loss"}  # word alignment is off by default
    torch.testing.assert_close(got["loss"], want, rtol=1e-6, atol=1e-6)


def test_word_align_weight_adds_the_loss_weighted_by_the_llms_own_token_losses(
        tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", word_align_weight=0.5, word_align_temperature=0.1, freeze_vit=False).train()
    batch = _batch(["Red.", "Grey hair."])
    torch.manual_seed(0)
    out = model(batch)
    torch.manual_seed(0)  # LoRA dropout draws again: the same draws
    inputs = model.build_llm_inputs(batch)
    token_losses, ids, rows = model.answer_token_losses(inputs)
    torch.testing.assert_close(token_losses.mean().detach(), out["answer_loss"])
    table = model.llama_model.get_input_embeddings().weight
    words = answer_word_weights(rows, ids, token_losses.detach(), 2, table.shape[0], model.tokenizer.special_ids)
    for row, text in enumerate(["Red.", "Grey hair."]):  # each row's weight sits on its own answer's words
        assert set(torch.nonzero(words[row])[:, 0].tolist()) <= set(model.tokenizer.encode(text))
    expected = word_align_loss(inputs.image_embeds, words, table, 0.1)
    torch.testing.assert_close(out["word_align_loss"], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["answer_loss"] + 0.5 * out["word_align_loss"], rtol=1e-6, atol=1e-6)
    model.zero_grad()
    expected.backward()  # the alignment term alone
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and float(g.abs().sum()) > 0 for n, g in grads.items() if n.startswith("llama_proj"))
    assert any(g is not None and float(g.abs().sum()) > 0 for n, g in grads.items() if n.startswith("visual_encoder"))
    assert all(g is None or float(g.abs().sum()) == 0 for n, g in grads.items() if n.startswith("llama_model"))


def test_document_frequency_weights_are_log_rarity_counting_each_document_once() -> None:
    weights = document_frequency_weights([[1, 2, 2], [1, 3], [1, 12]], vocab_size=5)  # 12: outside the table
    want = torch.zeros(5)
    want[2] = want[3] = torch.log(torch.tensor(3.0))
    torch.testing.assert_close(weights, want)  # 1 is in every document: weight 0; unseen ids: 0
    with pytest.raises(ValueError, match="training split is empty"):
        document_frequency_weights([], vocab_size=5)


def test_word_align_step_weighs_each_answer_word_once_and_trains_only_the_image_side(
        tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", word_align_temperature=0.1, freeze_vit=False).train()
    answers = ["Red red hair.", "Grey hair."]
    batch = _batch(answers)
    table = model.llama_model.get_input_embeddings().weight
    docs = [model.tokenizer.encode(a) for a in answers]
    weights = document_frequency_weights(docs, table.shape[0])
    out = model.word_align_step(batch, weights)
    images = model.encode_img(batch["image"])[0]
    words = torch.zeros(2, table.shape[0])
    encoded = model.encode_batch(batch)
    for row in range(2):  # the row's answer tokens as the model's labels hold them, each once, at its rarity
        ids = encoded["labels"][row][encoded["labels"][row] != IGNORE_INDEX].tolist()
        for t in set(ids) - set(model.tokenizer.special_ids):
            words[row, t] = weights[t]
    assert float(words.sum()) > 0 and all(float(words[r, t]) == 0 for r in range(2) for t in set(docs[0]) & set(docs[1]))
    vocab = torch.nonzero(weights > 0)[:, 0]  # the softmax runs over the answers' words
    assert 0 < len(vocab) < table.shape[0]
    torch.testing.assert_close(out["loss"], word_align_loss(images, words[:, vocab], table[vocab], 0.1), rtol=1e-6,
                               atol=1e-6)
    model.zero_grad()
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any(g is not None and float(g.abs().sum()) > 0 for n, g in grads.items() if n.startswith("llama_proj"))
    assert all(g is None for n, g in grads.items() if n.startswith("llama_model"))  # no LLM layer ran
    with pytest.raises(ValueError, match=r"word_weights has shape \(\d+,\); expected"):
        model.word_align_step(batch, weights[:-1])


@pytest.mark.parametrize("key,value,message", [("word_align_weight", -1.0, "model.word_align_weight must be >= 0"),
                                               ("word_align_temperature", 0.0, "model.word_align_temperature must")])
def test_impossible_settings_are_one_line_errors(tiny_model: Callable[..., Any], key: str, value: float,
                                                 message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        tiny_model("minigpt_v2", **{key: value})
