"""Exercises 09: DoRA's magnitude and forward, LoRA+'s parameter groups, PiSSA's factors.

09.1 `MyDoRALinear(base, r=r, alpha=alpha)` (its `magnitude`, `weight_norm()` and `forward`),
09.2 `loraplus_param_groups(model, lr, ratio)`, 09.3 `pissa_factors(weight, r, scaling)`. Every
check judges against the package's own variants (lora_course.variants, which tests compare with
PEFT): `DoRALinear` on the same W0, b, A, B and magnitude, the learning rate that
`loraplus_param_groups` gives each parameter, and `pissa_init` on the same weight. Cases are seeded
so that the classic mistakes give other answers: weights are not square (and a square one shows a
norm over the wrong dimension by its values), B is not zero, the magnitudes are not the row norms,
alpha / r is not 1, and the singular values are well apart.
"""

from __future__ import annotations

import math
import random
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import LoRALinear
from ..variants import DoRALinear, loraplus_param_groups, pissa_init
from .exercise import Exercise, attempt, describe, raised, require


def _float64(value) -> torch.Tensor:
    """A float64 CPU copy (never a view of the learner's tensor, which may change later)."""
    return torch.as_tensor(value).detach().to(torch.float64, copy=True).cpu()


def _record(observations, key: str, value) -> None:
    """Record a tensor the learner gave (float64) under `key`, or what it gave instead."""
    if not isinstance(value, torch.Tensor):
        observations[f"{key}_returned"] = describe(value)
        return
    converted = attempt(observations, key, lambda: _float64(value))
    if converted is not None:
        observations[key] = converted


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> bool:
    if tuple(got.shape) != tuple(want.shape) or not bool(torch.isfinite(got).all()):
        return False
    return float((got - want).abs().max()) <= tol * (1 + float(want.abs().max()))


def _is_shape_error(error: str) -> bool:
    text = error.lower()
    return error.startswith("RuntimeError") and any(
        word in text for word in ("shape", "size", "dimension")
    )


# --- 09.1 MyDoRALinear: magnitude and forward -------------------------------------------------

ROLES = ("lora_A", "lora_B", "magnitude")
DORA = "y = m / ||W0 + s B A|| * (W0 + s B A) x + b, the norm over each row (dim=1)"


def _dora_sizes(case, square: bool) -> tuple[int, int]:
    return (case["square"], case["square"]) if square else (case["in"], case["out"])


def _dora_tensors(case, square: bool = False) -> dict[str, torch.Tensor]:
    """The case's float32 tensors for its non-square layer (or its square one)."""
    n_in, n_out = _dora_sizes(case, square)
    r, s = case["r"], case["alpha"] / case["r"]
    g = torch.Generator().manual_seed(case["seed"] + int(square))
    rows = 0.5 + 1.5 * torch.rand(n_out, 1, generator=g)  # (out, 1): row norms that differ
    W = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in) * rows  # (out, in)
    b = torch.randn(n_out, generator=g)  # (out,)
    A = torch.randn(r, n_in, generator=g) / math.sqrt(n_in)  # (r, in)
    B = 0.5 * torch.randn(n_out, r, generator=g)  # (out, r): trained, so not zero
    norms = torch.linalg.norm(W + s * B @ A, dim=1)  # (out,)
    m = norms * (0.5 + torch.rand(n_out, generator=g))  # (out,): trained, so not the norms
    return {
        "W": W, "b": b, "A": A, "B": B, "m": m,
        "x": torch.randn(case["batch"], n_in, generator=g),  # (batch, in)
        "x3": torch.randn(2, 3, n_in, generator=g),  # (batch, seq, in), as a language model's
        "w_loss": torch.randn(case["batch"], n_out, generator=g),  # a seeded loss: sum(w * y)
    }  # fmt: skip


def _dora_layer(case, square: bool = False, bias: bool = True) -> DoRALinear:
    """The package's DoRA layer, in float64, holding the case's W0, b, A, B and magnitude."""
    t = _dora_tensors(case, square)
    n_in, n_out = _dora_sizes(case, square)
    base = nn.utils.skip_init(nn.Linear, n_in, n_out, bias=bias, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(t["W"])
        if bias:
            base.bias.copy_(t["b"])
    with torch.random.fork_rng(devices=[]):  # A's init draws from the global RNG: leave it be
        layer = DoRALinear(base, r=case["r"], alpha=case["alpha"])
    with torch.no_grad():
        layer.lora_A.copy_(t["A"])
        layer.lora_B.copy_(t["B"])
        layer.magnitude.copy_(t["m"])
    return layer


def _dora_reference(case, square: bool = False, bias: bool = True) -> dict[str, torch.Tensor]:
    """DoRALinear's outputs for x and x3, and the gradients of the seeded loss, in float64."""
    t = {k: v.double() for k, v in _dora_tensors(case, square).items()}
    layer = _dora_layer(case, square, bias)
    y = layer(t["x"])  # (batch, out)
    (y * t["w_loss"]).sum().backward()
    with torch.no_grad():
        y3 = layer(t["x3"])  # (2, 3, out)
    grads = {f"grad_{name}": getattr(layer, name).grad for name in ROLES}
    return {"y": y.detach(), "y3": y3, **grads}


def _undetached_gradients(case) -> dict[str, torch.Tensor]:
    """A's and B's gradients when the norm is left in the graph (the mistake), in float64."""
    t = {k: v.double() for k, v in _dora_tensors(case).items()}
    s = case["alpha"] / case["r"]
    A, B = t["A"].requires_grad_(), t["B"].requires_grad_()
    weight = t["W"] + s * B @ A  # (out, in)
    y = t["m"] / torch.linalg.norm(weight, dim=1) * (t["x"] @ weight.T) + t["b"]  # (batch, out)
    (y * t["w_loss"]).sum().backward()
    return {"grad_lora_A": A.grad, "grad_lora_B": B.grad}


def _dora_mistakes(case) -> list[tuple[torch.Tensor, str]]:
    """(the output a mistake gives on the non-square layer, in float64, the mistake it names)."""
    t = {k: v.double() for k, v in _dora_tensors(case).items()}
    s = case["alpha"] / case["r"]
    W, b, A, B, m, x = t["W"], t["b"], t["A"], t["B"], t["m"], t["x"]

    def y(norm_s=s, branch_s=s, bias="after", magnitude=True, norm="rows"):
        weight = W + norm_s * B @ A  # (out, in): the weight whose norm is taken
        norms = {
            "rows": lambda: torch.linalg.norm(weight, dim=1),  # (out,)
            "whole": lambda: torch.linalg.norm(weight),  # ()
            "base": lambda: torch.linalg.norm(W, dim=1),
            "squared": lambda: torch.linalg.norm(weight, dim=1) ** 2,
            "none": lambda: torch.ones(()),
        }[norm]()
        scale = (m if magnitude else 1.0) / norms
        out = scale * (x @ W.T + branch_s * (x @ A.T @ B.T))  # (batch, out)
        return out + {"after": b, "scaled": scale * b, "none": 0.0}[bias]

    return [
        (
            y(norm_s=1.0, branch_s=1.0),
            f"the scaling s = alpha / r = {s:g} is missing: the adapted weight is W0 + s B A, in "
            "the norm and in the product",
        ),
        (
            y(norm_s=1.0),
            "the norm is of W0 + B A, without the scaling: normalise the weight the layer "
            "applies, W0 + s B A",
        ),
        (y(branch_s=1.0), f"the LoRA branch is not scaled: it is s B A x, s = alpha / r = {s:g}"),
        (y(branch_s=0.0), "the LoRA branch is missing: DoRA rescales (W0 + s B A) x, not W0 x"),
        (
            y(bias="none"),
            "the base layer's bias is missing: add base.bias (when there is one) after rescaling",
        ),
        (
            y(bias="scaled"),
            "the bias is multiplied by m / ||W0 + s B A|| too: DoRA rescales the weight's rows, "
            "not the bias; add base.bias after rescaling (F.linear(x, W0) without it, as PEFT "
            "does)",
        ),
        (
            y(magnitude=False, norm="none"),
            "forward is plain LoRA's: the magnitude and the norm are missing",
        ),
        (
            y(magnitude=False),
            "the magnitude is missing: each row's direction (W0 + s B A) / ||W0 + s B A|| is "
            "multiplied by its trained length, self.magnitude",
        ),
        (
            y(norm="none"),
            "the norm is missing: the rows are multiplied by m but never divided by their length "
            "||W0 + s B A||, so m is not their length",
        ),
        (
            y(norm="whole"),
            "the norm is of the whole matrix (a single number): DoRA divides each output row by "
            "its own norm, torch.linalg.norm(weight, dim=1), shape (out,)",
        ),
        (
            y(norm="base"),
            "the norm is of W0 alone: DoRA divides by the norm of the adapted weight's rows, "
            "||W0 + s B A||, which changes as A and B train",
        ),
        (
            y(norm="squared"),
            "the rows are divided by their squared norms: divide by the norm itself",
        ),
    ]


def _column_mistake(observations, case) -> str | None:
    """The message for the square layer's output, if it is a norm over the input columns."""
    got = observations.get("square_forward")
    if not isinstance(got, torch.Tensor):
        return None
    t = {k: v.double() for k, v in _dora_tensors(case, square=True).items()}
    s = case["alpha"] / case["r"]
    weight = t["W"] + s * t["B"] @ t["A"]  # (n, n)
    columns = torch.linalg.norm(weight, dim=0)  # (n,): one norm per INPUT column
    scale = t["m"] / columns
    outputs = (
        scale * (t["x"] @ weight.T) + t["b"],  # m / ||column|| used as if per output
        F.linear(t["x"], weight * scale[None, :]) + t["b"],  # each column rescaled
    )
    if any(_close(got, wrong) for wrong in outputs):
        n_in, n_out = case["in"], case["out"]
        return (
            "the norm is taken over each input column (dim=0 of the (out, in) weight): DoRA "
            "gives each OUTPUT row its own length, so it divides each row by its norm, "
            f"torch.linalg.norm(weight, dim=1), shape (out,). On a square layer that runs and "
            f"gives wrong values; on the {n_in} -> {n_out} layer the shapes ({n_in},) and "
            f"({n_out},) do not even match"
        )
    return None


def _dora_construct(layer_class, case, observations, key: str, square=False, bias=True):
    """`layer_class(base, r=r, alpha=alpha)` around the case's W0 (and b), or None (recorded)."""
    n_in, n_out = _dora_sizes(case, square)
    t = _dora_tensors(case, square)
    base = nn.utils.skip_init(nn.Linear, n_in, n_out, bias=bias)
    with torch.no_grad():
        base.weight.copy_(t["W"])
        if bias:
            base.bias.copy_(t["b"])

    def build():
        with torch.random.fork_rng(devices=[]):  # the learner's random init: not the global RNG
            return layer_class(base, r=case["r"], alpha=case["alpha"])

    layer = attempt(observations, key, build)
    if f"{key}_error" not in observations and not isinstance(layer, nn.Module):
        observations[f"{key}_type"] = type(layer).__name__
        return None
    return layer


def _role(layer, parameter) -> str | None:
    """Which of lora_A, lora_B, magnitude, base.weight, base.bias `parameter` is, if any."""
    for name in ROLES:
        if getattr(layer, name, None) is parameter:
            return name
    base = getattr(layer, "base", None)
    for name in ("weight", "bias"):
        if getattr(base, name, None) is parameter:
            return f"base.{name}"
    return None


def _observe_fresh(layer, observations) -> None:
    """The new layer's magnitude (type, shape, values), its A and B, and its parameters."""
    value = attempt(observations, "magnitude", lambda: layer.magnitude)
    if "magnitude_error" not in observations:
        observations["magnitude_type"] = type(value).__name__
        observations["magnitude_is_parameter"] = isinstance(value, nn.Parameter)
        if isinstance(value, torch.Tensor):
            observations["magnitude_shape"] = list(value.shape)
            _record(observations, "magnitude_values", value)
    for name in ("lora_A", "lora_B"):
        factor = attempt(observations, f"init_{name}", lambda name=name: getattr(layer, name))
        if f"init_{name}_error" not in observations:
            _record(observations, f"init_{name}", factor)
    observations["parameters"] = attempt(
        observations,
        "parameters",
        lambda: [
            {"name": str(n), "role": _role(layer, p), "requires_grad": bool(p.requires_grad)}
            for n, p in layer.named_parameters()
        ],
    )


def _dora_set(layer, t, observations, key: str) -> bool:
    """Copy the case's A, B and magnitude into the learner's layer; record why not if it can't."""

    def copy() -> bool:
        pairs = []
        for name, value in (("lora_A", t["A"]), ("lora_B", t["B"]), ("magnitude", t["m"])):
            tensor = getattr(layer, name)
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{name} is a {type(tensor).__name__}, not a tensor")
            fits = tensor.numel() == value.numel() if name == "magnitude" else (
                tuple(tensor.shape) == tuple(value.shape)
            )  # fmt: skip
            if not fits:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}")
            pairs.append((tensor, value))
        with torch.no_grad():
            for tensor, value in pairs:
                tensor.copy_(value.view_as(tensor))
        return True

    return bool(attempt(observations, key, copy))


def _dora_forward(layer, x, observations, key: str):
    """The learner's output for a copy of x (recorded under `key`), and that copy after it."""
    x_in = x.clone()
    out = attempt(observations, key, lambda: layer(x_in))
    after = attempt(observations, f"{key}_x", lambda: _float64(x_in))
    if after is not None:
        observations[f"{key}_x"] = after
    if f"{key}_error" not in observations:
        _record(observations, key, out)
    return out


def _dora_gradients(layer, out, t, observations) -> None:
    """Backward through the learner's output on the seeded loss: magnitude's, A's, B's grads."""
    if not isinstance(out, torch.Tensor) or "forward" not in observations:
        return
    observations["forward_requires_grad"] = bool(out.requires_grad)
    if not out.requires_grad or tuple(out.shape) != tuple(t["w_loss"].shape):
        return

    def backward() -> None:
        params = {name: getattr(layer, name) for name in ROLES}
        for tensor in params.values():
            tensor.grad = None
        (out * t["w_loss"].to(out.dtype)).sum().backward()
        for name, tensor in params.items():
            if tensor.grad is not None:
                observations[f"grad_{name}"] = _float64(tensor.grad)

    attempt(observations, "backward", backward)


def observe_dora(layer_class, case):
    """Exercise 09.1: the new layer's magnitude; outputs and gradients with the case's values."""
    observations = {}
    layer = _dora_construct(layer_class, case, observations, "init")
    if layer is None:
        return observations
    _observe_fresh(layer, observations)
    t = _dora_tensors(case)
    if _dora_set(layer, t, observations, "values"):
        out = _dora_forward(layer, t["x"], observations, "forward")
        _dora_gradients(layer, out, t, observations)
        _dora_forward(layer, t["x3"], observations, "forward3")
        weight = attempt(observations, "base_after", lambda: _float64(layer.base.weight))
        if weight is not None:
            observations["base_after"] = weight
    for key, square, bias in (("square", True, True), ("nobias", False, False)):
        other = _dora_construct(layer_class, case, observations, f"{key}_init", square, bias)
        t = _dora_tensors(case, square)
        if other is not None and _dora_set(other, t, observations, f"{key}_values"):
            _dora_forward(other, t["x"], observations, f"{key}_forward")
    return observations


def _judge_magnitude_registered(observations, case) -> None:
    """magnitude: an attribute, an nn.Parameter of shape (out,), registered and trainable."""
    n_in, n_out = case["in"], case["out"]
    error = observations.get("magnitude_error")
    require(
        error is None or not error.startswith("AttributeError"),
        "the layer needs an attribute named 'magnitude' (PEFT's lora_magnitude_vector), one "
        f"trainable length per output row: {error}",
    )
    raised(observations, "magnitude", "reading layer.magnitude")
    shape = observations.get("magnitude_shape")
    require(
        shape is not None,
        "magnitude must be an nn.Parameter holding one length per output row, got a "
        f"{observations.get('magnitude_type')}",
    )
    shape = tuple(shape)
    require(
        shape != (n_in,),
        f"magnitude has shape (in,) = ({n_in},), one length per input column: that is the norm "
        "over dim 0 of the (out, in) weight. DoRA keeps one length per OUTPUT row, the norm of "
        f"each row (dim=1), shape (out,) = ({n_out},)",
    )
    require(
        shape in ((n_out,), (n_out, 1)),
        f"magnitude should have shape (out,) = ({n_out},), one length per output row, got "
        f"{shape}" + (": one number for the whole matrix" if math.prod(shape) == 1 else ""),
    )
    require(
        observations["magnitude_is_parameter"],
        "magnitude is a plain tensor, not an nn.Parameter: it is not in layer.parameters(), so "
        "an optimizer never trains it and saving skips it (wrap it in nn.Parameter)",
    )
    raised(observations, "parameters", "layer.named_parameters()")
    params = observations["parameters"]
    roles = {p["role"]: p for p in params if p["role"]}
    require(
        "magnitude" in roles,
        "magnitude is an nn.Parameter, but not registered as the layer's 'magnitude': assign it "
        "as an attribute of the module (self.magnitude = nn.Parameter(...)) after "
        "super().__init__()",
    )
    missing = [name for name in ("lora_A", "lora_B") if name not in roles]
    require(not missing, f"{' and '.join(missing)} is not a parameter of the layer: keep the "
            "given lines of __init__")  # fmt: skip
    r = case["r"]
    for name, shape in (("lora_A", (r, n_in)), ("lora_B", (n_out, r))):
        raised(observations, f"init_{name}", f"reading layer.{name}")
        value = observations.get(f"init_{name}")
        require(
            isinstance(value, torch.Tensor) and tuple(value.shape) == shape,
            f"{name} should be {shape}, as lesson 02's layer makes it: keep the given lines of "
            "__init__",
        )
    frozen = [name for name in ROLES if not roles[name]["requires_grad"]]
    require(
        not frozen,
        f"{' and '.join(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen "
        "(requires_grad=False): DoRA trains the magnitude, A and B",
    )
    base = sorted(p["role"] for p in params if p["requires_grad"] and p["role"] in
                  ("base.weight", "base.bias"))  # fmt: skip
    require(not base, f"base weights left trainable ({', '.join(base)}): the base stays frozen")
    extra = [p["name"] for p in params if p["requires_grad"] and p["role"] not in ROLES]
    require(
        not extra,
        f"the layer has a trainable parameter besides lora_A, lora_B and magnitude: {extra}",
    )


def _judge_magnitude_start(observations, case) -> None:
    """The new magnitude is the row norms of W0 + s B A (B = 0: of W0), so m / norm is 1."""
    raised(observations, "magnitude_values", "reading layer.magnitude")
    got = observations["magnitude_values"].reshape(-1)
    W = _dora_tensors(case)["W"].double()  # (out, in)
    A, B = observations.get("init_lora_A"), observations.get("init_lora_B")
    weight = W + case["alpha"] / case["r"] * B @ A  # its own A and B (B = 0 as given)
    want = torch.linalg.norm(weight, dim=1)  # (out,)
    if _close(got, want, 1e-5):
        return
    why = (
        "it must start at the norm of each row of W0 + s B A (B = 0 at the start: of W0), so "
        "that m / ||W0 + s B A|| = 1 and the layer starts as the base layer"
    )
    named = [
        (torch.ones_like(want), "magnitude starts at 1"),
        (torch.zeros_like(want), "magnitude starts at 0: the layer would output only the bias"),
        (want**2, "magnitude starts at the squared row norms"),
        (weight.abs().sum(dim=1), "magnitude starts at the sums of |w| of each row (L1 norms)"),
        (weight.abs().amax(dim=1), "magnitude starts at each row's largest |w|"),
        (
            torch.full_like(want, float(torch.linalg.norm(weight))),
            "magnitude starts at the norm of the whole matrix, the same for every row",
        ),
    ]
    for wrong, message in named:
        require(not _close(got, wrong, 1e-5), f"{message}: {why}")
    raise AssertionError(f"magnitude starts at other values: {why}")


def _judge_values_set(observations, key: str, what: str) -> None:
    """Fail unless the check could put its own A, B and magnitude into the layer."""
    error = observations.get(f"{key}_error")
    if error is None:
        return
    if str(error).startswith("NotImplementedError"):
        raised(observations, key, "reading lora_A, lora_B and magnitude")
    raise AssertionError(
        f"this check puts its own values into lora_A (r, in), lora_B (out, r) and magnitude "
        f"(out,){what}, but {error}"
    )


def _judge_built(observations, case, key: str, what: str) -> None:
    call = f"MyDoRALinear(base, r={case['r']}, alpha={case['alpha']})"
    raised(observations, key, call + what)
    kind = observations.get(f"{key}_type")
    require(kind is None, f"{call} must build an nn.Module, got a {kind}")


def _judge_dora_output(observations, case) -> torch.Tensor:
    """forward(x) on the non-square layer: DoRALinear's output, x left as it was."""
    error = observations.get("forward_error")
    if error is not None and _is_shape_error(error):
        message = _column_mistake(observations, case)
        require(message is None, message)
        raise AssertionError(
            f"forward(x) raised a shape error ({error}): x is (batch, in), W0 and B A are "
            "(out, in), the magnitude and the row norms (out,); the norm of each row is "
            "torch.linalg.norm(weight, dim=1)"
        )
    raised(observations, "forward", "forward(x)")
    returned = observations.get("forward_returned")
    require(
        returned is None, f"forward(x) must return a tensor, got {returned} (a missing return?)"
    )
    got, want = observations["forward"], _dora_reference(case)["y"]
    require(
        tuple(got.shape) == tuple(want.shape),
        f"forward(x) for x of shape (batch, in) = ({case['batch']}, {case['in']}) must return "
        f"(batch, out) = {tuple(want.shape)}, got {tuple(got.shape)}",
    )
    x, x_after = _dora_tensors(case)["x"].double(), observations.get("forward_x")
    require(
        x_after is not None and x_after.shape == x.shape and torch.equal(x_after, x),
        "forward changed its input x in place: compute new tensors instead",
    )
    if not _close(got, want):
        for wrong, message in _dora_mistakes(case):
            require(not _close(got, wrong), message)
        gap = float((got - want).abs().max())
        raise AssertionError(
            f"forward(x) differs from DoRA's (lora_course.variants.DoRALinear on the same W0, b, "
            f"A, B and magnitude; largest difference {gap:.3g}): {DORA}"
        )
    return got


def _judge_dora_gradients(observations, case) -> None:
    """Gradients reach magnitude, A and B, with the norm treated as a constant (detached)."""
    require(
        observations.get("forward_requires_grad", True),
        "forward's output carries no gradient: it is computed under torch.no_grad() or "
        "detached, so training would change nothing. Detach the norm only",
    )
    raised(observations, "backward", "backpropagating through forward's output")
    missing = [name for name in ROLES if f"grad_{name}" not in observations]
    require(
        not missing,
        f"no gradient reaches {' or '.join(missing)}: it is cut from the graph (.detach(), "
        ".data or torch.no_grad() in forward), so training would never change it. Only the "
        "norm is detached",
    )
    want, undetached = _dora_reference(case), _undetached_gradients(case)
    for name in ("lora_A", "lora_B"):
        got = observations[f"grad_{name}"]
        if _close(got, want[f"grad_{name}"]):
            continue
        require(
            not _close(got, undetached[f"grad_{name}"]),
            f"the gradient of {name} is the one through the norm too: detach the norm, "
            "||W0 + s B A||.detach(), as the DoRA paper (section 4.3) and PEFT do. The check "
            "compares with PEFT's gradients; the full ones cost more memory and differ",
        )
        raise AssertionError(
            f"the gradient of {name} is wrong, though the output is right: forward must "
            "compute the output from lora_A, lora_B and magnitude themselves"
        )
    require(
        _close(observations["grad_magnitude"].reshape(-1), want["grad_magnitude"]),
        "the gradient of magnitude is wrong, though the output is right: multiply by "
        "self.magnitude itself",
    )


def _judge_other_inputs(observations, case) -> None:
    """A (batch, seq, in) input; the base weight unchanged; a square layer; a base without bias."""
    raised(observations, "base_after", "reading base.weight after forward")
    W = _dora_tensors(case)["W"].double()
    after = observations["base_after"]
    require(
        after.shape == W.shape and torch.equal(after, W),
        "forward changed the base weight: it must stay W0 (compute the adapted weight as a "
        "new tensor)",
    )
    error = observations.get("forward3_error")
    require(
        error is None or error.startswith("NotImplementedError"),
        f"forward fails on a (batch, seq, in) input such as a language model passes ({error}): "
        "only the last dimension of x is in",
    )
    raised(observations, "forward3", "forward on a (batch, seq, in) input")
    got3, want3 = observations.get("forward3"), _dora_reference(case)["y3"]
    require(
        isinstance(got3, torch.Tensor) and _close(got3, want3),
        f"forward on a (batch, seq, in) input should return {tuple(want3.shape)}, the 2-D result "
        "at every position",
    )
    n = case["square"]
    _judge_built(observations, case, "square_init", f" on a square {n} -> {n} layer")
    _judge_values_set(observations, "square_values", f" of a square {n} -> {n} layer")
    raised(observations, "square_forward", f"forward(x) on a square {n} -> {n} layer")
    message = _column_mistake(observations, case)
    require(message is None, message)
    got, want = observations.get("square_forward"), _dora_reference(case, square=True)["y"]
    require(
        isinstance(got, torch.Tensor) and _close(got, want),
        f"forward(x) on a square {n} -> {n} layer differs from DoRA's: {DORA}",
    )
    what = " on a base layer without bias (bias=None, as in SmolLM2's projections)"
    _judge_built(observations, case, "nobias_init", what)
    _judge_values_set(observations, "nobias_values", what)
    raised(observations, "nobias_forward", "forward(x)" + what)
    got, want = observations.get("nobias_forward"), _dora_reference(case, bias=False)["y"]
    require(
        isinstance(got, torch.Tensor) and _close(got, want),
        f"forward(x){what} differs from DoRA's: add the bias only when there is one",
    )


def judge_dora(observations, case) -> None:
    """Exercise 09.1: a trainable magnitude per row, starting at ||W0||; DoRALinear's forward."""
    _judge_built(observations, case, "init", "")
    _judge_magnitude_registered(observations, case)
    _judge_magnitude_start(observations, case)
    _judge_values_set(observations, "values", "")
    _judge_dora_output(observations, case)
    _judge_dora_gradients(observations, case)
    _judge_other_inputs(observations, case)


def _dora_variant(rng: random.Random) -> dict:
    """Drawn sizes (in, out, r, batch and the square layer's all different), alpha / r not 1."""
    r = rng.randint(2, 3)
    n_in, n_out, batch, square = rng.sample(range(r + 2, 12), 4)
    alpha = r * rng.randint(1, 3) + rng.randint(1, r - 1)  # not a multiple of r
    return {"seed": rng.randrange(2**31), "in": n_in, "out": n_out, "r": r, "alpha": alpha,
            "batch": batch, "square": square}  # fmt: skip


DORA_FORWARD = Exercise(
    id="09.1",
    target="MyDoRALinear",
    observe=observe_dora,
    judge=judge_dora,
    visible={"seed": 0, "in": 7, "out": 5, "r": 2, "alpha": 5, "batch": 4, "square": 6},
    variant=_dora_variant,
)


def check_dora_forward(layer_class) -> None:
    """Exercise 09.1: DoRA's trainable magnitude per output row, and its forward."""
    DORA_FORWARD.check(layer_class)


# --- 09.2 loraplus_param_groups(model, lr, ratio) ---------------------------------------------

OUTSIDE = "a tensor that is not a parameter of the model"
PAIR = "a (name, parameter) pair"


class _Model(nn.Module):
    """The case's model: LoRALinear and DoRALinear layers in a row, a trainable LayerNorm, a
    frozen head; and, if the case says so, one adapted layer's base bias left trainable."""

    def __init__(self, case):
        super().__init__()
        sizes, r = case["sizes"], case["r"]
        with torch.random.fork_rng(devices=[]):  # initial values do not matter here
            torch.manual_seed(case["seed"])
            self.layers = nn.ModuleList(
                (DoRALinear if dora else LoRALinear)(nn.Linear(n_in, n_out), r=r, alpha=2 * r)
                for n_in, n_out, dora in zip(sizes[:-1], sizes[1:], case["dora"], strict=True)
            )
            self.norm = nn.LayerNorm(sizes[-1])  # trainable, and not LoRA
            self.head = nn.Linear(sizes[-1], 2).requires_grad_(False)
        if case["trainable_bias"] is not None:
            self.layers[case["trainable_bias"]].base.bias.requires_grad_(True)


def _entry(value, names: dict[int, str]) -> str:
    """A parameter's name in the model, or what the learner put in its place."""
    if isinstance(value, torch.Tensor):
        return names.get(id(value), OUTSIDE)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], torch.Tensor):
        return PAIR
    return describe(value)


def _number(value) -> float | None:
    try:
        number = float(value)
    except Exception:  # noqa: BLE001 - a learner's lr may be anything
        return None
    return number if math.isfinite(number) else None


def _read_groups(result, names, observations) -> list | None:
    """Record each group the learner returned (a copy of it, for AdamW), or why they can't be."""
    if result is None or isinstance(result, torch.Tensor | dict | str | bytes | nn.Module | float):
        observations["call_returned"] = describe(result)
        return None
    items = attempt(observations, "groups", lambda: list(result))
    if "groups_error" in observations:
        return None
    seen, copies = [], []
    for index, group in enumerate(items):
        if not isinstance(group, dict):
            seen.append({"dict": False, "what": _entry(group, names)})
            copies.append(group)
            continue
        record = {"dict": True, "keys": [describe(k) if not isinstance(k, str) else k
                                         for k in group]}  # fmt: skip
        copy = dict(group)
        params = group.get("params")
        if "params" not in group:
            record["params_kind"] = "missing"
        elif isinstance(params, torch.Tensor):
            record["params_kind"], record["params"] = "tensor", [_entry(params, names)]
        else:
            record["params_kind"] = "set" if isinstance(params, set | frozenset) else "other"
            listed = attempt(observations, f"group{index}_params", lambda p=params: list(p))
            if listed is not None:
                record["params"] = [_entry(p, names) for p in listed]
                if not isinstance(params, set | frozenset):
                    copy["params"] = listed  # an iterator is spent once read: AdamW gets the list
        if "lr" in group:
            record["lr"] = _number(group["lr"])
            if record["lr"] is None:
                record["lr_returned"] = describe(group["lr"])
        seen.append(record)
        copies.append(copy)
    observations["groups"] = seen
    return copies


def observe_loraplus(loraplus_param_groups, case):
    """Exercise 09.2: the groups returned for the case's model, and what AdamW makes of them."""
    observations = {}
    model = _Model(case)
    names = {id(p): name for name, p in model.named_parameters()}
    result = attempt(
        observations, "call", lambda: loraplus_param_groups(model, case["lr"], case["ratio"])
    )
    observations["trainable_after"] = attempt(
        observations,
        "trainable_after",
        lambda: sorted(name for name, p in model.named_parameters() if p.requires_grad),
    )
    if "call_error" in observations:
        return observations
    copies = _read_groups(result, names, observations)
    if copies is None:
        return observations

    def adamw() -> None:
        with warnings.catch_warnings():  # a duplicate in a group warns: the judge names it
            warnings.simplefilter("ignore")
            optimizer = torch.optim.AdamW(copies, lr=case["lr"])
        observations["effective"] = [
            {"params": [_entry(p, names) for p in g["params"]], "lr": _number(g["lr"])}
            for g in optimizer.param_groups
        ]

    attempt(observations, "adamw", adamw)
    return observations


def _lists(names) -> str:
    names = sorted(set(names))
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _names(case) -> set[str]:
    """The names of all the case model's parameters, trainable or frozen."""
    return {name for name, _ in _Model(case).named_parameters()}


def _judge_group_shapes(observations, case, call: str) -> list[dict]:
    """The groups are dicts with 'params' holding the model's parameters; fail naming why not."""
    names = _names(case)
    groups = observations["groups"]
    require(groups, f"{call} returned no groups: every trainable parameter needs one")
    loose = [g["what"] for g in groups if not g["dict"]]
    require(
        not loose or not all(w in names for w in loose),
        f"{call} returned the parameters themselves, not groups: then every parameter gets the "
        "same learning rate. Return groups, dicts {'params': [...], 'lr': ...}",
    )
    require(
        PAIR not in loose,
        f"{call} returned (name, parameter) pairs, as model.named_parameters() gives them: "
        "return groups, dicts {'params': [parameters], 'lr': ...}",
    )
    if loose:
        raise AssertionError(
            f"each group must be a dict {{'params': [...], 'lr': ...}}, got {loose[0]}"
        )
    for index, group in enumerate(groups):
        require(
            group["params_kind"] != "missing",
            f"a group has no 'params' (its keys are {group['keys']}): torch.optim.AdamW reads "
            "each group's parameters from the key 'params'",
        )
        raised(observations, f"group{index}_params", "reading a group's params")
        require(
            group["params_kind"] != "set",
            "a group's params is a set: torch.optim.AdamW refuses sets, whose order changes from "
            "run to run (the optimizer's saved state is matched to parameters by position). Use "
            "a list",
        )
        strays = [p for p in group["params"] if p not in names]
        require(
            PAIR not in strays,
            "a group's params holds (name, parameter) pairs from model.named_parameters(): put "
            "the parameters themselves in it",
        )
        if strays:
            raise AssertionError(
                f"a group's params holds {strays[0]}: only parameters of the model belong in a "
                "group"
            )
    return groups


def _lr_of(case) -> dict[str, float]:
    """The learning rate of every trainable parameter, as the package's loraplus_param_groups
    gives it for the case's model."""
    model = _Model(case)
    names = {id(p): name for name, p in model.named_parameters()}
    return {
        names[id(p)]: group["lr"]
        for group in loraplus_param_groups(model, case["lr"], case["ratio"])
        for p in group["params"]
    }


def _judge_membership(observations, groups, case, call: str) -> None:
    """Every trainable parameter in exactly one group, once; no frozen one; flags unchanged."""
    want = _lr_of(case)
    trainable = set(want)
    raised(observations, "trainable_after", "listing the model's trainable parameters")
    require(
        sorted(observations["trainable_after"]) == sorted(trainable),
        f"{call} changed which parameters train (requires_grad): it must only group them",
    )
    everywhere = [name for group in groups for name in group["params"]]
    across = [n for n in set(everywhere)
              if sum(n in g["params"] for g in groups) > 1]  # fmt: skip
    require(
        not across,
        f"{_lists(across)} {'is' if len(across) == 1 else 'are'} in more than one group: "
        "torch.optim.AdamW refuses that ('some parameters appear in more than one parameter "
        "group'). Each parameter belongs to exactly one group, with one learning rate",
    )
    twice = [n for n in set(everywhere) if everywhere.count(n) > 1]
    require(
        not twice,
        f"{_lists(twice)} {'is' if len(twice) == 1 else 'are'} twice in one group: list each "
        "parameter once",
    )
    error = observations.get("adamw_error")
    require(error is None, f"torch.optim.AdamW(groups, lr=lr) rejects the groups: {error}")
    frozen = [n for n in everywhere if n not in trainable]
    require(
        not frozen,
        f"frozen parameters are in the groups ({_lists(frozen)}): they have requires_grad=False "
        "and never get a gradient; leave them out (the base weights stay frozen)",
    )
    left_out = [n for n in trainable if n not in everywhere]
    require(
        not left_out,
        f"{_lists(left_out)} {'is' if len(left_out) == 1 else 'are'} in no group: every "
        "trainable parameter needs one (p.requires_grad), or the optimizer never updates it. "
        "Not only lora_A and lora_B train: DoRA's magnitudes, a LayerNorm left trainable...",
    )


def _judge_rates(observations, case, call: str) -> None:
    """Every lora_B at lr * ratio, everything else at lr (AdamW's view of the groups)."""
    lr, ratio = case["lr"], case["ratio"]
    want = _lr_of(case)
    got = {}
    for group in observations["effective"]:
        require(
            group["lr"] is not None,
            f"a group's 'lr' is not a number: {_lr_text(observations)}",
        )
        got.update(dict.fromkeys(group["params"], group["lr"]))
    if all(math.isclose(got[n], want[n], rel_tol=1e-6) for n in want):
        return
    kinds = {"lora_A": [], "lora_B": [], "other": []}
    for name in want:
        kinds[next((k for k in ("lora_A", "lora_B") if k in name), "other")].append(name)

    def at(names, rate) -> bool:
        return bool(names) and all(math.isclose(got[n], rate, rel_tol=1e-6) for n in names)

    a, b, other = kinds["lora_A"], kinds["lora_B"], kinds["other"]
    require(
        not (at(a, lr * ratio) and at(b, lr)),
        f"the ratio is applied to A instead of B: lora_A gets lr * ratio = {lr * ratio:g} and "
        f"lora_B gets lr = {lr:g}. LoRA+ speeds up B (out, r), which starts at zero",
    )
    require(
        not (at(a, lr / ratio) and at(b, lr)),
        f"lora_A gets lr / ratio and lora_B lr: the ratio between them is right, but the base "
        f"rate is A's: A keeps lr = {lr:g}, B gets lr * ratio = {lr * ratio:g}",
    )
    require(
        not at(a + b + other, lr),
        f"every parameter gets lr = {lr:g}: the ratio is ignored; lora_B gets lr * ratio",
    )
    require(
        not at(a + b + other, lr * ratio),
        f"every parameter gets lr * ratio = {lr * ratio:g}: only lora_B does; the rest keeps lr",
    )
    faster = [n for n in other if math.isclose(got[n], lr * ratio, rel_tol=1e-6)]
    require(
        not faster,
        f"B's learning rate also goes to {_lists(faster)}: LoRA+ raises the rate of the lora_B "
        f"matrices only, everything else that trains keeps lr = {lr:g}. (PEFT's "
        "create_loraplus_optimizer also puts 1-D tensors such as DoRA's magnitudes and biases in "
        "B's group; this course's lora_course.variants.loraplus_param_groups does not.)",
    )
    name = next(n for n in sorted(want) if not math.isclose(got[n], want[n], rel_tol=1e-6))
    raise AssertionError(
        f"{name} gets a learning rate of {got[name]:g}, it should be {want[name]:g} (lr = "
        f"{lr:g}, ratio = {ratio:g}: lora_B at lr * ratio, everything else at lr)"
    )


def _lr_text(observations) -> str:
    bad = [g.get("lr_returned") for g in observations["groups"] if g.get("lr_returned")]
    return f"got {bad[0]}" if bad else "give each group a float"


def judge_loraplus(observations, case) -> None:
    """Exercise 09.2: groups that AdamW takes; lora_B at lr * ratio, every other trainable at lr."""
    call = f"loraplus_param_groups(model, lr={case['lr']:g}, ratio={case['ratio']:g})"
    raised(observations, "call", call)
    returned = observations.get("call_returned")
    require(
        returned is None,
        f"{call} should return a list of parameter groups, dicts such as {{'params': [...], "
        f"'lr': ...}}, got {returned}",
    )
    raised(observations, "groups", f"iterating over what {call} returned")
    groups = _judge_group_shapes(observations, case, call)
    _judge_membership(observations, groups, case, call)
    _judge_rates(observations, case, call)


def _loraplus_variant(rng: random.Random) -> dict:
    """A drawn model (3 or 4 adapted layers, at least one of each kind), lr and ratio."""
    r = rng.randint(2, 3)
    n_layers = rng.randint(3, 4)
    dora = [True, False] + [rng.random() < 0.5 for _ in range(n_layers - 2)]
    rng.shuffle(dora)
    return {
        "seed": rng.randrange(2**31),
        "sizes": [rng.randint(r + 1, 12) for _ in range(n_layers + 1)],
        "dora": dora,
        "trainable_bias": rng.choice([None, *range(n_layers)]),
        "r": r,
        "lr": rng.choice([1e-4, 2e-4, 5e-4, 1e-3]),
        "ratio": rng.choice([4, 8, 16, 20]),
    }


LORAPLUS_GROUPS = Exercise(
    id="09.2",
    target="loraplus_param_groups",
    observe=observe_loraplus,
    judge=judge_loraplus,
    visible={
        "seed": 0,
        "sizes": [10, 8, 6, 5],
        "dora": [False, True, False],
        "trainable_bias": 2,
        "r": 2,
        "lr": 2e-4,
        "ratio": 16,
    },
    variant=_loraplus_variant,
)


def check_loraplus_param_groups(loraplus_param_groups) -> None:
    """Exercise 09.2: LoRA+'s optimizer groups, every lora_B at ratio times the others' rate."""
    LORAPLUS_GROUPS.check(loraplus_param_groups)


# --- 09.3 pissa_factors(weight, r, scaling) -> (lora_A, lora_B, residual) ---------------------

PISSA = (
    "with U, S, Vh = torch.linalg.svd(weight, full_matrices=False): A = sqrt(S_r / s) * Vh_r "
    "(the first r rows of Vh), B = U_r * sqrt(S_r / s) (the first r columns of U)"
)


def _pissa_weight(case) -> torch.Tensor:
    """A float32 (out, in) weight U S V^T with random singular vectors and well-apart values."""
    g = torch.Generator().manual_seed(case["seed"])
    n_out, n_in = case["out"], case["in"]
    k = min(n_out, n_in)
    U = torch.linalg.qr(torch.randn(n_out, k, generator=g, dtype=torch.float64)).Q  # (out, k)
    V = torch.linalg.qr(torch.randn(n_in, k, generator=g, dtype=torch.float64)).Q  # (in, k)
    steps = 0.55 + 0.25 * torch.rand(k, generator=g, dtype=torch.float64)
    S = 3 * torch.cumprod(steps, 0)  # (k,): descending, each at most 0.8 of the one before
    return ((U * S) @ V.T).float()  # (out, in)


def _pissa_reference(case) -> dict[str, torch.Tensor]:
    """pissa_init on a LoRALinear around the case's weight: A, B and the residual base weight."""
    W = _pissa_weight(case)
    base = nn.utils.skip_init(nn.Linear, case["in"], case["out"], bias=False)
    with torch.no_grad():
        base.weight.copy_(W)
    with torch.random.fork_rng(devices=[]):  # A's random init is overwritten anyway
        layer = pissa_init(LoRALinear(base, r=case["r"], alpha=case["alpha"]))
    return {"W": W.double(), "A": _float64(layer.lora_A), "B": _float64(layer.lora_B),
            "residual": _float64(layer.base.weight)}  # fmt: skip


def _ordered(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A's rows and B's columns, largest pair first (the order of the rank is free)."""
    order = (torch.linalg.norm(A, dim=1) * torch.linalg.norm(B, dim=0)).argsort(descending=True)
    return A[order], B[:, order]


def _same_factors(A, B, A_want, B_want, tol: float = 1e-4) -> bool:
    """A and B equal A_want and B_want, up to each pair's sign (an SVD may flip u_i and v_i
    together) and to the order of the pairs."""
    if tuple(A.shape) != tuple(A_want.shape) or tuple(B.shape) != tuple(B_want.shape):
        return False
    if not (bool(torch.isfinite(A).all()) and bool(torch.isfinite(B).all())):
        return False
    A, B = _ordered(A, B)
    A_want, B_want = _ordered(A_want, B_want)
    sign = torch.sign((A * A_want).sum(dim=1) + (B * B_want).sum(dim=0))  # (r,)
    sign[sign == 0] = 1
    return _close(A * sign[:, None], A_want, tol) and _close(B * sign, B_want, tol)


def _pissa_mistakes(case) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """(the A and B a mistake gives, the mistake it names), in float64."""
    ref = _pissa_reference(case)
    U, S, Vh = torch.linalg.svd(ref["W"], full_matrices=False)  # (out, k), (k,), (k, in)
    r, s = case["r"], case["alpha"] / case["r"]
    k = len(S)
    A, B = ref["A"], ref["B"]
    root = (S / s).sqrt()  # (k,)
    low = slice(k - r, k)
    one_side = (
        "B A still reproduces W's top part, so base + s B A = W at step 0, but the split decides "
        "training: A's gradient goes with B, and B's with A, so one factor's gradients would be "
        "about S_r times the other's. PiSSA and PEFT's init_lora_weights='pissa' balance the "
        "two, sqrt(S_r / s) on each side"
    )
    mistakes = [
        (
            root[low, None] * Vh[low],
            U[:, low] * root[low],
            "A and B hold the r SMALLEST singular values and their vectors: PiSSA starts the "
            "adapter on the principal (largest) ones, S[:r], U[:, :r] and Vh[:r] "
            "(torch.linalg.svd sorts S in descending order)",
        ),
        (
            A * math.sqrt(s),
            B * math.sqrt(s),
            f"A and B are not divided by the scaling: the layer adds s B A (s = {s:g}), so B A "
            "must be the top part divided by s: take sqrt(S_r / s) on each side",
        ),
        (
            A / math.sqrt(s),
            B / math.sqrt(s),
            "each factor is divided by the scaling, so B A is divided by s twice: divide S_r by "
            "s once, then take the square root, sqrt(S_r / s) on each side",
        ),
        (
            Vh[:r],
            U[:, :r] * (S[:r] / s),
            f"lora_B holds all of S_r / s and lora_A none: {one_side}",
        ),
        (
            (S[:r] / s)[:, None] * Vh[:r],
            U[:, :r],
            f"lora_A holds all of S_r / s and lora_B none: {one_side}",
        ),
        (
            (S[:r] / s)[:, None] * Vh[:r],
            U[:, :r] * (S[:r] / s),
            "S_r / s is on both sides, so B A holds it squared: each side takes its square root",
        ),
    ]
    if Vh.shape[1] == k:  # Vh is square: its columns have A's length too
        mistakes.append(
            (
                root[:r, None] * Vh[:, :r].T,
                B,
                "lora_A is made of the first r COLUMNS of Vh: the right singular vectors are "
                "the first r rows of Vh, Vh[:r] (torch.linalg.svd returns Vh = V^T; the older "
                "torch.svd returns V, whose columns they are)",
            )
        )
    if U.shape[0] == k:  # U is square: its rows have B's length too
        mistakes.append(
            (
                A,
                U[:r, :].T * root[:r],
                "lora_B is made of the first r ROWS of U: the left singular vectors are the "
                "first r columns of U, U[:, :r]",
            )
        )
    return mistakes


def observe_pissa(pissa_factors, case):
    """Exercise 09.3: the learner's A, B and residual for the case's weight; the weight after."""
    observations = {}
    weight = _pissa_weight(case)
    s = case["alpha"] / case["r"]
    result = attempt(observations, "call", lambda: pissa_factors(weight, case["r"], s))
    if "call_error" not in observations:
        try:
            if isinstance(result, torch.Tensor):
                raise TypeError("one tensor")
            A, B, residual = result
        except Exception:  # noqa: BLE001 - not a triple
            count = len(result) if isinstance(result, tuple | list) else None
            kind = f"a {type(result).__name__} of {count}" if count is not None else None
            observations["call_returned"] = kind or describe(result)
        else:
            for key, value in (("A", A), ("B", B), ("residual", residual)):
                _record(observations, key, value)
    after = attempt(observations, "weight_after", lambda: _float64(weight))
    if after is not None:
        observations["weight_after"] = after
    return observations


def _judge_pissa_shapes(observations, case, call: str) -> None:
    n_out, n_in, r = case["out"], case["in"], case["r"]
    for key, name in (("A", "lora_A"), ("B", "lora_B"), ("residual", "residual")):
        raised(observations, key, f"reading the {name} returned by {call}")
        returned = observations.get(f"{key}_returned")
        require(returned is None, f"{call}: {name} should be a tensor, got {returned}")
    a, b = tuple(observations["A"].shape), tuple(observations["B"].shape)
    require(
        (a, b) != ((n_out, r), (r, n_in)),
        f"{call} returned B first: return (lora_A, lora_B, residual), A (r, in) = {(r, n_in)} "
        f"and B (out, r) = {(n_out, r)}",
    )
    require(
        a != (n_in, r) and b != (r, n_out),
        f"lora_A or lora_B is transposed: A is {a} and B is {b}, but A is (r, in) = "
        f"{(r, n_in)} and B is (out, r) = {(n_out, r)}",
    )
    require(
        a != (r, n_out) or n_in == n_out,
        f"lora_A has shape (r, out) = {a}: A is (r, in), made of the first r rows of Vh (the "
        "right singular vectors, of length in); the first r columns of U (length out) make B",
    )
    require(
        b != (n_in, r) or n_in == n_out,
        f"lora_B has shape (in, r) = {b}: B is (out, r), made of the first r columns of U (the "
        "left singular vectors, of length out); the first r rows of Vh (length in) make A",
    )
    require(a == (r, n_in), f"lora_A should be (r, in) = {(r, n_in)}, got {a}")
    require(b == (n_out, r), f"lora_B should be (out, r) = {(n_out, r)}, got {b}")
    shape = tuple(observations["residual"].shape)
    require(
        shape == (n_out, n_in),
        f"the residual replaces the base weight: it has the weight's shape (out, in) = "
        f"{(n_out, n_in)}, got {shape}",
    )


def judge_pissa(observations, case) -> None:
    """Exercise 09.3: pissa_init's factors (top r, sqrt(S_r / s) each side), residual W - s B A."""
    r, s = case["r"], case["alpha"] / case["r"]
    call = f"pissa_factors(weight ({case['out']}, {case['in']}), r={r}, scaling={s:g})"
    error = observations.get("call_error")
    require(
        error is None or not _is_shape_error(error),
        f"{call} raised a shape error ({error}): lora_A (r, in) is made of the first r rows of "
        "Vh, lora_B (out, r) of the first r columns of U, and B @ A has the weight's shape "
        "(out, in)",
    )
    raised(observations, "call", call)
    returned = observations.get("call_returned")
    require(
        returned is None,
        f"{call} should return three tensors (lora_A, lora_B, residual), got {returned}",
    )
    _judge_pissa_shapes(observations, case, call)
    ref = _pissa_reference(case)
    A, B, residual = observations["A"], observations["B"], observations["residual"]
    if not _same_factors(A, B, ref["A"], ref["B"]):
        for A_wrong, B_wrong, message in _pissa_mistakes(case):
            require(not _same_factors(A, B, A_wrong, B_wrong), message)
        raise AssertionError(
            f"lora_A and lora_B differ from pissa_init's (signs of each singular pair aside): "
            f"{PISSA}"
        )
    W, BA = ref["W"], B @ A  # (out, in)
    if not _close(residual, W - s * BA):
        named = [
            (W, "the residual is the weight itself: subtract s B A, or the adapted layer "
             "computes base + s B A = W + s B A, the top part counted twice"),
            (W - BA, f"the residual subtracts B A without the scaling: the layer adds s B A "
             f"(s = {s:g}), so the base must be W - s B A for base + s B A = W"),
            (s * BA, "the residual is the top part s B A: the base keeps the REST, W - s B A"),
            (W + s * BA, "the residual adds s B A: subtract it, so that base + s B A = W"),
        ]  # fmt: skip
        for wrong, message in named:
            require(not _close(residual, wrong), message)
        gap = float((residual + s * BA - W).abs().max())
        raise AssertionError(
            f"residual + s B A should give back the weight W (largest difference {gap:.3g}): "
            "the residual is W - s B A"
        )
    after = observations.get("weight_after")
    require(
        isinstance(after, torch.Tensor) and after.shape == W.shape and torch.equal(after, W),
        f"{call} changed the weight it was given in place (an in-place operation such as -=, "
        "sub_ or copy_): return the residual as a new tensor, and leave the caller's weight "
        "as it was",
    )


def _pissa_variant(rng: random.Random) -> dict:
    """Drawn sizes (never square; k = min(out, in) > 2r) and alpha / r not 1."""
    r = rng.randint(1, 3)
    n_out, n_in = rng.sample(range(2 * r + 2, 13), 2)
    alpha = rng.choice([a for a in range(2, 4 * r + 3) if a != r])
    return {"seed": rng.randrange(2**31), "out": n_out, "in": n_in, "r": r, "alpha": alpha}


PISSA_FACTORS = Exercise(
    id="09.3",
    target="pissa_factors",
    observe=observe_pissa,
    judge=judge_pissa,
    visible={"seed": 0, "out": 8, "in": 6, "r": 2, "alpha": 5},  # s = 2.5
    variant=_pissa_variant,
)


def check_pissa_factors(pissa_factors) -> None:
    """Exercise 09.3: PiSSA's A and B from the top singular vectors, and the residual base."""
    PISSA_FACTORS.check(pissa_factors)


EXERCISES = (DORA_FORWARD, LORAPLUS_GROUPS, PISSA_FACTORS)
