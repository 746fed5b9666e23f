"""What an exercise is, for the learner's check and for the grader (exercises 01-11).

An exercise is checked in two halves. `observe` runs the learner's object on a case (inputs
chosen by the checker: sizes, seeds, values) and records what it did as plain data: tensors,
numbers, strings, and the errors it raised. `judge` compares those observations with the
package's reference on the same case and raises an AssertionError that names the mistake.

In a learner's notebook, a visible check does both halves on the exercise's visible case. The
classroom grader (`lora_course.grading`) observes inside the student's sandboxed process, on
cases drawn at grading time, and judges in its own process, where the student's code cannot
reach: a submission earns a point only by producing correct outputs for inputs it never saw.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Case = dict[str, Any]  # JSON-ready: ints, floats, strings, lists, nested dicts
Observations = dict[str, Any]  # JSON-ready values and top-level torch tensors


@dataclass(frozen=True)
class Exercise:
    """One exercise: the name the learner defines, how to observe it, how to judge it."""

    id: str  # "02.1"
    target: str  # the name the learner's notebook defines: "MyLoRALinear", "energy_captured"
    observe: Callable[[Any, Case], Observations]  # runs the learner's object; never raises
    judge: Callable[[Observations, Case], None]  # raises AssertionError naming the mistake
    visible: Case  # the case of the check the learner runs
    variant: Callable[[random.Random], Case] | None = None  # an instructor-only case, drawn

    def check(self, obj, case: Case | None = None) -> None:
        """Observe `obj` on a case (the visible one by default) and judge it, here."""
        case = self.visible if case is None else case
        self.judge(self.observe(obj, case), case)

    def cases(self, rng: random.Random) -> dict[str, Case]:
        """The cases a grader scores, by kind: the visible one, and a variant when there is one."""
        cases = {"visible": self.visible}
        if self.variant is not None:
            cases["instructor"] = self.variant(rng)
        return cases


def first_fit(draw: Callable[[], Case], fits: Callable[[Case], bool], tries: int = 1000) -> Case:
    """For a variant: the first case `draw()` gives that `fits` its conditions (a lesson's tests
    draw hundreds of variants, so one always comes within a few tries)."""
    for _ in range(tries):
        case = draw()
        if fits(case):
            return case
    raise RuntimeError(f"no case drawn in {tries} tries fits")


def attempt(observations: Observations, key: str, call: Callable[[], Any]) -> Any:
    """Run one call of the learner's code; on an exception, record it under `key + "_error"`."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - the learner's mistake is data for the judge
        observations[f"{key}_error"] = f"{type(error).__name__}: {error}"[:500]
        return None


def raised(observations: Observations, key: str, what: str) -> None:
    """Fail, naming the call, if `attempt(observations, key, ...)` recorded an exception."""
    error = observations.get(f"{key}_error")
    if error is not None:
        if str(error).startswith("NotImplementedError"):
            raise AssertionError(f"{what} is not written yet ({error})")
        raise AssertionError(f"{what} raised {error}")


def require(condition: bool, message: str) -> None:
    """Raise AssertionError(message) unless `condition` holds."""
    if not condition:
        raise AssertionError(message)


def type_name(value) -> str:
    """The name of a value's type, module-qualified unless it is a builtin: numpy's bool is
    `numpy.bool`, never `bool`; a tensor is `torch.Tensor`; a class of the learner's notebook
    keeps its own name."""
    kind = type(value)
    module = getattr(kind, "__module__", None)
    name = getattr(kind, "__qualname__", kind.__name__)
    return name if module in (None, "builtins", "__main__") else f"{module}.{name}"


def describe(value) -> str:
    """A short, safe description of a learner's value: its type and the start of its repr."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a learner's __repr__ may raise
        text = "?"
    return f"{type_name(value)} {text[:80]}"


def observe_number(observations, key: str, call):
    """Run one call of the learner's code: a float, or None with the error or result recorded."""
    value = attempt(observations, key, call)
    if f"{key}_error" in observations:
        return None
    if value is None or isinstance(value, bool | str | bytes):
        observations[f"{key}_returned"] = describe(value)
        return None
    try:
        return float(value)
    except Exception:  # noqa: BLE001 - a tensor of many values, a list, an object...
        observations[f"{key}_returned"] = describe(value)
        return None


def judge_number(observations, key: str, what: str) -> None:
    """Fail, naming the call, if it raised or did not return a single number."""
    raised(observations, key, what)
    returned = observations.get(f"{key}_returned")
    if returned is not None:
        raise AssertionError(f"{what} should return a number, got {returned}")


def matches_all(got: list, want: list, tol: float = 0.0) -> bool:
    """Every number in `got` equals the one in `want` (to a relative tolerance)."""
    return len(got) == len(want) and all(
        g is not None and abs(g - w) <= tol * max(abs(w), 1e-300)
        for g, w in zip(got, want, strict=True)
    )


def judge_numbers(calls: list[str], got: list, want: list, mistakes, tol: float = 0.0) -> None:
    """Pass if every number matches; else name a known mistake the numbers fit, else the first
    wrong call. `mistakes`: (the numbers that mistake gives, its message) pairs."""
    if matches_all(got, want, tol):
        return
    for wrong, message in mistakes:
        require(not matches_all(got, wrong, tol), message)
    for call, g, w in zip(calls, got, want, strict=True):
        require(matches_all([g], [w], tol), f"{call} should be {w:.6g}, got {g:.6g}")
