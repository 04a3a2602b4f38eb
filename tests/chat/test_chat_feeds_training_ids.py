"""One prompt format for training and chat: the token ids the chat engine feeds the model for a conversation equal
the training ids of the same conversation up to the answer, for every prompt format.

Training ids come from the model's sample encoder on a conversation sample (``conv_q``/``conv_a``, the loader's
path); chat ids from the engine's own calls (``upload_img`` → ``ask`` → open slot), for the first and a later
turn, and the reply's context length shows generation was fed exactly those positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch
from omegaconf import OmegaConf
from prompt_helpers import last_answer_start, training_prefix

from minigpt4.conversation.chat import Chat
from minigpt4.conversation.factory import build_model, chat_from_config
from minigpt4.prompting import IMAGE_PROMPT

CASES: Dict[str, Dict[str, Any]] = {
    "v1_vicuna0": {"arch": "minigpt4", "model": {}, "name": "vicuna0"},
    "v1_llama2": {"arch": "minigpt4", "name": "llama2",
                  "model": {"has_qformer": False, "q_former_model": None, "prompt_template": "[INST] {} [/INST] ",
                            "end_sym": "</s>"}},
    "v2": {"arch": "minigpt_v2", "model": {}, "name": "minigptv2"},
    "v2_custom_template": {"arch": "minigpt_v2", "name": "custom",
                           "model": {"prompt_template": "<|user|> {} <|bot|>", "end_sym": "<|end|>"}},
    "chat_template": {"arch": "minigpt_v2", "name": "chat_template", "chatml": True,
                      "model": {"prompt_format": "tokenizer_chat_template", "end_sym": "<|im_end|>",
                                "system_prompt": "Answer about the face."}},
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case_chat(request: pytest.FixtureRequest, tiny_cfg: Callable[..., Any], chatml_llama_dir: Path) -> tuple:
    case = CASES[request.param]
    cfg = tiny_cfg(case["arch"], "model.max_txt_len=512")  # the tiny vocabulary spells <|im_end|> in 9 pieces
    for key, value in case["model"].items():
        OmegaConf.update(cfg.model, key, value)
    if case.get("chatml"):
        OmegaConf.update(cfg.model, "llama_model", str(chatml_llama_dir))
    torch.manual_seed(0)
    chat = chat_from_config(cfg, "cpu", model=build_model(cfg, torch.device("cpu")))
    return request.param, case, chat


def _open(chat: Chat, conv: Any, img_list: list) -> List[int]:
    """The ids chat feeds for ``conv`` with the assistant's slot open (the slot is closed again)."""
    conv.append_message(conv.roles[1], None)
    try:
        return chat.context_ids(conv, img_list)
    finally:
        conv.messages.pop()


def test_chat_ids_equal_training_ids_up_to_the_answer(case_chat: tuple, face_image: Path) -> None:
    name, case, chat = case_chat
    model = chat.model
    conv, img_list = chat.new_conversation(), []
    assert conv.name == case["name"], "the conversation is named after the model's prompt format"
    chat.upload_img(str(face_image), conv, img_list)
    chat.encode_img(img_list)
    pixels = chat.vis_processor(face_image)
    q1, a1, q2 = "Describe the face.", "A calm adult face.", "Is the person smiling?"
    chat.ask(q1, conv)
    first = _open(chat, conv, img_list)
    assert first == training_prefix(model, pixels, [f"{IMAGE_PROMPT} {q1}"], ["x"]), name
    assert first.count(-1) == model.num_image_tokens
    if model.prompt_format.wrap_single_turn:  # single-turn samples are wrapped the same way (chat_template)
        single = model.sample_encoder.encode_batch(
            {"image": pixels[None], "instruction_input": [f"{IMAGE_PROMPT} {q1}"], "answer": ["x"]})
        ids = single["input_ids"][0].tolist()
        assert ids[:last_answer_start(single["labels"][0].tolist())] == first
    conv.append_message(conv.roles[1], a1)
    chat.ask(q2, conv)
    second = _open(chat, conv, img_list)
    assert second == training_prefix(model, pixels, [f"{IMAGE_PROMPT} {q1}", q2], [a1, "x"]), name
    reply = chat.reply(conv, img_list, max_new_tokens=2)
    assert reply.context_len == len(second)
    if case["name"] == "custom":
        assert "<|user|> <Img><ImageHere></Img> Describe the face. <|bot|>" in reply.prompt
        assert f"{a1}<|end|>" in reply.prompt
