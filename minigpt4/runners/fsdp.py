"""``run.strategy: fsdp``: PyTorch FSDP2 (``fully_shard``) for the runner.

What the runner needs from FSDP, in one place:

* :func:`shard_model` — ``fully_shard`` on every decoder layer of the LLM (found generically, peft-wrapped or not:
  the ``nn.ModuleList`` holding the most parameters under ``llama_model``), then on the whole model. Mixed precision
  comes from the run's :class:`~minigpt4.common.precision.PrecisionPolicy`: the decoder layers (the bulk of the
  weights) are all-gathered and computed with weights in its compute dtype; the rest of the model (vision tower,
  ``ln_vision``, projection, embeddings, LM head) is all-gathered as stored and left to autocast, as under DDP,
  because some of it computes in fp32 on purpose (``ln_vision`` is upstream's fp32 LayerNorm). Gradients are
  reduce-scattered in fp32 everywhere; the trainable master weights stay fp32.
* :func:`gather_trainable_weights` / :func:`full_optimizer_state` — collectives (every rank calls them) that give
  rank 0 the full, CPU-resident trainable weights under upstream's key names and the optimizer state in
  ``torch.optim.Optimizer.state_dict()`` form (parameter indices, the form DDP runs write), so a FSDP checkpoint
  is a FaceGPT checkpoint like any other and a trainer state resumes under either strategy.
* :func:`load_full_optimizer_state` — the inverse: a full optimizer state (rank 0's copy is broadcast) is
  sharded onto this run's parameters.
* :func:`unsharded` — validation: every rank gathers the whole model once, so the ranks may run different numbers
  of forward passes (uneven validation shares, batches without a readable image) without a collective hanging.
* :func:`grad_scaler` — fp16 runs use :class:`~torch.distributed.fsdp.ShardedGradScaler`, whose inf/NaN check is
  agreed across ranks (each rank only sees its shard of the gradients).

Gradient accumulation reduce-scatters after every micro-batch (FSDP keeps no unsharded gradient between them):
the result equals DDP's, the traffic is ``accum_grad_iters`` times DDP's deferred all-reduce.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from minigpt4.common.errors import UserError
from minigpt4.common.logger import get_logger
from minigpt4.common.precision import PrecisionPolicy
from minigpt4.models.checkpoint import learned_buffers, to_upstream_key

logger = get_logger(__name__)


class FSDPConfigError(UserError, ValueError):
    """``run.strategy: fsdp`` cannot shard this model as configured."""


# ------------------------------------------------------------------------------------------- sharding


def _largest_module_list(root: nn.Module) -> Optional[nn.ModuleList]:
    """The ``nn.ModuleList`` under ``root`` with the most parameters whose items share one class (decoder layers)."""
    best, best_size = None, 0
    for module in root.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(item) for item in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = module, size
    return best


def decoder_layers(model: nn.Module) -> List[nn.Module]:
    """The LLM's decoder layers (``model.llama_model``'s largest homogeneous ``nn.ModuleList``; the model's own
    when it has no ``llama_model``). Empty when there is none (then only the whole model is one FSDP unit)."""
    llm = getattr(model, "llama_model", None)
    layers = _largest_module_list(llm if isinstance(llm, nn.Module) else model)
    return list(layers) if layers is not None else []


def check_shardable(model: nn.Module) -> None:
    """Refuse what FSDP cannot shard: bitsandbytes-quantized weights (8-bit / 4-bit LLMs); and the frozen tower's
    feature cache, which keys features on the tower's weight storage (FSDP re-gathers it every step)."""
    if getattr(model, "vision_cache", None) is not None:
        raise FSDPConfigError("run.strategy=fsdp re-gathers the vision tower's sharded weights every step, so "
                              "model.vit_feature_cache_mb could never reuse a feature; set model.vit_feature_cache_mb=0 "
                              "under fsdp, or use run.strategy=ddp to keep it")
    quantized = sorted({type(p).__name__ for p in model.parameters() if type(p).__module__.startswith("bitsandbytes")})
    if quantized:
        raise FSDPConfigError(f"run.strategy=fsdp cannot shard bitsandbytes-quantized weights "
                              f"({', '.join(quantized)}); use run.strategy=ddp with model.llm_quantization, or "
                              "model.llm_quantization=none")


def mixed_precision(policy: PrecisionPolicy) -> MixedPrecisionPolicy:
    """FSDP2 mixed precision of the decoder layers under ``policy``: weights all-gathered in its compute dtype
    (fp32: as stored), gradients reduced in fp32."""
    return MixedPrecisionPolicy(param_dtype=policy.dtype if policy.uses_autocast else None,
                                reduce_dtype=torch.float32)


#: the root unit: weights all-gathered as stored (autocast casts them where it computes), gradients reduced in fp32
ROOT_PRECISION = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)


def broadcast_module_states(model: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers, as DDP does when it wraps a model.

    Ranks are seeded ``seed + rank``, so randomly initialised weights (projection, LoRA) differ between them;
    ``fully_shard`` keeps each rank's own slice, which would stitch one model together from several inits.
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def shard_model(model: nn.Module, policy: PrecisionPolicy, device: torch.device, world_size: int) -> nn.Module:
    """Rank 0's weights everywhere, then ``fully_shard`` each LLM decoder layer and the whole model over all
    ``world_size`` ranks; returns the model (the same object, now an ``FSDPModule``)."""
    check_shardable(model)
    broadcast_module_states(model)
    mesh = init_device_mesh(device.type, (world_size,))
    mp = mixed_precision(policy)
    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=ROOT_PRECISION)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("FSDP2: %d decoder layer(s) + the root sharded over %d ranks (%s mesh); decoder-layer weights "
                "all-gathered in %s, the root's as stored; gradient reduction fp32; %d trainable values", len(layers),
                world_size, device.type, mp.param_dtype or "their stored dtype", trainable)
    return model


def fsdp_modules(model: nn.Module) -> List[FSDPModule]:
    """Every FSDP unit of ``model`` (the root first)."""
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Hold every parameter gathered on every rank for the block (validation): forwards then need no collective.

    All ranks enter and leave together; the gather and the release are the only collectives.
    """
    units = fsdp_modules(model)
    inner = [m for m in units if m is not model]
    for unit in inner:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for unit in inner:
            unit.set_reshard_after_forward(True, recurse=False)


def grad_scaler(policy: PrecisionPolicy) -> Optional[ShardedGradScaler]:
    """fp16: a GradScaler whose skipped-step decision is all-reduced across ranks; else None."""
    return ShardedGradScaler(device=policy.device_type) if policy.uses_grad_scaler else None


# ------------------------------------------------------------------------------------- state dicts

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """The model's name of every optimizer parameter, in ``optimizer.state_dict()`` index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_trainable_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    """All ranks call it; rank 0 gets ``{upstream key: full tensor on CPU}`` of every trainable parameter (the
    ``"model"`` entry of a FaceGPT checkpoint), the other ranks ``{}``."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    full = get_model_state_dict(model, options=_GATHER)
    weights = {to_upstream_key(n): t for n, t in full.items() if n in trainable}
    return {**weights, **learned_buffers(model)} if weights else weights  # buffers are whole on every rank


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """All ranks call it; rank 0 gets the full optimizer state in ``Optimizer.state_dict()`` form (parameter
    indices in param-group order, full CPU tensors), the other ranks ``{}``."""
    by_name = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Dict[str, Any],
                              rank: int) -> None:
    """Shard a full ``Optimizer.state_dict()``-form state onto this run's parameters (rank 0's copy is used and
    broadcast; every rank calls it)."""
    by_name: Dict[str, Any] = {}
    if rank == 0:
        names = _param_names(model, optimizer)
        by_name = {"state": {names[int(i)]: s for i, s in state["state"].items()},
                   "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                    for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=by_name,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
