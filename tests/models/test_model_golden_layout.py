"""Golden token layouts (reference §17 worked examples) with the tiny tokenizer.

Expected ids are assembled by hand from SentencePiece's encoding of each segment (BOS, the text before the image,
the image positions, the text after, the answer + end symbol, padding), never from the code under test.
IMG marks an image-embedding position, PAD the pad id, X an ignored label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List

import pytest
import sentencepiece as spm
import torch

IMG = -1
X = -100
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def sp(tokenizer_model_path: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tokenizer_model_path))


@pytest.fixture(scope="module")
def one_prompt(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A prompt file with one line (so upstream's random choice is deterministic) and a line without image."""
    path = tmp_path_factory.mktemp("prompts") / "alignment.txt"
    path.write_text("<Img><ImageHere></Img> Describe this image in detail.\nno image here, skipped\n")
    return str(path)


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _check(model: Any, samples: dict, ids: List[List[int]], labels: List[List[int]]) -> None:
    with torch.no_grad():
        inputs = model.build_llm_inputs(samples)
    pad = model.llama_tokenizer.pad_id
    assert inputs.token_ids.tolist() == ids
    assert inputs.labels.tolist() == labels
    assert inputs.attention_mask.tolist() == [[int(i != pad) for i in row] for row in ids]
    assert inputs.inputs_embeds.shape == (len(ids), len(ids[0]), model.llm_hidden_size)


def test_v1_vicuna0_stage2_sample(tiny_model: Callable[..., Any], sp: spm.SentencePieceProcessor,
                                  one_prompt: str) -> None:
    """``[BOS] ###Human: <Img> [IMG×Q] </Img> Describe … ###Assistant: <caption>### [pads]`` (prompt_path)."""
    model = tiny_model("minigpt4", prompt_path=one_prompt, prompt_template="###Human: {} ###Assistant: ",
                       end_sym="###")
    assert model.prompt_list == ["###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: "]
    head = ([BOS] + sp.encode("###Human: <Img>") + [IMG] * 4
            + sp.encode("</Img> Describe this image in detail. ###Assistant: "))
    long_ans = sp.encode("The woman has a neutral expression.###")
    short_ans = sp.encode("A face.###")
    pad = [3] * (len(long_ans) - len(short_ans))
    samples = {"image": _images(2), "answer": ["The woman has a neutral expression.", "A face."]}
    _check(model, samples,
           ids=[head + long_ans, head + short_ans + pad],
           labels=[[X] * len(head) + long_ans, [X] * len(head) + short_ans + [X] * len(pad)])


def test_v1_llama2_stage2_sample(tiny_model: Callable[..., Any], sp: spm.SentencePieceProcessor,
                                 one_prompt: str) -> None:
    """``[BOS] [INST] <Img> [IMG×64] </Img> Describe … [/INST] <caption></s>``: EOS is a supervised target."""
    model = tiny_model("minigpt4", has_qformer=False, q_former_model=None, prompt_path=one_prompt,
                       prompt_template="[INST] {} [/INST] ", end_sym="</s>")
    assert model.Qformer is None and model.llama_proj.in_features == 4 * 32
    head = [BOS] + sp.encode("[INST] <Img>") + [IMG] * 64 + sp.encode("</Img> Describe this image in detail. [/INST] ")
    answer = sp.encode("The person looks happy.") + [EOS]
    _check(model, {"image": _images(1), "answer": ["The person looks happy."]},
           ids=[head + answer], labels=[[X] * len(head) + answer])


def test_v2_single_turn_refcoco_sample(tiny_model: Callable[..., Any], sp: spm.SentencePieceProcessor) -> None:
    """chat_template wraps the instruction; the dataset's trailing space gives two spaces before ``[/INST]``."""
    model = tiny_model("minigpt_v2")
    question = "<Img><ImageHere></Img> [refer] where is the man in red ? "
    answer_text = "{<12><30><58><97>}"
    head = ([BOS] + sp.encode("[INST] <Img>") + [IMG] * 64
            + sp.encode("</Img> [refer] where is the man in red ?  [/INST]"))
    answer = sp.encode(answer_text) + [EOS]
    other_head = ([BOS] + sp.encode("[INST] <Img>") + [IMG] * 64
                  + sp.encode("</Img> [vqa] Is this a human face? [/INST]"))
    other_answer = sp.encode("Yes.") + [EOS]
    # the shorter condition's padding moves behind its answer block (upstream's concat_emb_input_output)
    tail = [3] * (len(answer) - len(other_answer)) + [3] * (len(head) - len(other_head))
    samples = {"image": _images(2),
               "instruction_input": [question, "<Img><ImageHere></Img> [vqa] Is this a human face?"],
               "answer": [answer_text, "Yes."]}
    _check(model, samples,
           ids=[head + answer, other_head + other_answer + tail],
           labels=[[X] * len(head) + answer, [X] * len(other_head) + other_answer + [X] * len(tail)])


def test_v2_two_turn_conversation(tiny_model: Callable[..., Any], sp: spm.SentencePieceProcessor) -> None:
    """``[BOS] [INST] <Img> [IMG] </Img> q1  [/INST] a1</s><s>[INST] q2  [/INST] a2</s>``; loss on a1</s>, a2</s>."""
    model = tiny_model("minigpt_v2")
    q1, q2 = "<Img><ImageHere></Img> Describe the face. ", "What is the skin type? "
    a1, a2 = "The person is smiling.", "Type III."
    head = [BOS] + sp.encode("[INST] <Img>") + [IMG] * 64 + sp.encode("</Img> Describe the face.  [/INST]")
    ans1 = sp.encode(a1) + [EOS]
    turn2 = [BOS] + sp.encode("[INST] What is the skin type?  [/INST]")
    ans2 = sp.encode(a2) + [EOS]
    expected_ids = head + ans1 + turn2 + ans2
    expected_labels = [X] * len(head) + ans1 + [X] * len(turn2) + ans2
    as_lists = {"image": _images(1), "conv_q": [[q1, q2]], "conv_a": [[a1, a2]]}
    _check(model, as_lists, ids=[expected_ids], labels=[expected_labels])
    joined = {"image": _images(1), "conv_q": [q1 + "!@#" + q2], "conv_a": [a1 + "!@#" + a2], "connect_sym": ["!@#"]}
    _check(model, joined, ids=[expected_ids], labels=[expected_labels])


def test_literal_pad_text_in_answer_is_masked_like_upstream(tiny_model: Callable[..., Any],
                                                           sp: spm.SentencePieceProcessor) -> None:
    """Upstream masks every pad id (3, "$$") in targets, a genuine "$$" too (quirk §16.9, kept for LLaMA presets)."""
    model = tiny_model("minigpt_v2")
    answer = sp.encode("x$$") + [EOS]
    assert 3 in answer
    with torch.no_grad():
        inputs = model.build_llm_inputs({"image": _images(1), "instruction_input": ["<Img><ImageHere></Img> q"],
                                         "answer": ["x$$"]})
    supervised = [t for t in inputs.labels[0].tolist() if t != X]
    assert supervised == [t for t in answer if t != 3]
    assert inputs.attention_mask[0].sum().item() == inputs.labels.shape[1]  # attention stays 1 (tokenizer mask)
