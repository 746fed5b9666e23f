"""Exercises 07: the checks pass right answers and name each classic mistake, on every case."""

import math
import random
import re

import numpy as np
import pytest
import torch
from exercise_harness import Unprintable, fails, judged_odd, passes, raising, through_json
from torch import nn

from lora_course.checks import lesson07

UNWRITTEN = raising(NotImplementedError("write your code here"))  # a stub
SEEDS = range(20)  # variants a right answer must pass
WRONG_SEEDS = (1, 2, 3)  # variants each wrong answer must fail


# --- 07.1 merged_weight -----------------------------------------------------------------------


def merged_weight(W0, A, B, alpha, r):  # the solution notebook's answer
    return W0 + (alpha / r) * (B @ A)  # (out, in)


def merged_weight_float64(W0, A, B, alpha, r):
    return W0.double() + alpha / r * (B.double() @ A.double())


def merged_weight_by_hand(W0, A, B, alpha, r):
    """Pure Python: lists of floats, one sum per entry."""
    W0, A, B = W0.tolist(), A.tolist(), B.tolist()
    return [
        [w + alpha / r * sum(B[o][k] * A[k][i] for k in range(r)) for i, w in enumerate(row)]
        for o, row in enumerate(W0)
    ]


def merged_weight_addmm(W0, A, B, alpha, r):
    return torch.addmm(W0, B, A, alpha=alpha / r)


def merged_weight_einsum(W0, A, B, alpha, r):
    return W0 + torch.einsum("ok,ki->oi", B, A) * alpha / r


def merged_in_place(W0, A, B, alpha, r):
    W0 += (alpha / r) * (B @ A)
    return W0


def merged_add_(W0, A, B, alpha, r):
    return W0.add_(B @ A, alpha=alpha / r)


def merged_scales_A(W0, A, B, alpha, r):
    A *= alpha / r
    return W0 + B @ A


def merged_no_return(W0, A, B, alpha, r):
    W0 += (alpha / r) * (B @ A)


WRONG_MERGES = [
    (lambda W0, A, B, alpha, r: W0 + (alpha // r) * (B @ A), "integer division"),
    (merged_in_place, "changed the W0"),
    (merged_add_, "changed the W0"),
    (merged_scales_A, "changed the A"),
    (merged_no_return, "should return the merged weight, got NoneType"),
    (lambda W0, A, B, alpha, r: W0 + (alpha / r) * (A.T @ B.T), "do not line up"),
    (lambda W0, A, B, alpha, r: W0 + (alpha / r) * (A @ B), "do not line up"),
    (lambda W0, A, B, alpha, r: W0 + (alpha / r) * (B @ A).T, "do not line up"),
    (lambda W0, A, B, alpha, r: (W0 + (alpha / r) * (B @ A)).T, "returned shape"),
    (lambda W0, A, B, alpha, r: W0 + B @ A, "not scaled"),
    (lambda W0, A, B, alpha, r: W0 + (r / alpha) * (B @ A), "upside down"),
    (lambda W0, A, B, alpha, r: W0 + alpha / math.sqrt(r) * (B @ A), "rsLoRA"),
    (lambda W0, A, B, alpha, r: W0 + alpha * (B @ A), "ignores the rank r"),
    (lambda W0, A, B, alpha, r: W0 + (alpha / r) ** 2 * (B @ A), "scaled twice"),
    (lambda W0, A, B, alpha, r: W0 - (alpha / r) * (B @ A), "unmerge"),
    (lambda W0, A, B, alpha, r: (alpha / r) * (B @ A), "update alone"),
    (lambda W0, A, B, alpha, r: W0.clone(), "W0 itself"),
    (lambda W0, A, B, alpha, r: W0 + (alpha / r) * (B @ A) + 1e-3, "differs from PEFT's merge()"),
    (lambda W0, A, B, alpha, r: W0 * float("nan"), "NaN"),
    (lambda W0, A, B, alpha, r: "W0 + BA", "got str"),
    (lambda W0, A, B, alpha, r: [W0, A], "converting the result"),
    (UNWRITTEN, "not written yet"),
]


# --- 07.2 adapter_shapes_fit ------------------------------------------------------------------


def adapter_shapes_fit(adapter_shapes, model):  # the solution notebook's answer
    modules = dict(model.named_modules())
    for name, (a_shape, b_shape) in adapter_shapes.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            return False
        if a_shape[1] != module.in_features or b_shape[0] != module.out_features:
            return False
        if a_shape[0] != b_shape[1]:
            return False
    return True


def adapter_shapes_fit_by_submodule(adapter_shapes, model):
    for name, ((r_a, width), (height, r_b)) in adapter_shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            return False
        if not isinstance(module, nn.Linear) or r_a != r_b:
            return False
        if (height, width) != tuple(module.weight.shape):  # nn.Linear's weight is (out, in)
            return False
    return True


def fits(check_a=True, check_b=True, check_rank=True, linear_only=True, b_against="out"):
    """adapter_shapes_fit with one check left out, or done the wrong way."""

    def fit(adapter_shapes, model):
        modules = dict(model.named_modules())
        for name, (a, b) in adapter_shapes.items():
            module = modules.get(name)
            if module is None or (linear_only and not isinstance(module, nn.Linear)):
                return False
            out_features, in_features = module.weight.shape[0], module.weight.shape[-1]
            height = out_features if b_against == "out" else in_features
            if (check_a and a[1] != in_features) or (check_b and b[0] != height):
                return False
            if check_rank and a[0] != b[1]:
                return False
        return True

    return fit


def fits_first_module_only(adapter_shapes, model):
    name, shapes = next(iter(adapter_shapes.items()))
    return adapter_shapes_fit({name: shapes}, model)


def fits_last_module_only(adapter_shapes, model):
    answer = True
    for name, shapes in adapter_shapes.items():
        answer = adapter_shapes_fit({name: shapes}, model)  # overwritten each time
    return answer


def fits_raising(adapter_shapes, model):
    for name, ((r_a, width), (height, r_b)) in adapter_shapes.items():
        module = model.get_submodule(name)  # raises for a name the model lacks
        if (r_a, width, height) != (r_b, module.in_features, module.out_features):
            return False  # AttributeError above for a module with no in_features
    return True


def fits_key_error(adapter_shapes, model):
    modules = dict(model.named_modules())
    return all(
        isinstance(modules[name], nn.Linear)
        and (a[1], b[0], a[0]) == (modules[name].in_features, modules[name].out_features, b[1])
        for name, (a, b) in adapter_shapes.items()
    )


def fits_without_gqa(adapter_shapes, model):
    """Expected shapes from the config, with k_proj and v_proj as wide as q_proj."""
    h, i = model.config.hidden_size, model.config.intermediate_size
    wants = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
             "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
    for name, (a, b) in adapter_shapes.items():
        want = wants.get(name.rsplit(".", 1)[-1])
        if want is None or a[0] != b[1] or (a[1], b[0]) != want:
            return False
    return True


def fits_projections_only(adapter_shapes, model):
    return all("proj" in name for name in adapter_shapes) and adapter_shapes_fit(
        adapter_shapes, model
    )


def fits_either_orientation(adapter_shapes, model):
    flipped = {name: (a[::-1], b[::-1]) for name, (a, b) in adapter_shapes.items()}
    return adapter_shapes_fit(adapter_shapes, model) or adapter_shapes_fit(flipped, model)


def fits_forgets_true(adapter_shapes, model):
    if not adapter_shapes_fit(adapter_shapes, model):
        return False  # and no `return True` at the end


WRONG_FITS = [
    (fits(check_a=False, check_rank=False), "this A is"),  # tests only B's height
    (fits(check_rank=False), "both are the rank r"),
    (fits(check_a=False), "this A is"),
    (fits(check_b=False), "grouped-query attention"),
    (fits(linear_only=False), "model.embed_tokens (Embedding) is not an nn.Linear"),
    (fits(b_against="in"), "this adapter fits, but you answered False"),
    (fits_raising, "answer False, do not raise"),
    (fits_key_error, "answer False, do not raise"),
    (fits_key_error, "), where the model has no module named"),
    (fits_first_module_only, "check every one"),
    (fits_last_module_only, "check every one"),
    (fits_without_gqa, "this adapter fits, but you answered False"),
    (fits_projections_only, "this adapter fits, but you answered False"),
    (fits_either_orientation, "transposed"),
    (fits_forgets_true, "does every path end in a return?"),
    (lambda s, m: "yes", "should return True or False, got str"),
    (lambda s, m: 1, "should return True or False, got int"),
    (lambda s, m: torch.tensor(True), "should return True or False, got torch.Tensor"),
    (UNWRITTEN, "not written yet"),
]


@pytest.mark.parametrize(
    ("module", "kind", "message"),
    [
        ("model.embed_tokens", "Embedding", "model.embed_tokens (Embedding) is not an nn.Linear"),
        ("model.layers.0.input_layernorm", "norm", "(LlamaRMSNorm) is not an nn.Linear"),
        ("model.layers.0.self_attn", "attention", "(LlamaAttention) is not an nn.Linear"),
        ("model.layers.5.self_attn.q_proj", "unknown", "the model has no module named"),
        ("model.layers.0.self_attn.qproj", "misspelled", "the model has no module named"),
    ],
)
def test_an_adapter_on_a_module_that_is_no_linear_layer_does_not_fit(module, kind, message):
    """A learner that answers True for anything but nn.Linear is told why, on each such module."""
    case = {"seed": 0, "sizes": {}, "adapters": [{module: [[4, 64], [64, 4]]}]}
    lesson07.ADAPTER_SHAPES_FIT.check(adapter_shapes_fit, case)
    with pytest.raises(AssertionError, match=re.escape(message)):
        lesson07.ADAPTER_SHAPES_FIT.check(lambda s, m: True, case)


def test_every_kind_of_fault_is_in_the_visible_case_and_variants():
    """Visible and drawn cases hold the same faults, one per adapter that does not fit."""
    for case in [lesson07.ADAPTER_SHAPES_FIT.visible] + [
        lesson07.ADAPTER_SHAPES_FIT.variant(random.Random(s)) for s in SEEDS
    ]:
        modules = dict(lesson07._tiny(case["seed"], case["sizes"]).named_modules())
        whys = [lesson07._why_not(adapter, modules) for adapter in case["adapters"]]
        assert whys[:2] == [None, None]
        kinds = [why[1] for why in whys[2:]]
        assert kinds == [
            "B",
            "B",
            "A",
            "rank",
            "transposed",
            "kind",
            "kind",
            "kind",
            "unknown",
            "unknown",
        ]
        assert any("grouped-query" in why[2] for why in whys[2:])


# --- 07.3 changed_parameters ------------------------------------------------------------------


def changed_parameters(model_a, model_b):  # the solution notebook's answer
    a, b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    if a.keys() != b.keys():
        raise ValueError(f"not the same parameters: {sorted(a.keys() ^ b.keys())}")
    return [name for name, p in a.items() if not torch.equal(p, b[name])]


def changed_parameters_any(model_a, model_b):
    b = dict(model_b.named_parameters())
    if [n for n, _ in model_a.named_parameters()] != list(b):
        raise ValueError("different architectures")
    return [n for n, p in model_a.named_parameters() if bool((p != b[n]).any())]


def changed_parameters_from_state_dicts(model_a, model_b):
    names = [n for n, _ in model_a.named_parameters()]
    if set(names) != {n for n, _ in model_b.named_parameters()}:
        raise ValueError("different parameters")
    a, b = model_a.state_dict(), model_b.state_dict()
    return [n for n in names if not torch.equal(a[n], b[n])]


def changed(compare, names=lambda m: dict(m.named_parameters()), check_names=True, order=list):
    """changed_parameters comparing each pair of tensors with `compare`, or listing otherwise."""

    def changed_parameters(model_a, model_b):
        a, b = names(model_a), names(model_b)
        if check_names and a.keys() != b.keys():
            raise ValueError("different parameters")
        return order([n for n in a if not compare(a[n], b[n])])

    return changed_parameters


def _mutating(model_a, model_b):
    b = dict(model_b.named_parameters())
    out = []
    with torch.no_grad():
        for n, p in model_a.named_parameters():
            if not torch.equal(p, b[n]):
                out.append(n)
            p.sub_(b[n])  # "p - q" in place
    if len(b) != len(dict(model_a.named_parameters())):
        raise ValueError("different parameters")
    return out


def _first_only(model_a, model_b):
    return changed_parameters(model_a, model_b)[:1]


def _by_b(model_a, model_b):
    a = dict(model_a.named_parameters())
    return [n for n, p in model_b.named_parameters() if not torch.equal(a[n], p)]


def _same_count_by_position(model_a, model_b):
    """Issue #20's learner: checks the NUMBER of parameters only, then pairs them by position."""
    a, b = list(model_a.named_parameters()), list(model_b.named_parameters())
    if len(a) != len(b):
        raise ValueError("different architectures")
    return [n for (n, p), (_, q) in zip(a, b, strict=True) if not torch.equal(p, q)]


def _same_count_by_name(model_a, model_b):
    a, b = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    if len(a) != len(b):
        raise ValueError("different architectures")
    return [n for n in a if not torch.equal(a[n], b[n])]  # KeyError for a renamed module


def _not_equal(model_a, model_b):
    """`if p != q`: a tensor of booleans, which `if` cannot read."""
    b = dict(model_b.named_parameters())
    changed = []
    for n, p in model_a.named_parameters():
        if p != b[n]:
            changed.append(n)
    return changed


def _with_buffers(m):
    return dict([*m.named_parameters(), *m.named_buffers()])


def _state_dict_parameters(m):  # state_dict without the buffers: lm_head.weight is still there
    buffers = {n for n, _ in m.named_buffers()}
    return {n: t for n, t in m.state_dict().items() if n not in buffers}


WRONG_CHANGES = [
    (changed(torch.allclose), "every difference counts"),
    (changed(lambda p, q: torch.isclose(p, q, atol=1e-6).all()), "every difference counts"),
    (changed(lambda p, q: (p - q).abs().max() < 1e-6), "every difference counts"),
    (changed(lambda p, q: torch.equal(p.half(), q.half())), "every difference counts"),
    (changed(lambda p, q: p.sum() == q.sum()), "not a summary"),
    (changed(lambda p, q: (p - q).sum() == 0), "not a summary"),
    (changed(lambda p, q: torch.allclose(p.mean(), q.mean())), "not a summary"),
    (changed(lambda p, q: p is q), "two identical models"),
    (changed(torch.equal, names=lambda m: m.state_dict()), "is a buffer, not a parameter"),
    (changed(torch.equal, names=_with_buffers), "is a buffer, not a parameter"),
    (changed(torch.equal, names=_state_dict_parameters), "lm_head.weight is tied"),
    (changed(torch.equal, order=sorted), "wrong order: list them in the order"),
    (changed(torch.equal, order=lambda names: names[::-1]), "wrong order"),
    (changed(torch.equal, check_names=False), "raise ValueError"),  # the old solution
    (_by_b, "raise ValueError"),  # KeyError for lm_head.weight
    (_mutating, "changed model_a or model_b"),
    (_first_only, ", 1 of the 2 changed parameters: keep going after the first difference"),
    (_same_count_by_position, "as many parameters, but not the same ones (not the same names)"),
    (_same_count_by_name, "raised KeyError"),
    (_same_count_by_name, "as many parameters, but not the same ones (not the same names)"),
    (_not_equal, "is ambiguous: comparing two tensors with != (or ==)"),
    (_not_equal, "torch.equal compares them all"),
    (changed(torch.equal, order=lambda names: [(n, 0) for n in names]), "list of parameter names"),
    (lambda a, b: None, "should return a list of parameter names, got NoneType"),
    (lambda a, b: "model.norm.weight", "should return a list of parameter names, got str"),
    (UNWRITTEN, "not written yet"),
]


def test_the_changes_hide_from_tolerances_and_sums():
    """The changed values are below allclose's tolerance, or keep the tensor's sum exactly."""
    case = lesson07.CHANGED_PARAMETERS.visible
    models = lesson07._models(case)
    states = {key: lesson07._state(model) for key, model in models.items()}
    for pair in case["pairs"][1:3]:
        a, b = lesson07._pair(models, states, 0, pair)
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        for name, kind, _, _ in pair["changes"]:
            assert not torch.equal(pa[name], pb[name])
            if kind == "step":
                assert torch.allclose(pa[name], pb[name], rtol=1e-6, atol=1e-8)
            else:
                assert pa[name].sum() == pb[name].sum() and (pa[name] - pb[name]).sum() == 0
    assert [n for n, _ in a.named_parameters()] == lesson07._parameter_names(2)


# --- shared tests -----------------------------------------------------------------------------

RIGHT = [
    (lesson07.MERGED_WEIGHT, merged_weight),
    (lesson07.MERGED_WEIGHT, merged_weight_float64),
    (lesson07.MERGED_WEIGHT, merged_weight_by_hand),
    (lesson07.MERGED_WEIGHT, merged_weight_addmm),
    (lesson07.MERGED_WEIGHT, merged_weight_einsum),
    (lesson07.ADAPTER_SHAPES_FIT, adapter_shapes_fit),
    (lesson07.ADAPTER_SHAPES_FIT, adapter_shapes_fit_by_submodule),
    (lesson07.ADAPTER_SHAPES_FIT, lambda s, m: np.bool_(adapter_shapes_fit(s, m))),
    (lesson07.CHANGED_PARAMETERS, changed_parameters),
    (lesson07.CHANGED_PARAMETERS, changed_parameters_any),
    (lesson07.CHANGED_PARAMETERS, changed_parameters_from_state_dicts),
]
WRONG = [
    *[(lesson07.MERGED_WEIGHT, f, m) for f, m in WRONG_MERGES],
    *[(lesson07.ADAPTER_SHAPES_FIT, f, m) for f, m in WRONG_FITS],
    *[(lesson07.CHANGED_PARAMETERS, f, m) for f, m in WRONG_CHANGES],
]


@pytest.mark.parametrize(("exercise", "answer"), RIGHT)
def test_right_answers_pass_the_visible_case_and_variants(exercise, answer):
    main = answer in (merged_weight, adapter_shapes_fit, changed_parameters)
    passes(exercise, answer, SEEDS if main else SEEDS[:5])


@pytest.mark.parametrize(("exercise", "answer", "message"), WRONG)
def test_each_mistake_is_named_on_the_visible_case_and_variants(exercise, answer, message):
    fails(exercise, answer, re.escape(message), WRONG_SEEDS)


@pytest.mark.parametrize("exercise", lesson07.EXERCISES)
def test_observations_are_json_and_odd_learners_are_judged(exercise):
    odd = [raising(ZeroDivisionError("learner bug")), None, lambda *a: None, lambda *a: "text",
           lambda *a: [[1, 2]],
           lambda *a: Unprintable(), lambda *a: [Unprintable()], lambda *a: torch.zeros(2, 3),
           lambda *a: float("nan"), lambda *a: 3]  # fmt: skip
    for learner in odd:
        judged_odd(exercise, learner)


def test_judging_uses_only_the_case_and_the_observations():
    """The grader's process recomputes PEFT's merge: the judge needs no learner state."""
    case = lesson07.MERGED_WEIGHT.variant(random.Random(5))
    observations = lesson07.MERGED_WEIGHT.observe(merged_weight, case)
    torch.manual_seed(123)  # whatever the global RNG holds
    lesson07.MERGED_WEIGHT.judge(observations, through_json(case))


@pytest.mark.parametrize(
    ("answer", "message"), [(merged_in_place, "changed the W0"), (merged_scales_A, "changed the A")]
)
def test_a_submission_that_patches_torch_cannot_forge_what_changed(monkeypatch, answer, message):
    """observe records the inputs as the call left them; the judge compares them."""
    exercise = lesson07.MERGED_WEIGHT
    with monkeypatch.context() as patched:  # what a submission could do in its own process
        patched.setattr(torch, "equal", lambda *args: True)
        patched.setattr(torch.Tensor, "equal", lambda *args: True)
        observations = exercise.observe(answer, exercise.visible)
    with pytest.raises(AssertionError, match=re.escape(message)):
        exercise.judge(observations, exercise.visible)
