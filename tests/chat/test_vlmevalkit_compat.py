"""A FaceGPT checkout drops into VLMEvalKit's MiniGPT-4 wrapper.

Claims: the call sequence of VLMEvalKit's ``vlmeval/vlm/minigpt4.py`` (replayed below, in its order, on a config
laid out like its ``vlmeval/vlm/misc/minigptv2_eval.yaml`` and ``minigpt4_7b_eval.yaml`` but naming the tiny
models) runs on FaceGPT and answers exactly what FaceGPT's own chat engine answers with the same template; the
older version of the wrapper (``answer_prepare`` → ``model_generate`` → ``llama_tokenizer.decode``) gives the same
text; ``StoppingCriteriaSub`` keeps upstream's rule and its stops end FaceGPT's answers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch
import yaml
from transformers import StoppingCriteriaList

from minigpt4.conversation.chat import Chat as EngineChat
from minigpt4.conversation.conversation import upstream_template
from minigpt4.tools.synth_faces import synthetic_face

REPO = Path(__file__).resolve().parents[2]
NEW_TOKENS = 12
PROMPT = "What is the facial expression of this person?"
#: the tiny presets in the layout of VLMEvalKit's misc/*.yaml (keys as there; local weight paths as FaceGPT needs;
#: random tiny towers are declared trainable because the model refuses frozen random ones)
TINY_MODEL = {
    "minigpt_v2": {"arch": "minigpt_v2", "model_type": "tiny", "end_sym": "</s>", "low_resource": False,
                   "prompt_template": "[INST] {} [/INST]", "ckpt": "", "lora_r": 4, "lora_alpha": 8,
                   "image_size": 224, "drop_path_rate": 0, "use_grad_checkpoint": False, "vit_precision": "fp32",
                   "freeze_vit": False, "vit_ckpt": None, "prompt": ""},
    "minigpt4": {"arch": "minigpt4", "model_type": "tiny", "end_sym": "###", "low_resource": False,
                 "prompt_template": "###Human: {} ###Assistant: ", "ckpt": "", "image_size": 224,
                 "drop_path_rate": 0, "use_grad_checkpoint": False, "vit_precision": "fp32", "freeze_vit": False,
                 "vit_ckpt": None, "q_former_model": None, "freeze_qformer": False, "prompt": ""},
}


def vlmevalkit_style_config(path: Path, arch: str, llama_dir: Path) -> Path:
    """A YAML laid out as VLMEvalKit's misc eval configs: model, datasets.cc_sbu_align processors, run."""
    cfg = {"model": {**TINY_MODEL[arch], "llama_model": str(llama_dir)},
           "datasets": {"cc_sbu_align": {"vis_processor": {"train": {"name": "blip2_image_eval", "image_size": 224}},
                                         "text_processor": {"train": {"name": "blip_caption"}}}},
           "run": {"task": "image_text_pretrain"}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def wrapper_init(cfg_path: Path, mode: str, device: Any) -> Dict[str, Any]:
    """``MiniGPT4.__init__`` of VLMEvalKit's vlmeval/vlm/minigpt4.py, step by step (``device`` is
    ``torch.cuda.current_device()`` there; the model's 8-bit device index stays 0 on CPU)."""
    sys.path.append(str(REPO))  # the wrapper appends the MiniGPT-4 checkout's root
    from omegaconf import OmegaConf

    from minigpt4.common.registry import registry
    from minigpt4.conversation.conversation import CONV_VISION_minigptv2, CONV_VISION_Vicuna0, StoppingCriteriaSub

    cfg = OmegaConf.load(cfg_path)
    model_cfg = cfg.model
    model_cfg.device_8bit = 0
    model_cls = registry.get_model_class(model_cfg.arch)
    torch.manual_seed(0)
    model = model_cls.from_config(model_cfg)
    model = model.to(device)
    model.eval()
    vis_processor_cfg = cfg.datasets.cc_sbu_align.vis_processor.train
    vis_processor = registry.get_processor_class(vis_processor_cfg.name).from_config(vis_processor_cfg)
    conv_vision = CONV_VISION_minigptv2 if mode == "v2" else CONV_VISION_Vicuna0
    stop_words_ids = [torch.tensor(ids).to(device) for ids in [[835], [2277, 29937]]]
    stopping_criteria = StoppingCriteriaList([StoppingCriteriaSub(stops=stop_words_ids)])
    return {"model": model, "vis_processor": vis_processor, "CONV_VISION": conv_vision, "mode": mode,
            "stopping_criteria": stopping_criteria, "device": device}


def wrapper_generate_inner(state: Dict[str, Any], image_path: str, prompt: str, **kwargs: Any) -> str:
    """``MiniGPT4.generate_inner`` (current version): a Chat per call, upload, encode, ask, ``answer(...)[0]``."""
    from minigpt4.conversation.conversation import Chat

    if state["mode"] == "v2":
        chat = Chat(state["model"], state["vis_processor"], device=state["device"])
    else:
        chat = Chat(state["model"], state["vis_processor"], device=state["device"],
                    stopping_criteria=state["stopping_criteria"])
    chat_state = state["CONV_VISION"].copy()
    img_list: list = []
    _ = chat.upload_img(image_path, chat_state, img_list)
    chat.encode_img(img_list)
    chat.ask(prompt, chat_state)
    with torch.inference_mode():
        msg = chat.answer(conv=chat_state, img_list=img_list, **kwargs)[0]
    return msg


def wrapper_generate_old(state: Dict[str, Any], image_path: str, prompt: str, **kwargs: Any) -> str:
    """``MiniGPT4.generate`` of the wrapper's older version: ``answer_prepare`` → ``model_generate`` → decode."""
    from minigpt4.conversation.conversation import Chat

    chat = Chat(state["model"], state["vis_processor"], device=state["device"])
    chat_state = state["CONV_VISION"].copy()
    img_list: list = []
    _ = chat.upload_img(image_path, chat_state, img_list)
    chat.encode_img(img_list)
    chat.ask(prompt, chat_state)
    with torch.inference_mode():
        generation_dict = chat.answer_prepare(chat_state, img_list, **kwargs)
        generation_dict["do_sample"] = False
        output_token = chat.model_generate(**generation_dict)[0]
        output_text = chat.model.llama_tokenizer.decode(output_token, skip_special_tokens=True)
        output_text = output_text.split("###")[0]
        output_text = output_text.split("Assistant:")[-1].strip()
    return output_text


def facegpt_answer(state: Dict[str, Any], image_path: str, prompt: str, template: str, **kwargs: Any) -> str:
    """FaceGPT's own chat engine with the same upstream template (greedy)."""
    chat = EngineChat(state["model"], state["vis_processor"], device=state["device"],
                      template=upstream_template(template))
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(image_path, conv, img_list)
    chat.ask(prompt, conv)
    return chat.answer(conv, img_list, **kwargs)[0]


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("vlmeval_face") / "face.png"
    synthetic_face(3, size=96).save(path)
    return str(path)


@pytest.fixture(scope="module")
def v2_state(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Dict[str, Any]:
    cfg = vlmevalkit_style_config(tmp_path_factory.mktemp("vlmeval_v2") / "minigptv2_eval.yaml", "minigpt_v2",
                                  tiny_llama_dir)
    return wrapper_init(cfg, "v2", "cpu")


def test_wrapper_sequence_answers_as_facegpt_chat_v2(v2_state: Dict[str, Any], face: str) -> None:
    ours = facegpt_answer(v2_state, face, PROMPT, "minigptv2", max_new_tokens=NEW_TOKENS)
    theirs = wrapper_generate_inner(v2_state, face, PROMPT, max_new_tokens=NEW_TOKENS)
    assert theirs == ours
    assert theirs.strip(), "the tiny model should say something, or the comparison proves little"
    assert wrapper_generate_old(v2_state, face, PROMPT, max_new_tokens=NEW_TOKENS) == ours


def test_wrapper_reads_the_processor_and_builds_the_preset(v2_state: Dict[str, Any]) -> None:
    assert v2_state["vis_processor"].image_size == 224  # from datasets.cc_sbu_align.vis_processor.train
    model = v2_state["model"]
    assert model.cfg.vit_config.embed_dim == 32  # the tiny preset was merged under the YAML's model section
    assert model.cfg.lora_r == 4 and not model.training


def test_wrapper_sequence_answers_as_facegpt_chat_v1(tmp_path: Path, tiny_llama_dir: Path, face: str) -> None:
    cfg = vlmevalkit_style_config(tmp_path / "minigpt4_7b_eval.yaml", "minigpt4", tiny_llama_dir)
    state = wrapper_init(cfg, "v1_7b", "cpu")
    ours = facegpt_answer(state, face, PROMPT, "vicuna0", max_new_tokens=NEW_TOKENS)
    assert ours.strip()
    assert wrapper_generate_inner(state, face, PROMPT, max_new_tokens=NEW_TOKENS) == ours


def _stop_state(v2_state: Dict[str, Any], face: str) -> Tuple[list, Any]:
    chat = EngineChat(v2_state["model"], v2_state["vis_processor"], template=upstream_template("minigptv2"))
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(face, conv, img_list)
    chat.ask(PROMPT, conv)
    return chat.answer(conv, img_list, max_new_tokens=NEW_TOKENS)[1], chat


def test_stopping_criteria_sub_stops_the_answer_there(v2_state: Dict[str, Any], face: str) -> None:
    from minigpt4.conversation.conversation import Chat, StoppingCriteriaSub

    ids, engine = _stop_state(v2_state, face)
    assert len(ids) >= 3, "need an answer of a few tokens to place a stop inside it"
    stop = torch.tensor(ids[1:3])
    criteria = StoppingCriteriaList([StoppingCriteriaSub(stops=[stop])])
    assert bool(criteria(torch.tensor([ids[:3]]), None).all())  # upstream's rule: the tail equals a stop
    assert not bool(criteria(torch.tensor([ids[:2]]), None).any())
    chat = Chat(v2_state["model"], v2_state["vis_processor"], device="cpu", stopping_criteria=criteria)
    conv, img_list = upstream_template("minigptv2"), []
    chat.upload_img(face, conv, img_list)
    chat.ask(PROMPT, conv)
    text, stopped = chat.answer(conv, img_list, max_new_tokens=NEW_TOKENS)
    assert stopped == ids[:3]
    assert text == engine.answer_cleaner(conv).text(ids[:1])


def test_other_stopping_criteria_are_refused(v2_state: Dict[str, Any]) -> None:
    from transformers import MaxLengthCriteria

    from minigpt4.conversation.conversation import Chat

    with pytest.raises(TypeError, match="only StoppingCriteriaSub is understood, not MaxLengthCriteria"):
        Chat(v2_state["model"], v2_state["vis_processor"], device="cpu",
             stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(10)]))


def test_precision_follows_the_llm_storage() -> None:
    from minigpt4.conversation.upstream_compat import precision_for

    class Stored(torch.nn.Module):
        def __init__(self, dtype: torch.dtype) -> None:
            super().__init__()
            self.llama_model = torch.nn.Linear(2, 2).to(dtype)

    cpu = torch.device("cpu")
    assert precision_for(Stored(torch.float32), cpu).name == "fp32"
    assert precision_for(Stored(torch.bfloat16), cpu).name == "bf16"  # half storage computes in its dtype
    assert precision_for(Stored(torch.float16), torch.device("cuda")).name == "fp16"
