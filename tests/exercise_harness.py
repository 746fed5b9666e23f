"""What the classroom grader does with an exercise, shared by the tests of every lesson's checks.

The grader observes a learner's object inside the student's process, on cases sent to it as
JSON, and judges in its own process what came back: the non-tensor observations as JSON, the
tensors as they are (lora_course.grading.observations). `graded` does the same here, so that a
test passes only if the check works the way the grader runs it. Test modules import these
functions by name (pytest puts tests/ on sys.path): `from exercise_harness import passes`.
"""

import json
import random
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


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


def defined(folder: str, name: str) -> dict:
    """What the code cells of notebook `name` in `folder` (solutions/ or exercises/) define: its
    cells that import, or define a class or function, run in one namespace."""
    namespace = {}
    for cell in json.loads((ROOT / folder / name).read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(
            ("import ", "from ", "class ", "def ")
        ):
            exec(source, namespace)  # the course's own notebook
    return namespace


def _id(exercise, answer, message="") -> str:
    name = getattr(answer, "__qualname__", "answer").split(".")[0]
    return f"{exercise.id}-{name}-{str(getattr(message, 'pattern', message))[:30]}"


def shared_tests(module, untouched: dict, right, wrong, seeds: dict, wrong_seeds: dict) -> dict:
    """The tests of a lesson's checks, for its test module to adopt by name: `globals().update(
    shared_tests(lesson11, UNTOUCHED, RIGHT, WRONG, SEEDS, WRONG_SEEDS))`.

    `untouched`: what the exercise notebook defines; `right`: (exercise, answer, whether it is the
    solution's) rows, each passing the visible case and the variants of `seeds[exercise.id]` (the
    first three unless it is the solution's); `wrong`: (exercise, answer, message) rows, each
    failing with `message` (a str, or a compiled pattern) on the variants of
    `wrong_seeds[exercise.id]`. Odd learners are judged without raising, cases are JSON with
    differing variants, each untouched exercise is "not written yet", and each exercise's check
    function, `check_<target>`, is exported by `lora_course.checks`.
    """
    exercises = module.EXERCISES
    each = pytest.mark.parametrize("exercise", exercises, ids=[e.id for e in exercises])

    @each
    @pytest.mark.parametrize("name", ODD_OBJECTS)
    def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
        message = "not written yet" if name == "not written" else None
        judged_odd(exercise, ODD_OBJECTS[name], message)

    @each
    def test_cases_are_json_and_variants_differ(exercise):
        cases_vary(exercise)

    @each
    def test_the_untouched_exercise_is_not_written_yet(exercise):
        fails(exercise, untouched[exercise.target], "not written yet", wrong_seeds[exercise.id])

    @each
    def test_the_check_function_is_the_exercise_and_exported(exercise):
        from lora_course import checks

        check = getattr(module, f"check_{exercise.target}")
        assert getattr(checks, check.__name__) is check and check.__name__ in checks.__all__
        assert checks.EXERCISES[module.__name__[-2:]] == exercises
        with pytest.raises(AssertionError, match="not written yet"):
            check(untouched[exercise.target])

    @pytest.mark.parametrize(
        ("exercise", "answer", "main"), right, ids=[_id(*r[:2]) for r in right]
    )
    def test_right_answers_pass_the_visible_case_and_variants(exercise, answer, main):
        drawn = seeds[exercise.id]
        passes(exercise, answer, drawn if main else drawn[:3])

    @pytest.mark.parametrize(("exercise", "answer", "message"), wrong, ids=[_id(*w) for w in wrong])
    def test_each_mistake_is_named_on_the_visible_case_and_variants(exercise, answer, message):
        pattern = message if isinstance(message, re.Pattern) else re.escape(message)
        fails(exercise, answer, pattern, wrong_seeds[exercise.id])

    return {name: test for name, test in locals().items() if name.startswith("test_")}
