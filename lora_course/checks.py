"""Checks for the exercises: each raises AssertionError naming the mistake (exercises 01-07).

Every check runs the student's code on small seeded inputs, compares it with the package's
reference, and, when they differ, tries the classic wrong versions to say *which* mistake it is.
`hidden=True` runs the same check on other sizes and seeds: the classroom grader uses it.
"""

from __future__ import annotations

import json
import math

import torch
from torch import nn

from .counting import lora_parameters, projection_shapes
from .targets import ATTENTION, MLP, PROJECTIONS, TARGET_PRESETS


def _close(a, b, tol: float = 1e-5) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol, rtol=tol))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _seed(hidden: bool) -> int:
    return 7 if hidden else 0


# --- Exercises 01: rank and SVD energy ------------------------------------------------------


def check_energy_captured(energy_captured, hidden: bool = False) -> None:
    """Exercise 01.1: fraction of sum(sigma^2) in the r largest singular values."""
    g = torch.Generator().manual_seed(_seed(hidden))
    S = torch.sort(torch.rand(12 if hidden else 8, generator=g) * 3, descending=True).values
    for r in (0, 1, 3, len(S)):
        got = float(energy_captured(S, r))
        want = float((S[:r] ** 2).sum() / (S**2).sum())
        if math.isclose(got, want, abs_tol=1e-6):
            continue
        _require(
            not math.isclose(got, float(S[:r].sum() / S.sum()), abs_tol=1e-6),
            "energy is the sum of squared singular values: square S before summing",
        )
        smallest_first = float((S.flip(0)[:r] ** 2).sum() / (S**2).sum())
        _require(
            not math.isclose(got, smallest_first, abs_tol=1e-6),
            "S is sorted largest first: take the first r values, not the last r",
        )
        raise AssertionError(f"energy_captured(S, {r}) should be {want:.4f}, got {got:.4f}")


def check_low_rank_approximation(low_rank_approximation, hidden: bool = False) -> None:
    """Exercise 01.2: the best rank-r approximation (truncated SVD)."""
    g = torch.Generator().manual_seed(_seed(hidden))
    W = torch.randn(9 if hidden else 6, 7 if hidden else 5, generator=g)
    r = 2
    approx = low_rank_approximation(W.clone(), r)
    _require(
        tuple(approx.shape) == tuple(W.shape),
        f"the approximation must have W's shape {tuple(W.shape)}, got {tuple(approx.shape)}",
    )
    _require(
        torch.linalg.matrix_rank(approx).item() <= r,
        f"the approximation must have rank at most r = {r}",
    )
    S = torch.linalg.svdvals(W)
    floor = float((S[r:] ** 2).sum().sqrt())  # Eckart-Young: the smallest possible error
    error = float((W - approx).norm())
    _require(
        error <= floor * (1 + 1e-4),
        f"error {error:.4f} is above the best possible {floor:.4f}: keep the r LARGEST "
        "singular values, and rebuild with U[:, :r] @ diag(S[:r]) @ Vh[:r, :] (Vh, not Vh.T)",
    )


def check_rank_for_energy(rank_for_energy, hidden: bool = False) -> None:
    """Exercise 01.3: the smallest r whose energy reaches the target."""
    S = torch.tensor([4.0, 2.0, 2.0, 1.0, 1.0]) if not hidden else torch.tensor([3.0, 3.0, 1.0])
    energy = torch.cumsum(S**2, 0) / (S**2).sum()
    for target in (0.5, 0.9, float(energy[1]), 1.0):
        want = int((energy < target - 1e-9).sum().item()) + 1
        got = int(rank_for_energy(S, target))
        _require(
            got != want - 1,
            f"rank_for_energy(S, {target:.3f}) returned {got}: off by one, the energy of "
            f"r = {got} is {float(energy[got - 1]) if got else 0:.3f}, below the target",
        )
        _require(
            got != want + 1,
            f"rank_for_energy(S, {target:.3f}) returned {got}: off by one, r = {want} "
            "already reaches the target (use >=, not >)",
        )
        _require(got == want, f"rank_for_energy(S, {target:.3f}) should be {want}, got {got}")


# --- Exercises 02: LoRALinear from scratch ---------------------------------------------------


def _make_layer(layer_class, base: nn.Linear, r: int, alpha: float):
    layer = layer_class(base, r=r, alpha=alpha)
    for name in ("lora_A", "lora_B", "base"):
        _require(hasattr(layer, name), f"the layer needs an attribute named {name!r}")
    return layer


def check_lora_init(layer_class, hidden: bool = False) -> None:
    """Exercise 02.1: shapes, initialization and a frozen base."""
    torch.manual_seed(_seed(hidden))
    n_in, n_out, r = (12, 10, 3) if hidden else (8, 6, 2)
    base = nn.Linear(n_in, n_out)
    layer = _make_layer(layer_class, base, r, alpha=4)
    _require(
        tuple(layer.lora_A.shape) == (r, n_in),
        f"lora_A should be (r, in) = {(r, n_in)}, got {tuple(layer.lora_A.shape)}",
    )
    _require(
        tuple(layer.lora_B.shape) == (n_out, r),
        f"lora_B should be (out, r) = {(n_out, r)}, got {tuple(layer.lora_B.shape)}",
    )
    b_zero, a_zero = bool((layer.lora_B == 0).all()), bool((layer.lora_A == 0).all())
    _require(
        not (a_zero and b_zero),
        "A and B are both zero: then both gradients are zero and training can never start; "
        "initialize A randomly and B at zero",
    )
    _require(
        b_zero,
        "B must start at zero: the adapted model should equal the base model before training",
    )
    _require(not a_zero, "A must start random (e.g. Kaiming uniform), with only B at zero")
    _require(
        layer.lora_A.requires_grad and layer.lora_B.requires_grad,
        "lora_A and lora_B must be trainable nn.Parameters",
    )
    trainable_base = [n for n, p in layer.base.named_parameters() if p.requires_grad]
    _require(
        not trainable_base,
        f"base weights left trainable ({', '.join(trainable_base)}): freeze them with "
        "requires_grad_(False); LoRA trains only A and B",
    )
    x = torch.randn(4, n_in)
    _require(
        _close(layer(x), base(x)),
        "before training the output must equal the base layer's output (B is zero)",
    )


def check_lora_forward(layer_class, hidden: bool = False) -> None:
    """Exercise 02.2: forward = base(x) + (alpha / r) * x A^T B^T."""
    torch.manual_seed(_seed(hidden))
    n_in, n_out, r, alpha = (12, 10, 4, 32) if hidden else (8, 6, 2, 8)
    base = nn.Linear(n_in, n_out)
    layer = _make_layer(layer_class, base, r, alpha)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(r, n_in))
        layer.lora_B.copy_(torch.randn(n_out, r))
    x = torch.randn(5, n_in)
    branch = x @ layer.lora_A.T @ layer.lora_B.T  # (5, out), unscaled
    got = layer(x)
    if _close(got, base(x) + alpha / r * branch):
        return
    wrong = {
        "scaling omitted: multiply the branch by alpha / r": 1.0,
        "scaling inverted: use alpha / r, not r / alpha": r / alpha,
        "scaling should be alpha / r, not alpha * r": alpha * r,
        "scaling should be alpha / r, not alpha / sqrt(r) (that is rsLoRA)": alpha / math.sqrt(r),
    }
    for mistake, factor in wrong.items():
        _require(
            not _close(got, base(x) + factor * branch),
            f"{mistake} = {alpha / r:g} here, got {factor:g}",
        )
    _require(not _close(got, alpha / r * branch), "the base layer's output is missing: add base(x)")
    raise AssertionError(
        "forward should return base(x) + (alpha / r) * (x @ A.T @ B.T); the output differs"
    )


def _merge_case(layer_class, hidden: bool):
    torch.manual_seed(_seed(hidden))
    n, r, alpha = (10, 3, 6) if hidden else (6, 2, 8)  # square, so a transposed product fits
    base = nn.Linear(n, n)
    layer = _make_layer(layer_class, base, r, alpha)
    with torch.no_grad():
        layer.lora_A.copy_(torch.randn(r, n))
        layer.lora_B.copy_(torch.randn(n, r))
    w0 = base.weight.detach().clone()
    delta = layer.lora_B.detach() @ layer.lora_A.detach()  # (out, in)
    return layer, w0, delta, alpha / r


def check_merge(layer_class, hidden: bool = False) -> None:
    """Exercise 02.3: merge() folds (alpha / r) B A into the base weight, same outputs after."""
    layer, w0, delta, scale = _merge_case(layer_class, hidden)
    x = torch.randn(3, w0.shape[1])
    before = layer(x).detach()
    layer.merge()
    w = layer.base.weight.detach()
    if not _close(w, w0 + scale * delta):
        _require(
            not _close(w, w0 + scale * delta.T),
            "merge used a transposed product: the update is B @ A, shaped (out, in) like W",
        )
        _require(
            not _close(w, w0 + delta),
            f"merge without scaling: add (alpha / r) * B @ A, alpha / r = {scale:g}",
        )
        raise AssertionError("after merge the base weight should be W0 + (alpha / r) * B @ A")
    _require(
        _close(layer(x), before, 1e-4),
        "after merge the output changed: forward must skip the LoRA branch once merged",
    )


def check_unmerge(layer_class, hidden: bool = False) -> None:
    """Exercise 02.4: unmerge() restores the base weight, and outputs are as before merging."""
    layer, w0, _, _ = _merge_case(layer_class, hidden)
    x = torch.randn(3, w0.shape[1])
    before = layer(x).detach()
    layer.merge()
    layer.unmerge()
    _require(
        _close(layer.base.weight, w0, 1e-5),
        "unmerge does not restore the base: subtract exactly what merge added, (alpha / r) * B @ A",
    )
    _require(
        _close(layer(x), before, 1e-4),
        "after unmerge the output differs from before merging: forward must add the LoRA "
        "branch again once unmerged",
    )


# --- Exercises 03: parameter arithmetic ------------------------------------------------------


def check_lora_pair_parameters(lora_pair_parameters, hidden: bool = False) -> None:
    """Exercise 03.1: parameters of one LoRA pair, r * (in + out)."""
    cases = [(576, 192, 8), (1536, 576, 16)] if hidden else [(576, 576, 8), (576, 192, 4)]
    for n_in, n_out, r in cases:
        got, want = lora_pair_parameters(n_in, n_out, r), r * (n_in + n_out)
        if got == want:
            continue
        _require(got != n_in * n_out, "that is the frozen weight's size in * out, not LoRA's")
        _require(
            got != 2 * r * n_in, "2 * r * in assumes a square layer; A is (r, in) and B is (out, r)"
        )
        _require(got == want, f"lora_pair_parameters({n_in}, {n_out}, {r}) = {want}, got {got}")


def check_lora_parameters_for_config(count_fn, config, hidden: bool = False) -> None:
    """Exercise 03.2: LoRA parameters for a config's targets, grouped-query attention included."""
    if hidden:
        cases = [(("k_proj", "v_proj"), 16), (("q_proj", "o_proj", "up_proj"), 4)]
    else:
        cases = [(TARGET_PRESETS["q, v"], 8), (ATTENTION, 8)]
    shapes = projection_shapes(config)
    kv_width = shapes["k_proj"][1]
    for targets, r in cases:
        got, want = count_fn(config, list(targets), r), lora_parameters(config, targets, r)
        narrow = sum(
            r * (config.hidden_size - kv_width) for t in targets if t in ("k_proj", "v_proj")
        )
        if got != want and got == want + config.num_hidden_layers * narrow:
            raise AssertionError(
                "k_proj and v_proj counted at full width: under grouped-query attention they "
                f"output num_key_value_heads * head_dim = {kv_width}, not {config.hidden_size}"
            )
        per_layer = want // config.num_hidden_layers
        _require(got != per_layer, "that is one layer's count: multiply by num_hidden_layers")
        _require(got == want, f"{list(targets)} at r = {r}: expected {want:,}, got {got:,}")


def check_trainable_parameters(count_trainable, hidden: bool = False) -> None:
    """Exercise 03.3: count only parameters that will be trained."""
    from .inject import inject_lora
    from .models import tiny_llama

    model = tiny_llama(seed=_seed(hidden))
    inject_lora(model, ["q_proj", "v_proj"] if not hidden else ["o_proj"], r=4)
    want = sum(p.numel() for p in model.parameters() if p.requires_grad)
    got = count_trainable(model)
    _require(
        got != sum(p.numel() for p in model.parameters()),
        "the count includes frozen parameters: count only those with requires_grad",
    )
    _require(got == want, f"expected {want:,} trainable parameters, got {got:,}")


# --- Exercises 04: alpha and rank ------------------------------------------------------------


def check_scaling(scaling, hidden: bool = False) -> None:
    """Exercise 04.1: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    cases = [(16, 8), (32, 64)] if not hidden else [(8, 16), (64, 4)]
    for alpha, r in cases:
        want, got = alpha / r, float(scaling(alpha, r, use_rslora=False))
        _require(math.isclose(got, want), f"scaling should be alpha / r = {want:g}, got {got:g}")
        want = alpha / math.sqrt(r)
        got = float(scaling(alpha, r, use_rslora=True))
        _require(
            math.isclose(got, want),
            f"with use_rslora, scaling should be alpha / sqrt(r) = {want:g}, got {got:g}",
        )


def check_alpha_predictions(branch_factor: float, same_first_step: bool) -> None:
    """Exercise 04.2: predictions about doubling alpha, checked against a measurement."""
    from .layers import LoRALinear

    torch.manual_seed(0)
    x = torch.randn(16, 8)
    sizes = []
    for alpha in (8, 16):
        torch.manual_seed(1)  # the same base, A and B for both values of alpha
        layer = LoRALinear(nn.Linear(8, 8), r=2, alpha=alpha)
        nn.init.normal_(layer.lora_B)
        sizes.append((layer(x) - layer.base(x)).norm().item())
    measured = sizes[1] / sizes[0]
    _require(
        math.isclose(float(branch_factor), measured, rel_tol=1e-3),
        f"doubling alpha multiplies the branch output by {measured:.2f} (measured), "
        f"you predicted {branch_factor}",
    )
    _require(
        same_first_step is True,
        "under Adam, the first update with doubled alpha equals the one with doubled lr: "
        "B moves by about lr * sign(grad), and the update is (alpha / r) * lr * sign * A",
    )


def check_rslora_ratio(rslora_ratio, hidden: bool = False) -> None:
    """Exercise 04.3: how much larger alpha / sqrt(r) is than alpha / r, as a function of r."""
    for r in (4, 64, 192) if not hidden else (1, 9, 100):
        got, want = float(rslora_ratio(r)), math.sqrt(r)
        _require(
            not math.isclose(got, 1 / want) or r == 1,
            "inverted: alpha / sqrt(r) is the LARGER multiplier for r > 1",
        )
        _require(
            math.isclose(got, want, rel_tol=1e-9),
            f"at r = {r}: (alpha / sqrt(r)) / (alpha / r) = sqrt(r) = {want:g}, got {got:g}",
        )


# --- Exercises 05: fine-tuning ---------------------------------------------------------------


def check_answer_only_labels(answer_only_labels, hidden: bool = False) -> None:
    """Exercise 05.1: labels -100 on the prompt, the token ids on the answer."""
    prompt, answer = ([5, 6, 7, 8], [9, 10]) if not hidden else ([1, 2], [3, 4, 5, 6])
    row = answer_only_labels(prompt, answer)
    _require(
        row["input_ids"] == prompt + answer, "input_ids must be the prompt followed by the answer"
    )
    labels = row["labels"]
    _require(len(labels) == len(row["input_ids"]), "labels must be as long as input_ids")
    _require(
        labels != prompt + answer,
        "the prompt is not masked: its labels must be -100 so the loss ignores it",
    )
    _require(
        labels[len(prompt) :] == answer,
        "the answer's labels must be its token ids (the model shifts them itself)",
    )
    _require(labels[: len(prompt)] == [-100] * len(prompt), "every prompt label must be -100")


def check_exact_match(exact_match, hidden: bool = False) -> None:
    """Exercise 05.2: every field right, invalid JSON is wrong (not an exception)."""
    gold = {"product": "laptop", "issue": "damaged", "urgency": "high", "order_id": "123456"}
    text = json.dumps(gold)
    _require(exact_match(text, text) is True, "identical answers must match")
    reordered = json.dumps(dict(reversed(list(gold.items()))))
    _require(
        exact_match(reordered, text) is True,
        "compare the parsed fields, not the strings: key order does not matter",
    )
    _require(exact_match(text.replace("high", "low"), text) is False, "one wrong field: no match")
    for bad in ("{not json", "", "[1, 2]", '"laptop"'):
        try:
            result = exact_match(bad, text)
        except Exception as error:  # noqa: BLE001 - any crash is the mistake being named
            raise AssertionError(
                f"exact_match crashed on {bad!r} ({type(error).__name__}): a prediction that is "
                "not a JSON object is simply wrong, return False"
            ) from None
        _require(result is False, f"{bad!r} is not a JSON object: it must not match")
    if hidden:
        extra = json.dumps({**gold, "note": "x"})
        _require(exact_match(extra, text) is True, "extra keys do not make the fields wrong")


def check_pick_precision(pick_precision, hidden: bool = False) -> None:
    """Exercise 05.3: 'bf16' from compute capability 8.0, 'fp16' from 6.0, else 'fp32'."""
    cases = {(7, 5): "fp16", (8, 0): "bf16", (9, 0): "bf16", (6, 1): "fp16", (5, 2): "fp32",
             None: "fp32"}  # fmt: skip
    if hidden:
        cases.update({(8, 6): "bf16", (7, 0): "fp16", (12, 0): "bf16"})
    for capability, want in cases.items():
        got = pick_precision(capability)
        if capability == (7, 5):
            _require(
                got != "bf16",
                "a T4 (7.5) has no native bf16 (it is emulated, slowly): use fp16 with "
                "loss scaling",
            )
        _require(got == want, f"pick_precision({capability}) should be {want!r}, got {got!r}")


# --- Exercises 06: which modules -------------------------------------------------------------


def check_rank_for_budget(rank_for_budget, config, hidden: bool = False) -> None:
    """Exercise 06.1: the rank whose count for the targets is closest to a budget."""
    from .counting import rank_for_budget as reference

    budgets = [1_843_200, 500_000] if not hidden else [2_000_000, 100_000]
    for budget in budgets:
        for targets in (list(TARGET_PRESETS["q, v"]), list(MLP)):
            got, want = rank_for_budget(config, targets, budget), reference(config, targets, budget)
            _require(
                got == want,
                f"{targets} with a budget of {budget:,}: rank {want} gives "
                f"{lora_parameters(config, targets, want):,}, closest; got {got}",
            )


def check_plan_adapter(plan_adapter, config, hidden: bool = False) -> None:
    """Exercise 06.2: the most module types at rank >= min_rank within a budget."""
    order = [PROJECTIONS, ATTENTION, TARGET_PRESETS["q, v"]]  # most module types first
    budgets = [3_000_000, 1_000_000, 300_000] if not hidden else [10_000_000, 600_000]
    for budget in budgets:
        targets, r = plan_adapter(config, budget, min_rank=4)
        count = lora_parameters(config, targets, r)
        _require(count <= budget, f"budget {budget:,}: your plan uses {count:,} parameters")
        _require(r >= 4, f"budget {budget:,}: rank {r} is below min_rank = 4")
        fitting = [t for t in order if lora_parameters(config, t, 4) <= budget]
        if fitting:
            _require(
                len(targets) >= len(fitting[0]),
                f"budget {budget:,}: {list(fitting[0])} fits at rank >= 4; adapt more module "
                f"types before raising the rank (you chose {list(targets)})",
            )
            best_r = int(budget // lora_parameters(config, tuple(targets), 1))
            _require(
                r == best_r,
                f"budget {budget:,}: with {list(targets)} the largest rank that fits is "
                f"{best_r}, you chose {r}",
            )


def check_mlp_share(mlp_share, config, hidden: bool = False) -> None:
    """Exercise 06.3: the fraction of a block's linear-layer weights that sit in the MLP."""
    shapes = projection_shapes(config)
    mlp = sum(i * o for t, (i, o) in shapes.items() if t in MLP)
    want = mlp / sum(i * o for i, o in shapes.values())
    got = float(mlp_share(config))
    full_width = (
        3
        * config.hidden_size
        * config.intermediate_size
        / (3 * config.hidden_size * config.intermediate_size + 4 * config.hidden_size**2)
    )
    _require(
        math.isclose(got, want, rel_tol=1e-6) or not math.isclose(got, full_width),
        "k_proj and v_proj counted at full width: under grouped-query attention they are "
        "narrower, so the MLP's share is larger",
    )
    _require(math.isclose(got, want, rel_tol=1e-6), f"the MLP's share is {want:.4f}, got {got:.4f}")


# --- Exercises 07: merge and compatibility ---------------------------------------------------


def check_merged_weight(merged_weight, hidden: bool = False) -> None:
    """Exercise 07.1: W0 + (alpha / r) B A, checked against PEFT's own merge."""
    from .layers import peft_lora_linear

    torch.manual_seed(_seed(hidden))
    n_in, n_out, r, alpha = (10, 6, 3, 12) if hidden else (8, 8, 2, 16)
    layer = peft_lora_linear(nn.Linear(n_in, n_out), r=r, alpha=alpha)
    nn.init.normal_(layer.lora_B["default"].weight)
    w0 = layer.base_layer.weight.detach().clone()
    A = layer.lora_A["default"].weight.detach()  # (r, in)
    B = layer.lora_B["default"].weight.detach()  # (out, r)
    got = merged_weight(w0.clone(), A.clone(), B.clone(), alpha, r)
    layer.merge()
    want = layer.base_layer.weight.detach()
    if not _close(got, want):
        if n_in == n_out:
            _require(
                not _close(got, w0 + alpha / r * (B @ A).T),
                "transposed product: the update is B @ A, (out, in) like W0",
            )
        _require(not _close(got, w0 + B @ A), f"scaling missing: multiply B @ A by {alpha / r:g}")
        raise AssertionError("merged weight differs from PEFT's merge: W0 + (alpha / r) * B @ A")


def check_adapter_shapes_fit(adapter_shapes_fit, hidden: bool = False) -> None:
    """Exercise 07.2: an adapter fits if each A is (r, in) and each B is (out, r) of its module."""
    from .models import tiny_llama

    model = tiny_llama(seed=0)  # hidden 64, k_proj/v_proj 64 -> 32 (grouped-query attention)
    good = {"model.layers.0.self_attn.q_proj": ((4, 64), (64, 4)),
            "model.layers.1.self_attn.v_proj": ((4, 64), (32, 4))}  # fmt: skip
    _require(adapter_shapes_fit(good, model) is True, "a matching adapter must fit")
    gqa = {**good, "model.layers.1.self_attn.v_proj": ((4, 64), (64, 4))}
    _require(
        adapter_shapes_fit(gqa, model) is False,
        "v_proj outputs 32 features here (grouped-query attention): a B of 64 rows must not fit",
    )
    missing = {**good, "model.layers.9.self_attn.q_proj": ((4, 64), (64, 4))}
    _require(
        adapter_shapes_fit(missing, model) is False,
        "a module the model does not have (layer 9 of 2) must not fit",
    )
    if hidden:
        wrong_in = {"model.layers.0.mlp.down_proj": ((4, 64), (64, 4))}  # down_proj: 128 -> 64
        _require(adapter_shapes_fit(wrong_in, model) is False, "A's width must equal in_features")


def check_changed_parameters(changed_parameters, hidden: bool = False) -> None:
    """Exercise 07.3: names of the parameters that differ between two models (a modified base)."""
    from .models import tiny_llama

    a, b = tiny_llama(seed=0), tiny_llama(seed=0)
    _require(changed_parameters(a, b) == [], "two identical models: nothing differs")
    name = "model.layers.1.mlp.up_proj.weight" if not hidden else "model.norm.weight"
    with torch.no_grad():
        b.get_parameter(name).view(-1)[0] += 1e-3  # one entry, slightly
    got = list(changed_parameters(a, b))
    _require(
        got == [name],
        f"only {name} differs (one entry, by 0.001); got {got}: compare values exactly "
        "(torch.equal), not with a loose tolerance",
    )
