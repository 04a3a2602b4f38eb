"""Models whose prompts come from the tokenizer's own chat template (``prompt_format: tokenizer_chat_template``).

The chat's prompt for a first question must be exactly what the model trains on (``model.prompt_format.wrap``), so
chat and training cannot drift apart; the chat's answer must equal ``model.generate`` on that prompt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minigpt4.common.registry import registry
from minigpt4.conversation import Chat, FormatConversation
from minigpt4.conversation.session import ChatSession
from minigpt4.models.llm import smollm2_gguf_path


def test_tiny_chat_template_model_chats_like_it_trains(chatml_llama_dir: Path, face_image: Path) -> None:
    cls = registry.get_model_class("minigpt_v2")
    cfg = cls.default_config("tiny", {"model_type": "tiny", "llama_model": str(chatml_llama_dir), "vit_ckpt": None,
                                      "freeze_vit": False, "prompt_format": "tokenizer_chat_template",
                                      "end_sym": "<|im_end|>"})
    torch.manual_seed(0)
    model = cls.from_config(cfg).eval()
    processor = registry.get_processor_class("blip2_image_eval").from_config({"name": "blip2_image_eval"})
    chat = Chat(model, processor, "cpu")
    session = ChatSession(chat)
    session.load_image(face_image)
    assert isinstance(session.conv, FormatConversation) and session.conv.name == "chat_template"
    reply = session.ask("Describe the face.", max_new_tokens=10, repetition_penalty=1.0)
    assert reply.prompt == model.prompt_format.wrap("<Img><ImageHere></Img> Describe the face.")
    assert reply.prompt.startswith("<|im_start|>user\n<Img><ImageHere></Img> Describe the face.<|im_end|>")
    pixels = processor(face_image)[None]
    assert reply.ids == model.generate_ids(pixels, [reply.prompt], max_new_tokens=10)[0].tolist()
    assert reply.text == model.generate(pixels, [reply.prompt], max_new_tokens=10)[0]
    follow = session.ask("Anything else?", max_new_tokens=4)
    assert follow.prompt == (reply.prompt + reply.text + "<|im_end|>\n<|im_start|>user\nAnything else?<|im_end|>\n"
                             "<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_chat_answers_in_its_own_template_and_stops_at_end_of_turn(face_image: Path) -> None:
    gguf = smollm2_gguf_path()
    cls = registry.get_model_class("minigpt_v2")
    cfg = cls.default_config("smollm2", {"model_type": "smollm2", "llama_model": str(gguf),
                                         "vit_config": {"embed_dim": 32, "depth": 1, "num_heads": 2},
                                         # untrained: free image tokens (word mixtures need a first stage's words)
                                         "image_token_space": "free", "word_group_tokens": 0})
    torch.manual_seed(0)
    model = cls.from_config(cfg).eval()
    processor = registry.get_processor_class("blip2_image_eval").from_config(
        {"name": "blip2_image_eval", "image_size": cfg.image_size})
    session = ChatSession(Chat(model, processor, "cpu"))
    session.load_image(face_image)
    question = "Answer in one short sentence: what is the capital of France?"
    reply = session.ask(question, max_new_tokens=48)
    assert reply.prompt == model.prompt_format.wrap(f"<Img><ImageHere></Img> {question}")
    end_of_turn = model.stop_sequences()[0]
    assert reply.ids[-len(end_of_turn):] == end_of_turn, "SmolLM2 ends its turn with <|im_end|>"
    assert reply.text and "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
    assert reply.text == model.llama_tokenizer.decode(reply.ids[:-len(end_of_turn)]).strip()
