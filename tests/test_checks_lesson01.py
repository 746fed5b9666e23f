"""Exercises 01: correct answers in any precision pass, each classic mistake fails by name."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from exercise_harness import Weird, cases_vary, fails, judged_odd, passes, raising, variants

from lora_course.checks import lesson01
from lora_course.checks.lesson01 import ENERGY_CAPTURED, LOW_RANK_APPROXIMATION, RANK_FOR_ENERGY

ROOT = Path(__file__).resolve().parents[1]
NAME = "01_rank_and_svd_energy.ipynb"


def notebook_functions(folder: str) -> dict:
    """The functions that a notebook of `folder` (solutions/ or exercises/) defines."""
    cells = json.loads((ROOT / folder / NAME).read_text())["cells"]
    namespace = {"math": math, "torch": torch}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith("def "):
            exec(source, namespace)  # the course's own notebook
    return namespace


SOLUTION = notebook_functions("solutions")
STUB = notebook_functions("exercises")

ODD_OBJECTS = {
    "not written": raising(NotImplementedError("the r largest singular values")),
    "raises": raising(ValueError("boom")),
    "returns None": lambda *a, **k: None,
    "returns a string": lambda *a, **k: "0.5",
    "returns a list": lambda *a, **k: [1, 2],
    "returns a weird object": lambda *a, **k: Weird(),
    "returns a tuple of tensors": lambda *a, **k: (torch.ones(2), torch.ones(3)),
    "not callable": 42,
}


@pytest.mark.parametrize("exercise", lesson01.EXERCISES, ids=lambda e: e.id)
@pytest.mark.parametrize("name", ODD_OBJECTS)
def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
    judged_odd(exercise, ODD_OBJECTS[name], "not written yet" if name == "not written" else None)


@pytest.mark.parametrize("exercise", lesson01.EXERCISES, ids=lambda e: e.id)
def test_cases_are_json_and_variants_differ(exercise):
    cases_vary(exercise)


@pytest.mark.parametrize("exercise", lesson01.EXERCISES, ids=lambda e: e.id)
def test_the_exercise_stubs_are_not_written_yet(exercise):
    fails(exercise, STUB[exercise.target], "is not written yet", seeds=range(2))


def test_the_visible_check_functions_are_the_exercises():
    lesson01.check_energy_captured(SOLUTION["energy_captured"])
    lesson01.check_low_rank_approximation(SOLUTION["low_rank_approximation"])
    lesson01.check_rank_for_energy(SOLUTION["rank_for_energy"])
    assert [e.id for e in lesson01.EXERCISES] == ["01.1", "01.2", "01.3"]


# --- 01.1 energy_captured ---------------------------------------------------------------------


def energy_float64(S, r):
    squares = S.double() ** 2
    return float(squares[:r].sum() / squares.sum())


def energy_by_hand(S, r):
    """Pure Python: a loop over floats."""
    squares = [float(s) ** 2 for s in S]
    kept = 0.0
    for square in squares[:r]:
        kept += square
    return kept / sum(squares)


def energy_numpy(S, r):
    s = S.numpy()
    return (s[:r] ** 2).sum() / (s**2).sum()  # a numpy float32


def smallest_energy(S, r):
    """The r smallest: S[-r:] is all of S at r = 0 (the learner of issue #20's 01.1)."""
    return float((S[-r:] ** 2).sum() / (S**2).sum())


def squares_in_place(S, r):
    """Right numbers, but the caller's S is left squared."""
    S.pow_(2)
    return float(S[:r].sum() / S.sum())


def sorts_in_place(S, r):
    S.copy_(torch.sort(S).values)  # ascending now: the caller's S is reordered
    return energy_float64(S.flip(0), r)


@pytest.mark.parametrize(
    "energy",
    [
        SOLUTION["energy_captured"],
        energy_float64,
        energy_by_hand,
        energy_numpy,
        lambda S, r: (S[:r] ** 2).sum() / (S**2).sum(),  # a 0-d tensor
        lambda S, r: 1 - float((S[r:] ** 2).sum() / (S**2).sum()),  # one minus what is dropped
    ],
)
def test_correct_energies_pass(energy):
    passes(ENERGY_CAPTURED, energy)


@pytest.mark.parametrize(
    ("energy", "message"),
    [
        (lambda S, r: float(S[:r].sum() / S.sum()), "sum of SQUARED singular values"),
        (lambda S, r: energy_float64(S.flip(0), r), "sorted largest first"),
        (lambda S, r: energy_float64(torch.sort(S).values, r), "sorted largest first"),
        (lambda S, r: float((S[:r] ** 2).sum() / S.sum() ** 2), "divides by the wrong total"),
        (lambda S, r: float((S[:r] ** 2).sum() / S.norm()), "divides by the wrong total"),
        (lambda S, r: float((S[:r] ** 2).sum() / len(S)), "divides by the wrong total"),
        (lambda S, r: float((S[:r] ** 2).sum()), "divides by the wrong total"),
        (lambda S, r: float((S[:r] ** 2).sum() / (S[:r] ** 2).sum()), "divides by the wrong total"),
        (lambda S, r: 100 * energy_float64(S, r), "not a percentage"),
        (lambda S, r: float((S[:r] ** 2).sum() // (S**2).sum()), "floor division"),
        (lambda S, r: energy_float64(S, r + 1), "off by one.* no more"),
        (lambda S, r: energy_float64(S, max(r - 1, 0)), "off by one.* no fewer"),
        (lambda S, r: energy_float64(S, r) + 0.01, r"energy_captured\(S, \d+\) should be"),
        (smallest_energy, "not the last r .*at r = 0 the energy is 0"),
        (squares_in_place, "changed the S it was given in place"),
        (sorts_in_place, "changed the S it was given in place"),
        (lambda S, r: None, "should return a number, got NoneType"),
        (lambda S, r: S**2 / (S**2).sum(), "should return a number, got torch.Tensor"),
        (lambda S, r: str(energy_float64(S, r)), "should return a number, got str"),
    ],
)
def test_each_energy_mistake_is_named(energy, message):
    fails(ENERGY_CAPTURED, energy, message)


# --- 01.2 low_rank_approximation -------------------------------------------------------------


def svd(W):
    return torch.linalg.svd(W, full_matrices=False)  # (m, k), (k,), (k, n)


def approximation_float64(W, r):
    U, S, Vh = svd(W.double())
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:r]


def approximation_numpy(W, r):
    U, S, Vh = np.linalg.svd(W.numpy(), full_matrices=False)
    return U[:, :r] @ np.diag(S[:r]) @ Vh[:r]


def approximation_by_outer_products(W, r):
    U, S, Vh = svd(W)
    return sum(S[i] * torch.outer(U[:, i], Vh[i]) for i in range(r))


def approximation_full_matrices(W, r):
    U, S, Vh = torch.linalg.svd(W)  # (m, m), (k,), (n, n)
    return U[:, :r] * S[:r] @ Vh[:r]


@pytest.mark.parametrize(
    "approximation",
    [
        SOLUTION["low_rank_approximation"],
        approximation_float64,
        approximation_numpy,
        approximation_by_outer_products,
        approximation_full_matrices,
        lambda W, r: approximation_float64(W, r).tolist(),  # nested lists of floats
    ],
)
def test_correct_approximations_pass(approximation):
    passes(LOW_RANK_APPROXIMATION, approximation)


def smallest(W, r):
    U, S, Vh = svd(W)
    return U[:, -r:] @ torch.diag(S[-r:]) @ Vh[-r:]


def rows_of_vh_transposed(W, r):
    U, S, Vh = svd(W)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh.T[:r]  # (m, m) when m < n: a shape mistake too


def columns_of_vh(W, r):
    U, S, Vh = svd(W)
    return U[:, :r] @ torch.diag(S[:r]) @ Vh[:, :r]  # (m, r) @ (n, r): raises


def one_more(W, r):
    return approximation_float64(W, r + 1)


def left_part_only(W, r):
    U, S, _ = svd(W)
    return U[:, :r] @ torch.diag(S[:r])  # (m, r)


def no_singular_values(W, r):
    U, _, Vh = svd(W)
    return U[:, :r] @ Vh[:r]


def svd_lowrank(W, r):
    """torch.svd_lowrank: randomized (here without power iterations), so only approximate."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        U, S, V = torch.svd_lowrank(W, q=r, niter=0)
    return U @ torch.diag(S) @ V.T


def nearly_best(W, r):
    """Rank r and close to the best, as a randomized SVD returns, but not the best."""
    U, S, Vh = svd(W)
    turn = torch.linspace(-0.1, 0.1, W.shape[1]).expand(r, -1)  # (r, n), not in Vh's row space
    return U[:, :r] @ torch.diag(S[:r]) @ (Vh[:r] + turn)


def the_factors(W, r):
    U, S, Vh = svd(W)
    return U[:, :r], S[:r], Vh[:r]


def no_return(W, r):
    svd(W)


def one_fewer(W, r):
    return approximation_float64(W, r - 1)


def overwrites_w(W, r):
    """Right values, written over the caller's W."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    S[r:] = 0
    W.copy_(U @ torch.diag(S) @ Vh)
    return W


def zeroes_w(W, r):
    approx = approximation_float64(W, r)
    W.zero_()
    return approx


@pytest.mark.parametrize(
    ("approximation", "message"),
    [
        (smallest, "kept the r SMALLEST singular directions"),
        (rows_of_vh_transposed, "the right ones the ROWS of Vh"),  # shape or values
        (columns_of_vh, "raised RuntimeError.*the right ones the ROWS of Vh"),
        (lambda W, r: (svd(W)[0][:, :r] * svd(W)[1][:r]) @ svd(W)[2][:, :r].T, "ROWS of Vh"),
        (one_more, "has rank \\d, more than r = \\d: keep exactly r"),
        (lambda W, r: W, "has rank \\d, more than r"),
        (left_part_only, "must have W's shape"),
        (lambda W, r: approximation_float64(W, r).T, "must have W's shape .*\\(transposed\\)"),
        (no_singular_values, "singular values are missing"),
        (  # when k = 2r, what is dropped is the r smallest directions
            lambda W, r: W - approximation_float64(W, r),
            "what the approximation drops|kept the r SMALLEST",
        ),
        (svd_lowrank, "torch.svd_lowrank is randomized"),
        (nearly_best, "above the best possible.*torch.svd_lowrank is randomized"),
        (lambda W, r: torch.zeros_like(W), "has rank 0, less than r"),
        (one_fewer, "has rank \\d, less than r = \\d: you kept fewer directions than r"),
        (overwrites_w, "changed the W it was given in place"),
        (zeroes_w, "changed the W it was given in place"),
        (lambda W, r: approximation_float64(W, r) * float("nan"), "NaN or inf"),
        (the_factors, "should return one matrix of W's shape, got tuple"),
        (no_return, "got NoneType None \\(a missing `return`\\?\\)"),
    ],
)
def test_each_approximation_mistake_is_named(approximation, message):
    fails(LOW_RANK_APPROXIMATION, approximation, message)


def test_the_transposed_vh_mistake_meets_both_shapes_in_thevariants():
    """Vh.T[:r] has the right shape when m >= n and not when m < n: both get named."""
    shapes = [(c["rows"], c["cols"]) for c in [LOW_RANK_APPROXIMATION.visible]]
    shapes += [(c["rows"], c["cols"]) for c in variants(LOW_RANK_APPROXIMATION, range(5))]
    assert any(m >= n for m, n in shapes) and any(m < n for m, n in shapes)
    with pytest.raises(AssertionError, match="you took COLUMNS of Vh"):
        LOW_RANK_APPROXIMATION.check(rows_of_vh_transposed)  # (6, 5): the right shape
    wide = next(c for c in variants(LOW_RANK_APPROXIMATION, range(5)) if c["rows"] < c["cols"])
    with pytest.raises(AssertionError, match="must have W's shape .*, got .*ROWS of Vh"):
        LOW_RANK_APPROXIMATION.check(rows_of_vh_transposed, wide)


# --- 01.3 rank_for_energy ---------------------------------------------------------------------


def rank_float64(S, target):
    energy = torch.cumsum(S.double() ** 2, dim=0) / (S.double() ** 2).sum()
    return int((energy < target).sum()) + 1


def rank_by_hand(S, target):
    """Pure Python: a running sum of squares, the first r that reaches the target."""
    squares = [float(s) ** 2 for s in S]
    total, kept = sum(squares), 0.0
    for r, square in enumerate(squares, start=1):
        kept += square
        if kept / total >= target:
            return r
    return len(squares)


def rank_from_energy_captured(S, target):
    energy_captured = SOLUTION["energy_captured"]
    return next(r for r in range(1, len(S) + 1) if energy_captured(S, r) >= target)


def rank_numpy(S, target):
    s = S.numpy()
    energy = np.cumsum(s**2) / (s**2).sum()
    return int(np.searchsorted(energy, target)) + 1


@pytest.mark.parametrize(
    "rank",
    [
        SOLUTION["rank_for_energy"],
        rank_float64,
        rank_by_hand,
        rank_from_energy_captured,
        rank_numpy,
        lambda S, t: float(rank_float64(S, t)),  # 3.0 is a whole number
        lambda S, t: torch.tensor(rank_float64(S, t)),
        lambda S, t: int(((torch.cumsum(S**2, 0) / (S**2).sum()) < t - 1e-9).sum()) + 1,
    ],
)
def test_correct_ranks_pass(rank):
    passes(RANK_FOR_ENERGY, rank)


def energies(S, squared=True):
    weights = S.double() ** 2 if squared else S.double()
    return torch.cumsum(weights, dim=0) / weights.sum()


def strictly_above(S, target):
    return int((energies(S) <= target).sum()) + 1  # n + 1 for a target of 1.0


def strictly_above_loop(S, target):
    for r, energy in enumerate(energies(S).tolist(), start=1):
        if energy > target:
            return r  # falls off the end, returning None, for a target of 1.0


def unsquared(S, target):
    return int((energies(S, squared=False) < target).sum()) + 1


def unsquared_strictly_above(S, target):
    """Issue #20: blamed on `>` while the real mistake is the missing square."""
    return min(int((energies(S, squared=False) <= target).sum()) + 1, len(S))


def index_not_count(S, target):
    return int((energies(S) < target).sum())


def index_loop(S, target):
    for i, energy in enumerate(energies(S).tolist()):
        if energy >= target:
            return i


def within(tolerance):
    """Issue #20: a tolerance on the comparison, which exact targets near a boundary expose."""

    def rank(S, target):
        return int((energies(S) < target - tolerance).sum()) + 1

    return rank


def close_enough(S, target):
    for r, energy in enumerate(energies(S).tolist(), start=1):
        if energy >= target or math.isclose(energy, target, rel_tol=1e-4):
            return r
    return len(S)


def normalizes_in_place(S, target):
    """Right ranks, but the caller's S is left squared and divided by its sum."""
    S.pow_(2)
    S.div_(S.sum())
    c = torch.cumsum(S.double(), 0)
    return next((i for i, v in enumerate(c.tolist(), 1) if v >= target), len(S))


def unnormalized(S, target):
    return int((torch.cumsum(S**2, 0) < target).sum()) + 1


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        (strictly_above, "reaches it exactly .* AT LEAST the target \\(>=, not >\\)"),
        (strictly_above_loop, "reaches it exactly .* AT LEAST the target"),
        (lambda S, t: min(strictly_above(S, t), len(S)), "AT LEAST the target"),
        (unsquared, "SQUARED singular values"),
        (unsquared_strictly_above, "SQUARED singular values"),
        (lambda S, t: unsquared(S, t) - 1, "SQUARED singular values"),
        (index_not_count, "off by one: .*0-based position"),
        (index_loop, "off by one: .*0-based position"),
        (lambda S, t: int((energies(S) <= t).sum()), "off by one"),
        (unnormalized, "every answer is 1: compare the energy FRACTION"),
        (lambda S, t: float(energies(S)[rank_float64(S, t) - 1]), "the rank is a whole number"),
        (lambda S, t: rank_float64(S, t) + (t == 1.0), r"rank_for_energy\(S, 1.0\) should be"),
        (lambda S, t: None, "should return a number, got NoneType"),
        (lambda S, t: str(rank_float64(S, t)), "should return a number, got str"),
        (within(1e-2), "just above the energy of r = \\d.*no tolerance"),
        (within(1e-3), "just above the energy of r = \\d.*no tolerance"),
        (within(1e-5), "just above the energy of r = \\d.*no tolerance"),
        (close_enough, "just above the energy of r = \\d.*no tolerance"),
        (normalizes_in_place, "changed the S it was given in place"),
    ],
)
def test_each_rank_mistake_is_named(rank, message):
    fails(RANK_FOR_ENERGY, rank, message, seeds=range(8))


def test_the_spectra_have_exact_energies_and_every_kind_of_target():
    """Squares summing to a power of two make every energy exact in float32 and float64."""
    drawn = [c["values"] for c in variants(RANK_FOR_ENERGY, range(40))]
    for values in [lesson01.VISIBLE_SPECTRUM, *drawn]:
        total = sum(v * v for v in values)
        assert total & (total - 1) == 0, values
        assert values == sorted(values, reverse=True) and all(v >= 1 for v in values)
        targets = lesson01._targets(values)
        energy = lesson01._energies(values)
        assert 1.0 in targets and any(t in energy for t in targets if t < 1)
        assert any(t not in energy for t in targets)  # between two boundaries
        for t in targets:  # the targets and the energies are exact in float32
            assert float(torch.tensor(t, dtype=torch.float32)) == t
        for e in energy[:-1]:  # just above and just below each boundary, exactly
            assert e + lesson01.NUDGE in targets and e - lesson01.NUDGE in targets
    assert len({json.dumps(v) for v in drawn}) > 30  # not a short list to learn by heart


# --- messages point, they do not solve --------------------------------------------------------


def test_no_message_gives_the_code_away():
    """Issue #20: no failure prints the answer (slices, products, the formula)."""
    wrong = [
        (ENERGY_CAPTURED, lambda S, r: float(S[:r].sum() / S.sum())),
        (ENERGY_CAPTURED, lambda S, r: energy_float64(S, r) + 0.01),
        *[(LOW_RANK_APPROXIMATION, f) for f in (smallest, rows_of_vh_transposed, columns_of_vh)],
        *[(LOW_RANK_APPROXIMATION, f) for f in (one_more, svd_lowrank, no_singular_values)],
        *[(RANK_FOR_ENERGY, f) for f in (strictly_above, unsquared, index_not_count)],
        *[(RANK_FOR_ENERGY, f) for f in (within(1e-3), normalizes_in_place)],
        *[(ENERGY_CAPTURED, f) for f in (smallest_energy, squares_in_place)],
        *[(LOW_RANK_APPROXIMATION, f) for f in (one_fewer, overwrites_w)],
    ]
    for exercise, answer in wrong:
        with pytest.raises(AssertionError) as failure:
            exercise.check(answer)
        text = str(failure.value)
        assert not any(code in text for code in ("[:", "@", "cumsum", "diag(", "**")), text
