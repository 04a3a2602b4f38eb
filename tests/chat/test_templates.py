"""Golden prompt strings of upstream's chat templates and of the prompt-format conversations.

The expected strings are written out by hand from upstream's template definitions (system text, role strings,
separators) and from the training layout (template, end symbol, BOS text before later turns), for a two-turn
conversation about one image, built through the chat engine's own calls (``upload_img`` → ``ask`` → answer
stored → ``ask``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from prompt_helpers import CHATML

from minigpt4.common.schema import ModelConfig
from minigpt4.conversation import (
    CONV_VISION_LLama2,
    CONV_VISION_minigptv2,
    CONV_VISION_Vicuna0,
    Chat,
    Conversation,
    FormatConversation,
    SeparatorStyle,
    TemplateError,
    upstream_template,
)
from minigpt4.models.tokenizer import load_tokenizer
from minigpt4.prompting import PromptFormat

SYSTEM = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
          "to you. Please answer my questions.")

GOLDEN_TWO_TURNS = {
    "vicuna0": SYSTEM + "###Human: <Img><ImageHere></Img> What is in the picture?###Assistant: A smiling face."
    "###Human: How old is the person?###Assistant: ",
    "llama2": SYSTEM + "<s>[INST] <Img><ImageHere></Img> What is in the picture? [/INST] A smiling face."
    "<s>[INST] How old is the person? [/INST] ",
    "minigptv2": "<s>[INST] <Img><ImageHere></Img> What is in the picture? [/INST]A smiling face."
    "<s>[INST] How old is the person? [/INST]",
}

GOLDEN_ONE_TURN = {  # upstream's documented single-question prompts
    "vicuna0": SYSTEM + "###Human: <Img><ImageHere></Img> What is this?###Assistant: ",
    "llama2": SYSTEM + "<s>[INST] <Img><ImageHere></Img> What is this? [/INST] ",
    "minigptv2": "<s>[INST] <Img><ImageHere></Img> [vqa] What is this? [/INST]",
}
TEMPLATE_OBJECTS = {"vicuna0": CONV_VISION_Vicuna0, "llama2": CONV_VISION_LLama2, "minigptv2": CONV_VISION_minigptv2}


def _two_turns(conv: Conversation) -> Conversation:
    chat = Chat(model=None, vis_processor=lambda img: img)  # upload/ask need no model
    img_list: list = []
    assert chat.upload_img(Image.new("RGB", (8, 8)), conv, img_list) == "Received."
    chat.ask("What is in the picture?", conv)
    conv.append_message(conv.roles[1], "A smiling face.")
    chat.ask("How old is the person?", conv)
    conv.append_message(conv.roles[1], None)
    assert len(img_list) == 1
    return conv


@pytest.mark.parametrize("name", sorted(GOLDEN_TWO_TURNS))
def test_two_turn_prompt_is_exact(name: str) -> None:
    conv = _two_turns(TEMPLATE_OBJECTS[name].copy())
    assert conv.get_prompt() == GOLDEN_TWO_TURNS[name]


@pytest.mark.parametrize("name", sorted(GOLDEN_ONE_TURN))
def test_one_turn_prompt_matches_upstream_documentation(name: str) -> None:
    conv = TEMPLATE_OBJECTS[name].copy()
    chat = Chat(model=None, vis_processor=lambda img: img)
    chat.upload_img(Image.new("RGB", (8, 8)), conv, [])
    chat.ask("[vqa] What is this?" if name == "minigptv2" else "What is this?", conv)
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == GOLDEN_ONE_TURN[name]


def test_copy_leaves_the_template_untouched() -> None:
    conv = CONV_VISION_minigptv2.copy()
    _two_turns(conv)
    assert CONV_VISION_minigptv2.messages == []
    assert CONV_VISION_minigptv2.get_prompt() == ""
    assert conv.to_dict()["messages"][1] == [" [/INST]", "A smiling face."]
    assert json.loads(json.dumps(conv.to_dict()))["template"] == "minigptv2"


def test_separator_style_two_alternates_separators() -> None:
    conv = Conversation(system="S", roles=("U: ", "A: "), sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>")
    conv.append_message("U: ", "hi")
    conv.append_message("A: ", "hello")
    conv.append_message("U: ", "bye")
    conv.append_message("A: ", None)
    assert conv.get_prompt() == "S U: hi A: hello</s>U: bye A: "


def test_an_empty_answer_keeps_its_separator() -> None:
    conv = CONV_VISION_Vicuna0.copy()
    conv.append_message(conv.roles[0], "<Img><ImageHere></Img> q1")
    conv.append_message(conv.roles[1], "")
    conv.append_message(conv.roles[0], "q2")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == SYSTEM + "###Human: <Img><ImageHere></Img> q1###Assistant: ###Human: q2###Assistant: "


def test_turns_pairs_questions_and_answers() -> None:
    conv = _two_turns(CONV_VISION_Vicuna0.copy())
    assert conv.turns() == [("<Img><ImageHere></Img> What is in the picture?", "A smiling face."),
                            ("How old is the person?", None)]


# ------------------------------------------------------------------------------- prompt formats

GOLDEN_FORMAT_TWO_TURNS = {  # the training layout: template, answer + end_sym, BOS text + template per later turn
    "vicuna0": "<s>###Human: <Img><ImageHere></Img> What is in the picture? ###Assistant: A smiling face.###"
    "<s>###Human: How old is the person? ###Assistant: ",
    "llama2": "<s>[INST] <Img><ImageHere></Img> What is in the picture? [/INST] A smiling face.</s>"
    "<s>[INST] How old is the person? [/INST] ",
    "minigptv2": "<s>[INST] <Img><ImageHere></Img> What is in the picture? [/INST]A smiling face.</s>"
    "<s>[INST] How old is the person? [/INST]",
}
END_SYMS = {"vicuna0": "###", "llama2": "</s>", "minigptv2": "</s>"}


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_llama_dir: Path):
    return load_tokenizer(tiny_llama_dir)


@pytest.mark.parametrize("name", sorted(GOLDEN_FORMAT_TWO_TURNS))
def test_prompt_format_conversation_is_the_training_layout(name: str, tiny_tokenizer) -> None:
    template = {"vicuna0": "###Human: {} ###Assistant: ", "llama2": "[INST] {} [/INST] ",
                "minigptv2": "[INST] {} [/INST]"}[name]  # upstream's training templates, written out
    cfg = OmegaConf.structured(ModelConfig(arch="minigpt4", model_type="tiny", llama_model="x",
                                           prompt_template=template, end_sym=END_SYMS[name]))
    fmt = PromptFormat.from_config(cfg, tiny_tokenizer)
    assert fmt.name == name and PromptFormat.from_config(fmt.to_config(), tiny_tokenizer) == fmt
    conv = _two_turns(FormatConversation.for_format(fmt))
    assert conv.name == name and conv.get_prompt() == GOLDEN_FORMAT_TWO_TURNS[name]
    pieces, add_bos = conv.prompt_pieces()
    assert add_bos and [p.trained for p in pieces] == [False, True, False]
    assert pieces[1].text == "A smiling face." + END_SYMS[name]


@pytest.fixture(scope="module")
def chatml_tokenizer(chatml_llama_dir: Path):
    return load_tokenizer(chatml_llama_dir)


def test_chat_template_conversation_renders_with_the_tokenizer(chatml_tokenizer) -> None:
    cfg = OmegaConf.structured(ModelConfig(arch="minigpt_v2", model_type="tiny", llama_model="x",
                                           prompt_format="tokenizer_chat_template", end_sym="<|im_end|>"))
    conv = FormatConversation.for_format(PromptFormat.from_config(cfg, chatml_tokenizer))
    assert conv.name == "chat_template"
    _two_turns(conv)
    assert conv.get_prompt() == (
        "<|im_start|>user\n<Img><ImageHere></Img> What is in the picture?<|im_end|>\n"
        "<|im_start|>assistant\nA smiling face.<|im_end|>\n"
        "<|im_start|>user\nHow old is the person?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chatml_tokenizer.chat_template == CHATML
    clone = conv.copy()
    assert clone.prompt_format is conv.prompt_format and clone.messages == conv.messages
    assert clone.messages is not conv.messages


def test_chat_template_format_needs_a_tokenizer() -> None:
    fmt = PromptFormat(kind="tokenizer_chat_template", end_sym="<|im_end|>")
    with pytest.raises(ValueError, match="has no tokenizer"):
        fmt.wrap("hi")


def test_upstream_templates_by_name() -> None:
    assert upstream_template("vicuna0").name == "vicuna0"
    assert upstream_template("vicuna0") is not CONV_VISION_Vicuna0
    with pytest.raises(TemplateError, match=r"unknown conversation template 'alpaca'; known: \['llama2', "):
        upstream_template("alpaca")
