"""Exercises 09: the checks pass right answers and name each classic mistake, on every case."""

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from exercise_harness import (
    ODD_OBJECTS,
    Weird,
    cases_vary,
    fails,
    judged_odd,
    passes,
    through_json,
)
from torch import nn

from lora_course.checks import lesson09
from lora_course.checks.lesson09 import DORA_FORWARD, LORAPLUS_GROUPS, PISSA_FACTORS
from lora_course.layers import LoRALinear
from lora_course.variants import DoRALinear, loraplus_param_groups, pissa_init

ROOT = Path(__file__).resolve().parents[1]
NAME = "09_lora_variants.ipynb"
SEEDS = range(20)  # variants a right answer must pass
WRONG_SEEDS = (1, 2, 3)  # variants each wrong answer must fail


def defined(folder: str) -> dict:
    """What the code cells of a notebook of `folder` (solutions/ or exercises/) define."""
    cells = json.loads((ROOT / folder / NAME).read_text())["cells"]
    namespace = {"math": math, "torch": torch, "F": F, "nn": nn}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(("class ", "def ")):
            exec(source, namespace)  # the course's own notebook
    return namespace


SOLUTION, UNTOUCHED = defined("solutions"), defined("exercises")
Solution = SOLUTION["MyDoRALinear"]
solution_groups = SOLUTION["loraplus_param_groups"]
solution_pissa = SOLUTION["pissa_factors"]
MAIN = (Solution, solution_groups, solution_pissa)


@pytest.mark.parametrize("exercise", lesson09.EXERCISES, ids=lambda e: e.id)
@pytest.mark.parametrize("name", ODD_OBJECTS)
def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
    judged_odd(exercise, ODD_OBJECTS[name], "not written yet" if name == "not written" else None)


@pytest.mark.parametrize("exercise", lesson09.EXERCISES, ids=lambda e: e.id)
def test_cases_are_json_and_variants_differ(exercise):
    cases_vary(exercise)


def test_the_untouched_exercises_are_not_written_yet():
    for exercise, target in zip(lesson09.EXERCISES, MAIN, strict=True):
        fails(exercise, UNTOUCHED[target.__name__], "not written yet", WRONG_SEEDS)


def test_the_visible_check_functions_are_the_exercises():
    lesson09.check_dora_forward(Solution)
    lesson09.check_loraplus_param_groups(solution_groups)
    lesson09.check_pissa_factors(solution_pissa)
    assert [e.id for e in lesson09.EXERCISES] == ["09.1", "09.2", "09.3"]
    assert [e.target for e in lesson09.EXERCISES] == [t.__name__ for t in MAIN]


# --- 09.1 MyDoRALinear ------------------------------------------------------------------------


class WeightForm(Solution):
    """The adapted weight built whole, each row rescaled, then one F.linear with the bias."""

    def forward(self, x):
        weight = self.base.weight + self.scaling * self.lora_B @ self.lora_A  # (out, in)
        norm = torch.linalg.norm(weight, dim=1, keepdim=True).detach()  # (out, 1)
        return F.linear(x, self.magnitude[:, None] * weight / norm, self.base.bias)


class PeftForm(Solution):
    """PEFT's arrangement: (m / norm - 1) * base_result + m / norm * lora_result, plus bias."""

    def forward(self, x):
        scale = self.magnitude / self.weight_norm().detach()
        base = F.linear(x, self.base.weight)
        lora = self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
        out = (scale - 1) * base + scale * lora + base
        return out if self.base.bias is None else out + self.base.bias


class ColumnMagnitude(Solution):
    """magnitude of shape (out, 1), used as a column of per-row lengths."""

    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.magnitude = nn.Parameter(self.weight_norm().detach()[:, None])  # (out, 1)

    def forward(self, x):
        weight = self.base.weight + self.scaling * self.lora_B @ self.lora_A
        norm = torch.linalg.norm(weight, dim=1, keepdim=True).detach()
        return F.linear(x, self.magnitude * weight / norm, self.base.bias)


def dora_forward(norm_dim=1, scaling=True, norm_scaling=True, bias="after", magnitude=True,
                 norm="rows", detach=True):  # fmt: skip
    """MyDoRALinear with one step of forward done the wrong way."""

    class Wrong(Solution):
        def forward(self, x):
            s = self.scaling
            weight = self.base.weight + (s if norm_scaling else 1.0) * self.lora_B @ self.lora_A
            norms = {
                "rows": lambda: torch.linalg.norm(weight, dim=norm_dim),
                "whole": lambda: torch.linalg.norm(weight),
                "base": lambda: torch.linalg.norm(self.base.weight, dim=1),
                "none": lambda: torch.ones(()),
            }[norm]()
            norms = norms.detach() if detach else norms
            scale = (self.magnitude if magnitude else 1.0) / norms
            branch = (s if scaling else 1.0) * (x @ self.lora_A.T @ self.lora_B.T)
            if bias == "scaled":
                return scale * (self.base(x) + branch)
            out = scale * (F.linear(x, self.base.weight) + branch)
            return out + self.base.bias if bias == "after" else out

    return Wrong


class ColumnNormInit(Solution):
    """The norm over dim 0 everywhere: one magnitude per input column, (in,)."""

    def weight_norm(self):
        weight = self.base.weight + self.scaling * (self.lora_B @ self.lora_A)
        return torch.linalg.norm(weight, dim=0)  # (in,)

    def forward(self, x):
        weight = self.base.weight + self.scaling * (self.lora_B @ self.lora_A)
        scale = self.magnitude / self.weight_norm().detach()  # (in,)
        return F.linear(x, weight * scale, self.base.bias)  # each column rescaled


class ColumnNormForward(Solution):
    """The right magnitude, but the norm over dim 0 in forward."""

    def forward(self, x):
        weight = self.base.weight + self.scaling * (self.lora_B @ self.lora_A)
        scale = self.magnitude / torch.linalg.norm(weight, dim=0).detach()  # (in,)
        return scale * F.linear(x, weight) + self.base.bias


class ColumnWeightForward(Solution):
    def forward(self, x):
        weight = self.base.weight + self.scaling * (self.lora_B @ self.lora_A)
        scale = self.magnitude / torch.linalg.norm(weight, dim=0).detach()
        return F.linear(x, weight * scale[None, :], self.base.bias)


def magnitude_init(make):
    class Wrong(Solution):
        def __init__(self, base, r, alpha):
            super().__init__(base, r, alpha)
            self.magnitude = nn.Parameter(make(self))

    return Wrong


class PlainMagnitude(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        value = self.magnitude.detach().clone()
        del self.magnitude
        self.magnitude = value.requires_grad_()


class BufferMagnitude(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        value = self.magnitude.detach().clone()
        del self.magnitude
        self.register_buffer("magnitude", value)


class FrozenMagnitude(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.magnitude.requires_grad_(False)


class NoMagnitude(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.m = self.magnitude
        del self.magnitude


class BaseTrainable(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.base.requires_grad_(True)


class TrainableScaling(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.scale_param = nn.Parameter(torch.ones(()))


class DetachedMagnitude(Solution):
    def forward(self, x):
        scale = self.magnitude.detach() / self.weight_norm().detach()
        branch = self.scaling * (x @ self.lora_A.T @ self.lora_B.T)
        return scale * (F.linear(x, self.base.weight) + branch) + self.base.bias


class DetachedB(Solution):
    def forward(self, x):
        scale = self.magnitude / self.weight_norm().detach()
        branch = self.scaling * (x @ self.lora_A.T @ self.lora_B.detach().T)
        return scale * (F.linear(x, self.base.weight) + branch) + self.base.bias


class UnderNoGrad(Solution):
    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


class MutatesInput(Solution):
    def forward(self, x):
        out = super().forward(x)
        x.mul_(2)
        return out


class MatrixOnly(Solution):
    def forward(self, x):
        scale = self.magnitude / self.weight_norm().detach()
        branch = torch.mm(torch.mm(x, self.lora_A.T), self.lora_B.T)
        return scale * (torch.mm(x, self.base.weight.T) + self.scaling * branch) + self.base.bias


class NeedsBias(Solution):
    def forward(self, x):
        scale = self.magnitude / self.weight_norm().detach()
        branch = self.scaling * (x @ self.lora_A.T @ self.lora_B.T)
        return scale * (F.linear(x, self.base.weight) + branch) + self.base.bias.to(x.dtype)


class WritesBase(Solution):
    """Folds the update into the base weight at every call (and then subtracts nothing)."""

    def forward(self, x):
        out = super().forward(x)
        with torch.no_grad():
            self.base.weight += self.scaling * self.lora_B @ self.lora_A
        return out


class NoReturn(Solution):
    def forward(self, x):
        super().forward(x)


def whole_norm(layer):
    return torch.full((layer.base.out_features,), float(torch.linalg.norm(layer.base.weight)))


WRONG_DORA = [
    (UNTOUCHED["MyDoRALinear"], "is not written yet"),
    (ColumnNormInit, "magnitude has shape (in,) = "),
    (ColumnNormForward, "the norm is taken over each input column (dim=0 of the (out, in)"),
    (ColumnWeightForward, "the norm is taken over each input column"),
    (PlainMagnitude, "magnitude is a plain tensor, not an nn.Parameter"),
    (BufferMagnitude, "magnitude is a plain tensor, not an nn.Parameter"),
    (FrozenMagnitude, "magnitude is frozen (requires_grad=False)"),
    (NoMagnitude, "the layer needs an attribute named 'magnitude'"),
    (magnitude_init(lambda layer: torch.ones(layer.base.out_features)), "magnitude starts at 1:"),
    (magnitude_init(lambda layer: layer.weight_norm().detach() ** 2), "the squared row norms"),
    (magnitude_init(whole_norm), "the norm of the whole matrix, the same for every row"),
    (
        magnitude_init(lambda layer: torch.linalg.norm(layer.base.weight).reshape(())),
        "one number for the whole matrix",
    ),
    (
        magnitude_init(lambda layer: layer.base.weight.abs().sum(dim=1)),
        "the sums of |w| of each row (L1 norms)",
    ),
    (magnitude_init(lambda layer: torch.rand(layer.base.out_features)), "starts at other values"),
    (BaseTrainable, "base weights left trainable (base.bias, base.weight)"),
    (TrainableScaling, "a trainable parameter besides lora_A, lora_B and magnitude"),
    (dora_forward(scaling=False, norm_scaling=False), "the scaling s = alpha / r = "),
    (dora_forward(norm_scaling=False), "the norm is of W0 + B A, without the scaling"),
    (dora_forward(scaling=False), "the LoRA branch is not scaled"),
    (dora_forward(bias="none"), "the base layer's bias is missing"),
    (dora_forward(bias="scaled"), "the bias is multiplied by m / ||W0 + s B A|| too"),
    (dora_forward(magnitude=False), "the magnitude is missing"),
    (dora_forward(norm="none"), "the norm is missing"),
    (dora_forward(norm="none", magnitude=False), "forward is plain LoRA's"),
    (dora_forward(norm="whole"), "the norm is of the whole matrix (a single number)"),
    (dora_forward(norm="base"), "the norm is of W0 alone"),
    (dora_forward(detach=False), "the gradient of lora_A is the one through the norm too"),
    (DetachedMagnitude, "no gradient reaches magnitude"),
    (DetachedB, "no gradient reaches lora_B"),
    (UnderNoGrad, "forward's output carries no gradient"),
    (MutatesInput, "forward changed its input x in place"),
    (MatrixOnly, "forward fails on a (batch, seq, in) input"),
    (NeedsBias, "on a base layer without bias"),
    (WritesBase, "forward changed the base weight"),
    (NoReturn, "forward(x) must return a tensor, got NoneType None"),
]


def test_the_dora_cases_hold_what_the_mistakes_need():
    """Non-square, a square layer of another size, alpha / r not whole, m far from the norms."""
    cases = [DORA_FORWARD.visible] + [DORA_FORWARD.variant(random.Random(s)) for s in range(200)]
    for case in cases:
        sizes = {case["in"], case["out"], case["r"], case["batch"], case["square"]}
        assert len(sizes) == 5 and case["alpha"] % case["r"], case
        assert case["r"] < min(case["in"], case["out"], case["square"]), case
    t = lesson09._dora_tensors(DORA_FORWARD.visible)
    norms = torch.linalg.norm(t["W"] + 2.5 * t["B"] @ t["A"], dim=1)
    assert ((t["m"] / norms - 1).abs() > 1e-2).all()


def test_the_dora_reference_is_the_formula_with_the_norm_detached():
    case = DORA_FORWARD.visible
    t = {k: v.double() for k, v in lesson09._dora_tensors(case).items()}
    weight = t["W"] + case["alpha"] / case["r"] * t["B"] @ t["A"]
    want = t["m"] / torch.linalg.norm(weight, dim=1) * (t["x"] @ weight.T) + t["b"]
    reference = lesson09._dora_reference(case)
    torch.testing.assert_close(reference["y"], want)
    undetached = lesson09._undetached_gradients(case)
    assert not torch.allclose(reference["grad_lora_A"], undetached["grad_lora_A"])


# --- 09.2 loraplus_param_groups ---------------------------------------------------------------


def grouping(rate, names=None):
    """Groups by a learning rate per parameter name: rate(name, lr, ratio) -> lr."""

    def groups(model, lr, ratio):
        by_rate = {}
        for name, param in model.named_parameters():
            if names is None and not param.requires_grad:
                continue
            if names is not None and not names(name, param):
                continue
            by_rate.setdefault(rate(name, lr, ratio), []).append(param)
        return [{"params": params, "lr": value} for value, params in by_rate.items()]

    return groups


def lora_b_fast(name, lr, ratio):
    return lr * ratio if "lora_B" in name else lr


def peft_style(model, lr, ratio):
    """PEFT's create_loraplus_optimizer: 1-D tensors join B's group."""
    fast, rest = [], []
    for _name, param in model.named_parameters():
        if param.requires_grad:
            (fast if "lora_B" in _name or param.ndim == 1 else rest).append(param)
    return [{"params": rest, "lr": lr}, {"params": fast, "lr": lr * ratio}]


def by_module(model, lr, ratio):
    """Groups from the modules (isinstance LoRALinear), as a generator; no 'lr' for the rest."""
    b = [m.lora_B for m in model.modules() if isinstance(m, LoRALinear)]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in b)]
    return (group for group in ({"params": b, "lr": lr * ratio}, {"params": others}))


def without_lr_for_a(model, lr, ratio):
    groups = solution_groups(model, lr, ratio)
    del groups[0]["lr"]  # AdamW's default, lr, applies
    return groups


def generator_params(model, lr, ratio):
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": (p for n, p in trainable if "lora_B" not in n), "lr": lr},
        {"params": (p for n, p in trainable if "lora_B" in n), "lr": torch.tensor(lr * ratio)},
    ]


def one_group_each(model, lr, ratio):
    return [{"params": [p], "lr": lora_b_fast(n, lr, ratio)}
            for n, p in model.named_parameters() if p.requires_grad]  # fmt: skip


def b_in_both(model, lr, ratio):
    groups = solution_groups(model, lr, ratio)
    groups[0]["params"] = groups[0]["params"] + groups[1]["params"]
    return groups


def b_twice(model, lr, ratio):
    groups = solution_groups(model, lr, ratio)
    groups[1]["params"] = groups[1]["params"] * 2
    return groups


def as_sets(model, lr, ratio):
    return [{"params": set(g["params"]), "lr": g["lr"]} for g in solution_groups(model, lr, ratio)]


def named_pairs(model, lr, ratio):
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    slow = [(n, p) for n, p in trainable if "lora_B" not in n]
    return [{"params": slow, "lr": lr}, {"params": [(n, p) for n, p in trainable if "lora_B" in n]}]


def freezes_norm(model, lr, ratio):
    model.norm.requires_grad_(False)
    return solution_groups(model, lr, ratio)


def foreign_tensor(model, lr, ratio):
    groups = solution_groups(model, lr, ratio)
    groups[0]["params"].append(nn.Parameter(torch.zeros(3)))
    return groups


def lr_string(model, lr, ratio):
    groups = solution_groups(model, lr, ratio)
    groups[1]["lr"] = "fast"
    return groups


WRONG_GROUPS = [
    (UNTOUCHED["loraplus_param_groups"], "is not written yet"),
    (
        grouping(lambda n, lr, ratio: lr * ratio if "lora_A" in n else lr),
        "the ratio is applied to A instead of B",
    ),
    (grouping(lambda n, lr, ratio: lr / ratio if "lora_A" in n else lr), "lora_A gets lr / ratio"),
    (grouping(lambda n, lr, ratio: lr), "the ratio is ignored"),
    (grouping(lambda n, lr, ratio: lr * ratio), "every parameter gets lr * ratio"),
    (peft_style, re.compile(r"B's learning rate also goes to .*magnitude.*: LoRA\+ raises")),
    (peft_style, "PEFT's create_loraplus_optimizer also puts 1-D tensors"),
    (grouping(lora_b_fast, names=lambda n, p: True), "frozen parameters are in the groups"),
    (
        grouping(lora_b_fast, names=lambda n, p: "lora_" in n),
        re.compile(r"magnitude.* in no group: every trainable parameter needs one"),
    ),
    (b_in_both, "in more than one group: torch.optim.AdamW refuses that"),
    (b_twice, "twice in one group"),
    (as_sets, "a group's params is a set"),
    (named_pairs, "holds (name, parameter) pairs from model.named_parameters()"),
    (
        lambda m, lr, ratio: [p for p in m.parameters() if p.requires_grad],
        "the parameters themselves",
    ),
    (lambda m, lr, ratio: list(m.named_parameters()), "returned (name, parameter) pairs"),
    (lambda m, lr, ratio: [{"param": list(m.parameters()), "lr": lr}], "a group has no 'params'"),
    (lambda m, lr, ratio: {"A": {"params": [], "lr": lr}}, "should return a list of parameter"),
    (lambda m, lr, ratio: None, "should return a list of parameter groups"),
    (lambda m, lr, ratio: [], "returned no groups"),
    (lambda m, lr, ratio: ["lora_B"], "each group must be a dict"),
    (freezes_norm, "changed which parameters train"),
    (foreign_tensor, "a tensor that is not a parameter of the model"),
    (lr_string, "a group's 'lr' is not a number: got str 'fast'"),
    (lambda m, lr, ratio: solution_groups(m, 1e-3, 16), re.compile("gets a learning rate of")),
]


def test_the_groups_reference_is_lora_b_fast():
    """The package's groups: lora_B at lr * ratio, everything else that trains at lr."""
    case = LORAPLUS_GROUPS.visible
    want = lesson09._lr_of(case)
    model = lesson09._Model(case)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(want) == trainable
    assert {"layers.1.magnitude", "norm.weight", "layers.2.base.bias"} <= trainable
    assert want == {n: lora_b_fast(n, case["lr"], case["ratio"]) for n in trainable}


def test_the_groups_cases_mix_layers_and_leave_others_trainable():
    cases = [LORAPLUS_GROUPS.visible] + [LORAPLUS_GROUPS.variant(random.Random(s)) for s in SEEDS]
    for case in cases:
        assert True in case["dora"] and False in case["dora"] and case["ratio"] != 1
        assert len(case["sizes"]) == len(case["dora"]) + 1 > 3


# --- 09.3 pissa_factors -----------------------------------------------------------------------


def pissa_with(top=True, divide="once", split="sqrt", a_from="rows", b_from="columns",
               residual="subtract", order=(0, 1, 2)):  # fmt: skip
    """pissa_factors with one step done the wrong way."""

    def factors(weight, r, scaling):
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        k = len(S)
        part = slice(0, r) if top else slice(k - r, k)
        values = S[part] / (scaling if divide == "once" else 1.0)
        root = {"sqrt": values.sqrt(), "A": values, "B": torch.ones_like(values),
                "both": values}[split]  # fmt: skip
        other = {"sqrt": values.sqrt(), "A": torch.ones_like(values), "B": values,
                 "both": values}[split]  # fmt: skip
        vectors_a = Vh[part] if a_from == "rows" else Vh[:, part].T
        vectors_b = U[:, part] if b_from == "columns" else U[part, :].T
        A, B = root[:, None] * vectors_a, vectors_b * other
        if divide == "each":
            A, B = A / scaling, B / scaling
        rest = {
            "subtract": lambda: weight - scaling * B @ A,
            "none": lambda: weight.clone(),
            "unscaled": lambda: weight - B @ A,
            "top": lambda: scaling * B @ A,
        }[residual]()
        return tuple((A, B, rest)[i] for i in order)

    return factors


def pissa_in_place(weight, r, scaling):
    A, B, _ = solution_pissa(weight, r, scaling)
    weight -= scaling * B @ A
    return A, B, weight


def pissa_numpy(weight, r, scaling):
    U, S, Vh = np.linalg.svd(weight.double().numpy(), full_matrices=False)
    root = np.sqrt(S[:r] / scaling)
    A, B = root[:, None] * Vh[:r], U[:, :r] * root
    return (
        torch.from_numpy(A),
        torch.from_numpy(B),
        torch.from_numpy(weight.numpy() - scaling * B @ A),
    )


def pissa_old_svd(weight, r, scaling):
    """torch.svd returns V, not Vh; the pairs in ascending order, and flipped."""
    U, S, V = torch.svd(weight.double())
    root = (S[:r] / scaling).sqrt().flip(0)
    A = -(root[:, None] * V[:, :r].flip(1).T)
    B = -(U[:, :r].flip(1) * root)
    return A, B, weight.double() - scaling * B @ A


def pissa_package(weight, r, scaling):
    layer = LoRALinear(nn.Linear(weight.shape[1], weight.shape[0], bias=False), r=r, alpha=r)
    layer.scaling = scaling
    with torch.no_grad():
        layer.base.weight.copy_(weight)
    pissa_init(layer)
    return layer.lora_A.detach(), layer.lora_B.detach(), layer.base.weight.detach()


def pissa_transposed_vectors(weight, r, scaling):
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    root = (S[:r] / scaling).sqrt()
    A, B = root[:, None] * U[:, :r].T, Vh[:r].T * root  # (r, out), (in, r)
    return A, B, weight - scaling * A.T @ B.T


WRONG_PISSA = [
    (UNTOUCHED["pissa_factors"], "is not written yet"),
    (pissa_with(top=False), "the r SMALLEST singular values"),
    (pissa_with(divide="never"), "A and B are not divided by the scaling"),
    (pissa_with(divide="each"), "so B A is divided by s twice"),
    (pissa_with(split="B"), "lora_B holds all of S_r / s and lora_A none: B A still reproduces"),
    (pissa_with(split="B"), "sqrt(S_r / s) on each side"),
    (pissa_with(split="A"), "lora_A holds all of S_r / s and lora_B none"),
    (pissa_with(split="both"), "S_r / s is on both sides"),
    (pissa_with(a_from="columns"), "first r rows of Vh"),
    (pissa_with(b_from="rows"), "first r columns of U"),
    (pissa_transposed_vectors, "lora_A has shape (r, out)"),
    (pissa_with(residual="none"), "the residual is the weight itself"),
    (pissa_with(residual="unscaled"), "the residual subtracts B A without the scaling"),
    (pissa_with(residual="top"), "the residual is the top part s B A"),
    (pissa_with(order=(1, 0, 2)), "returned B first"),
    (lambda w, r, s: solution_pissa(w, r, s)[:2], "should return three tensors"),
    (lambda w, r, s: (solution_pissa(w, r, s)[0].T, *solution_pissa(w, r, s)[1:]), "transposed"),
    (lambda w, r, s: (*solution_pissa(w, r, s)[:2], "W"), "residual should be a tensor, got str"),
    (pissa_in_place, "changed the weight it was given in place"),
    (lambda w, r, s: (*solution_pissa(w, r, s)[:2], w + 1e-2), "should give back the weight"),
]


def test_the_pissa_cases_have_distinct_values_and_room_below_the_top():
    cases = [PISSA_FACTORS.visible] + [PISSA_FACTORS.variant(random.Random(s)) for s in range(200)]
    for case in cases:
        k = min(case["out"], case["in"])
        assert case["out"] != case["in"] and k > 2 * case["r"] and case["alpha"] != case["r"]
        S = torch.linalg.svdvals(lesson09._pissa_weight(case).double())
        assert (S[1:] / S[:-1] < 0.85).all()
    assert {c["out"] < c["in"] for c in cases} == {True, False}  # U and Vh square in turn


def test_the_pissa_reference_reproduces_the_weight():
    case = PISSA_FACTORS.visible
    reference = lesson09._pissa_reference(case)
    s = case["alpha"] / case["r"]
    rebuilt = reference["residual"] + s * reference["B"] @ reference["A"]
    torch.testing.assert_close(rebuilt, reference["W"], atol=1e-5, rtol=1e-5)
    A, B, residual = solution_pissa(lesson09._pissa_weight(case), case["r"], s)
    assert lesson09._same_factors(A.double(), B.double(), reference["A"], reference["B"])


# --- shared tests -----------------------------------------------------------------------------

RIGHT = [
    (DORA_FORWARD, Solution),
    (DORA_FORWARD, DoRALinear),
    (DORA_FORWARD, WeightForm),
    (DORA_FORWARD, PeftForm),
    (DORA_FORWARD, ColumnMagnitude),
    (LORAPLUS_GROUPS, solution_groups),
    (LORAPLUS_GROUPS, loraplus_param_groups),
    (LORAPLUS_GROUPS, by_module),
    (LORAPLUS_GROUPS, without_lr_for_a),
    (LORAPLUS_GROUPS, generator_params),
    (LORAPLUS_GROUPS, one_group_each),
    (PISSA_FACTORS, solution_pissa),
    (PISSA_FACTORS, pissa_numpy),
    (PISSA_FACTORS, pissa_old_svd),
    (PISSA_FACTORS, pissa_package),
]
WRONG = [
    *[(DORA_FORWARD, f, m) for f, m in WRONG_DORA],
    *[(LORAPLUS_GROUPS, f, m) for f, m in WRONG_GROUPS],
    *[(PISSA_FACTORS, f, m) for f, m in WRONG_PISSA],
]


def _id(row):
    exercise, answer, message = row
    name = getattr(answer, "__qualname__", "answer").split(".")[0]
    return f"{exercise.id}-{name}-{str(getattr(message, 'pattern', message))[:30]}"


@pytest.mark.parametrize(("exercise", "answer"), RIGHT, ids=[_id((*r, "")) for r in RIGHT])
def test_right_answers_pass_the_visible_case_and_variants(exercise, answer):
    passes(exercise, answer, SEEDS if answer in MAIN else SEEDS[:5])


@pytest.mark.parametrize(("exercise", "answer", "message"), WRONG, ids=[_id(w) for w in WRONG])
def test_each_mistake_is_named_on_the_visible_case_and_variants(exercise, answer, message):
    pattern = message if isinstance(message, re.Pattern) else re.escape(message)
    fails(exercise, answer, pattern, WRONG_SEEDS)


def test_judging_uses_only_the_case_and_the_observations():
    """The grader's process rebuilds the references: the judge needs no learner state."""
    for exercise, answer in zip(lesson09.EXERCISES, MAIN, strict=True):
        case = exercise.variant(random.Random(5))
        observations = exercise.observe(answer, case)
        torch.manual_seed(123)  # whatever the global RNG holds
        exercise.judge(observations, through_json(case))


def test_the_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for exercise, answer in zip(lesson09.EXERCISES, MAIN, strict=True):
        exercise.check(answer)
    assert torch.equal(torch.rand(3), expected)


# --- odd layers: observe never raises, judge fails with an AssertionError only ---------------


class Refuses(nn.Module):
    def __init__(self, base, r, alpha):
        raise ValueError("no")


class Empty(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()


class Strings(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        del self.magnitude
        self.magnitude = "m"

    def forward(self, x):
        return "y"


class Cubes(Solution):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, 2))


class Exploding(Solution):
    @property
    def magnitude(self):
        raise KeyError("boom")

    @magnitude.setter
    def magnitude(self, value):
        pass

    def forward(self, x):
        raise RuntimeError("forward failed")


class WeirdOutput(Solution):
    def forward(self, x):
        return Weird()


@pytest.mark.parametrize("layer", [Refuses, Empty, Strings, Cubes, Exploding, WeirdOutput])
def test_odd_layers_are_judged_without_raising(layer):
    judged_odd(DORA_FORWARD, layer)
