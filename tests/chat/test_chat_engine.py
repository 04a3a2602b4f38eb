"""The chat engine on tiny models: same output as the library's generate, multi-turn history, streaming,
encode-once, context trimming, cancelling, image errors, and where the image processor comes from."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from prompt_helpers import training_prefix

from minigpt4.conversation.chat import Chat, ContextTooLongError
from minigpt4.conversation.factory import ChatSetupError, build_vis_processor, vis_processor_config
from minigpt4.processors.image_io import ImageOpenError

ARCHS = ["minigpt4", "minigpt_v2"]
EXPECTED_TEMPLATE = {"minigpt4": "vicuna0", "minigpt_v2": "minigptv2"}


def _start(chat: Chat, image: Path, question: str) -> tuple:
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(str(image), conv, img_list)
    chat.encode_img(img_list)
    chat.ask(question, conv)
    return conv, img_list


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_answers_equal_model_generate_over_two_turns(arch: str, chat_for: Callable[..., Chat],
                                                          face_image: Path) -> None:
    """Greedy chat output == the model's generation from the training ids of the same conversation (up to the
    answer, image embeddings scattered in), for the first and a follow-up turn."""
    chat = chat_for(arch, max_new_tokens=12, repetition_penalty=1.0)
    model = chat.model
    assert chat.new_conversation().name == EXPECTED_TEMPLATE[arch]
    conv, img_list = _start(chat, face_image, "Describe this face.")
    pixels = chat.vis_processor(face_image)  # (3, S, S)
    first = chat.reply(conv, img_list)
    chat.ask("How old is the person?", conv)
    second = chat.reply(conv, img_list)
    questions = ["<Img><ImageHere></Img> Describe this face.", "How old is the person?"]
    for k, reply in enumerate((first, second)):
        ids = training_prefix(model, pixels, questions[:k + 1], [first.text, "x"][:k] + ["x"])
        with torch.no_grad():
            embs = model.context_embeds(ids, img_list)
            new = model.generate_from_embeds(embs, max_new_tokens=12, repetition_penalty=1.0, do_sample=False)
        assert reply.ids == new[0].tolist() and reply.context_len == len(ids)
    assert first.text and first.text in second.prompt, "the real first answer is in the history"
    assert second.prompt.startswith(first.prompt + first.text)
    assert second.prompt.endswith({"minigpt4": "###<s>###Human: How old is the person? ###Assistant: ",
                                   "minigpt_v2": "</s><s>[INST] How old is the person? [/INST]"}[arch])
    assert conv.messages[-1] == [conv.roles[1], second.text]
    text, ids = chat.answer(*_start(chat, face_image, "Describe this face."))  # upstream's (text, ids) shape
    assert (text, ids) == (first.text, first.ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_pieces_build_the_same_answer(arch: str, chat_for: Callable[..., Chat], face_image: Path) -> None:
    chat = chat_for(arch, max_new_tokens=16)
    conv_a, imgs_a = _start(chat, face_image, "What do you see?")
    whole = chat.reply(conv_a, imgs_a)
    conv_b, imgs_b = _start(chat, face_image, "What do you see?")
    stream = chat.stream_answer(conv_b, imgs_b)
    pieces = list(stream)
    assert len(pieces) > 1, "tokens arrive one by one, not as a single block"
    assert "".join(pieces) == whole.text == stream.reply.text
    assert stream.reply.ids == whole.ids and not stream.reply.interrupted
    assert conv_b.messages == conv_a.messages


def test_image_is_encoded_once(chat_for: Callable[..., Chat], face_image: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    chat = chat_for("minigpt_v2", max_new_tokens=4)
    calls = []
    real = chat.model.encode_img
    monkeypatch.setattr(chat.model, "encode_img", lambda image: calls.append(image.shape) or real(image))
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(str(face_image), conv, img_list)
    chat.ask("one", conv)
    chat.reply(conv, img_list)  # encodes lazily
    assert isinstance(img_list[0], torch.Tensor) and img_list[0].dim() == 3
    chat.ask("two", conv)
    chat.reply(conv, img_list)
    chat.encode_img(img_list)
    assert calls == [torch.Size([1, 3, 224, 224])]


def test_long_conversation_drops_oldest_turns_but_keeps_the_image(chat_for: Callable[..., Chat], face_image: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    chat = chat_for("minigpt_v2", max_new_tokens=6)
    model = chat.model
    conv, img_list = _start(chat, face_image, "first question about the face")
    for question in ("second question here", "third question here"):
        chat.reply(conv, img_list)
        chat.ask(question, conv)
    chat.reply(conv, img_list)
    chat.ask("fourth and last", conv)
    full = conv.copy()
    full.append_message(full.roles[1], None)
    full_len = len(chat.context_ids(full, img_list))
    minimal = full.copy()
    del minimal.messages[2:6]  # keep the image turn and its answer + the last question
    min_len = len(chat.context_ids(minimal, img_list))
    assert min_len < full_len
    before = [list(m) for m in conv.messages]
    with caplog.at_level(logging.WARNING, logger="facegpt"):
        reply = chat.reply(conv, img_list, max_length=6 + min_len + 2)
    assert reply.dropped_turns == 2 and reply.context_len <= min_len + 2
    assert "2 oldest turn(s) were left out" in caplog.text
    assert "<Img><ImageHere></Img> first question about the face" in reply.prompt
    assert "second question here" not in reply.prompt and "third question here" not in reply.prompt
    assert reply.prompt.endswith("</s><s>[INST] fourth and last [/INST]")
    assert reply.context_len == min_len
    assert conv.messages[:-1] == before, "the transcript keeps every turn"
    chat.ask("a fifth question that does not fit", conv)
    before = [list(m) for m in conv.messages]
    with pytest.raises(ContextTooLongError, match=r"needs \d+ positions but only \d+ are available"):
        chat.reply(conv, img_list, max_length=6 + min_len - 1)
    assert conv.messages == before, "a failed answer leaves the conversation as it was"


def test_cancel_stops_a_streamed_answer(chat_for: Callable[..., Chat], face_image: Path) -> None:
    chat = chat_for("minigpt4", max_new_tokens=400)
    conv, img_list = _start(chat, face_image, "Tell me everything.")
    stream = chat.stream_answer(conv, img_list)
    first = next(iter(stream))
    reply = stream.cancel()
    assert reply.interrupted and 0 < len(reply.ids) < 400
    assert reply.text.startswith(first)
    assert conv.messages[-1] == [conv.roles[1], reply.text]


def test_upload_errors_name_the_file_and_leave_the_conversation_alone(chat_for: Callable[..., Chat],
                                                                      tmp_path: Path, not_an_image: Path) -> None:
    chat = chat_for("minigpt_v2")
    conv, img_list = chat.new_conversation(), []
    missing = tmp_path / "nowhere.png"
    with pytest.raises(ImageOpenError, match=f"image file not found: {missing}"):
        chat.upload_img(str(missing), conv, img_list)
    with pytest.raises(ImageOpenError, match=f"cannot decode image {not_an_image}"):
        chat.upload_img(not_an_image, conv, img_list)
    with pytest.raises(ValueError, match=r"must be \[3,S,S\] or \[1,3,S,S\]"):
        chat.upload_img(torch.zeros(2, 5, 5), conv, img_list)
    assert conv.messages == [] and img_list == []
    with pytest.raises(ValueError, match="no open question; call ask"):
        chat.reply(conv, img_list)


def test_pixel_tensor_and_pil_inputs_give_the_same_embedding(chat_for: Callable[..., Chat], face_image: Path) -> None:
    from minigpt4.processors.image_io import open_image

    chat = chat_for("minigpt_v2")
    lists = []
    for image in (str(face_image), open_image(face_image), chat.vis_processor(face_image)):
        img_list: list = []
        chat.upload_img(image, chat.new_conversation(), img_list)
        chat.encode_img(img_list)
        lists.append(img_list[0])
    assert torch.equal(lists[0], lists[1]) and torch.equal(lists[0], lists[2])


def test_template_defaults_to_the_models_config(tiny_chats: dict) -> None:
    for arch, expected in EXPECTED_TEMPLATE.items():
        base = tiny_chats[arch]
        assert Chat(base.model, base.vis_processor).new_conversation().name == expected


# --------------------------------------------------------------------------- image processor source

def test_image_processor_comes_from_preprocess(tiny_cfg: Callable[..., Any]) -> None:
    cfg = tiny_cfg("minigpt_v2", "preprocess.vis_processor.eval.image_size=112")
    entry, key = vis_processor_config(cfg)
    assert key == "preprocess.vis_processor.eval" and entry.name == "blip2_image_eval"
    assert build_vis_processor(cfg).image_size == 112


def test_upstream_dataset_block_is_a_logged_fallback(tiny_cfg: Callable[..., Any], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_cfg("minigpt_v2", "preprocess.vis_processor.eval=null",
                   "datasets.cc_sbu_align.vis_processor.train.name=blip2_image_eval",
                   "datasets.cc_sbu_align.vis_processor.train.image_size=96",
                   f"datasets.cc_sbu_align.build_info.storage={tmp_path}")
    with caplog.at_level(logging.INFO, logger="facegpt"):
        processor = build_vis_processor(cfg)
    assert processor.image_size == 96
    assert "using datasets.cc_sbu_align.vis_processor.train (upstream eval-config layout)" in caplog.text


def test_no_image_processor_is_a_clear_error(tiny_cfg: Callable[..., Any]) -> None:
    cfg = tiny_cfg("minigpt_v2", "preprocess.vis_processor.eval=null")
    with pytest.raises(ChatSetupError, match=r"preprocess.vis_processor.eval is not set.*fix: --options "
                                             r"preprocess.vis_processor.eval.name=blip2_image_eval"):
        build_vis_processor(cfg)
