"""Exercises 02 (`MyLoRALinear`): correct layers pass, each classic mistake fails by name."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from exercise_harness import assert_observations, carried, fails, passes, through_json
from torch import nn

from lora_course.checks import lesson02
from lora_course.layers import LoRALinear

ROOT = Path(__file__).resolve().parents[1]
NAME = "02_lora_linear_from_scratch.ipynb"
INIT, DELTA, FORWARD, MERGE, UNMERGE = lesson02.EXERCISES
SEEDS = range(20)  # variants a correct layer must pass
WRONG_SEEDS = range(3)  # variants a wrong layer must fail


def layer_class(folder: str):
    """The `MyLoRALinear` that a notebook of `folder` (solutions/ or exercises/) defines."""
    cells = json.loads((ROOT / folder / NAME).read_text())["cells"]
    source = next(
        "".join(c["source"]) for c in cells if "".join(c["source"]).startswith("class MyLoRALinear")
    )
    namespace = {"math": math, "torch": torch, "nn": nn}
    exec(source, namespace)  # the course's own notebook
    return namespace["MyLoRALinear"]


Solution = layer_class("solutions")
Untouched = layer_class("exercises")


# --- correct layers ---------------------------------------------------------------------------


class Float64Adapters(Solution):
    """A and B in float64 under a float32 base; casts where the two meet."""

    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(self.lora_A.detach().double())
        self.lora_B = nn.Parameter(self.lora_B.detach().double())

    def forward(self, x):
        out = self.base(x)
        if self.merged:
            return out
        return out + (self.alpha / self.r * (x.double() @ self.lora_A.T @ self.lora_B.T)).float()

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight += self.get_delta_weight().float()
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight -= self.get_delta_weight().float()
            self.merged = False


class SkipGuards(Solution):
    """PEFT's way: a second merge, or an unmerge of an unmerged layer, does nothing; F.linear."""

    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.scaling = alpha / r

    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + F.linear(x, self.get_delta_weight())

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base.weight.add_(self.get_delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base.weight.sub_(self.get_delta_weight())
            self.merged = False


class StoredCopy(Solution):
    """unmerge restores a copy of W taken by merge (exact, no rounding)."""

    @torch.no_grad()
    def merge(self):
        if self.merged:
            raise RuntimeError("merged already")
        self.saved = self.base.weight.clone()
        self.base.weight.data += torch.einsum("or,ri->oi", self.lora_B, self.lora_A) * (
            self.alpha / self.r
        )
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            raise RuntimeError("not merged")
        self.base.weight.copy_(self.saved)
        self.merged = False


CORRECT = [Solution, Float64Adapters, SkipGuards, StoredCopy, LoRALinear]


@pytest.mark.parametrize("layer", CORRECT, ids=lambda c: c.__name__)
def test_correct_layers_pass_the_visible_case_and_variants(layer):
    for exercise in lesson02.EXERCISES:
        passes(exercise, layer, SEEDS)


def test_the_visible_check_functions_are_the_exercises():
    checks = (lesson02.check_lora_init, lesson02.check_delta_weight, lesson02.check_lora_forward,
              lesson02.check_merge, lesson02.check_unmerge)  # fmt: skip
    for check in checks:
        check(Solution)
    assert [e.id for e in lesson02.EXERCISES] == ["02.1", "02.2", "02.3", "02.4", "02.5"]
    assert {e.target for e in lesson02.EXERCISES} == {"MyLoRALinear"}


def test_cases_do_not_hide_transposes_or_integer_division():
    cases = [INIT.visible] + [INIT.variant(random.Random(seed)) for seed in range(200)]
    for case in cases:
        r, alpha = case["r"], case["alpha"]
        assert len({case["in"], case["out"], r, case["batch"]}) == 4, case
        assert alpha % r != 0 and alpha // r >= 2, case  # // differs from /, and from 1
        assert r < min(case["in"], case["out"]), case
    assert all(e.variant is INIT.variant for e in lesson02.EXERCISES)
    assert all(e.visible == INIT.visible for e in lesson02.EXERCISES)


# --- wrong layers: 02.1 __init__ --------------------------------------------------------------


class PlainTensors(Solution):
    """Issue #20: requires_grad=True tensors, not nn.Parameters (used to pass every check)."""

    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        A, B = self.lora_A.detach().clone(), self.lora_B.detach().clone()
        del self.lora_A, self.lora_B
        self.lora_A, self.lora_B = A.requires_grad_(), B.requires_grad_()


class Buffers(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        A, B = self.lora_A.detach().clone(), self.lora_B.detach().clone()
        del self.lora_A, self.lora_B
        self.register_buffer("lora_A", A)
        self.register_buffer("lora_B", B)


class TransposedFactors(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(torch.randn(base.in_features, r))  # (in, r)
        self.lora_B = nn.Parameter(torch.zeros(r, base.out_features))  # (r, out)


class AOutShaped(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(torch.randn(r, base.out_features))


class FrozenAdapters(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A.requires_grad_(False)


class BaseTrainable(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.base.requires_grad_(True)


class BiasTrainable(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.base.bias.requires_grad_(True)  # froze base.weight only


class RandomB(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.normal_(self.lora_B)


class BothZero(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.zeros_(self.lora_A)


class SwappedInit(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.zeros_(self.lora_A)
        nn.init.normal_(self.lora_B)


class OnesA(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.ones_(self.lora_A)  # every row the same direction


class UninitializedA(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.constant_(self.lora_A, float("nan"))  # what torch.empty may hold


class TrainableScaling(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.scaling = nn.Parameter(torch.tensor(alpha / r))


class NeedsBias(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.base.bias.requires_grad = False  # AttributeError when bias is None


class FreshBase(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(nn.Linear(base.in_features, base.out_features), r, alpha)


class MissingB(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        del self.lora_B


# --- wrong layers: 02.2 get_delta_weight -------------------------------------------------------


def delta_scaled(scale):
    class Wrong(Solution):
        def get_delta_weight(self):
            return scale(self.alpha, self.r) * (self.lora_B @ self.lora_A)

    return Wrong


class TransposedDelta(Solution):
    def get_delta_weight(self):
        return (self.alpha / self.r) * (self.lora_A.T @ self.lora_B.T)  # (in, out)


class ReversedDelta(Solution):
    def get_delta_weight(self):
        return (self.alpha / self.r) * (self.lora_A @ self.lora_B)  # shapes do not chain


class MutatingDelta(Solution):
    def get_delta_weight(self):
        with torch.no_grad():
            self.lora_B.mul_(self.alpha / self.r)  # scales B itself, every call
        return self.lora_B @ self.lora_A


class NoReturnDelta(Solution):
    def get_delta_weight(self):
        (self.alpha / self.r) * (self.lora_B @ self.lora_A)


# --- wrong layers: 02.3 forward ---------------------------------------------------------------


def forward_scaled(scale):
    class Wrong(Solution):
        def forward(self, x):
            branch = x @ self.lora_A.T @ self.lora_B.T
            return self.base(x) + scale(self.alpha, self.r) * branch

    return Wrong


class BranchOnly(Solution):
    def forward(self, x):
        return (self.alpha / self.r) * (x @ self.lora_A.T @ self.lora_B.T)


class NoBias(Solution):
    def forward(self, x):
        branch = x @ self.lora_A.T @ self.lora_B.T
        return x @ self.base.weight.T + (self.alpha / self.r) * branch


class TransposedForward(Solution):
    def forward(self, x):
        return self.base(x) + (self.alpha / self.r) * (x @ self.lora_A @ self.lora_B)


class OutputTransposed(Solution):
    def forward(self, x):
        return (self.base(x) + (self.alpha / self.r) * (x @ self.lora_A.T @ self.lora_B.T)).mT


class DetachedA(Solution):
    def forward(self, x):
        branch = x @ self.lora_A.detach().T @ self.lora_B.T
        return self.base(x) + (self.alpha / self.r) * branch


class DataBranch(Solution):
    def forward(self, x):
        return self.base(x) + (self.alpha / self.r) * (x @ self.lora_A.data.T @ self.lora_B.data.T)


class MatrixOnly(Solution):
    def forward(self, x):
        branch = torch.mm(torch.mm(x, self.lora_A.T), self.lora_B.T)  # 2-D inputs only
        return self.base(x) + (self.alpha / self.r) * branch


class MutatesInput(Solution):
    def forward(self, x):
        out = self.base(x)
        x.mul_(self.alpha / self.r)  # "saves memory", changes the caller's tensor
        return out + x @ self.lora_A.T @ self.lora_B.T


class Float64NoCast(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(self.lora_A.detach().double())
        self.lora_B = nn.Parameter(self.lora_B.detach().double())


class NoReturnForward(Solution):
    def forward(self, x):
        self.base(x) + (self.alpha / self.r) * (x @ self.lora_A.T @ self.lora_B.T)


# --- wrong layers: 02.4 merge -----------------------------------------------------------------


def merge_scaled(scale):
    class Wrong(Solution):
        @torch.no_grad()
        def merge(self):
            self.base.weight += scale(self.alpha, self.r) * (self.lora_B @ self.lora_A)
            self.merged = True

    return Wrong


class TransposedMerge(Solution):
    @torch.no_grad()
    def merge(self):
        self.base.weight += self.get_delta_weight().T
        self.merged = True


class NewParameterMerge(Solution):
    """Issue #20: a new nn.Parameter is trainable, so the base is no longer frozen."""

    @torch.no_grad()
    def merge(self):
        self.base.weight = nn.Parameter(self.base.weight + self.get_delta_weight())
        self.merged = True


class CopyMerge(Solution):
    @torch.no_grad()
    def merge(self):
        weight = self.base.weight.clone()
        weight += self.get_delta_weight()
        self.merged = True


class ForwardIgnoresMerge(Solution):
    def forward(self, x):
        return self.base(x) + (self.alpha / self.r) * (x @ self.lora_A.T @ self.lora_B.T)


class MergeTwice(Solution):
    @torch.no_grad()
    def merge(self):
        self.base.weight += self.get_delta_weight()  # no guard
        self.merged = True


class ZeroBMerge(Solution):
    @torch.no_grad()
    def merge(self):
        super().merge()
        self.lora_B.zero_()


class GradMerge(Solution):
    def merge(self):  # no @torch.no_grad()
        if self.merged:
            raise ValueError("merged")
        self.base.weight += self.get_delta_weight()
        self.merged = True


class GradAddMerge(Solution):
    def merge(self):  # no @torch.no_grad(), in place
        if self.merged:
            raise ValueError("merged")
        self.base.weight.add_(self.get_delta_weight())
        self.merged = True


# --- wrong layers: 02.5 unmerge ---------------------------------------------------------------


def unmerge_scaled(scale):
    class Wrong(Solution):
        @torch.no_grad()
        def unmerge(self):
            if not self.merged:
                raise ValueError("not merged")
            self.base.weight -= scale(self.alpha, self.r) * (self.lora_B @ self.lora_A)
            self.merged = False

    return Wrong


class ForgetfulUnmerge(Solution):
    @torch.no_grad()
    def unmerge(self):
        self.merged = False  # forgets to subtract the update


class CopyUnmerge(Solution):
    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            raise ValueError("not merged")
        weight = self.base.weight.clone()
        weight -= self.get_delta_weight()
        self.merged = False


class FlagOnlyMerge(Solution):
    def merge(self):
        self.merged = True  # forgets to add the update


class AddingUnmerge(Solution):
    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            raise ValueError("not merged")
        self.base.weight += self.get_delta_weight()
        self.merged = False


class FlagNotReset(Solution):
    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            raise ValueError("not merged")
        self.base.weight -= self.get_delta_weight()


class NewParameterUnmerge(Solution):
    @torch.no_grad()
    def unmerge(self):
        if not self.merged:
            raise ValueError("not merged")
        self.base.weight = nn.Parameter(self.base.weight - self.get_delta_weight())
        self.merged = False


class UnguardedUnmerge(Solution):
    @torch.no_grad()
    def unmerge(self):
        self.base.weight -= self.get_delta_weight()
        self.merged = False


class TriStateUnmerge(Solution):
    """Guards only the never-merged state: a second unmerge subtracts again."""

    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.merged = None

    @torch.no_grad()
    def merge(self):
        self.base.weight += self.get_delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged is None:
            return
        self.base.weight -= self.get_delta_weight()
        self.merged = False


def integer(alpha, r):
    return alpha // r


def unscaled(alpha, r):
    return 1.0


def inverted(alpha, r):
    return r / alpha


def times(alpha, r):
    return alpha * r


def rslora(alpha, r):
    return alpha / math.sqrt(r)


SCALINGS = [
    (integer, "`//` is integer \\(floor\\) division"),
    (unscaled, "is not scaled"),
    (inverted, "which is r / alpha: the scaling is inverted"),
    (times, "which is alpha \\* r"),
    (rslora, "rank-stabilized LoRA"),
]

WRONG = [
    (Untouched, INIT, "is not written yet"),
    (PlainTensors, INIT, "lora_A is a plain tensor, not an nn.Parameter"),
    (Buffers, INIT, "lora_A is a plain tensor, not an nn.Parameter"),
    (TransposedFactors, INIT, "lora_A and lora_B are transposed"),
    (AOutShaped, INIT, "lora_A should be \\(r, in\\)"),
    (MissingB, INIT, "needs an attribute named 'lora_B'"),
    (FrozenAdapters, INIT, "lora_A is frozen \\(requires_grad=False\\)"),
    (BaseTrainable, INIT, "base weights left trainable \\(base.bias, base.weight\\)"),
    (BiasTrainable, INIT, "base weights left trainable \\(base.bias\\)"),
    (FreshBase, INIT, "base.weight is not the given layer's"),
    (RandomB, INIT, "B must start at zero"),
    (BothZero, INIT, "both zero"),
    (SwappedInit, INIT, "initializations are swapped"),
    (OnesA, INIT, "lora_A starts with rank 1"),
    (UninitializedA, INIT, "lora_A contains NaN"),
    (TrainableScaling, INIT, "trainable parameter besides lora_A and lora_B: 'scaling'"),
    (NeedsBias, INIT, "base layer without bias"),
    (Untouched, DELTA, "is not written yet"),
    *[(delta_scaled(s), DELTA, f"get_delta_weight\\(\\) .*{m}") for s, m in SCALINGS],
    (TransposedDelta, DELTA, "get_delta_weight\\(\\) is transposed"),
    (ReversedDelta, DELTA, "get_delta_weight\\(\\) raised a shape error .* order"),
    (MutatingDelta, DELTA, "get_delta_weight\\(\\) changed lora_B"),
    (NoReturnDelta, DELTA, "must return a tensor, got a NoneType"),
    (AOutShaped, DELTA, "puts its own values into lora_A"),
    (Untouched, FORWARD, "is not written yet"),
    *[(forward_scaled(s), FORWARD, f"the LoRA branch .*{m}") for s, m in SCALINGS],
    (BranchOnly, FORWARD, "base layer's output is missing"),
    (NoBias, FORWARD, "base layer's bias is missing"),
    (TransposedForward, FORWARD, "forward\\(x\\) raised a shape error .* chain from in"),
    (OutputTransposed, FORWARD, "which is \\(out, batch\\)"),
    (DetachedA, FORWARD, "no gradient reaches lora_A: the LoRA branch is detached"),
    (DataBranch, FORWARD, "no gradient reaches lora_A or lora_B"),
    (MatrixOnly, FORWARD, "forward fails on a \\(batch, seq, in\\) input"),
    (MutatesInput, FORWARD, "forward changed its input x in place"),
    (Float64NoCast, FORWARD, "forward\\(x\\) mixes dtypes"),
    (NoReturnForward, FORWARD, "forward\\(x\\) must return a tensor, got a NoneType"),
    (Untouched, MERGE, "is not written yet"),
    *[(merge_scaled(s), MERGE, f"the update that merge adds .*{m}") for s, m in SCALINGS],
    (merge_scaled(lambda a, r: -a / r), MERGE, "right size but the wrong sign"),
    (TransposedMerge, MERGE, "merge\\(\\) raised a shape error"),
    (NewParameterMerge, MERGE, "after merge, base.weight is trainable"),
    (CopyMerge, MERGE, "merge did not change the base weight"),
    (ForwardIgnoresMerge, MERGE, "forward still adds the LoRA branch: the update is counted twice"),
    (MergeTwice, MERGE, "added the update a second time"),
    (ZeroBMerge, MERGE, "merge changed lora_B"),
    (GradMerge, MERGE, "keep the @torch.no_grad\\(\\) decorator"),
    (GradAddMerge, MERGE, "carries an autograd graph"),
    (Untouched, UNMERGE, "is not written yet"),
    (merge_scaled(unscaled), UNMERGE, "pass exercise 02.4 first"),
    *[
        (unmerge_scaled(s), UNMERGE, f"the update that unmerge subtracts .*{m}")
        for s, m in SCALINGS
    ],  # fmt: skip
    (
        ForgetfulUnmerge,
        UNMERGE,
        "unmerge did not change the base weight, which is still the merged",
    ),
    (ForgetfulUnmerge, UNMERGE, "setting the merged flag alone"),
    (CopyUnmerge, UNMERGE, "unmerge did not change the base weight.* changing a copy"),
    (FlagOnlyMerge, MERGE, "merge did not change the base weight, which is still the weight it"),
    (AddingUnmerge, UNMERGE, "unmerge added the update a second time"),
    (FlagNotReset, UNMERGE, "after unmerge, forward skips the LoRA branch"),
    (NewParameterUnmerge, UNMERGE, "after unmerge, base.weight is trainable"),
    (UnguardedUnmerge, UNMERGE, "on a layer that was never merged changed the base weight"),
    (TriStateUnmerge, UNMERGE, "no longer merged changed the base weight again"),
]


class InitOnly(Untouched):
    """The exercise with only __init__ written: the other checks say which method is missing."""

    def __init__(self, base, r, alpha):
        nn.Module.__init__(self)
        self.base, self.r, self.alpha, self.merged = base.requires_grad_(False), r, alpha, False
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))


WRONG += [
    (InitOnly, DELTA, "get_delta_weight\\(\\) is not written yet"),
    (InitOnly, FORWARD, "forward\\(x\\) is not written yet"),
    (InitOnly, MERGE, "merge\\(\\) is not written yet"),
    (InitOnly, UNMERGE, "merge\\(\\) raised NotImplementedError: .* pass exercise 02.4 first"),
]


def _id(row):
    layer, exercise, _ = row
    return f"{exercise.id}-{layer.__qualname__.split('.')[0]}-{row[2][:24]}"


@pytest.mark.parametrize(("layer", "exercise", "message"), WRONG, ids=[_id(w) for w in WRONG])
def test_each_classic_mistake_fails_by_name_on_visible_and_variants(layer, exercise, message):
    fails(exercise, layer, message, WRONG_SEEDS)


def test_messages_name_the_scaling_without_garbling():
    with pytest.raises(AssertionError) as failure:
        FORWARD.check(forward_scaled(inverted))
    assert str(failure.value) == (
        "the LoRA branch is scaled by 0.4, which is r / alpha: the scaling is inverted "
        "(alpha / r is 2.5 here)"
    )
    with pytest.raises(AssertionError) as failure:
        DELTA.check(delta_scaled(integer))
    assert "scaled by 2, the whole part of alpha / r = 5 / 2 = 2.5" in str(failure.value)


# --- observations are data; observe never raises; judge fails with AssertionError only ---------


class Refuses(nn.Module):
    def __init__(self, base, r, alpha):
        raise ValueError("no")


class Empty(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()


class Strings(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        del self.lora_A
        self.lora_A = "A"

    def get_delta_weight(self):
        return "delta"

    def forward(self, x):
        return "y"


class Cubes(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, 2))


class Exploding(Solution):
    @property
    def lora_B(self):
        raise KeyError("boom")

    @lora_B.setter
    def lora_B(self, value):
        pass

    def forward(self, x):
        raise RuntimeError("forward failed")

    def merge(self):
        raise RuntimeError("merge failed")

    def unmerge(self):
        raise RuntimeError("unmerge failed")


class StringsOut(Solution):
    def get_delta_weight(self):
        return "delta"

    def forward(self, x):
        return ["not", "a", "tensor"]


JUNK = [
    Refuses, Empty, Strings, Cubes, Exploding, StringsOut, Untouched, 5, None,
    lambda base, r, alpha: None,
]  # fmt: skip
RIGHT = {StringsOut: {"02.1"}}  # what a junk layer gets right: its __init__ is the solution's


@pytest.mark.parametrize("junk", JUNK, ids=lambda j: getattr(j, "__name__", repr(j)))
def test_observe_never_raises_and_judge_only_asserts(junk):
    for exercise in lesson02.EXERCISES:
        for case in (exercise.visible, exercise.variant(random.Random(1))):
            observations = exercise.observe(junk, case)
            assert_observations(observations)
            if exercise.id in RIGHT.get(junk, ()):
                exercise.judge(carried(observations), case)
                continue
            with pytest.raises(AssertionError):
                exercise.judge(carried(observations), case)


@pytest.mark.parametrize(
    "layer", [Solution, LoRALinear, PlainTensors, NewParameterMerge, FlagNotReset, Strings]
)
def test_observations_are_data_and_judge_agrees_after_a_json_round_trip(layer):
    for exercise in lesson02.EXERCISES:
        case = exercise.variant(random.Random(7))
        observations = exercise.observe(layer, case)
        assert_observations(observations)
        try:
            exercise.judge(observations, case)
        except AssertionError as failure:
            with pytest.raises(AssertionError) as again:
                exercise.judge(carried(observations), through_json(case))
            assert str(again.value) == str(failure)
        else:
            exercise.judge(carried(observations), through_json(case))


def test_the_check_does_not_depend_on_the_global_random_state():
    for seed in (0, 1, 123):
        torch.manual_seed(seed)
        for exercise in lesson02.EXERCISES:
            exercise.check(Solution)
    state = torch.random.get_rng_state()
    lesson02._base_layer(INIT.visible)
    assert torch.equal(state, torch.random.get_rng_state()), "building the base used the RNG"


@pytest.mark.parametrize(
    ("layer", "exercise", "message"),
    [
        (MutatingDelta, DELTA, "get_delta_weight\\(\\) changed lora_B"),
        (MutatesInput, FORWARD, "forward changed its input x in place"),
        (ZeroBMerge, MERGE, "merge changed lora_B"),
    ],
)
def test_a_submission_that_patches_torch_cannot_forge_what_changed(
    monkeypatch, layer, exercise, message
):
    """observe records the tensors; the judge compares them, in the grader's own process."""
    with monkeypatch.context() as patched:  # what a submission could do in its own process
        patched.setattr(torch, "equal", lambda *args: True)
        patched.setattr(torch.Tensor, "equal", lambda *args: True)
        observations = exercise.observe(layer, exercise.visible)
    with pytest.raises(AssertionError, match=message):
        exercise.judge(carried(observations), exercise.visible)
