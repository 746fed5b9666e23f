"""Exercises 07: a merge by hand, whether an adapter fits a model, which parameters changed."""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..counting import projection_shapes
from ..models import TINY_LLAMA
from ..targets import ATTENTION, MLP
from .exercise import Exercise, attempt, describe, raised, require

# --- 07.1 merged_weight(W0, A, B, alpha, r) ---------------------------------------------------


def _merge_inputs(case):
    """W0 (out, in), A (r, in) and B (out, r), seeded; B is not zero, as after training."""
    g = torch.Generator().manual_seed(case["seed"])
    W0 = torch.randn(case["out"], case["in"], generator=g)  # (out, in)
    A = torch.randn(case["r"], case["in"], generator=g) / math.sqrt(case["in"])  # (r, in)
    B = torch.randn(case["out"], case["r"], generator=g)  # (out, r)
    return W0, A, B


def _peft_merge(case) -> torch.Tensor:
    """PEFT's own merge() of a LoRA layer holding the case's W0, A and B."""
    from ..layers import peft_lora_linear

    W0, A, B = _merge_inputs(case)
    with torch.random.fork_rng(devices=[]):  # PEFT's init draws from the global RNG: leave it be
        layer = peft_lora_linear(
            nn.Linear(case["in"], case["out"], bias=False), r=case["r"], alpha=case["alpha"]
        )
    with torch.no_grad():
        layer.base_layer.weight.copy_(W0)
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    layer.merge()
    return layer.base_layer.weight.detach().to(torch.float64)  # (out, in)


def observe_merged_weight(merged_weight, case):
    """Exercise 07.1: the learner's merged weight, and the tensors it got as it left them."""
    observations = {}
    W0, A, B = _merge_inputs(case)
    inputs = {"W0": W0, "A": A, "B": B}  # the caller's own tensors: a merge must not change them
    result = attempt(
        observations, "call", lambda: merged_weight(W0, A, B, case["alpha"], case["r"])
    )
    if "call_error" not in observations:
        if result is None or isinstance(result, bool | str | bytes):
            observations["returned"] = describe(result)
        else:
            merged = attempt(
                observations,
                "tensor",
                lambda: torch.as_tensor(result).detach().to(torch.float64).cpu().clone(),
            )
            if merged is not None:
                observations["merged"] = merged
    for name, t in inputs.items():  # the judge compares them with the case's
        observations[f"{name}_dtype"] = str(t.dtype)
        after = attempt(
            observations,
            f"after_{name}",
            lambda t=t: t.detach().to(torch.float64, copy=True).cpu(),
        )
        if after is not None:
            observations[f"after_{name}"] = after
    return observations


def _scaled(case, scaling: float, with_base: bool = True, sign: float = 1.0) -> torch.Tensor:
    W0, A, B = (t.double() for t in _merge_inputs(case))
    return (W0 if with_base else 0) + sign * scaling * (B @ A)  # (out, in)


def _merge_mistakes(case):
    """(what the learner computed, the mistake it names), most likely first."""
    alpha, r = case["alpha"], case["r"]
    scaling = alpha / r
    return (
        (
            _scaled(case, alpha // r),
            f"the scaling was rounded down: alpha // r is integer division ({alpha} // {r} = "
            f"{alpha // r}, not {scaling:.4g}); divide with /",
        ),
        (
            _scaled(case, 1.0),
            "the update is not scaled: LoRA's B @ A is multiplied by its scaling (notebook 02), "
            "in the merge as in the forward pass",
        ),
        (_scaled(case, r / alpha), "the scaling is upside down (r / alpha)"),
        (
            _scaled(case, alpha / math.sqrt(r)),
            "that is rsLoRA's scaling (alpha / sqrt(r)): PEFT's default, use_rslora=False, is "
            "the scaling of notebook 02",
        ),
        (_scaled(case, alpha), "the scaling ignores the rank r"),
        (_scaled(case, scaling**2), "the update is scaled twice"),
        (_scaled(case, scaling, sign=-1.0), "the update is subtracted: that is unmerge"),
        (
            _scaled(case, scaling, with_base=False),
            "you returned the update alone: the merged weight is W0 with the update added",
        ),
        (_scaled(case, 0.0), "the result is W0 itself: the update is missing"),
    )


def judge_merged_weight(observations, case) -> None:
    """Exercise 07.1: PEFT's merge() of the same layer, with the caller's tensors left unchanged."""
    call = f"merged_weight(W0, A, B, alpha={case['alpha']}, r={case['r']})"
    error = observations.get("call_error")
    n_in, n_out, r = case["in"], case["out"], case["r"]
    shapes = f"W0 is ({n_out}, {n_in}), A ({r}, {n_in}), B ({n_out}, {r})"
    require(
        error is None
        or not error.startswith("RuntimeError")
        or not any(word in error for word in ("size", "shape")),
        f"{call} raised {error}: the matrices do not line up. {shapes}: the update must come "
        "out (out, in), like W0; check the order of the product (and which factor, if any, is "
        "transposed)",
    )
    raised(observations, "call", call)
    returned = observations.get("returned")
    require(returned is None, f"{call} should return the merged weight, got {returned}")
    raised(observations, "tensor", f"converting the result of {call} to a tensor")
    got, want = observations["merged"], _peft_merge(case)
    require(
        tuple(got.shape) == tuple(want.shape),
        f"{call} returned shape {tuple(got.shape)}: the merged weight is (out, in) like W0, "
        f"{tuple(want.shape)}",
    )
    require(bool(torch.isfinite(got).all()), f"{call} contains NaN or inf")
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
        for wrong, message in _merge_mistakes(case):
            require(not torch.allclose(got, wrong, rtol=1e-5, atol=1e-5), message)
        gap = float((got - want).abs().max())
        raise AssertionError(
            f"{call} differs from PEFT's merge() of the same layer (largest difference {gap:.3g})"
        )
    mutated = []
    for name, given in zip(("W0", "A", "B"), _merge_inputs(case), strict=True):
        raised(observations, f"after_{name}", f"reading {name} after the call")
        after = observations.get(f"after_{name}")
        if (
            observations.get(f"{name}_dtype") != str(given.dtype)
            or after is None
            or after.shape != given.shape
            or not torch.equal(after, given.double())
        ):
            mutated.append(name)
    require(
        not mutated,
        f"{call} changed the {' and '.join(mutated)} it was given (an in-place operation: +=, "
        "*=, add_, mul_...): the caller's tensors must stay as they were, so build a new tensor",
    )


def _merge_variant(rng: random.Random):
    n_in, n_out = rng.sample(range(3, 13), 2)  # never square: a transposed update cannot pass
    r = rng.randint(2, min(5, n_in - 1, n_out - 1))
    alpha = rng.choice([a for a in range(2 * r + 1, 41) if a % r])  # alpha // r >= 2, not alpha / r
    return {"seed": rng.randrange(2**31), "in": n_in, "out": n_out, "r": r, "alpha": alpha}


MERGED_WEIGHT = Exercise(
    id="07.1",
    target="merged_weight",
    observe=observe_merged_weight,
    judge=judge_merged_weight,
    visible={"seed": 0, "in": 7, "out": 5, "r": 3, "alpha": 16},  # 16 / 3 is not whole
    variant=_merge_variant,
)


def check_merged_weight(merged_weight) -> None:
    """Exercise 07.1: W0 plus the scaled update, checked against PEFT's own merge."""
    MERGED_WEIGHT.check(merged_weight)


# --- tiny Llamas, built once per process (the learner only ever gets copies) ------------------


@functools.lru_cache(maxsize=64)
def _cached_tiny(seed: int, sizes_json: str):
    from ..models import tiny_llama

    with torch.random.fork_rng(devices=[]):  # tiny_llama seeds torch: leave the caller's RNG be
        return tiny_llama(seed=seed, **json.loads(sizes_json))


def _tiny(seed: int, sizes: dict) -> nn.Module:
    """A fresh copy of tiny_llama(seed, **sizes)."""
    return copy.deepcopy(_cached_tiny(seed, json.dumps(sizes, sort_keys=True)))


def _tiny_shapes(sizes: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection of tiny_llama(**sizes), from its sizes alone."""
    return projection_shapes(SimpleNamespace(model_type="llama", **{**TINY_LLAMA, **sizes}))


def _module_name(layer: int, projection: str) -> str:
    return f"model.layers.{layer}.{'self_attn' if projection in ATTENTION else 'mlp'}.{projection}"


# --- 07.2 adapter_shapes_fit(adapter_shapes, model) -------------------------------------------


def _fit_queries(rng: random.Random, sizes: dict) -> list[dict]:
    """Adapters {module name: [A shape, B shape]}: two that fit, then one fault in each other."""
    shapes, settings = _tiny_shapes(sizes), {**TINY_LLAMA, **sizes}
    layers, hidden, vocab = (
        settings["num_hidden_layers"],
        settings["hidden_size"],
        settings["vocab_size"],
    )
    r = rng.choice([2, 4, 8])

    def pair(projection, r=r, a_width=None, b_height=None):
        n_in, n_out = shapes[projection]
        return [[r, a_width or n_in], [b_height or n_out, r]]

    def layer() -> int:
        return rng.randrange(layers)

    narrow = rng.choice(["k_proj", "v_proj"])  # narrower than q_proj: grouped-query attention
    wide = rng.choice(["gate_proj", "up_proj"])  # hidden -> intermediate

    def around(name, shapes_of_bad) -> dict:
        """The bad module between two that fit: every module must be checked, not the first."""
        neighbours = [
            (_module_name(layer, projection), pair(projection))
            for layer, projection in [(0, "q_proj"), (layers - 1, "down_proj"), (0, "up_proj")]
            if _module_name(layer, projection) != name
        ]
        return dict([neighbours[0], (name, shapes_of_bad), neighbours[1]])

    return [
        {  # fits: grouped-query attention's narrow B, down_proj's wide A
            _module_name(layer(), "q_proj"): pair("q_proj"),
            _module_name(layers - 1, narrow): pair(narrow),
            _module_name(0, "down_proj"): pair("down_proj"),
        },
        {  # fits: another rank, and lm_head, a linear layer outside the blocks
            _module_name(layer(), wide): pair(wide, r=2 * r),
            "lm_head": [[2 * r, hidden], [vocab, 2 * r]],
        },
        around(_module_name(layer(), narrow), pair(narrow, b_height=hidden)),  # B's height (GQA)
        around(_module_name(layer(), wide), pair(wide, b_height=hidden)),  # B's height
        around(_module_name(layer(), "down_proj"), pair("down_proj", a_width=hidden)),  # A's width
        around(_module_name(layer(), "o_proj"), [[r, hidden], [hidden, 2 * r]]),  # A rank != B rank
        {_module_name(layer(), wide): [[shapes[wide][0], r], [r, shapes[wide][1]]]},  # transposed
        around("model.embed_tokens", [[r, hidden], [vocab, r]]),  # its weight is (vocab, hidden)
        around(f"model.layers.{layer()}.input_layernorm", [[r, hidden], [hidden, r]]),  # a norm
        around(f"model.layers.{layer()}.self_attn", [[r, hidden], [hidden, r]]),  # not a leaf
        around(_module_name(layers, "q_proj"), pair("q_proj")),  # a layer the model lacks
        {f"model.layers.{layer()}.self_attn.qproj": pair("q_proj")},  # a misspelled name
    ]


def _fit_case(rng: random.Random, sizes: dict) -> dict:
    return {"seed": 0, "sizes": sizes, "adapters": _fit_queries(rng, sizes)}


def _why_not(adapter: dict, modules: dict):
    """(module name, kind, why) for the first module of `adapter` that does not fit, or None."""
    for name, (a, b) in adapter.items():
        module = modules.get(name)
        if module is None:
            return name, "unknown", f"the model has no module named {name!r}"
        if not isinstance(module, nn.Linear):
            return (
                name,
                "kind",
                f"{name} ({type(module).__name__}) is not an nn.Linear: an (A, B) pair adapts a "
                "linear layer, whatever the shape of the module's weight",
            )
        where = f"{name} ({module.in_features} -> {module.out_features})"
        if list(a) == [module.in_features, b[0]] and list(b) == [a[1], module.out_features]:
            return name, "transposed", f"{where}: A and B are transposed: A is (r, in_features)"
        if a[0] != b[1]:
            return (
                name,
                "rank",
                f"{where}: A has {a[0]} rows but B has {b[1]} columns, and both are the rank r",
            )
        if a[1] != module.in_features:
            return name, "A", f"{where}: A is (r, in_features), and this A is {a[1]} wide"
        if b[0] != module.out_features:
            gqa = (
                " (grouped-query attention: k_proj and v_proj are narrower than q_proj)"
                if name.endswith(("k_proj", "v_proj"))
                else ""
            )
            return name, "B", f"{where}: B is (out_features, r), and this B has {b[0]} rows{gqa}"
    return None


def _show(adapter: dict, modules: dict) -> str:
    def one(name, a, b):
        module = modules.get(name)
        size = (
            f" ({module.in_features} -> {module.out_features})"
            if isinstance(module, nn.Linear)
            else ""
        )
        return f"{name}{size}: A {tuple(a)}, B {tuple(b)}"

    return "; ".join(one(name, a, b) for name, (a, b) in adapter.items())


def observe_adapter_shapes_fit(adapter_shapes_fit, case):
    """Exercise 07.2: the learner's answer for each adapter on a tiny Llama."""
    observations = {}
    model = attempt(observations, "model", lambda: _tiny(case["seed"], case["sizes"]))
    if model is None:
        return observations
    answers = []
    for k, adapter in enumerate(case["adapters"]):
        shapes = {name: (tuple(a), tuple(b)) for name, (a, b) in adapter.items()}
        answer = attempt(observations, f"q{k}", lambda s=shapes: adapter_shapes_fit(s, model))
        if f"q{k}_error" in observations:
            answer = None
        elif isinstance(answer, bool | np.bool_):  # numpy's bool too
            answer = bool(answer)
        else:
            observations[f"q{k}_returned"] = describe(answer)
            answer = None
        answers.append(answer)
    observations["answers"] = answers
    return observations


def judge_adapter_shapes_fit(observations, case) -> None:
    """Exercise 07.2: every module exists, is nn.Linear, A is (r, in) and B is (out, r), one r."""
    raised(observations, "model", "building the check's model")
    modules = dict(_tiny(case["seed"], case["sizes"]).named_modules())
    adapters = case["adapters"]
    raised(observations, "q0", "adapter_shapes_fit(adapter_shapes, model)")  # not written yet?
    for k, (adapter, got) in enumerate(zip(adapters, observations["answers"], strict=True)):
        why = _why_not(adapter, modules)
        shown = _show(adapter, modules)
        error = observations.get(f"q{k}_error")
        if error is not None and why is not None and why[1] in ("unknown", "kind"):
            raise AssertionError(
                f"adapter_shapes_fit raised {error} for {shown}, where {why[2]}: such an adapter "
                "does not fit; answer False, do not raise"
            )
        raised(observations, f"q{k}", f"adapter_shapes_fit for {shown}")
        returned = observations.get(f"q{k}_returned")
        if returned is not None:
            hint = " (does every path end in a return?)" if returned.startswith("NoneType") else ""
            raise AssertionError(
                f"adapter_shapes_fit should return True or False, got {returned}{hint}"
            )
        if why is None:
            require(got is True, f"this adapter fits, but you answered False: {shown}")
            continue
        if got is True:
            others = (
                " (the other modules of this adapter fit: check every one)"
                if len(adapter) > 1
                else ""
            )
            raise AssertionError(
                f"{why[2]}, so the adapter does not fit, but you answered True{others}"
            )


def _fit_variant(rng: random.Random):
    hidden = rng.choice([32, 48, 64, 96])
    sizes = {
        "hidden_size": hidden,
        "intermediate_size": rng.choice([2, 3]) * hidden,
        "num_hidden_layers": rng.randint(2, 3),
        "num_key_value_heads": rng.choice([1, 2]),  # of 4 heads: always grouped-query attention
        "vocab_size": rng.choice([100, 160, 200]),
    }
    return _fit_case(rng, sizes)


ADAPTER_SHAPES_FIT = Exercise(
    id="07.2",
    target="adapter_shapes_fit",
    observe=observe_adapter_shapes_fit,
    judge=judge_adapter_shapes_fit,
    visible=_fit_case(random.Random(0), {}),
    variant=_fit_variant,
)


def check_adapter_shapes_fit(adapter_shapes_fit) -> None:
    """Exercise 07.2: an adapter fits if each A is (r, in) and each B is (out, r) of its module."""
    ADAPTER_SHAPES_FIT.check(adapter_shapes_fit)


# --- 07.3 changed_parameters(model_a, model_b) ------------------------------------------------

BUFFER = "model.calibration"  # a persistent buffer both models get: state_dict() lists it
CHANGES = {  # kind: what it does to model_b's parameter
    "swap": "one value raised by 0.5 and another lowered by 0.5: its sum and mean are unchanged",
    "step": "one value moved by one float32 step, a relative change of about 1e-7",
    "add": "one value changed by 0.001",
}


def _parameter_names(layers: int) -> list[str]:
    """The names of tiny_llama's parameters, in the order of named_parameters()."""
    per_layer = [f"self_attn.{p}" for p in ATTENTION] + [f"mlp.{p}" for p in MLP]
    per_layer += ["input_layernorm", "post_attention_layernorm"]
    blocks = [f"model.layers.{i}.{p}.weight" for i in range(layers) for p in per_layer]
    return ["model.embed_tokens.weight", *blocks, "model.norm.weight"]


def _change(model: nn.Module, name: str, kind: str, i: int, j: int) -> None:
    with torch.no_grad():
        flat = model.get_parameter(name).view(-1)
        i = i % flat.numel()
        j = (i + 1 + j % (flat.numel() - 1)) % flat.numel()  # another entry
        if kind == "swap":  # norm weights start at 1.0: both stay exact, the sum too
            flat[i] += 0.5
            flat[j] -= 0.5
        elif kind == "step":
            flat[i] = torch.nextafter(flat[i], torch.tensor(math.inf))
        else:
            flat[i] += 1e-3


# Meta's original names for Llama's modules: a checkpoint saved under them has the same
# parameters, in number and shape, under other names.
META_NAMES = {
    "q_proj": "wq",
    "k_proj": "wk",
    "v_proj": "wv",
    "o_proj": "wo",
    "gate_proj": "w1",
    "down_proj": "w2",
    "up_proj": "w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
    "norm": "final_norm",
}


def _rename(model: nn.Module, path: str, new: str) -> None:
    """Register the module at `path` under the name `new` in the same parent, instead."""
    parent_path, _, old = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    module = parent.get_submodule(old)
    delattr(parent, old)
    parent.add_module(new, module)


def _renamed(pair: dict) -> tuple[str, str]:
    """(the parameter's name, its name in the renamed model) for a pair with a renamed module."""
    path = pair["module"]
    parent = path.rpartition(".")[0]
    return f"{path}.weight", f"{parent}.{META_NAMES[path.rpartition('.')[2]]}.weight"


def _models(case) -> dict[str, nn.Module]:
    """Two copies of the case's tiny Llama, one whose lm_head is not tied to its embedding, and
    one per pair with a renamed module."""
    untied = {**case["sizes"], "tie_word_embeddings": False}
    models = {
        "a": _tiny(case["seed"], case["sizes"]),
        "b": _tiny(case["seed"], case["sizes"]),
        "untied": _tiny(case["seed"], untied),
    }
    for k, pair in enumerate(case["pairs"]):
        if pair.get("renamed"):
            models[f"renamed{k}"] = _tiny(case["seed"], case["sizes"])
            path = pair["module"]
            _rename(models[f"renamed{k}"], path, META_NAMES[path.rpartition(".")[2]])
    for model in models.values():
        model.model.register_buffer(BUFFER.split(".")[1], torch.zeros(4))
    return models


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def _pair(models: dict, states: dict, k: int, pair: dict) -> tuple[nn.Module, nn.Module]:
    """The pair's two models, reset to their first values, with the pair's changes in model_b."""
    chosen = [
        "untied"
        if pair.get("untied") == side
        else f"renamed{k}"
        if pair.get("renamed") == side
        else side
        for side in ("a", "b")
    ]
    with torch.no_grad():
        for key in chosen:
            for name, t in [*models[key].named_parameters(), *models[key].named_buffers()]:
                t.copy_(states[key][name])
    a, b = (models[key] for key in chosen)
    for name, kind, i, j in pair.get("changes", []):
        _change(b, name, kind, i, j)
    if pair.get("buffer"):
        b.get_buffer(BUFFER).fill_(1.0)
    return a, b


def observe_changed_parameters(changed_parameters, case):
    """Exercise 07.3: the learner's names for each pair of models, and whether it changed them."""
    observations = {}
    models = attempt(observations, "models", lambda: _models(case))
    if models is None:
        return observations
    states = {key: _state(model) for key, model in models.items()}
    names, mutated = [], []
    for k, pair in enumerate(case["pairs"]):
        key = f"p{k}"
        pair_models = attempt(
            observations, f"{key}_models", lambda k=k, p=pair: _pair(models, states, k, p)
        )
        if pair_models is None:  # the learner's code broke a model in an earlier call
            names.append(None)
            mutated.append(True)
            continue
        a, b = pair_models
        before = [p.detach().clone() for m in (a, b) for p in m.parameters()]
        result = attempt(observations, key, lambda a=a, b=b: changed_parameters(a, b))
        after = [p.detach() for m in (a, b) for p in m.parameters()]
        mutated.append(
            len(before) != len(after)
            or any(not torch.equal(x, y) for x, y in zip(before, after, strict=False))
        )
        listed = None
        if f"{key}_error" not in observations:
            try:
                listed = None if isinstance(result, str | bytes) or result is None else list(result)
            except Exception:  # noqa: BLE001 - not iterable
                listed = None
            if listed is None or not all(isinstance(n, str) for n in listed):
                observations[f"{key}_returned"] = describe(result)
                listed = None
        names.append(listed)
    observations["names"], observations["mutated"] = names, mutated
    return observations


def judge_changed_parameters(observations, case) -> None:
    """Exercise 07.3: parameters (no buffers) whose values differ at all, in their model's order."""
    order = _parameter_names({**TINY_LLAMA, **case["sizes"]}["num_hidden_layers"])
    call = "changed_parameters(model_a, model_b)"
    raised(observations, "models", "building the check's models")
    for k, pair in enumerate(case["pairs"]):
        require(
            f"p{k}_models_error" not in observations,
            f"{call} changed a model so that it could not be reset for the next pair: compare "
            "them without changing either",
        )
        error = observations.get(f"p{k}_error")
        situation = _not_the_same(pair)
        if situation is not None:
            if error is not None and not error.startswith("NotImplementedError"):
                require(
                    error.startswith("ValueError"),
                    f"{call} raised {error}; {situation}: check that, and raise ValueError",
                )
                continue
            raised(observations, f"p{k}", call)
            raise AssertionError(
                f"{call} answered {observations['names'][k]}; {situation}, so they are not the "
                "same architecture and there is no answer: raise ValueError"
            )
        require(
            error is None or "ambiguous" not in error,
            f"{call} raised {error}: comparing two tensors with != (or ==) compares them value "
            "by value and gives a tensor of booleans, which `if` cannot read as one answer; the "
            "question is whether every value is equal (torch.equal compares them all)",
        )
        raised(observations, f"p{k}", call)
        returned = observations.get(f"p{k}_returned")
        require(returned is None, f"{call} should return a list of parameter names, got {returned}")
        require(
            not observations["mutated"][k],
            f"{call} changed model_a or model_b (an in-place operation such as p -= q): compare "
            "them without changing either",
        )
        got = observations["names"][k]
        kinds = {name: kind for name, kind, _, _ in pair.get("changes", [])}
        want = [name for name in order if name in kinds]
        if got == want:
            continue
        _diagnose_changed(got, want, kinds, order, call)


def _not_the_same(pair: dict) -> str | None:
    """How the pair's two models differ in their parameters' names, or None if they do not."""
    if pair.get("untied"):
        side = f"model_{pair['untied']}"
        return (
            f"here lm_head.weight is a parameter of {side} only (its lm_head is not tied to "
            "the embedding): the two models do not have the same parameters"
        )
    if pair.get("renamed"):
        side = f"model_{pair['renamed']}"
        name, new = _renamed(pair)
        return (
            f"here {side} has a module under another name: its {new} is {name} in the other "
            "model, with the same shape. The two models have as many parameters, but not the "
            "same ones (not the same names)"
        )
    return None


def _diagnose_changed(got, want, kinds, order, call) -> None:
    twice = [name for name in got if got.count(name) > 1]
    require(not twice, f"{call} lists {twice[0] if twice else ''} twice")
    for name in got:
        require(
            name != BUFFER,
            f"{BUFFER} is a buffer, not a parameter (it differs here): list parameters only, "
            "those of named_parameters()",
        )
        require(
            name != "lm_head.weight",
            "lm_head.weight is tied to model.embed_tokens.weight: one tensor, which "
            "named_parameters() lists once (state_dict() lists it under both names); list the "
            "parameters as named_parameters() names them",
        )
        if not want:
            raise AssertionError(f"two identical models: nothing differs, but you listed {name}")
        require(name in order, f"{call} listed {name!r}, which is not a parameter of these models")
        require(name in want, f"{name} is equal in both models, but you listed it")
    require(
        not (len(want) > 1 and got == want[:1]),
        f"you listed only {got[0] if got else ''}, 1 of the {len(want)} changed parameters: "
        "keep going after the first difference",
    )
    for kind in ("swap", "step", "add"):  # the summaries' blind spot first, then tolerances
        of_kind = [name for name in want if kinds[name] == kind]
        missing = [name for name in of_kind if name not in got]
        if not missing:
            continue
        if len(missing) < len(of_kind):  # some found: not a blind spot of the comparison
            raise AssertionError(f"{missing[0]} differs ({CHANGES[kind]}), but you missed it")
        if kind == "swap":
            raise AssertionError(
                f"{missing[0]} differs ({CHANGES[kind]}), but you missed it: compare the values "
                "themselves, not a summary of them"
            )
        if kind == "step":
            raise AssertionError(
                f"{missing[0]} differs ({CHANGES[kind]}), but you missed it: every difference "
                "counts, however small, and a tolerance (torch.allclose, isclose, a threshold) "
                "calls these equal"
            )
        raise AssertionError(f"{missing[0]} differs ({CHANGES[kind]}), but you missed it")
    hint = " (not sorted by name)" if got == sorted(want) else ""
    raise AssertionError(
        f"right names, wrong order: list them in the order of model_a.named_parameters(){hint}"
    )


def _changed_case(rng: random.Random, seed: int, sizes: dict) -> dict:
    order = _parameter_names({**TINY_LLAMA, **sizes}["num_hidden_layers"])
    norms = [n for n in order if "norm" in n]
    linear = [n for n in order if "_proj" in n]

    def entry() -> int:
        return rng.randrange(10**6)

    while True:  # the embedding (tied to lm_head) and an order that sorting would change
        added = ["model.embed_tokens.weight", *rng.sample(order[1:], 2)]
        listed = [n for n in order if n in added]
        if sorted(listed) != listed:
            break
    return {
        "seed": seed,
        "sizes": sizes,
        "pairs": [
            {"changes": []},
            {"changes": [[n, "swap", entry(), entry()] for n in rng.sample(norms, 2)]},
            {"changes": [[n, "step", entry(), entry()] for n in rng.sample(linear, 2)]},
            {"changes": [[n, "add", entry(), entry()] for n in added], "buffer": True},
            {"untied": "b"},
            {"untied": "a"},
            {  # as many parameters, of the same shapes, one under another name
                "renamed": rng.choice("ab"),
                "module": rng.choice(
                    [n.removesuffix(".weight") for n in order if n != "model.embed_tokens.weight"]
                ),
            },
        ],
    }


CHANGED_PARAMETERS = Exercise(
    id="07.3",
    target="changed_parameters",
    observe=observe_changed_parameters,
    judge=judge_changed_parameters,
    visible=_changed_case(random.Random(0), 0, {}),
    variant=lambda rng: _changed_case(
        rng,
        rng.randrange(4),  # the weights do not matter here, which of them change does
        {"num_hidden_layers": rng.randint(2, 3), "intermediate_size": rng.choice([96, 128, 160])},
    ),
)


def check_changed_parameters(changed_parameters) -> None:
    """Exercise 07.3: names of the parameters that differ between two models (a modified base)."""
    CHANGED_PARAMETERS.check(changed_parameters)


EXERCISES = (MERGED_WEIGHT, ADAPTER_SHAPES_FIT, CHANGED_PARAMETERS)
