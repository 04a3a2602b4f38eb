"""Golden prompt strings of every conversation template, and the rule that picks a template from a config.

The expected strings are written out by hand from upstream's template definitions (system text, role strings,
separators), for a two-turn conversation about one image, built through the chat engine's own calls
(``upload_img`` → ``ask`` → answer stored → ``ask``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from minigpt4.common.schema import ModelConfig
from minigpt4.conversation import (
    CONV_VISION_LLama2,
    CONV_VISION_minigptv2,
    CONV_VISION_Vicuna0,
    Chat,
    ChatTemplateConversation,
    Conversation,
    SeparatorStyle,
    TemplateError,
    template_for,
    template_name_for,
)
from minigpt4.models.tokenizer import load_tokenizer

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


# ------------------------------------------------------------------------------- chat template

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def chatml_tokenizer(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path):
    folder = tmp_path_factory.mktemp("chatml_tok")
    (folder / "tokenizer.model").write_bytes((tiny_llama_dir / "tokenizer.model").read_bytes())
    config = json.loads((tiny_llama_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return load_tokenizer(folder)


def test_chat_template_conversation_renders_with_the_tokenizer(chatml_tokenizer) -> None:
    cfg = OmegaConf.structured(ModelConfig(arch="minigpt_v2", model_type="tiny", llama_model="x",
                                           prompt_format="tokenizer_chat_template"))
    conv = template_for(cfg, chatml_tokenizer)
    assert isinstance(conv, ChatTemplateConversation) and conv.name == "chat_template"
    _two_turns(conv)
    assert conv.get_prompt() == (
        "<|im_start|>user\n<Img><ImageHere></Img> What is in the picture?<|im_end|>\n"
        "<|im_start|>assistant\nA smiling face.<|im_end|>\n"
        "<|im_start|>user\nHow old is the person?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    clone = conv.copy()
    assert clone.renderer is chatml_tokenizer and clone.messages == conv.messages
    assert clone.messages is not conv.messages


def test_chat_template_needs_a_tokenizer() -> None:
    cfg = OmegaConf.structured(ModelConfig(arch="minigpt_v2", model_type="tiny", llama_model="x",
                                           prompt_format="tokenizer_chat_template"))
    with pytest.raises(TemplateError, match="needs the model's tokenizer"):
        template_for(cfg, None)


# ------------------------------------------------------------------------------------- choice

@pytest.mark.parametrize(
    "arch, model_type, extra, expected",
    [
        ("minigpt4", "pretrain_vicuna0", {}, "vicuna0"),
        ("minigpt4", "pretrain_llama2", {}, "llama2"),
        ("minigpt_v2", "pretrain", {}, "minigptv2"),
        ("minigpt_v2", "tiny", {}, "minigptv2"),
        # model_type decides for upstream presets, whatever the prompt settings say
        ("minigpt4", "pretrain_vicuna0", {"prompt_template": "[INST] {} [/INST] "}, "vicuna0"),
        # other v1 presets (tiny) follow their training prompt, then end_sym
        ("minigpt4", "tiny", {"prompt_template": "###Human: {} ###Assistant: ", "end_sym": "###"}, "vicuna0"),
        ("minigpt4", "tiny", {"end_sym": "###"}, "vicuna0"),
        ("minigpt4", "tiny", {"prompt_template": "[INST] {} [/INST] ", "end_sym": "</s>"}, "llama2"),
        ("minigpt4", "tiny", {"end_sym": "</s>"}, "llama2"),
        ("minigpt_v2", "tiny", {"prompt_format": "tokenizer_chat_template"}, "chat_template"),
    ],
)
def test_template_choice_rule(arch: str, model_type: str, extra: dict, expected: str) -> None:
    cfg = OmegaConf.structured(ModelConfig(arch=arch, model_type=model_type, llama_model="x", **extra))
    assert template_name_for(cfg) == expected


def test_undecidable_v1_template_names_the_keys_to_set() -> None:
    cfg = OmegaConf.structured(ModelConfig(arch="minigpt4", model_type="tiny", llama_model="x", end_sym="\n"))
    with pytest.raises(TemplateError, match=r"model.prompt_template.*--template"):
        template_name_for(cfg)


def test_explicit_template_name_wins_and_unknown_is_refused() -> None:
    cfg = OmegaConf.structured(ModelConfig(arch="minigpt_v2", model_type="pretrain", llama_model="x"))
    assert template_for(cfg, name="vicuna0").name == "vicuna0"
    with pytest.raises(TemplateError, match="unknown conversation template 'alpaca'"):
        template_for(cfg, name="alpaca")
