"""Exercises 04: the scaling factor, predictions about doubling alpha, the rsLoRA ratio."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn

from ..layers import LoRALinear
from .exercise import (
    Exercise,
    attempt,
    describe,
    judge_number,
    judge_numbers,
    observe_number,
    raised,
    require,
)

PRECEDENCE = "** binds tighter than /, so the exponent must be in parentheses (or use math.sqrt)"
TOLERANCE = (
    1e-6  # relative: float32 arithmetic (torch.sqrt on a tensor) passes, a wrong idea does not
)


# --- 04.1 scaling(alpha, r, use_rslora) -------------------------------------------------------

PLAIN_MISTAKES = (  # use_rslora=False: (what the learner computed, the mistake it names)
    (
        lambda a, r: a // r,
        "integer division: // rounds down to a whole number (16 // 6 is 2), but the multiplier "
        "is a real number (about 2.67 there)",
    ),
    (lambda a, r: r / a, "inverted: the multiplier shrinks as r grows and grows with alpha"),
    (lambda a, r: a * r, "the multiplier shrinks as r grows: divide by the rank, not multiply"),
    (
        lambda a, r: a / math.sqrt(r),
        "with use_rslora=False the multiplier is plain LoRA's: the square root is rsLoRA's",
    ),
    (lambda a, r: a, "the rank is missing: the multiplier depends on r"),
    (lambda a, r: 1 / r, "alpha is missing: the multiplier is proportional to alpha"),
)
RSLORA_MISTAKES = (  # use_rslora=True
    (
        lambda a, r: a / r,
        "use_rslora is ignored: with it, rsLoRA divides by the square root of r",
    ),
    (
        lambda a, r: math.floor(a / math.sqrt(r)),
        "integer division or int(): alpha / sqrt(r) is rarely a whole number",
    ),
    (
        lambda a, r: a / math.isqrt(r),
        "an integer square root (math.isqrt or int(...)): sqrt(r) is rarely a whole number",
    ),
    (
        lambda a, r: a * math.sqrt(r),
        "multiplied by sqrt(r): rsLoRA still divides alpha, by a smaller number than r",
    ),
    (
        lambda a, r: math.sqrt(a / r),
        "the square root applies to r alone, not to alpha / r",
    ),
    (lambda a, r: 2 * a / r, f"alpha / (r ** 1/2) is alpha / ((r ** 1) / 2): {PRECEDENCE}"),
    (lambda a, r: a / r / 2, f"alpha / r ** 1/2 is (alpha / r ** 1) / 2: {PRECEDENCE}"),
    (lambda a, r: math.sqrt(r) / a, "inverted: the rsLoRA multiplier grows with alpha"),
    (lambda a, r: a / r**2, "rsLoRA divides by the square ROOT of r, not its square"),
)


def observe_scaling(scaling, case):
    """Exercise 04.1: the learner's multiplier for a few (alpha, r), without and with rsLoRA."""
    observations = {}
    for flag, key in ((False, "plain"), (True, "rslora")):
        observations[key] = [
            observe_number(
                observations, f"{key}{k}", lambda a=a, r=r, f=flag: scaling(a, r, use_rslora=f)
            )
            for k, (a, r) in enumerate(case["pairs"])
        ]
    return observations


def judge_scaling(observations, case) -> None:
    """Exercise 04.1: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    pairs = [tuple(p) for p in case["pairs"]]
    for flag, key, want_of, mistakes in (
        (False, "plain", lambda a, r: a / r, PLAIN_MISTAKES),
        (True, "rslora", lambda a, r: a / math.sqrt(r), RSLORA_MISTAKES),
    ):
        calls = [f"scaling({a}, {r}, use_rslora={flag})" for a, r in pairs]
        for k, call in enumerate(calls):
            judge_number(observations, f"{key}{k}", call)
        wrong = [([mistake(a, r) for a, r in pairs], message) for mistake, message in mistakes]
        want = [want_of(a, r) for a, r in pairs]
        judge_numbers(calls, observations[key], want, wrong, TOLERANCE)


def _scaling_variant(rng: random.Random):
    return {
        "pairs": [
            [rng.choice([8, 16, 32, 64]), rng.choice([3, 5, 6, 7, 10, 12])],  # not divisible
            [rng.choice([4, 8, 16]), rng.choice([32, 64, 128])],  # alpha < r
            [rng.choice([8, 16, 24, 32]), rng.choice([2, 8, 16, 32])],  # not 4: sqrt(4) = 4/2
        ]
    }


SCALING = Exercise(
    id="04.1",
    target="scaling",
    observe=observe_scaling,
    judge=judge_scaling,
    visible={"pairs": [[16, 6], [8, 16], [32, 8]]},
    variant=_scaling_variant,
)


def check_scaling(scaling) -> None:
    """Exercise 04.1: the LoRA branch's multiplier, with and without rsLoRA."""
    SCALING.check(scaling)


# --- 04.2 predictions() -> (branch_factor, same_first_step) -----------------------------------


def _layer(case, alpha: float) -> tuple[LoRALinear, torch.Tensor, torch.Tensor]:
    """A float64 LoRALinear with seeded base and A (B = 0), and a seeded batch (x, y)."""
    g = torch.Generator().manual_seed(case["seed"])
    n_in, n_out, r = case["in"], case["out"], case["r"]
    with torch.random.fork_rng(devices=[]):  # the layers' own init draws are overwritten below
        layer = LoRALinear(nn.Linear(n_in, n_out).double(), r=r, alpha=alpha)
    with torch.no_grad():
        layer.base.weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=torch.float64))
        layer.base.bias.copy_(torch.randn(n_out, generator=g, dtype=torch.float64))
        layer.lora_A.copy_(torch.randn(r, n_in, generator=g, dtype=torch.float64))  # (r, in)
    x = torch.randn(16, n_in, generator=g, dtype=torch.float64)  # (batch, in)
    y = torch.randn(16, n_out, generator=g, dtype=torch.float64)  # (batch, out)
    return layer, x, y


def measured_branch_factor(case) -> float:
    """How much the branch output grows when alpha doubles, A and B fixed (B made non-zero)."""
    sizes = []
    for alpha in (case["alpha"], 2 * case["alpha"]):
        layer, x, _ = _layer(case, alpha)
        g = torch.Generator().manual_seed(case["seed"] + 1)
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=torch.float64))
            sizes.append(float((layer(x) - layer.base(x)).norm()))
    return sizes[1] / sizes[0]


def _after_one_adam_step(case, alpha: float, lr: float) -> torch.Tensor:
    """The weight update scaling * B @ A after one Adam step from B = 0."""
    layer, x, y = _layer(case, alpha)
    optimizer = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
    ((layer(x) - y) ** 2).mean().backward()
    optimizer.step()
    return (layer.scaling * layer.lora_B @ layer.lora_A).detach()  # (out, in)


def measured_same_first_step(case) -> bool:
    """Is one Adam step with doubled alpha the same model as one with doubled lr? (measured)"""
    alpha, lr = case["alpha"], case["lr"]
    doubled_alpha = _after_one_adam_step(case, 2 * alpha, lr)
    doubled_lr = _after_one_adam_step(case, alpha, 2 * lr)
    return bool(torch.allclose(doubled_alpha, doubled_lr, rtol=1e-5, atol=0.0))


def _is_bool(value) -> bool:
    """True or False, as Python or numpy writes it (np.bool_ is what numpy comparisons give)."""
    return isinstance(value, bool | np.bool_)


def observe_alpha_predictions(predictions, case):
    """Exercise 04.2: the learner's two predictions, as returned by predictions()."""
    observations = {}
    result = attempt(observations, "call", predictions)
    if "call_error" in observations:
        return observations
    try:
        factor, same = result
    except Exception:  # noqa: BLE001 - not a pair
        observations["call_returned"] = describe(result)
        return observations
    observations["swapped"] = _is_bool(factor) and not _is_bool(same)
    observations["branch_factor"] = observe_number(observations, "factor", lambda: factor)
    if _is_bool(same):
        observations["same_first_step"] = bool(same)
    else:
        observations["same_returned"] = describe(same)
    return observations


def judge_alpha_predictions(observations, case) -> None:
    """Exercise 04.2: predictions about doubling alpha, compared with measurements."""
    raised(observations, "call", "predictions()")
    returned = observations.get("call_returned")
    require(
        returned is None,
        f"predictions() should return a pair (branch factor, same first step?), got {returned}",
    )
    require(
        not observations["swapped"],
        "the pair is the wrong way round: predictions() returns (branch factor, same first "
        "step?), the number first",
    )
    returned = observations.get("factor_returned")
    require(returned is None, f"the branch factor must be a number, got {returned}")
    returned = observations.get("same_returned")
    require(
        returned is None,
        f"the second prediction must be True or False (a bool), got {returned}",
    )
    factor = observations["branch_factor"]
    measured = measured_branch_factor(case)
    if not math.isclose(factor, measured, rel_tol=1e-3):
        require(
            not math.isclose(factor, measured**2, rel_tol=1e-3),
            f"you predicted {factor:g}: the branch is not quadratic in alpha (notebook 04, "
            "section 1)",
        )
        require(
            not math.isclose(factor, 1 / measured, rel_tol=1e-3),
            f"you predicted {factor:g}: alpha multiplies the branch, it does not divide it",
        )
        raise AssertionError(
            f"you predicted the branch output changes by a factor {factor:g}; the measurement "
            "disagrees: with A and B fixed, how does the branch depend on alpha? (notebook 04, "
            "section 1)"
        )
    same = observations["same_first_step"]
    require(
        same == measured_same_first_step(case),
        f"you predicted {same}, the measurement disagrees: under Adam, what size is B's first "
        "step, and where do alpha and the learning rate enter the first update? (notebook 04, "
        "section 3)",
    )


ALPHA_PREDICTIONS = Exercise(
    id="04.2",
    target="predictions",
    observe=observe_alpha_predictions,
    judge=judge_alpha_predictions,
    visible={"seed": 0, "in": 8, "out": 6, "r": 2, "alpha": 8, "lr": 1e-3},
    variant=None,  # the answers are facts, the same for any sizes
)


def check_alpha_predictions(predictions) -> None:
    """Exercise 04.2: predictions about doubling alpha, checked against a measurement."""
    ALPHA_PREDICTIONS.check(predictions)


# --- 04.3 rslora_ratio(r) ---------------------------------------------------------------------

RATIO_MISTAKES = (
    (
        lambda r: 1 / math.sqrt(r),
        "inverted: alpha / sqrt(r) is the LARGER multiplier for r > 1, so the ratio is above 1",
    ),
    (
        lambda r: r,
        "that is r itself: rsLoRA divides alpha by a smaller number than r does, so the ratio "
        "grows more slowly than r",
    ),
    (lambda r: 1 / r, "inverted, and the ratio grows more slowly than r: compare the two divisors"),
    (
        lambda r: math.isqrt(r),
        "rounded to a whole number (math.isqrt, int() or //): the ratio is rarely an integer",
    ),
    (lambda r: r / 2, f"r ** 1/2 is (r ** 1) / 2: {PRECEDENCE}"),
    (lambda r: 1.0, "alpha cancels, but r does not: the ratio depends on r"),
)


def observe_rslora_ratio(rslora_ratio, case):
    """Exercise 04.3: the learner's ratio for a few ranks."""
    observations = {}
    observations["ratios"] = [
        observe_number(observations, f"r{r}", lambda r=r: rslora_ratio(r)) for r in case["ranks"]
    ]
    return observations


def judge_rslora_ratio(observations, case) -> None:
    """Exercise 04.3: (alpha / sqrt(r)) / (alpha / r) as a function of r."""
    ranks = case["ranks"]
    for r in ranks:
        judge_number(observations, f"r{r}", f"rslora_ratio({r})")
    wrong = [([mistake(r) for r in ranks], message) for mistake, message in RATIO_MISTAKES]
    calls = [f"rslora_ratio({r})" for r in ranks]
    judge_numbers(calls, observations["ratios"], [math.sqrt(r) for r in ranks], wrong, TOLERANCE)


def _ratio_variant(rng: random.Random):
    ranks = {1, rng.choice([2, 3, 5, 6, 7]), rng.choice([16, 32, 64, 128]), rng.randint(9, 512)}
    return {"ranks": sorted(ranks)}


RSLORA_RATIO = Exercise(
    id="04.3",
    target="rslora_ratio",
    observe=observe_rslora_ratio,
    judge=judge_rslora_ratio,
    visible={"ranks": [1, 2, 8, 64, 192]},
    variant=_ratio_variant,
)


def check_rslora_ratio(rslora_ratio) -> None:
    """Exercise 04.3: how much larger alpha / sqrt(r) is than alpha / r."""
    RSLORA_RATIO.check(rslora_ratio)


EXERCISES = (SCALING, ALPHA_PREDICTIONS, RSLORA_RATIO)
