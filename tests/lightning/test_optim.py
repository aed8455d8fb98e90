"""Learning-rate schedules and optimizer groups."""

import itertools
import math
import re

import pytest
import torch

from svfseg.lightning.optim import OptimConfig, build_optimizer, build_scheduler, schedule_factor


def test_cosine_really_decays_per_step() -> None:
    total = 100
    values = [schedule_factor("cosine", s, total) for s in range(total + 1)]
    assert values[0] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.5)
    assert values[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(values))
    # golden value computed independently: 0.5 * (1 + cos(pi * 0.25))
    assert values[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_constant_reproduces_the_reference_code() -> None:
    assert {schedule_factor("constant", s, 1000) for s in range(0, 1001, 37)} == {1.0}


def test_poly_matches_pfenet_formula() -> None:
    assert schedule_factor("poly", 30, 120, power=0.9) == pytest.approx((1 - 30 / 120) ** 0.9)


def test_groups_get_lr_multipliers_and_scheduler_steps() -> None:
    head, backbone, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    frozen.requires_grad_(False)
    groups = [
        {"params": list(head.parameters()), "name": "head", "lr_mult": 1.0},
        {
            "params": list(backbone.parameters()) + list(frozen.parameters()),
            "name": "backbone",
            "lr_mult": 0.1,
        },
    ]
    cfg = OptimConfig(lr=0.015, schedule="cosine")
    opt = build_optimizer(groups, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.015, 0.0015])
    assert sum(len(g["params"]) for g in opt.param_groups) == 4  # frozen params left out
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-4)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9)
    sched = build_scheduler(opt, cfg, total_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0075, 0.00075])


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match=re.escape("optim.schedule='step'")):
        OptimConfig(schedule="step")
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_optimizer([{"params": list(frozen.parameters())}], OptimConfig())
