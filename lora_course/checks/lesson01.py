"""Exercises 01: energy of singular values, the best rank-r approximation, rank for a target."""

from __future__ import annotations

import itertools
import math

import torch

from .exercise import (
    Exercise,
    attempt,
    describe,
    judge_number,
    observe_number,
    raised,
    require,
)

SVD_SHAPES = (
    "torch.linalg.svd gives U (m, k), S (k,) and Vh (k, n) (k = min(m, n) with "
    "full_matrices=False): the left singular vectors are the columns of U, the right ones the "
    "ROWS of Vh (it is V already transposed)"
)


def _close(got: float | None, want: float) -> bool:
    return got is not None and math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6)


def _all_close(got: list, want: list) -> bool:
    return all(_close(g, w) for g, w in zip(got, want, strict=True))


def _record_input(observations, key: str, tensor: torch.Tensor) -> None:
    """The learner's input tensor as the call left it, for the judge to compare with the case's."""
    after = attempt(observations, key, lambda: tensor.detach().to(torch.float64).cpu().clone())
    if after is not None:
        observations[key] = after


def _changed_input(observations, key: str, given: torch.Tensor) -> bool:
    """Whether the tensor recorded under `key` is no longer `given` (shape or any value)."""
    if f"{key}_error" in observations:
        return True
    after = observations.get(key)
    if not isinstance(after, torch.Tensor):
        return False
    return tuple(after.shape) != tuple(given.shape) or not torch.equal(after, given.double())


def _in_place(call: str, name: str) -> str:
    return (
        f"{call} changed the {name} it was given in place (an in-place operation such as pow_, "
        f"mul_, div_, copy_, += or {name}[...] = ...): the caller's tensor must stay as it "
        f"was, so compute on new tensors ({name}.clone() makes a copy)"
    )


# --- 01.1 energy_captured(S, r) ---------------------------------------------------------------


def _singular_values(case) -> torch.Tensor:
    g = torch.Generator().manual_seed(case["seed"])
    return torch.sort(torch.rand(case["n"], generator=g) * 3 + 0.1, descending=True).values  # (n,)


def _energy_ranks(case) -> list[int]:
    return [0, 1, 3, case["n"]]


def observe_energy_captured(energy_captured, case):
    """Exercise 01.1: the learner's energy for a few ranks of seeded singular values."""
    S, observations, energy = _singular_values(case), {}, []
    for r in _energy_ranks(case):
        given = S.clone()  # the learner's own copy: the judge sees it as the call left it
        energy.append(
            observe_number(observations, f"r{r}", lambda r=r, g=given: energy_captured(g, r))
        )
        _record_input(observations, f"r{r}_input", given)
    observations["energy"] = energy
    return observations


def _energy_mistakes(S: torch.Tensor, n: int):
    """(the learner's energy of rank r, the mistake it names), most likely first."""
    squares = S**2

    def share(values, r):
        return float(values[: max(0, min(r, n))].sum() / values.sum())

    return (
        (
            lambda r: share(S, r),
            "energy is the sum of SQUARED singular values: square S before summing",
        ),
        (
            lambda r: share(squares.flip(0), r),
            "S is sorted largest first: the energy of rank r is held by the first r values",
        ),
        (
            lambda r: share(squares.flip(0), r) if r else 1.0,
            "S is sorted largest first: the energy of rank r is held by the first r values, not "
            "the last r (and at r = 0 the energy is 0, but the last 0 values, S[-0:], are all "
            "of S)",
        ),
        (
            lambda r: 100 * share(squares, r),
            "the energy is a fraction between 0 and 1, not a percentage",
        ),
        (
            lambda r: float(squares[:r].sum() // squares.sum()),
            "`//` is floor division, which rounds the share down to 0: divide with /",
        ),
        (
            lambda r: share(squares, r + 1),
            "off by one: energy_captured(S, r) keeps the first r values, no more (r = 0 keeps "
            "none)",
        ),
        (
            lambda r: share(squares, r - 1),
            "off by one: energy_captured(S, r) keeps the first r values, no fewer (r = 1 keeps "
            "the largest)",
        ),
    )


def _wrong_total(got: list, want: list) -> bool:
    """The kept energy is right up to one constant factor: the total it is divided by is wrong."""
    pairs = [(g, w) for g, w in zip(got, want, strict=True) if w > 0]
    if not pairs or any(g is None for g, _ in pairs):
        return False
    ratios = [g / w for g, w in pairs]
    kept_alone = all(_close(g, 1.0) for g, _ in pairs)  # divided by the kept energy itself
    constant = all(math.isclose(x, ratios[0], rel_tol=1e-5) for x in ratios)
    return kept_alone or (constant and not math.isclose(ratios[0], 1.0, rel_tol=1e-5))


def judge_energy_captured(observations, case) -> None:
    """Exercise 01.1: fraction of sum(sigma^2) in the r largest singular values."""
    S, ranks = _singular_values(case).double(), _energy_ranks(case)
    for r in ranks:
        judge_number(observations, f"r{r}", f"energy_captured(S, {r})")
    for r in ranks:
        require(
            not _changed_input(observations, f"r{r}_input", S),
            _in_place(f"energy_captured(S, {r})", "S"),
        )
    got = observations["energy"]
    want = [float((S[:r] ** 2).sum() / (S**2).sum()) for r in ranks]
    if _all_close(got, want):
        return
    for mistake, message in _energy_mistakes(S, case["n"]):
        require(not _all_close(got, [mistake(r) for r in ranks]), message)
    require(
        not _wrong_total(got, want),
        "energy_captured divides by the wrong total: the energy of the r largest values is a "
        "share of the energy of ALL n of them (so r = n gives 1)",
    )
    r, g, w = next((r, g, w) for r, g, w in zip(ranks, got, want, strict=True) if not _close(g, w))
    raise AssertionError(f"energy_captured(S, {r}) should be {w:.4f}, got {g:.4f}")


ENERGY_CAPTURED = Exercise(
    id="01.1",
    target="energy_captured",
    observe=observe_energy_captured,
    judge=judge_energy_captured,
    visible={"seed": 0, "n": 8},
    variant=lambda rng: {"seed": rng.randrange(2**31), "n": rng.randint(5, 16)},
)


def check_energy_captured(energy_captured) -> None:
    """Exercise 01.1: fraction of sum(sigma^2) in the r largest singular values."""
    ENERGY_CAPTURED.check(energy_captured)


# --- 01.2 low_rank_approximation(W, r) --------------------------------------------------------


def _matrix(case) -> torch.Tensor:
    g = torch.Generator().manual_seed(case["seed"])
    return torch.randn(case["rows"], case["cols"], generator=g)  # (m, n)


def observe_low_rank_approximation(low_rank_approximation, case):
    """Exercise 01.2: the learner's approximation of a seeded matrix."""
    observations = {}
    given = _matrix(case)  # the learner's own matrix: the judge sees it as the call left it
    approx = attempt(observations, "call", lambda: low_rank_approximation(given, case["r"]))
    if "call_error" in observations:
        return observations
    _record_input(observations, "input", given)
    try:
        if approx is None or isinstance(approx, bool | str | bytes | tuple | dict):
            raise TypeError("not a matrix")
        observations["approx"] = torch.as_tensor(approx).detach().to(torch.float64).cpu().clone()
    except Exception:  # noqa: BLE001 - None, the SVD's factors, a string...
        observations["returned"] = describe(approx)
    return observations


def _close_matrix(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4))


def _columns_of_vh(approx, U_r, S_r, Vh) -> bool:
    """Is approx U_r diag(S_r) times the first r COLUMNS of Vh (as rows), up to the SVD's signs?

    Each singular pair (u, v) may come with either sign; u v^T does not change, but a column
    of Vh mixes the signs of every v: so compare column by column, up to a sign, for every
    choice of signs of the r kept u.
    """
    for signs in itertools.product((1.0, -1.0), repeat=len(S_r)):
        want = U_r @ torch.diag(S_r * torch.tensor(signs, dtype=S_r.dtype)) @ Vh.T[: len(S_r)]
        if all(
            _close_matrix(approx[:, j], want[:, j]) or _close_matrix(approx[:, j], -want[:, j])
            for j in range(want.shape[1])
        ):
            return True
    return False


def judge_low_rank_approximation(observations, case) -> None:
    """Exercise 01.2: the best rank-r approximation (truncated SVD), by its error."""
    W, r = _matrix(case).double(), case["r"]
    m, n = W.shape
    call = f"low_rank_approximation(W, {r}) for W of shape {(m, n)}"
    error = str(observations.get("call_error", ""))
    if any(word in error for word in ("shape", "size", "dimension")) and not error.startswith(
        "NotImplementedError"
    ):  # factors that do not chain: the learner mixed up which rows and columns to keep
        raise AssertionError(f"{call} raised {error}: {SVD_SHAPES}")
    raised(observations, "call", call)
    returned = observations.get("returned")
    if returned is not None:
        hint = " (a missing `return`?)" if returned.startswith("NoneType") else ""
        raise AssertionError(f"{call} should return one matrix of W's shape, got {returned}{hint}")
    require(not _changed_input(observations, "input", W), _in_place(call, "W"))
    approx = observations["approx"]
    shape = tuple(approx.shape)
    if shape != (m, n):
        hint = f": {SVD_SHAPES}" if shape == (m, m) else ""
        raise AssertionError(
            f"the approximation must have W's shape {(m, n)}, got {shape}"
            + (" (transposed)" if shape == (n, m) else "")
            + hint
        )
    require(bool(torch.isfinite(approx).all()), "the approximation contains NaN or inf")
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)  # (m, k), (k,), (k, n)
    best = U[:, :r] @ torch.diag(S[:r]) @ Vh[:r, :]  # (m, n)
    require(
        not _close_matrix(approx, U[:, -r:] @ torch.diag(S[-r:]) @ Vh[-r:, :]),
        "you kept the r SMALLEST singular directions; the SVD sorts them largest first",
    )
    require(
        not _close_matrix(approx, W - best),
        "that is what the approximation drops (W minus the best rank-r approximation): keep "
        "the r largest singular values, drop the others",
    )
    rank = int(torch.linalg.matrix_rank(approx, rtol=1e-5))
    require(
        rank <= r,
        f"the approximation has rank {rank}, more than r = {r}: keep exactly r singular values "
        "and their singular vectors",
    )
    floor = float((S[r:] ** 2).sum().sqrt())  # Eckart-Young: the smallest possible error
    distance = float((W - approx).norm())
    if distance <= floor * (1 + 1e-4) + 1e-9:
        return
    require(
        rank >= r,
        f"the approximation has rank {rank}, less than r = {r}: you kept fewer directions than "
        f"r (an off-by-one?); a rank-r approximation keeps r singular values, each with its "
        "singular vectors",
    )
    require(
        not _close_matrix(approx, U[:, :r] @ Vh[:r, :]),
        "the singular values are missing: each kept direction is weighted by its own "
        "singular value",
    )
    if Vh.shape[1] == Vh.shape[0]:  # rows of Vh.T (columns of Vh) have the right length
        require(
            not _columns_of_vh(approx, U[:, :r], S[:r], Vh),
            f"you took COLUMNS of Vh as the right singular vectors; {SVD_SHAPES}",
        )
    raise AssertionError(
        f"the approximation has rank {rank} <= r, but its error |W - approx| = {distance:.4f} "
        f"is above the best possible, {floor:.4f} (Eckart-Young): keep the r largest singular "
        "values, each with its own singular vectors. torch.svd_lowrank is randomized and only "
        "approximates them; torch.linalg.svd is exact"
    )


LOW_RANK_APPROXIMATION = Exercise(
    id="01.2",
    target="low_rank_approximation",
    observe=observe_low_rank_approximation,
    judge=judge_low_rank_approximation,
    visible={"seed": 0, "rows": 6, "cols": 5, "r": 2},
    variant=lambda rng: {
        "seed": rng.randrange(2**31),
        **dict(zip(("rows", "cols"), rng.sample(range(4, 12), 2), strict=True)),  # m != n
        "r": rng.randint(1, 3),
    },
)


def check_low_rank_approximation(low_rank_approximation) -> None:
    """Exercise 01.2: the best rank-r approximation (truncated SVD)."""
    LOW_RANK_APPROXIMATION.check(low_rank_approximation)


# --- 01.3 rank_for_energy(S, target) ----------------------------------------------------------

# Singular values whose squares sum to a power of two: every energy fraction is exact in float32,
# float64 and plain Python, so a correct answer passes whatever precision it computes in.
VISIBLE_SPECTRUM = [3, 2, 1, 1, 1]  # squares 9 + 4 + 1 + 1 + 1 = 16
NUDGE = 2.0**-20  # a target this far from an energy is still exact in float32 (energies >= 2**-10)


def _squares_summing_to(total: int) -> list[int]:
    """At most four positive integers whose squares sum to `total` (Lagrange), largest first."""
    if total == 0:
        return []
    for first in range(math.isqrt(total), 0, -1):
        rest = total - first * first
        if rest == 0:
            return [first]
        for second in range(min(first, math.isqrt(rest)), 0, -1):
            left = rest - second * second
            if left == 0:
                return [first, second]
            for third in range(min(second, math.isqrt(left)), 0, -1):
                fourth = left - third * third
                root = math.isqrt(fourth)
                if fourth == 0 or (root * root == fourth and root <= third):
                    return [first, second, third] + ([root] if root else [])
    raise ValueError(total)  # unreachable: every integer is a sum of four squares


def _exact_spectrum(rng) -> list[int]:
    """Integers, largest first, whose squares sum to a power of two (2**6 to 2**10), drawn."""
    while True:
        total = 2 ** rng.randint(6, 10)
        values, left = [], total
        for _ in range(rng.randint(3, 8)):
            top = math.isqrt(left - 1)  # leave some energy for the others
            if top < 1:
                break
            value = rng.randint(max(1, top // 3), top)
            values.append(value)
            left -= value * value
        values = sorted(values + _squares_summing_to(left), reverse=True)
        if 4 <= len(values) <= 14:
            return values


def _energies(values, squared: bool = True) -> list[float]:
    """The energy of r = 1, 2, ..., n: exact fractions (the squares sum to a power of two)."""
    weights = [v * v for v in values] if squared else list(values)
    return [sum(weights[: i + 1]) / sum(weights) for i in range(len(values))]


def _targets(values) -> list[float]:
    """Exact boundaries (where >= and > differ), targets just below and just above them (where a
    tolerance differs), points between them, and 1.0 (and just below it)."""
    energy = _energies(values)
    between = [(a + b) / 2 for a, b in zip([0.0, *energy], energy, strict=False)]
    nudged = [e + d for e in energy[:-1] for d in (-NUDGE, NUDGE)] + [1.0 - NUDGE]
    return sorted({*energy[:-1], *nudged, *between[1:4], 1.0, between[0]})


def _rank(values, target, squared: bool = True, strict: bool = False, index: bool = False):
    """The rank for `target`, or with one mistake: unsquared, `>` for `>=`, the 0-based index.

    None where no r reaches the target (with `>`, a target of 1.0): what such code returns
    there depends on how it ends (None, n, n + 1, an error), so any answer is taken.
    """
    for i, energy in enumerate(_energies(values, squared)):
        if energy > target or (energy == target and not strict):
            return i if index else i + 1
    return None


def _explains(got, values, targets, **mistake) -> bool:
    """The learner's ranks are exactly what code with `mistake` returns, target by target."""
    predicted = [_rank(values, target, **mistake) for target in targets]
    return all(p is None or g == p for g, p in zip(got, predicted, strict=True))


def _near_energy(values, target: float):
    """(r, energy of r) for an energy within 1e-2 of `target` but not equal to it, or None."""
    return next(
        ((r, e) for r, e in enumerate(_energies(values), start=1) if 0 < abs(target - e) <= 1e-2),
        None,
    )


RANK_MISTAKES = (  # the squaring first: it changes every energy, the comparison only the ties
    (
        [{"squared": False, "strict": s, "index": i} for s in (False, True) for i in (False, True)],
        "energy is the share of SQUARED singular values: square S before summing (exercise 1)",
    ),
    ([{"strict": True}], None),  # the boundary message names the target
    (
        [{"index": True}, {"strict": True, "index": True}],
        "off by one: that is the 0-based position of the last singular value needed; r counts "
        "the values kept (r = 1 keeps the largest alone)",
    ),
)


def observe_rank_for_energy(rank_for_energy, case):
    """Exercise 01.3: the learner's rank for each target on a spectrum with exact energies."""
    S, observations, ranks = torch.tensor(case["values"], dtype=torch.float32), {}, []
    for i, t in enumerate(_targets(case["values"])):
        given = S.clone()  # the learner's own copy: the judge sees it as the call left it
        ranks.append(
            observe_number(observations, f"t{i}", lambda t=t, g=given: rank_for_energy(g, t))
        )
        _record_input(observations, f"t{i}_input", given)
    observations["ranks"] = ranks
    return observations


def judge_rank_for_energy(observations, case) -> None:
    """Exercise 01.3: the smallest r whose energy reaches the target (>=, squared values)."""
    values = case["values"]
    targets = _targets(values)
    calls = [f"rank_for_energy(S, {t})" for t in targets]
    got = observations["ranks"]
    if all(g is None for g in got):
        judge_number(observations, "t0", calls[0])
    for call, g in zip(calls, got, strict=True):
        if g is not None and not float(g).is_integer():
            raise AssertionError(
                f"{call} returned {g:.4g}: the rank is a whole number, the count of singular "
                "values kept"
            )
    S = torch.tensor(values, dtype=torch.float64)
    for i, call in enumerate(calls):
        require(
            not _changed_input(observations, f"t{i}_input", S),
            _in_place(call, "S"),
        )
    want = [_rank(values, t) for t in targets]
    if got == want:
        return
    for mistakes, message in RANK_MISTAKES:
        if not any(_explains(got, values, targets, **m) for m in mistakes):
            continue
        if message is None:  # `>` where `>=` is due: name a target that some r reaches exactly
            target, w = next((t, w) for t, g, w in zip(targets, got, want, strict=True) if g != w)
            message = (
                f"at target {target}, r = {w} reaches it exactly (its energy equals the "
                f"target), so the answer is {w}: the smallest r whose energy is AT LEAST the "
                "target (>=, not >)"
            )
        raise AssertionError(message)
    require(
        not all(g == 1 for g in got),
        "every answer is 1: compare the energy FRACTION (a share of the total, at most 1) with "
        "the target, not the sum of squares itself",
    )
    for i, (call, g) in enumerate(zip(calls, got, strict=True)):
        if g is None:
            judge_number(observations, f"t{i}", call)
    wrong = [(c, t, g, w) for c, t, g, w in zip(calls, targets, got, want, strict=True) if g != w]
    if all(_near_energy(values, t) for _, t, _, _ in wrong):  # only where a tolerance differs
        call, target, g, w = wrong[0]
        r, energy = _near_energy(values, target)
        side = "above" if target > energy else "below"
        raise AssertionError(
            f"{call} should be {w}, got {g:g}: the target is just {side} the energy of r = {r}, "
            f"{energy}, by {abs(target - energy):.2g}. These energies are exact: compare them "
            "with the target exactly, with no tolerance (no isclose, no small epsilon)"
        )
    call, _, g, w = wrong[0]
    raise AssertionError(f"{call} should be {w}, got {g:g}")


RANK_FOR_ENERGY = Exercise(
    id="01.3",
    target="rank_for_energy",
    observe=observe_rank_for_energy,
    judge=judge_rank_for_energy,
    visible={"values": VISIBLE_SPECTRUM},
    variant=lambda rng: {"values": _exact_spectrum(rng)},
)


def check_rank_for_energy(rank_for_energy) -> None:
    """Exercise 01.3: the smallest r whose energy reaches the target."""
    RANK_FOR_ENERGY.check(rank_for_energy)


EXERCISES = (ENERGY_CAPTURED, LOW_RANK_APPROXIMATION, RANK_FOR_ENERGY)
