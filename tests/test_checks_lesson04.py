"""Exercises 04: each classic scaling mistake fails by name, visible case and variants alike."""

import math

import numpy as np
import pytest
import torch
from exercise_harness import Weird, cases_vary, fails, judged_odd, passes, raising

from lora_course.checks import lesson04
from lora_course.checks.lesson04 import ALPHA_PREDICTIONS, RSLORA_RATIO, SCALING

ODD_OBJECTS = {
    "not written": raising(NotImplementedError("math.sqrt for rsLoRA")),
    "raises": raising(ValueError("boom")),
    "returns None": lambda *a, **k: None,
    "returns a string": lambda *a, **k: "2.0",
    "returns a list": lambda *a, **k: [1, 2, 3],
    "returns a tensor": lambda *a, **k: torch.ones(3),
    "returns a weird object": lambda *a, **k: Weird(),
    "not callable": 42,
}


@pytest.mark.parametrize("exercise", lesson04.EXERCISES, ids=lambda e: e.id)
@pytest.mark.parametrize("name", ODD_OBJECTS)
def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
    judged_odd(exercise, ODD_OBJECTS[name], "not written yet" if name == "not written" else None)


@pytest.mark.parametrize("exercise", lesson04.EXERCISES, ids=lambda e: e.id)
def test_cases_are_json_and_variants_differ(exercise):
    cases_vary(exercise)


# --- 04.1 ---------------------------------------------------------------------------------------


def make_scaling(plain, rslora):
    return lambda alpha, r, use_rslora=False: rslora(alpha, r) if use_rslora else plain(alpha, r)


def solution(alpha, r, use_rslora=False):
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def in_float32(alpha, r, use_rslora=False):
    a, rank = torch.tensor(alpha, dtype=torch.float32), torch.tensor(r, dtype=torch.float32)
    return a / torch.sqrt(rank) if use_rslora else a / rank


@pytest.mark.parametrize(
    "scaling",
    [
        solution,
        in_float32,
        lambda alpha, r, use_rslora: alpha / r**0.5 if use_rslora else alpha / r,  # no default
        make_scaling(lambda a, r: np.float64(a) / r, lambda a, r: a / np.sqrt(r)),
    ],
)
def test_correct_scaling_passes(scaling):
    passes(SCALING, scaling)


@pytest.mark.parametrize(
    ("scaling", "message"),
    [
        (make_scaling(lambda a, r: a // r, lambda a, r: a / math.sqrt(r)), "integer division"),
        (make_scaling(lambda a, r: a // r, lambda a, r: a // math.sqrt(r)), "integer division"),
        (make_scaling(lambda a, r: r / a, lambda a, r: a / math.sqrt(r)), "inverted"),
        (make_scaling(lambda a, r: a * r, lambda a, r: a / math.sqrt(r)), "divide by the rank"),
        (
            lambda alpha, r, use_rslora=False: solution(alpha, r, not use_rslora),
            "the square root is rsLoRA's",
        ),
        (make_scaling(lambda a, r: a, lambda a, r: a), "the rank is missing"),
        (lambda alpha, r, use_rslora=False: alpha / r, "use_rslora is ignored"),
        (make_scaling(lambda a, r: a / r, lambda a, r: a // math.sqrt(r)), "integer division or"),
        (make_scaling(lambda a, r: a / r, lambda a, r: int(a / math.sqrt(r))), "integer division"),
        (make_scaling(lambda a, r: a / r, lambda a, r: a / math.isqrt(r)), "integer square root"),
        (make_scaling(lambda a, r: a / r, lambda a, r: a * math.sqrt(r)), "multiplied by sqrt"),
        (make_scaling(lambda a, r: a / r, lambda a, r: math.sqrt(a / r)), "applies to r alone"),
        (
            make_scaling(lambda a, r: a / r, lambda a, r: a / (r**1 / 2)),
            r"alpha / \(r \*\* 1/2\) is alpha / \(\(r \*\* 1\) / 2\): \*\* binds tighter",
        ),
        (
            make_scaling(lambda a, r: a / r, lambda a, r: a / r**1 / 2),  # alpha / r ** 1/2
            r"alpha / r \*\* 1/2 is \(alpha / r \*\* 1\) / 2: \*\* binds tighter",
        ),
        (make_scaling(lambda a, r: a / r, lambda a, r: math.sqrt(r) / a), "inverted"),
        (make_scaling(lambda a, r: a / r, lambda a, r: a / r**2), "square ROOT"),
        (make_scaling(lambda a, r: a / r + 0.01, lambda a, r: a / r), r"should be [\d.]+, got"),
        (make_scaling(lambda a, r: a / r, lambda a, r: None), "should return a number"),
    ],
)
def test_each_scaling_mistake_is_named(scaling, message):
    fails(SCALING, scaling, message)


# --- 04.2 ---------------------------------------------------------------------------------------


def test_the_measurements_agree_with_the_notebook():
    assert lesson04.measured_branch_factor(ALPHA_PREDICTIONS.visible) == pytest.approx(2.0)
    assert lesson04.measured_same_first_step(ALPHA_PREDICTIONS.visible) is True
    assert ALPHA_PREDICTIONS.variant is None and ALPHA_PREDICTIONS.target == "predictions"


@pytest.mark.parametrize(
    "predictions",
    [
        lambda: (2.0, True),
        lambda: (2, True),
        lambda: [torch.tensor(2.0), True],
        lambda: (2.0, np.bool_(True)),  # what a numpy comparison gives
        lambda: (np.float64(2.0), np.isclose(1.0, 1.0)),
    ],
)
def test_correct_predictions_pass(predictions):
    passes(ALPHA_PREDICTIONS, predictions)


@pytest.mark.parametrize(
    ("predictions", "message"),
    [
        (lambda: (4.0, True), "not quadratic"),
        (lambda: (0.5, True), "does not divide"),
        (lambda: (1.0, True), "measurement disagrees: with A and B fixed"),
        (lambda: (2.0, False), "under Adam"),
        (lambda: (True, 2.0), "wrong way round"),
        (lambda: (2.0, "True"), "must be True or False"),
        (lambda: (2.0, 1), "must be True or False"),
        (lambda: (2.0, np.bool_(False)), "under Adam"),
        (lambda: (np.True_, 2.0), "wrong way round"),
        (lambda: (2.0, np.float64(1.0)), r"must be True or False \(a bool\), got numpy.float64"),
        (lambda: (2.0, torch.tensor(True)), r"must be True or False \(a bool\), got torch.Tensor"),
        (lambda: 2.0, "should return a pair"),
        (lambda: ("two", True), "the branch factor must be a number"),
    ],
)
def test_each_wrong_prediction_is_named(predictions, message):
    fails(ALPHA_PREDICTIONS, predictions, message)


def test_the_messages_do_not_give_the_answers_away():
    for wrong in (lambda: (3.0, True), lambda: (2.0, False)):
        with pytest.raises(AssertionError) as error:
            ALPHA_PREDICTIONS.check(wrong)
        assert "2.0" not in str(error.value) and "True" not in str(error.value)


# --- 04.3 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio",
    [
        math.sqrt,
        lambda r: r**0.5,
        lambda r: (16 / math.sqrt(r)) / (16 / r),
        lambda r: torch.sqrt(torch.tensor(float(r))),  # float32
        np.sqrt,
    ],
)
def test_correct_ratio_passes(ratio):
    passes(RSLORA_RATIO, ratio)


@pytest.mark.parametrize(
    ("ratio", "message"),
    [
        (lambda r: 1 / math.sqrt(r), "inverted: alpha / sqrt"),
        (lambda r: (16 / r) / (16 / math.sqrt(r)), "inverted: alpha / sqrt"),
        (lambda r: r, "that is r itself"),
        (lambda r: 1 / r, "inverted, and"),
        (math.isqrt, "rounded to a whole number"),
        (lambda r: int(math.sqrt(r)), "rounded to a whole number"),
        (lambda r: r**1 / 2, "binds tighter"),
        (lambda r: 1.0, "the ratio depends on r"),
        (lambda r: r**2, r"should be [\d.]+, got"),
        (lambda r: None, "should return a number"),
    ],
)
def test_each_ratio_mistake_is_named(ratio, message):
    fails(RSLORA_RATIO, ratio, message)
