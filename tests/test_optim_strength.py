"""training.optim against float64 references written out step by step: LARS with momentum over several
steps (trust ratio, zero-norm fallback, plain-SGD groups), the lr schedule at every step, the groups."""
from __future__ import annotations

import math

import pytest
import torch

from training.optim import LARS, build_optimizer, cosine_lr, parameter_groups, scaled_lr, set_lr


def _reference_lars(weights, grads_per_step, lr, momentum, weight_decay, eta, lars):
    """Plain-Python LARS: u = g + wd w; u *= eta |w| / |u| (1 when either norm is 0); v = m v + u; w -= lr v."""
    w = [float(x) for x in weights]
    v = None
    for grad in grads_per_step:
        u = [g + weight_decay * x for g, x in zip(grad, w)]
        if lars:
            wn, un = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in u))
            trust = eta * wn / un if wn > 0 and un > 0 else 1.0
            u = [trust * x for x in u]
        v = u if v is None else [momentum * a + b for a, b in zip(v, u)]
        w = [x - lr * a for x, a in zip(w, v)]
    return w


@pytest.mark.parametrize("start", [[3.0, -4.0, 1.0], [0.0, 0.0, 0.0]])
@pytest.mark.parametrize("lars", [True, False])
def test_lars_three_steps_match_the_reference(start, lars):
    grads = [[1.0, 0.5, -2.0], [0.3, -0.2, 0.1], [0.0, 0.0, 0.0]]
    weight = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = LARS([{"params": [weight], "weight_decay": 0.05, "lars": lars}], lr=0.7, momentum=0.8, eta=0.02)
    for grad in grads:
        weight.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
    expected = _reference_lars(start, grads, 0.7, 0.8, 0.05, 0.02, lars)
    assert weight.detach().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_lars_defaults_are_momentum_09_eta_1e3_no_decay():
    weight = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    opt = LARS([weight], lr=0.5)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["eta"] == 1e-3 and opt.defaults["weight_decay"] == 0.0
    grads = [[1.0, 2.0], [0.5, -1.0]]
    for grad in grads:
        weight.grad = torch.tensor(grad, dtype=torch.float64)
        opt.step()
    assert weight.detach().tolist() == pytest.approx(_reference_lars([3.0, 4.0], grads, 0.5, 0.9, 0.0, 1e-3, True),
                                                     rel=1e-12)


def test_lars_skips_parameters_without_gradient_and_returns_the_closures_loss():
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = LARS([used, unused], lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        used.grad = torch.ones(2)
        return 42.0
    assert opt.step(closure) == 42.0 and calls == [1]
    assert torch.equal(unused.detach(), torch.ones(2)) and not torch.equal(used.detach(), torch.ones(2))
    assert opt.step() is None and unused not in opt.state


def _model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2, bias=False))
    model[2].weight.requires_grad_(False)  # frozen: in no group
    return model


def test_parameter_groups_split_by_dimension_and_skip_frozen():
    model = _model()
    decay, plain = parameter_groups(model, 0.01, exclude_bn_bias=True)
    assert decay["params"] == [model[0].weight] and decay["weight_decay"] == 0.01 and decay["lars"] is True
    assert plain["params"] == [model[0].bias, model[1].weight, model[1].bias]
    assert plain["weight_decay"] == 0.0 and plain["lars"] is False
    [single] = parameter_groups(model, 0.01, exclude_bn_bias=False)
    assert single["params"] == [model[0].weight, model[0].bias, model[1].weight, model[1].bias]
    assert single["weight_decay"] == 0.01 and single["lars"] is True
    only_vectors = torch.nn.BatchNorm1d(3)
    [group] = parameter_groups(only_vectors, 0.01, exclude_bn_bias=True)  # no empty decay group
    assert group["weight_decay"] == 0.0 and len(group["params"]) == 2


def test_build_optimizer_sgd_and_lars_and_refusals():
    sgd = build_optimizer(_model(), "sgd", 0.2, 0.8, 0.01, exclude_bn_bias=True)
    assert type(sgd) is torch.optim.SGD and all("lars" not in g for g in sgd.param_groups)
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.01, 0.0]
    assert all(g["lr"] == 0.2 and g["momentum"] == 0.8 for g in sgd.param_groups)
    lars = build_optimizer(_model(), "lars", 0.3, 0.7, 0.02, exclude_bn_bias=False)
    assert type(lars) is LARS and [g["lars"] for g in lars.param_groups] == [True]
    assert lars.param_groups[0]["lr"] == 0.3 and lars.param_groups[0]["momentum"] == 0.7
    assert lars.param_groups[0]["weight_decay"] == 0.02
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="^no trainable parameters: check `trainable`$"):
        build_optimizer(frozen, "sgd", 0.1, 0.9, 0.0, True)
    with pytest.raises(ValueError, match="^unknown optimizer 'adam'; use 'sgd' or 'lars'$"):
        build_optimizer(_model(), "adam", 0.1, 0.9, 0.0, True)


def test_scaled_lr_rules():
    assert scaled_lr(0.03, 512, "linear", 256) == pytest.approx(0.06)
    assert scaled_lr(0.03, 100, "linear", 400) == pytest.approx(0.0075)
    assert scaled_lr(0.075, 400, "sqrt", 256) == pytest.approx(1.5)
    assert scaled_lr(0.3, 4096, "none", 256) == 0.3
    with pytest.raises(ValueError, match="^unknown lr_scaling 'log'; use linear, sqrt or none$"):
        scaled_lr(0.1, 256, "log", 256)


@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_cosine_lr_every_step_matches_the_formula(warmup):
    total, peak = 40, 2.0
    for step in range(total + 5):
        if step < warmup:
            expected = peak * (step + 1) / warmup
        else:
            progress = min(1.0, (step - warmup) / (total - warmup))
            expected = peak * 0.5 * (1 + math.cos(math.pi * progress))
        assert cosine_lr(step, total, peak, warmup) == pytest.approx(expected, abs=1e-12), step
    assert cosine_lr(0, 1, 1.0) == 1.0 and cosine_lr(5, 5, 1.0, warmup_steps=5) == 1.0  # no division by zero
    assert cosine_lr(1, 1, 1.0) == pytest.approx(0.0) and cosine_lr(3, 4, 1.0, warmup_steps=2) == pytest.approx(0.5)
    assert cosine_lr(5, 10, 1.0) == pytest.approx(0.5)  # no warm-up unless asked


def test_set_lr_sets_every_group():
    opt = build_optimizer(_model(), "sgd", 0.2, 0.9, 0.01, exclude_bn_bias=True)
    set_lr(opt, 0.05)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.05]


@pytest.mark.parametrize("warmup", [0, 2])
def test_step_lr_every_step_matches_the_study_schedule(warmup):
    from training.optim import step_lr

    total, peak = 12, 0.3
    for step in range(total):
        if step < warmup:
            expected = peak * (step + 1) / warmup
        else:
            expected = peak * (1.0 if step < 4 else 0.1 if step < 8 else 0.01)  # x0.1 at steps 4 and 8
        assert step_lr(step, total, peak, warmup) == pytest.approx(expected), step
    assert step_lr(3, total, peak) == pytest.approx(0.3) and step_lr(4, total, peak) == pytest.approx(0.03)
    assert step_lr(0, 10, 1.0) == 1.0 and step_lr(2, 10, 1.0) == 1.0  # no warm-up unless asked
    assert step_lr(3, 10, 1.0) == pytest.approx(0.1) and step_lr(7, 10, 1.0) == pytest.approx(0.01)


def test_explicit_groups_take_the_optimizers_defaults_and_lr_scale():
    first, second, frozen_first = _model(), _model(), torch.nn.Linear(2, 2)
    frozen_first.weight.requires_grad_(False)
    model = torch.nn.Sequential(frozen_first, first)
    assert parameter_groups(model, 0.1, exclude_bn_bias=False)[0]["params"][0] is frozen_first.bias
    sgd = build_optimizer(first, "sgd", 0.2, 0.9, 0.03, True, groups=[
        {"params": list(first.parameters())[:1], "lars": False},
        {"params": list(first.parameters())[1:3], "lars": False, "lr_scale": 10.0, "weight_decay": 0.0}])
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.03, 0.0]
    set_lr(sgd, 0.5)
    assert [g["lr"] for g in sgd.param_groups] == [0.5, 5.0]
    lars = build_optimizer(second, "lars", 0.2, 0.9, 0.04, True,
                           groups=[{"params": list(second.parameters()), "lars": True}])
    assert lars.param_groups[0]["weight_decay"] == 0.04 and lars.param_groups[0]["momentum"] == 0.9
