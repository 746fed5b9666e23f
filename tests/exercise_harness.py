"""What the classroom grader does with an exercise, shared by the tests of every lesson's checks.

The grader observes a learner's object inside the student's process, on cases sent to it as
JSON, and judges in its own process what came back: the non-tensor observations as JSON, the
tensors as they are (lora_course.grading.observations). `graded` does the same here, so that a
test passes only if the check works the way the grader runs it. Test modules import these
functions by name (pytest puts tests/ on sys.path): `from exercise_harness import passes`.
"""

import json
import random

import pytest
import torch


def through_json(value):
    """The value after a JSON round trip, as the grader sends cases and observations."""
    return json.loads(json.dumps(value))


def is_data(value) -> bool:
    """Whether `value` is JSON data: None, bool, int, float, str, and lists and str-keyed dicts."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_data(v) for k, v in value.items())
    return False


def assert_observations(observations) -> None:
    """Observations are a dict of JSON data, and of float64 CPU tensors at its top level only."""
    assert isinstance(observations, dict), type(observations)
    for key, value in observations.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == torch.float64 and value.device.type == "cpu", (key, value.dtype)
        else:
            assert is_data(value), (key, value)
    data = {k: v for k, v in observations.items() if not isinstance(v, torch.Tensor)}
    text = json.dumps(data, allow_nan=True)
    assert json.dumps(json.loads(text)) == text


def carried(observations) -> dict:
    """The observations as the grader's judge receives them: data through JSON, tensors as is."""
    data = {k: v for k, v in observations.items() if not isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in observations.items() if isinstance(v, torch.Tensor)}
    return through_json(data) | tensors


def graded(exercise, obj, case) -> None:
    """What the grader does: observe on the case as JSON, judge what is carried back."""
    observations = exercise.observe(obj, through_json(case))
    assert_observations(observations)
    exercise.judge(carried(observations), through_json(case))


def variants(exercise, seeds) -> list:
    """The exercise's instructor cases drawn with these seeds (none if it has no variant)."""
    if exercise.variant is None:
        return []
    return [exercise.variant(random.Random(seed)) for seed in seeds]


def passes(exercise, obj, seeds=range(20)) -> None:
    """`obj` passes the visible check, and the grader on the variants of `seeds`."""
    exercise.check(obj)
    for case in variants(exercise, seeds):
        graded(exercise, obj, case)


def fails(exercise, obj, message, seeds=range(5)) -> None:
    """`obj` fails the visible check and the grader on every variant, matching `message`."""
    with pytest.raises(AssertionError, match=message):
        exercise.check(obj)
    for case in variants(exercise, seeds):
        with pytest.raises(AssertionError, match=message):
            graded(exercise, obj, case)


def judged_odd(exercise, learner, message=None, seeds=(0,)) -> None:
    """Observe never raises on an odd learner, records data, and judge fails by AssertionError."""
    for case in [exercise.visible, *variants(exercise, seeds)]:
        assert through_json(case) == case  # cases are data, for the grader
        observations = exercise.observe(learner, case)
        assert_observations(observations)
        with pytest.raises(AssertionError, match=message):
            exercise.judge(carried(observations), through_json(case))


def cases_vary(exercise, seeds=range(5)) -> None:
    """Cases are JSON data, and the drawn variants are not all the same."""
    drawn = variants(exercise, seeds)
    for case in [exercise.visible, *drawn]:
        assert through_json(case) == case
    assert exercise.variant is None or len({json.dumps(c, sort_keys=True) for c in drawn}) > 1


def raising(error):
    """A learner's function that raises `error`, whatever it is called with."""

    def learner(*args, **kwargs):
        raise error

    return learner


class Unprintable:
    """A learner's value whose repr raises."""

    def __repr__(self):
        raise RuntimeError("no repr")


class Weird(Unprintable):
    """A learner's value that cannot be printed, converted, indexed or iterated."""

    def __float__(self):
        raise RuntimeError("no float")

    def __iter__(self):
        raise RuntimeError("no iter")

    def __getitem__(self, key):
        raise RuntimeError("no item")


UNWRITTEN = raising(NotImplementedError("write your code here"))  # a stub

# What a learner may hand a check instead of a working answer (lessons 08 and 09)
ODD_OBJECTS = {
    "not written": UNWRITTEN,
    "raises": raising(ValueError("boom")),
    "returns None": lambda *a, **k: None,
    "returns a string": lambda *a, **k: "4.5",
    "returns a list": lambda *a, **k: [1, 2, 3],
    "returns a tensor": lambda *a, **k: torch.ones(3),
    "returns a weird object": lambda *a, **k: Weird(),
    "returns an unprintable object": lambda *a, **k: Unprintable(),
    "returns NaN": lambda *a, **k: float("nan"),
    "not callable": 42,
}
