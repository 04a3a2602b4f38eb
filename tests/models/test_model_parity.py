"""Parity with upstream MiniGPT-4 on the tiny weights of ../shared/parity/{v1,v1_llama2,v2}.

Each model is built from the files there through the real loading paths (EVA file, BLIP-2 file, LLaMA folder,
MiniGPT checkpoint, ``ln_vision.pth`` as an extra checkpoint), the batch goes through the registered
``blip2_image_train`` processor, and every recorded tensor, the token layout, labels, attention mask, loss and
greedy generation ids are compared with what upstream computed. ``attn_implementation: eager`` selects upstream's
explicit attention math in EVA, Q-Former and LLM (the fused kernels differ by ~2e-7).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import torch
from model_helpers import PARITY
from parity_tolerance import fp32_tolerance

from minigpt4.common.registry import registry
from minigpt4.models.checkpoint import load_model_checkpoint

VARIANTS = ["v1", "v1_llama2", "v2"]


def _overrides(root: Path, export: Dict[str, Any]) -> Dict[str, Any]:
    """Model config of a parity folder: upstream's model config + every tiny dimension from export.json."""
    cfg = export["model_cfg"]
    eva = export["eva"]
    out: Dict[str, Any] = {
        "image_size": cfg["image_size"],
        "vit_config": {"embed_dim": eva["embed_dim"], "depth": eva["depth"], "num_heads": eva["num_heads"],
                       "mlp_ratio": eva["mlp_ratio"], "patch_size": eva["patch_size"], "norm_eps": eva["norm_eps"]},
        "vit_precision": "fp32",
        "vit_ckpt": str(root / "eva_vit_g.pth"),
        "llama_model": str(root / cfg["llama_model"]),
        "llm_precision": "fp32",
        "attn_implementation": "eager",
        "ckpt": str(root / cfg["ckpt"]),
        "max_txt_len": cfg["max_txt_len"],
        "end_sym": cfg["end_sym"],
        "prompt_template": cfg["prompt_template"],
        "chat_template": bool(export["prompt"]["chat_template"]),
        "max_context_len": export["prompt"]["max_context_len"],
    }
    if export["qformer"]:
        q = export["qformer"]
        out.update(
            num_query_token=q["num_query_token"],
            q_former_model=str(root / cfg["q_former_model"]),
            qformer_config={k: q[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size", "cross_attention_freq", "layer_norm_eps",
                                              "max_position_embeddings")},
        )
    if export["lora"]:
        lora = export["lora"]
        out.update(lora_r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"],
                   lora_target_modules=lora["target_modules"])
    return out


@pytest.fixture(scope="module", params=VARIANTS)
def parity(request: pytest.FixtureRequest) -> Dict[str, Any]:
    """Model, batch and upstream's records for one parity folder."""
    root = PARITY / request.param
    if not root.is_dir():
        pytest.fail(f"parity folder missing: {root} (../shared/parity beside the clone)")
    export = json.loads((root / "export.json").read_text())
    cls = registry.get_model_class(export["model_cfg"]["arch"])
    cfg = cls.default_config(export["model_cfg"]["model_type"], _overrides(root, export))
    model = cls.from_config(cfg).eval()
    reports = {}
    if (root / "ln_vision.pth").is_file():
        reports["ln_vision"] = load_model_checkpoint(model, root / "ln_vision.pth", partial=True)
    batch = json.loads((root / "batch.json").read_text())
    proc_cfg = export["image_processor"]
    processor = registry.get_processor_class(proc_cfg["name"]).from_config(
        {"name": proc_cfg["name"], "image_size": proc_cfg["image_size"]})
    images = torch.stack([processor(root / p) for p in batch["images"]])
    return {
        "name": request.param, "root": root, "export": export, "model": model, "batch": batch, "images": images,
        "expected": json.loads((root / "expected.json").read_text()), "reports": reports,
        "inter": torch.load(root / "intermediates.pt", weights_only=True),
    }


def _close(name: str, ours: torch.Tensor, theirs: torch.Tensor, atol: Optional[float] = None) -> None:
    """``ours`` within ``atol`` of upstream (default: 1e-6, or 8 fp32 ulps at the tensor's scale; see
    :mod:`parity_tolerance`)."""
    atol = fp32_tolerance(theirs.float()) if atol is None else atol
    assert tuple(ours.shape) == tuple(theirs.shape), f"{name}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    diff = (ours.detach().float() - theirs.float()).abs().max().item()
    assert diff <= atol, f"{name}: max abs diff {diff:.3g} > {atol}"


def test_image_and_vision_tensors(parity: Dict[str, Any]) -> None:
    model, inter = parity["model"], parity["inter"]
    _close("image", parity["images"], inter["image"])
    with torch.no_grad():
        vit = model.visual_encoder(parity["images"])
        ln = model.ln_vision(vit)
        _close("vit_out", vit, inter["vit_out"])
        _close("ln_vision_out", ln, inter["ln_vision_out"])
        tokens = model.image_tokens(ln)
        if "qformer_out" in inter:
            _close("qformer_out", tokens, inter["qformer_out"])
        _close("llama_proj_out", model.llama_proj(tokens), inter["llama_proj_out"])
        embeds, atts = model.encode_img(parity["images"])
    _close("img_embeds", embeds, inter["img_embeds"])
    assert atts.tolist() == torch.ones(atts.shape, dtype=torch.long).tolist()


def test_llm_inputs_labels_logits_loss(parity: Dict[str, Any]) -> None:
    model, inter, expected, batch = parity["model"], parity["inter"], parity["expected"], parity["batch"]
    samples = {"image": parity["images"], "instruction_input": batch["instruction_input"], "answer": batch["answer"],
               "image_id": ["a", "b"], "epoch": 0}
    with torch.no_grad():
        inputs = model.build_llm_inputs(samples)
        logits = model.llama_model(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask).logits
        loss = model(samples)["loss"]
    assert inputs.token_ids.tolist() == expected["llm_input_ids_reconstructed"]
    assert inputs.labels.tolist() == expected["labels"] == inter["llm_labels"].tolist()
    assert inputs.attention_mask.tolist() == expected["attention_mask"] == inter["llm_attention_mask"].tolist()
    assert inputs.input_lens == expected["input_lens"]
    _close("llm_inputs_embeds", inputs.inputs_embeds, inter["llm_inputs_embeds"])
    _close("llm_logits", logits, inter["llm_logits"])
    assert abs(loss.item() - expected["loss"]) <= 1e-5, f"loss {loss.item()} vs upstream {expected['loss']}"
    assert abs(loss.item() - inter["loss"].item()) <= 1e-5


def test_conversation_sample(parity: Dict[str, Any]) -> None:
    if "conv" not in parity["expected"]:  # upstream recorded a conversation sample for v2 only
        assert parity["name"] != "v2", "v2 parity data lacks its conversation sample"
        return
    model, conv = parity["model"], parity["expected"]["conv"]
    samples = {"image": parity["images"], "conv_q": conv["conv_q"], "conv_a": conv["conv_a"],
               "connect_sym": [conv["connect_sym"]] * 2}
    with torch.no_grad():
        inputs = model.build_llm_inputs(samples)
        loss = model(samples)["loss"]
    assert inputs.token_ids.tolist() == conv["llm_input_ids_reconstructed"]
    assert inputs.labels.tolist() == conv["labels"]
    assert inputs.attention_mask.tolist() == conv["attention_mask"]
    assert inputs.input_lens == conv["input_lens"]
    assert abs(loss.item() - conv["loss"]) <= 1e-5, f"conversation loss {loss.item()} vs upstream {conv['loss']}"
    # the FaceGPT collater's list-of-lists form gives the same batch
    lists = {"image": parity["images"], "conv_q": [q.split(conv["connect_sym"]) for q in conv["conv_q"]],
             "conv_a": [a.split(conv["connect_sym"]) for a in conv["conv_a"]]}
    with torch.no_grad():
        assert model.build_llm_inputs(lists).labels.tolist() == conv["labels"]


def test_greedy_generation_chat_path(parity: Dict[str, Any]) -> None:
    model, gen = parity["model"], parity["expected"]["generation"]
    settings = gen["settings"]
    with torch.no_grad():
        img_embeds, _ = model.encode_img(parity["images"])
        for i, entry in enumerate(gen["chat"]):
            img_list = [img_embeds[i:i + 1]]
            assert model.context_layout(entry["prompt"], img_list) == entry["context_ids_reconstructed"]
            embs = model.get_context_emb(entry["prompt"], img_list)
            assert embs.shape[1] == entry["context_len"]
            new = model.generate_from_embeds(
                embs, max_new_tokens=settings["max_new_tokens"], num_beams=settings["num_beams"],
                do_sample=settings["do_sample"], repetition_penalty=settings["repetition_penalty"],
                min_length=settings["min_length"])
            assert new[0].tolist() == entry["new_token_ids"], f"chat prompt {i}"
            assert entry["sequence"][1:] == entry["new_token_ids"]  # 4.30 returned a leading BOS, 5.x does not
            assert model.llama_tokenizer.decode(new[0]) == entry["text"]


def test_greedy_generation_batched_path(parity: Dict[str, Any]) -> None:
    model, gen = parity["model"], parity["expected"]["generation"]
    batched = gen["batched"]
    with torch.no_grad():
        embs, mask = model.batch_context(parity["images"], batched["texts"])
        ids = model.generate_ids(parity["images"], batched["texts"], max_new_tokens=gen["settings"]["max_new_tokens"])
        answers = model.generate(parity["images"], batched["texts"], max_new_tokens=gen["settings"]["max_new_tokens"])
    assert mask.tolist() == batched["attention_mask"]
    assert [row[1:] for row in batched["token_ids"]] == ids.tolist()
    assert answers == batched["answers"]
    assert embs[mask == 0].abs().sum().item() == 0.0  # left padding with zero vectors, as upstream


def test_checkpoint_accounting(parity: Dict[str, Any]) -> None:
    """Every key of the upstream checkpoint is matched or a checked buffer; LoRA in peft 0.2.0 spelling lands."""
    model, export = parity["model"], parity["export"]
    report = load_model_checkpoint(model, parity["root"] / "minigpt_ckpt.pth")
    state = torch.load(parity["root"] / "minigpt_ckpt.pth", weights_only=True)["model"]
    n_lora = 4 * export["llama"]["num_hidden_layers"] if export["lora"] else 0
    assert len(report.matched) == 2 + n_lora
    assert sorted(report.intentionally_unused) == sorted(k for k in state if k.endswith(("inv_freq", "position_ids")))
    if n_lora:
        assert f"{n_lora} LoRA tensors matched ({n_lora} in peft 0.2.0 spelling" in report.summary()
        key = "llama_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        ours = dict(model.named_parameters())[key.replace("lora_B.weight", "lora_B.default.weight")]
        assert torch.equal(ours, state[key])
    if "ln_vision" in parity["reports"]:
        assert sorted(parity["reports"]["ln_vision"].matched) == ["ln_vision.bias", "ln_vision.weight"]
