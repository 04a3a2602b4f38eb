"""LR schedules against hand-computed upstream values, and the AdamW weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import minigpt4  # noqa: F401  (registers the schedulers)
from minigpt4.common.optims import LinearWarmupCosineLRScheduler, build_lr_scheduler, build_optimizer, param_groups
from minigpt4.common.registry import registry
from minigpt4.common.schema import RunConfig


def _run(**kw):
    return OmegaConf.merge(OmegaConf.structured(RunConfig), kw)


def _sched(name: str, ipe: int = 10, **kw):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2)), ], lr=0.0)
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    return opt, build_lr_scheduler(_run(lr_sched=name, **kw), opt, ipe)


def test_cosine_schedule_golden_values() -> None:
    """init 1e-4, min 1e-5, warmup 1e-6 over 5 steps, 2 epochs x 10 iterations (total 20)."""
    opt, s = _sched("linear_warmup_cosine_lr", init_lr=1e-4, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=5, max_epoch=2)
    golden = {
        (0, 0): 1e-6,
        (0, 2): 1e-6 + 99e-6 * 2 / 5,  # 4.06e-5
        (0, 4): 1e-6 + 99e-6 * 4 / 5,  # 8.02e-5
        (0, 5): 9e-5 * 0.5 * (1 + math.cos(math.pi * 5 / 20)) + 1e-5,  # cosine from t=0, not from warmup end
        (1, 0): 5.5e-5,  # t=10 of 20: the midpoint of the cosine
        (1, 9): 9e-5 * 0.5 * (1 + math.cos(math.pi * 19 / 20)) + 1e-5,
    }
    for (epoch, step), want in golden.items():
        got = s.step(cur_epoch=epoch, cur_step=step)
        assert got == pytest.approx(want, rel=1e-12), (epoch, step)
        assert [g["lr"] for g in opt.param_groups] == [got, got], "every param group gets the rate"


def test_cosine_warmup_uses_in_epoch_step_upstream_quirk() -> None:
    """A 15-step warmup with 10-iteration epochs restarts the ramp at epoch 1 (upstream uses cur_step)."""
    _, s = _sched("linear_warmup_cosine_lr", init_lr=1e-4, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=15, max_epoch=3)
    assert s.lr_at(0, 9) == pytest.approx(1e-6 + 99e-6 * 9 / 15)
    assert s.lr_at(1, 0) == pytest.approx(1e-6), "t=10 < 15: warmup again from cur_step 0"
    assert s.lr_at(1, 4) == pytest.approx(1e-6 + 99e-6 * 4 / 15)
    assert s.lr_at(1, 5) == pytest.approx(9e-5 * 0.5 * (1 + math.cos(math.pi * 15 / 30)) + 1e-5)


def test_negative_warmup_lr_means_no_ramp() -> None:
    _, s = _sched("linear_warmup_cosine_lr", init_lr=2e-4, min_lr=0.0, warmup_lr=-1.0, warmup_steps=4, max_epoch=1)
    assert s.lr_at(0, 0) == pytest.approx(2e-4) and s.lr_at(0, 3) == pytest.approx(2e-4)


def test_step_schedule_golden_values() -> None:
    _, s = _sched("linear_warmup_step_lr", init_lr=1e-4, min_lr=1e-5, warmup_lr=0.0, warmup_steps=4, max_epoch=6,
                  lr_decay_rate=0.5)
    assert s.lr_at(0, 1) == pytest.approx(1e-4 / 4)
    assert s.lr_at(0, 8) == pytest.approx(1e-4), "after warmup epoch 0 stays at init_lr"
    assert s.lr_at(1, 0) == pytest.approx(5e-5)
    assert s.lr_at(3, 7) == pytest.approx(1.25e-5)
    assert s.lr_at(5, 0) == pytest.approx(1e-5), "floored at min_lr (1e-4 * 0.5**5 = 3.1e-6)"
    _, flat = _sched("linear_warmup_step_lr", init_lr=1e-4, min_lr=1e-5, warmup_lr=0.0, warmup_steps=4, max_epoch=6)
    assert flat.lr_at(4, 2) == pytest.approx(1e-4), "unset lr_decay_rate = 1.0 (upstream crashed here)"


def test_scheduler_names_registered() -> None:
    assert {"linear_warmup_cosine_lr", "linear_warmup_step_lr"} <= set(registry.list_lr_schedulers())


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)  # weight 2-D (decay), bias (no decay)
        self.ln_proj = nn.Linear(4, 4, bias=False)  # contains "ln": upstream skipped decay, we decay (2-D)
        self.norm = nn.LayerNorm(3)  # 1-D weight and bias: no decay
        self.query_tokens = nn.Parameter(torch.zeros(1, 2, 3))  # 3-D: decay
        self.scale = nn.Parameter(torch.ones(()))  # 0-D: no decay
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_weight_decay_groups() -> None:
    groups = param_groups(_Named().named_parameters(), 0.05)
    # named_parameters() order: the module's own parameters first, then submodules'
    assert groups[0]["names"] == ["query_tokens", "proj.weight", "ln_proj.weight"]
    assert groups[0]["weight_decay"] == 0.05
    assert groups[1]["names"] == ["scale", "proj.bias", "norm.weight", "norm.bias"]
    assert groups[1]["weight_decay"] == 0.0
    assert not any("frozen" in n for g in groups for n in g["names"]), "frozen parameters are not optimised"


def test_build_optimizer_settings_and_no_trainable_error() -> None:
    opt = build_optimizer(_Named(), _run(init_lr=3e-5, weight_decay=0.1, beta2=0.95))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["lr"] == 3e-5
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, _run())


def test_lr_scale_puts_modules_in_their_own_groups_and_the_schedule_scales_them() -> None:
    groups = param_groups(_Named().named_parameters(), 0.05, {"proj": 10.0})
    assert [(g["lr_scale"], g["names"]) for g in groups] == [
        (1.0, ["query_tokens", "ln_proj.weight"]),
        (1.0, ["scale", "norm.weight", "norm.bias"]),
        (10.0, ["proj.weight"]),
        (10.0, ["proj.bias"]),
    ], "'proj' matches the module proj only, not ln_proj"
    opt = torch.optim.AdamW(groups, lr=1.0)
    sched = LinearWarmupCosineLRScheduler(opt, max_epoch=1, iters_per_epoch=10, min_lr=0.0, init_lr=2e-3,
                                          warmup_steps=0, warmup_start_lr=-1)
    base = sched.step(cur_epoch=0, cur_step=0)
    assert base == pytest.approx(2e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-3, 2e-2, 2e-2])


def test_lr_scale_naming_no_trainable_module_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"run.lr_scale names modules with no trainable parameters: \['frozen'\]"):
        param_groups(_Named().named_parameters(), 0.05, {"frozen": 2.0})
