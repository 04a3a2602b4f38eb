"""Tiny presets through the real code paths: shapes, loss, learning, gradients, truncation, errors, generation."""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict

import pytest
import torch

from minigpt4.models.minigpt_base import IGNORE_INDEX, ModelConfigError, PromptError

V2_Q = "<Img><ImageHere></Img> [vqa] Is this a human face?"


def _batch(n: int = 2, size: int = 224, seed: int = 0) -> Dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    answers = ["Yes, this is a human face.", "No."] * n
    return {"image": torch.randn(n, 3, size, size, generator=gen), "instruction_input": [V2_Q] * n,
            "answer": answers[:n], "image_id": [str(i) for i in range(n)], "section": [""] * n, "skipped": 0}


@pytest.mark.parametrize("arch,n_tokens,feat_dim", [("minigpt4", 4, 32), ("minigpt_v2", 64, 128)])
def test_shapes_at_every_stage(tiny_model: Callable[..., Any], arch: str, n_tokens: int, feat_dim: int) -> None:
    model = tiny_model(arch)
    images = _batch()["image"]
    with torch.no_grad():
        vit = model.visual_encoder(images)
        assert vit.shape == (2, 1 + 256, 32)  # 224/14 = 16x16 patches + CLS
        feats = model.ln_vision(vit)
        tokens = model.image_tokens(feats)
        assert tokens.shape == (2, n_tokens, feat_dim)  # Q-Former queries, or 256 patches merged by 4
        proj = model.llama_proj(tokens)
        assert proj.shape == (2, n_tokens, 64)
        embeds, atts = model.encode_img(images)
        assert torch.equal(embeds, proj) and atts.shape == (2, n_tokens)
        inputs = model.build_llm_inputs(_batch())
    length = inputs.token_ids.shape[1]
    assert inputs.inputs_embeds.shape == (2, length, 64)
    assert inputs.attention_mask.shape == inputs.labels.shape == (2, length)
    assert (inputs.token_ids == -1).sum().item() == 2 * n_tokens
    image_rows = inputs.token_ids == -1
    assert torch.equal(inputs.inputs_embeds[image_rows].reshape(2, n_tokens, 64), embeds)


def test_merge_uses_four_consecutive_raster_patches(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2")
    feats = torch.arange(2 * 257 * 3, dtype=torch.float32).reshape(2, 257, 3)
    merged = model.image_tokens(feats)
    assert merged.shape == (2, 64, 12)
    assert torch.equal(merged[1, 5], torch.cat([feats[1, 1 + 20 + k] for k in range(4)]))  # patches 20..23, CLS dropped


@pytest.mark.parametrize("arch", ["minigpt4", "minigpt_v2"])
def test_loss_is_finite_and_falls(tiny_model: Callable[..., Any], arch: str) -> None:
    model = tiny_model(arch).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-2)
    batch = _batch()
    losses = []
    for _ in range(6):
        loss = model(batch)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("arch", ["minigpt4", "minigpt_v2"])
def test_gradients_only_where_they_should_be(tiny_model: Callable[..., Any], arch: str) -> None:
    model = tiny_model(arch).train()
    model(_batch())["loss"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected_lora = 4 * 2 if arch == "minigpt_v2" else 0  # A and B of q_proj and v_proj in 2 layers
    assert {n for n in trainable if not n.startswith("llama_proj.")} == {n for n in trainable if "lora_" in n}
    assert len([n for n in trainable if "lora_" in n]) == expected_lora
    assert {"llama_proj.weight", "llama_proj.bias"} <= with_grad
    assert with_grad <= trainable  # nothing frozen (ViT, ln_vision, Q-Former, LLM base) gets a gradient
    # LoRA B starts at zero, so at step 0 only B gets a gradient (A's gradient goes through B)
    assert {n for n in with_grad if "lora_" in n} == {n for n in trainable if "lora_B" in n}
    # frozen parts stay in eval mode under model.train()
    assert not model.visual_encoder.training and not model.ln_vision.training
    if model.Qformer is not None:
        assert not model.Qformer.training and not model.query_tokens.requires_grad


def test_trainable_vit_when_not_frozen_and_random_frozen_tower_refused(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", freeze_vit=False, vit_ckpt=None).train()
    assert model.visual_encoder.training and all(p.requires_grad for p in model.visual_encoder.parameters())
    model(_batch())["loss"].backward()
    assert model.visual_encoder.patch_embed.proj.weight.grad is not None
    with pytest.raises(ModelConfigError, match=r"model.vit_ckpt is null but model.freeze_vit is True"):
        tiny_model("minigpt_v2", vit_ckpt=None)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_truncation_is_counted_and_logged_once(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2", max_txt_len=4, max_context_len=30)
    records = _Records()
    facegpt = logging.getLogger("facegpt")
    facegpt.addHandler(records)
    try:
        with torch.no_grad():
            inputs = model.build_llm_inputs(_batch())
            model.build_llm_inputs(_batch())
    finally:
        facegpt.removeHandler(records)
    assert model.truncation_stats == {"samples": 4, "answers_truncated": 2, "contexts_truncated": 4}
    # the answer block is cut at 4 tokens (end_sym can be cut away, as upstream), the condition at 30 positions
    assert inputs.token_ids.shape[1] == 1 + 30 + 4
    assert (inputs.labels != IGNORE_INDEX).sum(dim=1).tolist() == [4, 4]
    answer_logs = [m for m in records.messages if "longer than max_txt_len=4" in m]
    context_logs = [m for m in records.messages if "longer than max_context_len=30" in m]
    assert len(answer_logs) == 1 and len(context_logs) == 1, records.messages  # once, not once per batch
    assert model.log_truncation_summary()["answers_truncated"] == 2


def test_placeholder_count_checked_with_both_numbers(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2")
    batch = _batch()
    batch["instruction_input"] = ["<Img><ImageHere></Img> and <ImageHere> again", V2_Q]
    with pytest.raises(PromptError, match=r"sample 0: the prompt has 2 <ImageHere> placeholder\(s\) but 1 image"):
        model.build_llm_inputs(batch)
    batch["instruction_input"] = ["no image placeholder", V2_Q]
    with pytest.raises(PromptError, match=r"has 0 <ImageHere> placeholder\(s\) but 1 image embedding block of 64"):
        model.build_llm_inputs(batch)
    embeds, _ = model.encode_img(_batch(1)["image"])
    with pytest.raises(PromptError, match=r"the prompt has 1 <ImageHere> placeholder\(s\) but 2 image embedding"):
        model.get_context_emb("<Img><ImageHere></Img> hi", [embeds, embeds])


def test_context_emb_has_bos_first_and_images_spliced(tiny_model: Callable[..., Any]) -> None:
    model = tiny_model("minigpt_v2")
    tok = model.llama_tokenizer
    embeds, _ = model.encode_img(_batch(1)["image"])
    prompt = "<s>[INST] <Img><ImageHere></Img> Describe the face. [/INST]"
    layout = model.context_layout(prompt, [embeds])
    assert layout == [1, 1] + tok.encode("[INST] <Img>") + [-1] * 64 + tok.encode("</Img> Describe the face. [/INST]")
    emb = model.get_context_emb(prompt, [embeds])
    assert emb.shape == (1, len(layout), 64)
    first = layout.index(-1)
    assert torch.equal(emb[0, first:first + 64], embeds[0])


def test_stop_sequences_come_from_tokenizer(tiny_model: Callable[..., Any]) -> None:
    v2 = tiny_model("minigpt_v2")
    assert v2.stop_sequences() == [[2]]  # end_sym "</s>" is the EOS token
    v1 = tiny_model("minigpt4")  # end_sym "###"
    tok = v1.llama_tokenizer
    stops = v1.stop_sequences()
    assert stops[0] == [2]
    assert tok.encode("###") in stops  # at a segment start
    head = tok.encode("smiling.")
    assert tok.encode("smiling.###")[len(head):] in stops  # right after a word


def test_generation_batched_and_streamed(tiny_model: Callable[..., Any]) -> None:
    from transformers import TextIteratorStreamer

    model = tiny_model("minigpt_v2")
    images = _batch()["image"]
    texts = ["<s>[INST] <Img><ImageHere></Img> Describe the face. [/INST]",
             "<s>[INST] <Img><ImageHere></Img> Hi [/INST]"]
    embs, mask = model.batch_context(images, texts)
    img = model.encode_img(images[:1])[0]
    n0, n1 = (len(model.context_layout(t, [img])) for t in texts)
    assert n0 > n1 and mask.tolist() == [[1] * n0, [0] * (n0 - n1) + [1] * n1]  # the shorter prompt is left-padded
    assert embs[1, : n0 - n1].abs().sum().item() == 0.0
    ids = model.generate_ids(images, texts, max_new_tokens=6)
    assert ids.shape[0] == 2 and ids.shape[1] <= 6
    answers = model.generate(images, texts, max_new_tokens=6)
    assert answers == [model.llama_tokenizer.decode(row).split("</s>")[0].strip() for row in ids]
    # the chat path: one context, streamed through transformers' streamer with the FaceGPT tokenizer
    emb = model.get_context_emb(texts[0], [model.encode_img(images[:1])[0]])
    streamer = TextIteratorStreamer(model.llama_tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "ids", model.generate_from_embeds(emb, streamer=streamer, max_new_tokens=6, do_sample=False)))
    thread.start()
    streamed = "".join(streamer)
    thread.join()
    assert streamed == model.llama_tokenizer.decode(result["ids"][0])
    assert torch.equal(result["ids"], ids[:1, : result["ids"].shape[1]])  # same greedy ids as the batched path


def test_stop_rule_ends_each_row(tiny_model: Callable[..., Any]) -> None:
    """A stop sequence ends generation of the rows that produce it (here: whatever the first token is)."""
    model = tiny_model("minigpt_v2")
    image = model.encode_img(_batch(1)["image"])[0]
    emb = model.get_context_emb("<s>[INST] <Img><ImageHere></Img> Hi [/INST]", [image])
    free = model.generate_from_embeds(emb, max_new_tokens=5, do_sample=False)
    first = int(free[0, 0])
    stopped = model.generate_from_embeds(emb, stop_sequences=[[first]], max_new_tokens=5, do_sample=False)
    assert stopped[0].tolist() == [first]


def test_llm_activation_checkpointing_switch(tiny_model: Callable[..., Any]) -> None:
    plain = tiny_model("minigpt_v2").train()
    ckpt = tiny_model("minigpt_v2", use_grad_checkpoint_llm=True).train()
    assert ckpt.llama_model.get_base_model().is_activation_checkpointing
    assert not plain.llama_model.get_base_model().is_activation_checkpointing
    batch = _batch()
    loss_plain, loss_ckpt = plain(batch)["loss"], ckpt(batch)["loss"]
    loss_plain.backward()
    loss_ckpt.backward()
    assert torch.allclose(loss_plain, loss_ckpt)
    assert torch.allclose(plain.llama_proj.weight.grad, ckpt.llama_proj.weight.grad, atol=1e-6)


def test_model_opens_no_autocast_of_its_own(tiny_model: Callable[..., Any]) -> None:
    """The caller's precision policy decides: no autocast without one, the policy's dtype inside one."""
    model = tiny_model("minigpt_v2", llm_precision="bf16")
    seen = []
    hook = model.llama_model.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    try:
        assert torch.isfinite(model(_batch())["loss"])  # image embeddings are cast to the LLM's dtype at the scatter
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(_batch())
    finally:
        hook.remove()
    assert seen == [(False, torch.bfloat16), (True, torch.bfloat16)]
    assert not hasattr(model, "maybe_autocast")
    assert model.llama_model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_image_token_scale_match_text_puts_every_image_token_at_the_text_embeddings_norm(tiny_model) -> None:
    """``model.image_token_scale: match_text`` rescales each projected token (direction kept); ``none`` (the default,
    upstream's) leaves them as ``llama_proj`` gives them."""
    plain, scaled = tiny_model("minigpt_v2"), tiny_model("minigpt_v2", image_token_scale="match_text")
    images = torch.randn(2, 3, plain.cfg.image_size, plain.cfg.image_size)
    with torch.no_grad():
        raw, _ = plain.encode_img(images)  # (B, N, H)
        out, _ = scaled.encode_img(images)
        text = plain.llama_model.get_input_embeddings().weight.norm(dim=-1).mean()
    assert not torch.allclose(raw.norm(dim=-1), text.expand(raw.shape[:-1]), rtol=1e-2), "the test needs a gap"
    torch.testing.assert_close(out.norm(dim=-1), text.expand(out.shape[:-1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.nn.functional.normalize(out, dim=-1), torch.nn.functional.normalize(raw, dim=-1),
                               rtol=1e-5, atol=1e-5)
