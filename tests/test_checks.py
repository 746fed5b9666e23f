"""The exercise checks catch the classic mistakes: each wrong implementation fails, by name."""

import json
import math

import pytest
import torch
from torch import nn

from lora_course import checks
from lora_course.architectures import build_config
from lora_course.counting import lora_parameters, projection_shapes, rank_for_budget
from lora_course.targets import ATTENTION, MLP, PROJECTIONS, TARGET_PRESETS

SMOLLM2 = build_config("SmolLM2-135M")


class GoodLoRA(nn.Module):
    """A correct exercise-02 layer; the wrong ones below change one thing each."""

    scale_of = staticmethod(lambda alpha, r: alpha / r)

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.r, self.alpha = base, r, alpha
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    @property
    def scaling(self):
        return self.scale_of(self.alpha, self.r)

    def delta(self):
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        out = self.base(x)
        return out if self.merged else out + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

    def merge(self):
        with torch.no_grad():
            self.base.weight += self.delta()
        self.merged = True

    def unmerge(self):
        with torch.no_grad():
            self.base.weight -= self.delta()
        self.merged = False


class RandomB(GoodLoRA):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.normal_(self.lora_B)


class BothZero(GoodLoRA):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.zeros_(self.lora_A)


class BaseTrainable(GoodLoRA):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.base.requires_grad_(True)


class NoScaling(GoodLoRA):
    scale_of = staticmethod(lambda alpha, r: 1.0)


class InvertedScaling(GoodLoRA):
    scale_of = staticmethod(lambda alpha, r: r / alpha)


class AlphaTimesR(GoodLoRA):
    scale_of = staticmethod(lambda alpha, r: alpha * r)


class TransposedMerge(GoodLoRA):
    def merge(self):
        with torch.no_grad():
            self.base.weight += self.delta().T
        self.merged = True


class UnscaledMerge(GoodLoRA):
    def merge(self):
        with torch.no_grad():
            self.base.weight += self.lora_B @ self.lora_A
        self.merged = True


class ForgetfulUnmerge(GoodLoRA):
    def unmerge(self):
        self.merged = False  # forgets to subtract the update


@pytest.mark.parametrize("hidden", [False, True])
def test_correct_layer_passes_every_check(hidden):
    for check in (checks.check_lora_init, checks.check_lora_forward, checks.check_merge,
                  checks.check_unmerge):  # fmt: skip
        check(GoodLoRA, hidden=hidden)


@pytest.mark.parametrize(
    ("layer", "check", "message"),
    [
        (RandomB, checks.check_lora_init, "B must start at zero"),
        (BothZero, checks.check_lora_init, "both zero"),
        (BaseTrainable, checks.check_lora_init, "base weights left trainable"),
        (NoScaling, checks.check_lora_forward, "scaling omitted"),
        (InvertedScaling, checks.check_lora_forward, "scaling inverted"),
        (AlphaTimesR, checks.check_lora_forward, "not alpha \\* r"),
        (TransposedMerge, checks.check_merge, "transposed product"),
        (UnscaledMerge, checks.check_merge, "merge without scaling"),
        (ForgetfulUnmerge, checks.check_unmerge, "unmerge does not restore the base"),
    ],
)
def test_each_classic_layer_mistake_is_named(layer, check, message):
    with pytest.raises(AssertionError, match=message):
        check(layer)


def test_scaling_check_names_the_expected_value():
    checks.check_scaling(lambda a, r, use_rslora: a / math.sqrt(r) if use_rslora else a / r)
    with pytest.raises(AssertionError, match="scaling should be alpha / r = 2, got 16"):
        checks.check_scaling(lambda a, r, use_rslora: a)


def _count(config, targets, r, gqa=True):
    shapes = projection_shapes(config)
    total = 0
    for t in targets:
        n_in, n_out = shapes[t]
        if not gqa and t in ("k_proj", "v_proj"):
            n_out = config.hidden_size  # the classic mistake: full width
        total += r * (n_in + n_out)
    return config.num_hidden_layers * total


def test_counting_checks_catch_gqa_and_frozen_parameter_mistakes():
    checks.check_lora_parameters_for_config(_count, SMOLLM2)
    with pytest.raises(AssertionError, match="counted at full width"):
        checks.check_lora_parameters_for_config(lambda c, t, r: _count(c, t, r, gqa=False), SMOLLM2)
    checks.check_trainable_parameters(
        lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    )
    with pytest.raises(AssertionError, match="includes frozen parameters"):
        checks.check_trainable_parameters(lambda m: sum(p.numel() for p in m.parameters()))
    checks.check_lora_pair_parameters(lambda i, o, r: r * (i + o))
    with pytest.raises(AssertionError, match="2 \\* r \\* in"):
        checks.check_lora_pair_parameters(lambda i, o, r: 2 * r * i)


def test_energy_checks():
    good = lambda S, r: float((S[:r] ** 2).sum() / (S**2).sum())  # noqa: E731
    checks.check_energy_captured(good)
    with pytest.raises(AssertionError, match="square S"):
        checks.check_energy_captured(lambda S, r: float(S[:r].sum() / S.sum()))
    with pytest.raises(AssertionError, match="first r values"):
        checks.check_energy_captured(lambda S, r: good(S.flip(0), r))

    def svd_approx(W, r, transpose=False):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]

    checks.check_low_rank_approximation(svd_approx)
    with pytest.raises(AssertionError, match="LARGEST"):
        checks.check_low_rank_approximation(
            lambda W, r: (lambda U, S, Vh: U[:, -r:] @ torch.diag(S[-r:]) @ Vh[-r:])(
                *torch.linalg.svd(W, full_matrices=False)
            )
        )

    def rank_for_energy(S, target, strict=False):
        energy = torch.cumsum(S**2, 0) / (S**2).sum()
        hits = energy > target if strict else energy >= target - 1e-9
        return int(hits.nonzero()[0].item()) + 1

    checks.check_rank_for_energy(rank_for_energy)
    with pytest.raises(AssertionError, match="use >=, not >"):
        checks.check_rank_for_energy(lambda S, t: rank_for_energy(S, t, strict=True))


def test_finetune_checks():
    good = lambda p, a: {"input_ids": p + a, "labels": [-100] * len(p) + a}  # noqa: E731
    checks.check_answer_only_labels(good)
    with pytest.raises(AssertionError, match="prompt is not masked"):
        checks.check_answer_only_labels(lambda p, a: {"input_ids": p + a, "labels": p + a})

    def exact(pred, gold):
        try:
            got = json.loads(pred)
        except json.JSONDecodeError:
            return False
        return isinstance(got, dict) and all(got.get(k) == v for k, v in json.loads(gold).items())

    checks.check_exact_match(exact, hidden=True)
    with pytest.raises(AssertionError, match="crashed"):
        checks.check_exact_match(lambda p, g: json.loads(p) == json.loads(g))
    with pytest.raises(AssertionError, match="key order"):
        checks.check_exact_match(lambda p, g: p == g)

    def precision(cap):
        return "fp32" if cap is None or cap < (6, 0) else "bf16" if cap >= (8, 0) else "fp16"

    checks.check_pick_precision(precision, hidden=True)
    with pytest.raises(AssertionError, match="T4"):
        checks.check_pick_precision(lambda cap: "fp32" if cap is None or cap < (6, 0) else "bf16")


def test_budget_and_plan_checks():
    checks.check_rank_for_budget(rank_for_budget, SMOLLM2, hidden=True)
    with pytest.raises(AssertionError, match="closest"):
        checks.check_rank_for_budget(
            lambda c, t, b: b // lora_parameters(c, t, 1), SMOLLM2
        )  # rounds down: not the closest for every budget

    order = [PROJECTIONS, ATTENTION, TARGET_PRESETS["q, v"]]

    def plan(config, budget, min_rank):
        for targets in order:
            r = budget // lora_parameters(config, targets, 1)
            if r >= min_rank:
                return list(targets), r
        return ["q_proj", "v_proj"], min_rank

    checks.check_plan_adapter(plan, SMOLLM2, hidden=True)
    with pytest.raises(AssertionError, match="adapt more module types"):
        checks.check_plan_adapter(lambda c, b, min_rank: (["q_proj", "v_proj"], 4), SMOLLM2)


def test_merge_and_fit_checks():
    checks.check_merged_weight(lambda w0, A, B, alpha, r: w0 + alpha / r * B @ A, hidden=True)
    with pytest.raises(AssertionError, match="transposed product"):
        checks.check_merged_weight(lambda w0, A, B, alpha, r: w0 + alpha / r * (B @ A).T)
    with pytest.raises(AssertionError, match="scaling missing"):
        checks.check_merged_weight(lambda w0, A, B, alpha, r: w0 + B @ A)

    def fits(shapes, model, check_out=True):
        modules = dict(model.named_modules())
        for name, (a, b) in shapes.items():
            m = modules.get(name)
            if m is None or a[1] != m.in_features or (check_out and b[0] != m.out_features):
                return False
        return True

    checks.check_adapter_shapes_fit(fits, hidden=True)
    with pytest.raises(AssertionError, match="grouped-query attention"):
        checks.check_adapter_shapes_fit(lambda s, m: fits(s, m, check_out=False))


def test_alpha_predictions():
    checks.check_alpha_predictions(2.0, True)
    with pytest.raises(AssertionError, match="multiplies the branch output by 2.00"):
        checks.check_alpha_predictions(4.0, True)
    with pytest.raises(AssertionError, match="first update"):
        checks.check_alpha_predictions(2.0, False)


def test_rslora_mlp_share_and_changed_parameter_checks():
    checks.check_rslora_ratio(lambda r: math.sqrt(r), hidden=True)
    with pytest.raises(AssertionError, match="inverted"):
        checks.check_rslora_ratio(lambda r: 1 / math.sqrt(r))

    def share(config, gqa=True):
        shapes = projection_shapes(config)
        sizes = {t: i * (o if gqa or t not in ("k_proj", "v_proj") else config.hidden_size)
                 for t, (i, o) in shapes.items()}  # fmt: skip
        return sum(sizes[t] for t in MLP) / sum(sizes.values())

    checks.check_mlp_share(share, SMOLLM2)
    with pytest.raises(AssertionError, match="full width"):
        checks.check_mlp_share(lambda c: share(c, gqa=False), SMOLLM2)

    def changed(a, b, tol=0.0):
        pb = dict(b.named_parameters())
        return [n for n, p in a.named_parameters() if (p - pb[n]).abs().max() > tol]

    checks.check_changed_parameters(changed, hidden=True)
    with pytest.raises(AssertionError, match="torch.equal"):
        checks.check_changed_parameters(lambda a, b: changed(a, b, tol=1e-2))
