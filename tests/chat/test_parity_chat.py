"""The chat engine against upstream's records on ../shared/parity/{v1,v1_llama2,v2}.

Each model is loaded the way a user loads one: an eval YAML (written here from the folder's ``export.json``:
upstream's model config plus the tiny dimensions) → ``load_config`` → ``chat_from_config`` (image processor from the
preset's ``preprocess``). ``ln_vision.pth`` (randomised for the parity run, never in upstream's checkpoints) is
loaded on top through the public checkpoint API. Then, per recorded question, the engine's own calls —
``upload_img`` (path) → ``ask`` → ``reply``:

* by default (the model's prompt format) feed exactly upstream's recorded *training* ids up to the answer, single
  turn and (v2) the second turn of the recorded conversation sample;
* with ``template=`` upstream's chat template name give upstream's chat prompt string, context layout and greedy
  ids (transformers 5 returns no leading BOS; upstream's 4.30 did). Upstream's chat layout differs from its training
  layout (system text, role strings, a second BOS); that difference is the only one between the two modes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest
from omegaconf import OmegaConf

from prompt_helpers import last_answer_start

from minigpt4.common.config import load_config
from minigpt4.conversation.factory import chat_from_config
from minigpt4.models.checkpoint import load_model_checkpoint
from minigpt4.prompting import IMAGE_PROMPT

VARIANTS = ["v1", "v1_llama2", "v2"]
UPSTREAM_TEMPLATE = {"v1": "vicuna0", "v1_llama2": "llama2", "v2": "minigptv2"}


def _model_section(root: Path, export: Dict[str, Any]) -> Dict[str, Any]:
    """The ``model:`` section of an eval config for a parity folder (upstream's values + tiny dimensions)."""
    up, eva = export["model_cfg"], export["eva"]
    model: Dict[str, Any] = {
        "arch": up["arch"], "model_type": up["model_type"], "image_size": up["image_size"],
        "vit_config": {k: eva[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "norm_eps")},
        "vit_precision": "fp32", "llm_precision": "fp32", "attn_implementation": "eager",
        "vit_ckpt": str(root / "eva_vit_g.pth"), "llama_model": str(root / up["llama_model"]),
        "ckpt": str(root / up["ckpt"]), "end_sym": up["end_sym"], "prompt_template": up["prompt_template"],
        "max_txt_len": up["max_txt_len"], "low_resource": False,
    }
    if export["qformer"]:
        q = export["qformer"]
        model.update(num_query_token=q["num_query_token"], q_former_model=str(root / up["q_former_model"]),
                     qformer_config={k: q[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "intermediate_size", "cross_attention_freq",
                                                       "layer_norm_eps", "max_position_embeddings")})
    if export["lora"]:
        model.update(lora_r=export["lora"]["r"], lora_alpha=export["lora"]["lora_alpha"])
    return model


@pytest.fixture(scope="module", params=VARIANTS)
def parity_chat(request: pytest.FixtureRequest, parity_root: Path, tmp_path_factory: pytest.TempPathFactory):
    root = parity_root / request.param
    export = json.loads((root / "export.json").read_text())
    cfg_path = tmp_path_factory.mktemp(f"parity_{request.param}") / "eval.yaml"
    OmegaConf.save(OmegaConf.create({"model": _model_section(root, export), "run": {"task": "image_text_pretrain"}}),
                   cfg_path)
    cfg = load_config(cfg_path)
    chat = chat_from_config(cfg, "cpu", template=UPSTREAM_TEMPLATE[request.param])
    if (root / "ln_vision.pth").is_file():
        load_model_checkpoint(chat.model, root / "ln_vision.pth", partial=True)
    chat.model.eval()
    default = chat_from_config(cfg, "cpu", model=chat.model)
    return request.param, root, chat, default, json.loads((root / "expected.json").read_text())


def _upstream_answer_text(raw: str) -> str:
    """Upstream ``Chat.answer``'s post-processing of the decoded output."""
    return raw.split("###")[0].split("Assistant:")[-1].strip()


def test_chat_engine_with_upstream_template_gives_upstream_greedy_ids(parity_chat) -> None:
    name, root, chat, _, expected = parity_chat
    generation = expected["generation"]
    batch = json.loads((root / "batch.json").read_text())
    settings = generation["settings"]
    assert chat.new_conversation().name == UPSTREAM_TEMPLATE[name]
    assert len(generation["chat"]) == len(batch["questions"]) == 2
    for i, entry in enumerate(generation["chat"]):
        conv, img_list = chat.new_conversation(), []
        chat.upload_img(root / batch["images"][i], conv, img_list)
        chat.ask(batch["questions"][i], conv)
        reply = chat.reply(conv, img_list, max_new_tokens=settings["max_new_tokens"], num_beams=settings["num_beams"],
                           do_sample=settings["do_sample"], repetition_penalty=settings["repetition_penalty"],
                           min_length=settings["min_length"])
        assert reply.prompt == entry["prompt"], f"{name} question {i}: prompt string"
        assert chat.model.context_layout(reply.prompt, img_list) == entry["context_ids_reconstructed"]
        assert reply.context_len == entry["context_len"]
        assert reply.ids == entry["new_token_ids"], f"{name} question {i}: greedy ids"
        assert entry["sequence"] == [chat.model.llama_tokenizer.bos_id] + reply.ids  # 4.30 kept a leading BOS
        assert reply.text == _upstream_answer_text(entry["text"])


def _question(instruction: str, template: str) -> str:
    """The chat question whose wrapped form is a recorded training instruction (template and image prompt off)."""
    inner = instruction
    if template and not instruction.startswith(IMAGE_PROMPT):  # v1 records come wrapped already
        head, tail = template.split("{}")
        inner = instruction[len(head):len(instruction) - len(tail)]
    assert inner.startswith(IMAGE_PROMPT + " ")
    return inner[len(IMAGE_PROMPT) + 1:]


def test_default_chat_feeds_upstreams_training_ids(parity_chat) -> None:
    """The model's prompt format: chat ids == upstream's recorded training ids up to the answer."""
    name, root, _, chat, expected = parity_chat
    batch = json.loads((root / "batch.json").read_text())
    template = chat.model.prompt_format.template
    assert chat.new_conversation().name == UPSTREAM_TEMPLATE[name]
    for i, instruction in enumerate(batch["instruction_input"]):
        conv, img_list = chat.new_conversation(), []
        chat.upload_img(root / batch["images"][i], conv, img_list)
        chat.ask(_question(instruction, template), conv)
        chat.encode_img(img_list)
        conv.append_message(conv.roles[1], None)
        n = 1 + expected["input_lens"][i]  # BOS + condition
        assert chat.context_ids(conv, img_list) == expected["llm_input_ids_reconstructed"][i][:n], f"{name} {i}"
    if "conv" not in expected:
        return
    conv_rec = expected["conv"]  # v2: the second turn of the recorded conversation sample
    sym = conv_rec["connect_sym"]
    questions, answers = conv_rec["conv_q"][0].split(sym), conv_rec["conv_a"][0].split(sym)
    conv, img_list = chat.new_conversation(), []
    chat.upload_img(root / batch["images"][0], conv, img_list)
    chat.ask(questions[0][len(IMAGE_PROMPT) + 1:], conv)
    chat.encode_img(img_list)
    conv.append_message(conv.roles[1], answers[0])
    chat.ask(questions[1], conv)
    conv.append_message(conv.roles[1], None)
    ids, labels = conv_rec["llm_input_ids_reconstructed"][0], conv_rec["labels"][0]
    assert chat.context_ids(conv, img_list) == ids[:last_answer_start(labels)]
