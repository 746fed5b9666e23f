"""Exercises 02: `MyLoRALinear` from scratch, one method at a time.

02.1 `__init__`, 02.2 `get_delta_weight`, 02.3 `forward`, 02.4 `merge`, 02.5 `unmerge`. The
learner's class is built as `MyLoRALinear(base, r=r, alpha=alpha)` around a seeded `nn.Linear`
whose in, out, r and the batch size all differ (a transposed A or B cannot fit by accident), with
alpha not a multiple of r (so `alpha // r` differs from `alpha / r`). Checks read only what the
exercise asks for: `lora_A` (r, in), `lora_B` (out, r), `base`, `get_delta_weight()`, `forward`,
`merge()` and `unmerge()`.
"""

from __future__ import annotations

import math
import random

import torch
from torch import nn

from .exercise import Exercise, attempt, raised, require

# --- the case: a seeded base layer, seeded A and B, seeded inputs -----------------------------


def _tensors(case) -> dict[str, torch.Tensor]:
    """The case's float32 tensors, from its own generator (judge converts them to float64)."""
    g = torch.Generator().manual_seed(case["seed"])
    n_in, n_out, r, batch = case["in"], case["out"], case["r"], case["batch"]
    return {
        "W": torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in),  # (out, in)
        "b": torch.randn(n_out, generator=g),  # (out,)
        "A": torch.randn(r, n_in, generator=g),  # (r, in)
        "B": torch.randn(n_out, r, generator=g),  # (out, r)
        "x": torch.randn(batch, n_in, generator=g),  # (batch, in)
        "x3": torch.randn(3, 2, n_in, generator=g),  # (batch, seq, in), as in a language model
        "w_loss": torch.randn(batch, n_out, generator=g),  # a seeded loss: sum(w_loss * y)
    }


def _reference(case) -> dict[str, torch.Tensor]:
    """The case's tensors in float64, and what a correct layer computes from them."""
    t = {k: v.double() for k, v in _tensors(case).items()}
    s = case["alpha"] / case["r"]
    t["BA"] = t["B"] @ t["A"]  # (out, in), unscaled
    t["branch"] = t["x"] @ t["A"].T @ t["B"].T  # (batch, out), unscaled
    t["base_out"] = t["x"] @ t["W"].T + t["b"]  # (batch, out)
    t["y"] = t["base_out"] + s * t["branch"]
    t["merged"] = t["W"] + s * t["BA"]
    return t


def _variant(rng: random.Random) -> dict:
    """Drawn sizes (in, out, r and batch all different) and alpha not a multiple of r."""
    r = rng.randint(2, 4)
    n_in, n_out, batch = rng.sample(range(r + 1, 12), 3)
    alpha = r * rng.randint(2, 4) + rng.randint(1, r - 1)  # alpha // r >= 2 and != alpha / r
    return {"seed": rng.randrange(2**31), "in": n_in, "out": n_out, "r": r, "alpha": alpha,
            "batch": batch}  # fmt: skip


VISIBLE = {"seed": 0, "in": 7, "out": 5, "r": 2, "alpha": 5, "batch": 4}  # alpha / r = 2.5


# --- observing the learner's layer ------------------------------------------------------------


def _float64(value) -> torch.Tensor:
    """A float64 CPU copy (never a view of the learner's tensor, which may change later)."""
    return torch.as_tensor(value).detach().to(torch.float64, copy=True).cpu()


def _base_layer(case, bias: bool = True) -> nn.Linear:
    """A fresh nn.Linear holding the case's W and b (skip_init: no global random numbers used)."""
    t = _tensors(case)
    base = nn.utils.skip_init(nn.Linear, case["in"], case["out"], bias=bias)
    with torch.no_grad():
        base.weight.copy_(t["W"])
        if bias:
            base.bias.copy_(t["b"])
    return base


def _construct(layer_class, case, observations, key: str = "init", bias: bool = True):
    """`layer_class(base, r=r, alpha=alpha)`, or None with the reason recorded under `key`."""
    base = _base_layer(case, bias)
    layer = attempt(observations, key, lambda: layer_class(base, r=case["r"], alpha=case["alpha"]))
    if f"{key}_error" not in observations and not isinstance(layer, nn.Module):
        observations[f"{key}_type"] = type(layer).__name__
        return None
    return layer


def _set_factors(layer, case, observations) -> bool:
    """Copy the case's A and B into the learner's lora_A and lora_B; record why not if it can't."""
    t = _tensors(case)

    def copy() -> bool:
        factors = {"lora_A": layer.lora_A, "lora_B": layer.lora_B}
        for (name, tensor), value in zip(factors.items(), (t["A"], t["B"]), strict=True):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} is a {type(tensor).__name__}, not a tensor")
            if tuple(tensor.shape) != tuple(value.shape):
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}")
        with torch.no_grad():
            factors["lora_A"].copy_(t["A"])
            factors["lora_B"].copy_(t["B"])
        return True

    return bool(attempt(observations, "factors", copy))


SNAPSHOT = ("lora_A", "lora_B", "base.weight", "base.bias")
FACTORS = ("lora_A", "lora_B")


def _snapshot(layer) -> dict[str, torch.Tensor | None]:
    """Copies of lora_A, lora_B and the base's weight and bias, as they are now."""
    out = {}
    for key, get in (
        ("lora_A", lambda: layer.lora_A),
        ("lora_B", lambda: layer.lora_B),
        ("base.weight", lambda: layer.base.weight),
        ("base.bias", lambda: layer.base.bias),
    ):
        try:
            value = get()
        except Exception:  # noqa: BLE001 - a missing attribute is recorded elsewhere
            value = None
        out[key] = value.detach().clone() if isinstance(value, torch.Tensor) else None
    return out


def _record_snapshot(observations, name: str, layer, keys=SNAPSHOT) -> None:
    """Record float64 copies of the layer's tensors as `name_key`; the judge compares them.

    The comparison is the judge's: a verdict computed here, in the learner's process, could
    be forged by code that patches torch.
    """
    for key, value in _snapshot(layer).items():
        if key in keys and value is not None:
            copied = attempt(observations, f"{name}_{key}", lambda v=value: _float64(v))
            if copied is not None:
                observations[f"{name}_{key}"] = copied


def _changed(observations, before: str, after: str, keys=SNAPSHOT) -> list[str]:
    """Which recorded tensors differ between two snapshots (or appeared, vanished, reshaped)."""
    changed = []
    for key in keys:
        old, new = observations.get(f"{before}_{key}"), observations.get(f"{after}_{key}")
        if (old is None) != (new is None):
            changed.append(key)
        elif old is not None and (old.shape != new.shape or not torch.equal(old, new)):
            changed.append(key)
    return changed


def _role(layer, parameter) -> str | None:
    """Which of lora_A, lora_B, base.weight, base.bias `parameter` is (by identity), if any."""
    for name in ("lora_A", "lora_B"):
        if getattr(layer, name, None) is parameter:
            return name
    base = getattr(layer, "base", None)
    for name in ("weight", "bias"):
        if getattr(base, name, None) is parameter:
            return f"base.{name}"
    return None


def _trainable(layer) -> list[str]:
    """The layer's parameters that an optimizer would train, by role (or registered name)."""
    return sorted(
        _role(layer, p) or name for name, p in layer.named_parameters() if p.requires_grad
    )


def _record_base(layer, observations, prefix: str) -> None:
    """The base weight as it is now, and whether it is still a frozen, plain parameter."""
    weight = attempt(observations, prefix, lambda: layer.base.weight)
    if not isinstance(weight, torch.Tensor):
        observations.setdefault(f"{prefix}_error", f"base.weight is a {type(weight).__name__}")
        return
    observations[prefix] = _float64(weight)
    observations[f"{prefix}_requires_grad"] = bool(weight.requires_grad)
    observations[f"{prefix}_has_graph"] = weight.grad_fn is not None
    trainable = attempt(observations, f"{prefix}_trainable", lambda: _trainable(layer))
    observations[f"{prefix}_trainable"] = trainable


def _output(observations, key: str, value) -> torch.Tensor | None:
    """Record a tensor the learner returned (as float64), or the type it returned instead."""
    if not isinstance(value, torch.Tensor):
        observations[f"{key}_type"] = type(value).__name__
        return None
    converted = attempt(observations, key, lambda: _float64(value))
    if converted is not None:
        observations[key] = converted
    return converted


def _forward(layer, x, observations, key: str):
    """The learner's output for a copy of x (recorded under `key`), and that copy after it."""
    x_in = x.clone()
    out = attempt(observations, key, lambda: layer(x_in))
    x_after = attempt(observations, f"{key}_x", lambda: _float64(x_in))
    if x_after is not None:
        observations[f"{key}_x"] = x_after  # the judge compares it with the case's x
    if f"{key}_error" not in observations:
        _output(observations, key, out)
    return out


# --- judging: shared diagnoses ----------------------------------------------------------------


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> bool:
    if tuple(got.shape) != tuple(want.shape) or not bool(torch.isfinite(got).all()):
        return False
    return float((got - want).abs().max()) <= tol * (1 + float(want.abs().max()))


def _factor(residual: torch.Tensor, direction: torch.Tensor) -> float | None:
    """f such that residual == f * direction, if the residual is such a multiple."""
    if tuple(residual.shape) != tuple(direction.shape) or not bool(torch.isfinite(residual).all()):
        return None
    f = float((residual * direction).sum() / (direction * direction).sum())
    return f if _close(residual, f * direction) else None


def _scaling_mistake(factor: float, case, what: str) -> str:
    """Name the scaling `what` used when it is `factor` times the unscaled B A (not alpha / r)."""
    alpha, r = case["alpha"], case["r"]
    want = alpha / r
    named = [
        (alpha // r, f"{what} is scaled by {alpha // r}, the whole part of alpha / r = "
         f"{alpha} / {r} = {want:g}: `//` is integer (floor) division and drops the fraction"),
        (1.0, f"{what} is not scaled: LoRA multiplies the update by alpha / r ({want:g} here)"),
        (r / alpha, f"{what} is scaled by {r / alpha:.4g}, which is r / alpha: the scaling is "
         f"inverted (alpha / r is {want:g} here)"),
        (alpha * r, f"{what} is scaled by {alpha * r:g}, which is alpha * r: the scaling "
         f"divides by the rank ({want:g} here)"),
        (alpha / math.sqrt(r), f"{what} is scaled by {alpha / math.sqrt(r):.4g}, which is "
         f"alpha / sqrt(r), the scaling of rank-stabilized LoRA; plain LoRA's is {want:g} here"),
        (alpha, f"{what} is scaled by alpha = {alpha} alone: the scaling also divides by the "
         f"rank ({want:g} here)"),
        (-want, f"{what} has the right size but the wrong sign"),
        (0.0, f"{what} is zero: the update B A is missing"),
    ]  # fmt: skip
    for value, message in named:
        if math.isclose(factor, value, rel_tol=1e-4, abs_tol=1e-6):
            return message
    return f"{what} is scaled by {factor:.4g} instead of alpha / r = {want:g}"


def _is_shape_error(error: str) -> bool:
    text = error.lower()
    return error.startswith("RuntimeError") and any(
        word in text for word in ("shape", "size", "dimension")
    )


def _raised(observations, key: str, what: str, shape_hint: str) -> None:
    """Like `raised`, but a shape error (a transposed A or B) gets its own message."""
    error = observations.get(f"{key}_error")
    if error is not None and _is_shape_error(error):
        raise AssertionError(f"{what} raised a shape error ({error}): {shape_hint}")
    if error is not None and "non-leaf" in error:
        raise AssertionError(
            f"{what} ran with autograd on, and raised {error} Weight surgery must not be "
            "recorded in the graph: keep the @torch.no_grad() decorator"
        )
    if error is not None and ("scalar type" in error or "dtype" in error):
        raise AssertionError(
            f"{what} mixes dtypes, and raised {error}: compute in one dtype (cast one of the "
            "tensors it combines)"
        )
    raised(observations, key, what)


def _returned(observations, key: str, what: str, shape_hint: str) -> torch.Tensor:
    """The tensor the learner's call returned; fail naming its error or what it gave instead."""
    _raised(observations, key, what, shape_hint)
    kind = observations.get(f"{key}_type")
    require(kind is None, f"{what} must return a tensor, got a {kind} (a missing `return`?)")
    return observations[key]


def _built(observations, case) -> None:
    """Fail unless the layer was built (names the constructor call)."""
    call = f"MyLoRALinear(base, r={case['r']}, alpha={case['alpha']})"
    raised(observations, "init", call)
    kind = observations.get("init_type")
    require(kind is None, f"{call} must build an nn.Module, got a {kind}")


def _factors_set(observations, case) -> None:
    """Fail unless the check could put its own A and B into lora_A and lora_B."""
    _built(observations, case)
    error = observations.get("factors_error")
    if error is None:
        return
    if str(error).startswith("NotImplementedError"):
        raised(observations, "factors", "reading lora_A and lora_B")
    r, n_in, n_out = case["r"], case["in"], case["out"]
    raise AssertionError(
        f"this check puts its own values into lora_A {(r, n_in)} and lora_B {(n_out, r)}, but "
        f"{error}: give them the shapes of exercise 02.1, A (r, in) and B (out, r)"
    )


SHAPES = "lora_A is (r, in) and lora_B is (out, r)"
FORWARD_SHAPES = (
    f"x is (batch, in), {SHAPES}: the sizes must chain from in through r to out; "
    "check which factors need a transpose"
)
DELTA_SHAPES = (
    f"the update must have the base weight's shape (out, in); {SHAPES}: check the order "
    "and the transposes of the product"
)


def _frozen(observations, prefix: str, after: str) -> None:
    """The base weight recorded under `prefix` is still frozen and untouched by autograd."""
    require(
        not observations.get(f"{prefix}_has_graph"),
        f"{after} the base weight carries an autograd graph: weight surgery must run under "
        "torch.no_grad()",
    )
    require(
        not observations.get(f"{prefix}_requires_grad"),
        f"{after} base.weight is trainable (requires_grad=True): a new nn.Parameter is "
        "trainable by default; change the existing weight in place so it stays frozen",
    )
    raised(observations, f"{prefix}_trainable", "listing the layer's parameters")
    trainable = observations.get(f"{prefix}_trainable") or []
    require(
        trainable == ["lora_A", "lora_B"],
        f"{after} the trainable parameters are {trainable}: they must be lora_A and lora_B only",
    )


# --- 02.1 __init__ ----------------------------------------------------------------------------


def _optimizer_step(layer, case, observations) -> None:
    """One plain SGD step over layer.parameters() on a seeded loss; the tensors before and after.

    The loss uses the check's own forward (base(x) + (alpha / r) x A^T B^T) on the learner's
    tensors, so this tests __init__ alone. A and B get the case's values first: with B != 0,
    both receive a gradient. The step is what torch.optim.SGD does (p -= lr * p.grad for every
    parameter with a gradient), written out: building a torch optimizer costs seconds the
    first time.
    """
    t = _tensors(case)
    A, B, base = layer.lora_A, layer.lora_B, layer.base
    with torch.no_grad():
        A.copy_(t["A"])
        B.copy_(t["B"])
    _record_snapshot(observations, "step_before", layer)
    parameters = list(layer.parameters())
    if not parameters:
        raise ValueError("layer.parameters() is empty: an optimizer has nothing to train")
    for p in parameters:
        p.grad = None
    base_out = base(t["x"])
    branch = (t["x"].to(A.dtype) @ A.T @ B.T).to(base_out.dtype)
    y = base_out + case["alpha"] / case["r"] * branch  # (batch, out)
    (y * t["w_loss"]).sum().backward()
    with torch.no_grad():
        for p in parameters:
            if p.grad is not None:
                p -= 0.1 * p.grad
    _record_snapshot(observations, "step_after", layer)


def observe_lora_init(layer_class, case):
    """Exercise 02.1: shapes, registration, freezing and initialization; one optimizer step."""
    observations = {}
    layer = _construct(layer_class, case, observations)
    if layer is None:
        return observations
    for name in ("lora_A", "lora_B"):
        value = attempt(observations, name, lambda name=name: getattr(layer, name))
        observations[f"{name}_type"] = type(value).__name__
        observations[f"{name}_is_parameter"] = isinstance(value, nn.Parameter)
        if isinstance(value, torch.Tensor):
            observations[f"{name}_shape"] = list(value.shape)
            observations[f"{name}_requires_grad"] = bool(value.requires_grad)
            _output(observations, name, value)
    attempt(observations, "base", lambda: layer.base)
    observations["parameters"] = attempt(
        observations,
        "parameters",
        lambda: [
            {"name": n, "role": _role(layer, p), "requires_grad": bool(p.requires_grad)}
            for n, p in layer.named_parameters()
        ],
    )
    observations["state_dict"] = attempt(
        observations, "state_dict", lambda: sorted(layer.state_dict())
    )
    for key, value in _snapshot(layer).items():
        if key.startswith("base") and value is not None:
            _output(observations, key, value)
    observations["base_requires_grad"] = attempt(
        observations,
        "base_requires_grad",
        lambda: sorted(f"base.{n}" for n, p in layer.base.named_parameters() if p.requires_grad),
    )
    _construct(layer_class, case, observations, key="init_no_bias", bias=False)
    attempt(observations, "step", lambda: _optimizer_step(layer, case, observations))
    return observations


def _judge_shapes(observations, case) -> None:
    r, n_in, n_out = case["r"], case["in"], case["out"]
    for name in ("lora_A", "lora_B", "base"):
        error = observations.get(f"{name}_error")
        require(
            error is None or not error.startswith("AttributeError"),
            f"the layer needs an attribute named {name!r} (PEFT's name): {error}",
        )
        raised(observations, name, f"reading layer.{name}")
    for name in ("lora_A", "lora_B"):
        kind = observations.get(f"{name}_type")
        require(
            f"{name}_shape" in observations,
            f"{name} must be an nn.Parameter holding a matrix, got a {kind}",
        )
    a, b = tuple(observations["lora_A_shape"]), tuple(observations["lora_B_shape"])
    require(
        (a, b) != ((n_in, r), (r, n_out)),
        f"lora_A and lora_B are transposed: A is {a} and B is {b}, but PEFT's convention (which "
        f"the checks follow) is A (r, in) = {(r, n_in)} and B (out, r) = {(n_out, r)}",
    )
    require(a == (r, n_in), f"lora_A should be (r, in) = {(r, n_in)}, got {a}")
    require(b == (n_out, r), f"lora_B should be (out, r) = {(n_out, r)}, got {b}")


def _judge_registration(observations) -> None:
    raised(observations, "parameters", "layer.named_parameters()")
    raised(observations, "state_dict", "layer.state_dict()")
    roles = {p["role"]: p for p in observations["parameters"] if p["role"]}
    for name in ("lora_A", "lora_B"):
        require(
            observations[f"{name}_is_parameter"],
            f"{name} is a plain tensor, not an nn.Parameter: it is not in layer.parameters() or "
            "state_dict(), so an optimizer never updates it and saving skips it "
            "(requires_grad=True alone is not enough; wrap it in nn.Parameter)",
        )
        require(
            name in roles and name in observations["state_dict"],
            f"{name} is an nn.Parameter, but not registered as the layer's {name!r}: assign it "
            f"as an attribute of the module (self.{name} = ...) after super().__init__()",
        )
    frozen = [name for name in ("lora_A", "lora_B") if not roles[name]["requires_grad"]]
    require(
        not frozen,
        f"{' and '.join(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen "
        "(requires_grad=False): LoRA trains exactly A and B",
    )


def _judge_initial_values(observations, case) -> None:
    A, B = observations["lora_A"], observations["lora_B"]
    for name, value in (("lora_A", A), ("lora_B", B)):
        require(
            bool(torch.isfinite(value).all()),
            f"{name} contains NaN or inf: torch.empty leaves memory uninitialized, fill it",
        )
    a_zero, b_zero = not bool(A.any()), not bool(B.any())
    require(
        not (a_zero and b_zero),
        "A and B are both zero: then both gradients are zero and training can never start; "
        "start A random and B at zero",
    )
    require(
        not (a_zero and not b_zero),
        "the initializations are swapped: A is zero and B random; B starts at zero (so the "
        "layer starts as the base layer) and A random",
    )
    require(
        b_zero,
        "B must start at zero: the adapted layer should compute exactly what the base layer "
        "computes before training",
    )
    rank = int(torch.linalg.matrix_rank(A))
    require(
        rank == case["r"],
        f"lora_A starts with rank {rank} < r = {case['r']} (rows equal or dependent): "
        "initialize it randomly so that each of its r rows is a different direction",
    )


def judge_lora_init(observations, case) -> None:
    """Exercise 02.1: shapes, nn.Parameters seen by an optimizer, frozen base, A random, B zero."""
    _built(observations, case)
    _judge_shapes(observations, case)
    _judge_registration(observations)
    raised(observations, "base_requires_grad", "listing the base layer's parameters")
    trainable_base = observations["base_requires_grad"]
    require(
        not trainable_base,
        f"base weights left trainable ({', '.join(trainable_base)}): freeze the base layer "
        "(requires_grad False); LoRA trains only A and B",
    )
    t = _reference(case)
    for key, want in (("base.weight", t["W"]), ("base.bias", t["b"])):
        got = observations.get(key)
        require(
            got is not None and _close(got, want, 1e-6),
            f"{key} is not the given layer's: __init__ must wrap the base layer it receives as "
            "it is, without re-creating or re-initializing it",
        )
    _judge_initial_values(observations, case)
    for p in observations["parameters"]:
        require(
            not p["requires_grad"] or p["role"] in ("lora_A", "lora_B"),
            f"the layer has a trainable parameter besides lora_A and lora_B: {p['name']!r}; "
            "LoRA trains only A and B (keep numbers such as the scaling as plain attributes)",
        )
    raised(
        observations,
        "init_no_bias",
        "MyLoRALinear on a base layer without bias (bias=None, as in SmolLM2's projections)",
    )
    raised(observations, "step", "one SGD step over layer.parameters()")
    changed = _changed(observations, "step_before", "step_after")
    for name in ("lora_A", "lora_B"):
        require(
            name in changed,
            f"one SGD step over layer.parameters() left {name} unchanged: the optimizer does "
            "not see it, or no gradient reaches it",
        )
    base_changed = [k for k in changed if k.startswith("base")]
    require(
        not base_changed,
        f"one SGD step over layer.parameters() changed {', '.join(base_changed)}: "
        "the base layer must stay frozen",
    )


LORA_INIT = Exercise(
    id="02.1",
    target="MyLoRALinear",
    observe=observe_lora_init,
    judge=judge_lora_init,
    visible=VISIBLE,
    variant=_variant,
)


def check_lora_init(layer_class) -> None:
    """Exercise 02.1: shapes, nn.Parameters seen by an optimizer, frozen base, A random, B zero."""
    LORA_INIT.check(layer_class)


# --- 02.2 get_delta_weight --------------------------------------------------------------------


def observe_delta_weight(layer_class, case):
    """Exercise 02.2: get_delta_weight() for the case's A and B, and what the call changed."""
    observations = {}
    layer = _construct(layer_class, case, observations)
    if layer is None or not _set_factors(layer, case, observations):
        return observations
    _record_snapshot(observations, "before", layer)
    delta = attempt(observations, "delta", lambda: layer.get_delta_weight())
    if "delta_error" not in observations:
        _output(observations, "delta", delta)
    _record_snapshot(observations, "after", layer)
    return observations


def judge_delta_weight(observations, case) -> None:
    """Exercise 02.2: the update (alpha / r) B A, shaped (out, in) like the base weight."""
    _factors_set(observations, case)
    got = _returned(observations, "delta", "get_delta_weight()", DELTA_SHAPES)
    t, shape = _reference(case), (case["out"], case["in"])
    require(
        tuple(got.shape) != shape[::-1],
        f"get_delta_weight() is transposed: it is {tuple(got.shape)}, but the update is added "
        f"to the base weight, which is (out, in) = {shape}",
    )
    require(
        tuple(got.shape) == shape,
        f"get_delta_weight() must have the base weight's shape (out, in) = {shape}, "
        f"got {tuple(got.shape)}",
    )
    want = case["alpha"] / case["r"] * t["BA"]
    if not _close(got, want):
        factor = _factor(got, t["BA"])
        if factor is not None:
            raise AssertionError(_scaling_mistake(factor, case, "get_delta_weight()"))
        raise AssertionError(
            "get_delta_weight() is not the scaled product of B and A "
            f"(max error {float((got - want).abs().max()):.3g})"
        )
    changed = _changed(observations, "before", "after")
    require(
        not changed,
        f"get_delta_weight() changed {', '.join(changed)}: it must only compute the update",
    )


DELTA_WEIGHT = Exercise(
    id="02.2",
    target="MyLoRALinear",
    observe=observe_delta_weight,
    judge=judge_delta_weight,
    visible=VISIBLE,
    variant=_variant,
)


def check_delta_weight(layer_class) -> None:
    """Exercise 02.2: get_delta_weight() is the scaled update, shaped (out, in)."""
    DELTA_WEIGHT.check(layer_class)


# --- 02.3 forward -----------------------------------------------------------------------------


def observe_lora_forward(layer_class, case):
    """Exercise 02.3: outputs for seeded 2-D and 3-D inputs, and the gradients of A and B."""
    observations = {}
    layer = _construct(layer_class, case, observations)
    if layer is None or not _set_factors(layer, case, observations):
        return observations
    t = _tensors(case)
    out = _forward(layer, t["x"], observations, "forward")
    if "forward" not in observations:
        return observations
    observations["requires_grad"] = bool(out.requires_grad)

    def gradients() -> None:
        A, B = layer.lora_A, layer.lora_B
        A.grad = B.grad = None
        (out * t["w_loss"].to(out.dtype)).sum().backward()
        for name, tensor in (("grad_A", A), ("grad_B", B)):
            if tensor.grad is not None:
                observations[name] = _float64(tensor.grad)

    if out.requires_grad and tuple(out.shape) == tuple(t["w_loss"].shape):
        attempt(observations, "backward", gradients)
    _forward(layer, t["x3"], observations, "forward3")
    return observations


def _gradients(case) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dA and d/dB of sum(w_loss * y) for the reference layer, in float64."""
    t = _reference(case)
    A, B = t["A"].requires_grad_(), t["B"].requires_grad_()
    y = t["base_out"] + case["alpha"] / case["r"] * (t["x"] @ A.T @ B.T)
    (y * t["w_loss"]).sum().backward()
    return A.grad, B.grad


def judge_lora_forward(observations, case) -> None:
    """Exercise 02.3: base(x) plus the LoRA branch scaled by alpha / r, with gradients to A, B."""
    _factors_set(observations, case)
    got = _returned(observations, "forward", "forward(x)", FORWARD_SHAPES)
    t, s = _reference(case), case["alpha"] / case["r"]
    want = t["y"]
    shape = tuple(want.shape)
    require(
        tuple(got.shape) != shape[::-1],
        f"forward returned shape {tuple(got.shape)}, which is (out, batch): the output must be "
        f"(batch, out) = {shape}, one row per input row",
    )
    require(
        tuple(got.shape) == shape,
        f"forward(x) for x of shape (batch, in) = {tuple(t['x'].shape)} must return "
        f"(batch, out) = {shape}, got {tuple(got.shape)}",
    )
    x_after = observations.get("forward_x")
    require(
        x_after is not None and x_after.shape == t["x"].shape and torch.equal(x_after, t["x"]),
        "forward changed its input x in place: the caller (and other layers) may still need "
        "it; compute new tensors instead",
    )
    if not _close(got, want):
        require(
            _factor(got, t["branch"]) is None,
            "the base layer's output is missing: forward returns the LoRA branch alone",
        )
        require(
            _factor(got - (t["base_out"] - t["b"]), t["branch"]) is None,
            "the base layer's bias is missing: let the base layer compute its own output",
        )
        factor = _factor(got - t["base_out"], t["branch"])
        if factor is not None:
            raise AssertionError(_scaling_mistake(factor, case, "the LoRA branch"))
        raise AssertionError(
            "forward's output is not the base output plus the scaled LoRA branch "
            f"(max error {float((got - want).abs().max()):.3g})"
        )
    raised(observations, "backward", "backpropagating through forward's output")
    detached = [n for n in ("A", "B") if f"grad_{n}" not in observations]
    require(
        not detached,
        f"no gradient reaches lora_{' or lora_'.join(detached)}: the LoRA branch is detached "
        "from autograd (.detach(), .data or torch.no_grad() in forward), so training would "
        "never change it",
    )
    for name, want_grad in zip(("A", "B"), _gradients(case), strict=True):
        require(
            _close(observations[f"grad_{name}"], want_grad),
            f"the gradient of lora_{name} is wrong, though the output is right: forward must "
            "compute the output from lora_A and lora_B themselves",
        )
    error = observations.get("forward3_error")
    if error is not None and not error.startswith("NotImplementedError"):
        raise AssertionError(
            f"forward fails on a (batch, seq, in) input such as a language model passes "
            f"({error}): only the last dimension of x is in, the leading ones can be any "
            "batch dimensions (torch.mm takes matrices only; @ and F.linear take any)"
        )
    got3 = _returned(observations, "forward3", "forward on a (batch, seq, in) input", "")
    want3 = t["x3"] @ t["W"].T + t["b"] + s * (t["x3"] @ t["A"].T @ t["B"].T)
    require(
        _close(got3, want3),
        f"forward on a (batch, seq, in) input of shape {tuple(t['x3'].shape)} should return "
        f"{tuple(want3.shape)}, the 2-D result at every position; got shape "
        f"{tuple(got3.shape)}" + (" with other values" if got3.shape == want3.shape else ""),
    )


LORA_FORWARD = Exercise(
    id="02.3",
    target="MyLoRALinear",
    observe=observe_lora_forward,
    judge=judge_lora_forward,
    visible=VISIBLE,
    variant=_variant,
)


def check_lora_forward(layer_class) -> None:
    """Exercise 02.3: base(x) plus the LoRA branch scaled by alpha / r."""
    LORA_FORWARD.check(layer_class)


# --- 02.4 merge -------------------------------------------------------------------------------


def _call(layer, observations, method: str) -> bool:
    """Call layer.merge() or layer.unmerge(); False (and the error recorded) if it raised."""
    attempt(observations, method, lambda: getattr(layer, method)())
    return f"{method}_error" not in observations


def _refused(observations, key: str, what: str) -> bool:
    """A guard call (merging twice, unmerging an unmerged layer) may refuse by raising."""
    error = observations.get(f"{key}_error")
    if error is not None and str(error).startswith("NotImplementedError"):
        raised(observations, key, what)
    return error is not None


def observe_merge(layer_class, case):
    """Exercise 02.4: the base weight after merge(), forward after it, and a second merge()."""
    observations = {}
    layer = _construct(layer_class, case, observations)
    if layer is None or not _set_factors(layer, case, observations):
        return observations
    _record_snapshot(observations, "before", layer, FACTORS)
    if not _call(layer, observations, "merge"):
        return observations
    _record_snapshot(observations, "after", layer, FACTORS)
    _record_base(layer, observations, "merged")
    _forward(layer, _tensors(case)["x"], observations, "forward_merged")
    attempt(observations, "merge_again", lambda: layer.merge())
    _record_base(layer, observations, "merged_again")
    return observations


def _judge_weight_update(observations, key: str, case, start, sign: int) -> None:
    """The base weight recorded under `key` should be start + sign * (alpha / r) B A."""
    t, s = _reference(case), case["alpha"] / case["r"]
    what = "merge" if sign > 0 else "unmerge"
    raised(observations, key, f"reading the base weight after {what}")
    got, shape = observations[key], tuple(t["W"].shape)
    require(
        tuple(got.shape) != shape[::-1],
        f"after {what} the base weight is {tuple(got.shape)}, transposed: the update must "
        f"have the weight's shape (out, in) = {shape}",
    )
    require(
        tuple(got.shape) == shape,
        f"after {what} the base weight must keep its shape {shape}, got {tuple(got.shape)}",
    )
    if _close(got, start + sign * s * t["BA"], 1e-5):
        return
    still = "the weight it started with" if sign > 0 else "the merged weight"
    require(
        not _close(got, start, 1e-6),
        f"{what} did not change the base weight, which is still {still}: {what} must change "
        "self.base.weight itself, in place (setting the merged flag alone, or changing a copy "
        "of the weight, leaves it as it was)",
    )
    factor = _factor(sign * (got - start), t["BA"])
    action = "adds to" if sign > 0 else "subtracts from"
    if factor is not None:
        raise AssertionError(
            _scaling_mistake(factor, case, f"the update that {what} {action} the weight")
        )
    error = float((got - start - sign * s * t["BA"]).abs().max())
    raise AssertionError(
        f"after {what} the base weight is not what it should be (max error {error:.3g})"
    )


def judge_merge(observations, case) -> None:
    """Exercise 02.4: W <- W + (alpha / r) B A, base still frozen, forward skips the branch."""
    _factors_set(observations, case)
    _raised(observations, "merge", "merge()", DELTA_SHAPES)
    t, s = _reference(case), case["alpha"] / case["r"]
    _judge_weight_update(observations, "merged", case, t["W"], +1)
    _frozen(observations, "merged", "after merge,")
    changed = _changed(observations, "before", "after", FACTORS)
    require(
        not changed,
        f"merge changed {', '.join(changed)}: keep A and B as they are, so unmerge can "
        "subtract the same update",
    )
    got = _returned(observations, "forward_merged", "forward(x) after merge", FORWARD_SHAPES)
    if not _close(got, t["y"]):
        require(
            not _close(got, t["y"] + s * t["branch"]),
            "after merge, forward still adds the LoRA branch: the update is counted twice; "
            "the merged base weight already holds it, so a merged layer must skip the branch",
        )
        raise AssertionError(
            "after merge, forward's output changed: the merged base layer alone must "
            "compute what the unmerged layer computed (check exercise 02.3 first)"
        )
    if _refused(observations, "merge_again", "merge() on a merged layer"):
        return
    raised(observations, "merged_again", "reading the base weight after a second merge")
    again = observations["merged_again"]
    require(
        not _close(again, t["W"] + 2 * s * t["BA"], 1e-5),
        "merge() on an already merged layer added the update a second time: remember that "
        "the layer is merged, and refuse (raise) or skip a second merge",
    )
    require(
        _close(again, t["merged"], 1e-5),
        "merge() on an already merged layer changed the base weight again: refuse (raise) or "
        "skip a second merge",
    )


MERGE = Exercise(
    id="02.4",
    target="MyLoRALinear",
    observe=observe_merge,
    judge=judge_merge,
    visible=VISIBLE,
    variant=_variant,
)


def check_merge(layer_class) -> None:
    """Exercise 02.4: merge() folds the scaled update into the base weight, outputs unchanged."""
    MERGE.check(layer_class)


# --- 02.5 unmerge -----------------------------------------------------------------------------


def observe_unmerge(layer_class, case):
    """Exercise 02.5: unmerge() of a never-merged layer, then merge, unmerge, unmerge again."""
    observations = {}
    fresh = _construct(layer_class, case, observations)
    if fresh is None or not _set_factors(fresh, case, observations):
        return observations
    attempt(observations, "unmerge_fresh", lambda: fresh.unmerge())
    _record_base(fresh, observations, "fresh")

    layer = _construct(layer_class, case, observations)
    if layer is None or not _set_factors(layer, case, observations):
        return observations
    _record_snapshot(observations, "before", layer, FACTORS)
    if not _call(layer, observations, "merge"):
        return observations
    _record_base(layer, observations, "merged")
    if not _call(layer, observations, "unmerge"):
        return observations
    _record_snapshot(observations, "after", layer, FACTORS)
    _record_base(layer, observations, "unmerged")
    _forward(layer, _tensors(case)["x"], observations, "forward_unmerged")
    attempt(observations, "unmerge_again", lambda: layer.unmerge())
    _record_base(layer, observations, "unmerged_again")
    return observations


def judge_unmerge(observations, case) -> None:
    """Exercise 02.5: unmerge() restores the base weight, still frozen, and the branch is back."""
    _factors_set(observations, case)
    t, s = _reference(case), case["alpha"] / case["r"]
    error = observations.get("merge_error")
    require(
        error is None,
        f"this check merges before it unmerges, and merge() raised {error}: pass exercise "
        "02.4 first",
    )
    raised(observations, "merged", "reading the base weight after merge")
    require(
        _close(observations["merged"], t["merged"], 1e-5),
        "this check merges before it unmerges, and merge() did not fold the scaled update "
        "into the weight: pass exercise 02.4 first",
    )
    _raised(observations, "unmerge", "unmerge()", DELTA_SHAPES)
    raised(observations, "unmerged", "reading the base weight after unmerge")
    require(
        not _close(observations["unmerged"], t["W"] + 2 * s * t["BA"], 1e-5),
        "unmerge added the update a second time: it must take away what merge added",
    )
    _judge_weight_update(observations, "unmerged", case, t["merged"], -1)
    _frozen(observations, "unmerged", "after unmerge,")
    changed = _changed(observations, "before", "after", FACTORS)
    require(
        not changed, f"merge and unmerge changed {', '.join(changed)}: keep A and B as they are"
    )
    got = _returned(observations, "forward_unmerged", "forward(x) after unmerge", FORWARD_SHAPES)
    if not _close(got, t["y"]):
        require(
            not _close(got, t["base_out"]),
            "after unmerge, forward skips the LoRA branch: the layer is no longer merged, so "
            "forward must add the branch again (reset what merge set)",
        )
        raise AssertionError(
            "after unmerge, forward's output differs from before merging (check exercise "
            "02.3 first)"
        )
    if not _refused(observations, "unmerge_fresh", "unmerge() on a layer that was never merged"):
        raised(observations, "fresh", "reading the base weight")
        require(
            _close(observations["fresh"], t["W"], 1e-6),
            "unmerge() on a layer that was never merged changed the base weight: there is "
            "nothing to subtract until merge has added it; refuse (raise) or skip",
        )
    if not _refused(observations, "unmerge_again", "unmerge() on an unmerged layer"):
        raised(observations, "unmerged_again", "reading the base weight after a second unmerge")
        require(
            _close(observations["unmerged_again"], t["W"], 1e-5),
            "unmerge() on a layer that is no longer merged changed the base weight again: "
            "refuse (raise) or skip an unmerge when nothing is merged",
        )


UNMERGE = Exercise(
    id="02.5",
    target="MyLoRALinear",
    observe=observe_unmerge,
    judge=judge_unmerge,
    visible=VISIBLE,
    variant=_variant,
)


def check_unmerge(layer_class) -> None:
    """Exercise 02.5: unmerge() restores the base weight, and forward adds the branch again."""
    UNMERGE.check(layer_class)


EXERCISES = (LORA_INIT, DELTA_WEIGHT, LORA_FORWARD, MERGE, UNMERGE)
