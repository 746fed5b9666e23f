"""Exercises 03: one LoRA pair, a whole config (grouped-query attention), what actually trains."""

from __future__ import annotations

import itertools
import random

import torch

from ..architectures import ARCHITECTURES, build_config
from ..counting import lora_pair_parameters, lora_parameters, projection_shapes
from ..targets import MLP, PROJECTIONS
from .exercise import (
    Exercise,
    attempt,
    describe,
    judge_number,
    matches_all,
    observe_number,
    raised,
    require,
)


def show(x) -> str:
    """A count as the learner would read it: 4,608 for a whole number, 4.6e+03 otherwise."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


# --- 03.1 lora_pair_parameters(in_features, out_features, r) ----------------------------------

PAIR_MISTAKES = (  # (what the learner computed, the mistake it names), most likely first
    (
        lambda i, o, r: i * o,
        "that is the frozen weight's size (in * out): LoRA trains A and B, not W",
    ),
    (
        lambda i, o, r: i * o + r * (i + o),
        "the count includes the frozen weight W: only A and B are trained",
    ),
    (
        lambda i, o, r: 2 * r * i,
        "that assumes a square layer: A reads the layer's input and B writes its output, and "
        "here in_features != out_features",
    ),
    (
        lambda i, o, r: 2 * r * o,
        "that assumes a square layer: A reads the layer's input and B writes its output, and "
        "here in_features != out_features",
    ),
    (lambda i, o, r: r * i, "only A is counted: B is trained too"),
    (lambda i, o, r: r * o, "only B is counted: A is trained too"),
    (
        lambda i, o, r: r * i * r * o,
        "A and B are two separate matrices: add their sizes, do not multiply them",
    ),
    (
        lambda i, o, r: r * i * o,
        "A and B are two separate matrices: count each one's entries and add them",
    ),
    (lambda i, o, r: i + o, "the rank r is missing: A has r rows and B has r columns"),
)


def observe_lora_pair_parameters(lora_pair_parameters, case):
    """Exercise 03.1: the learner's count for a few (in, out, r)."""
    observations = {}
    observations["counts"] = [
        observe_number(observations, f"s{k}", lambda s=s: lora_pair_parameters(*s))
        for k, s in enumerate(case["shapes"])
    ]
    return observations


def judge_lora_pair_parameters(observations, case) -> None:
    """Exercise 03.1: A is (r, in) and B is (out, r)."""
    shapes = [tuple(s) for s in case["shapes"]]
    for k, s in enumerate(shapes):
        judge_number(observations, f"s{k}", f"lora_pair_parameters{s}")
    got = observations["counts"]
    want = [lora_pair_parameters(*s) for s in shapes]
    if got == want:
        return
    for mistake, message in PAIR_MISTAKES:
        require(not matches_all(got, [mistake(*s) for s in shapes]), message)
    s, g, w = next((s, g, w) for s, g, w in zip(shapes, got, want, strict=True) if g != w)
    raise AssertionError(f"lora_pair_parameters{s} should be {w:,}, got {show(g)}")


def _pair_variant(rng: random.Random):
    shapes = []
    while len(shapes) < 3:
        n_in, n_out = rng.randint(16, 4096), rng.randint(16, 4096)
        if n_in != n_out:
            shapes.append([n_in, n_out, rng.choice([1, 2, 4, 8, 16, 32, 64])])
    return {"shapes": shapes}


LORA_PAIR_PARAMETERS = Exercise(
    id="03.1",
    target="lora_pair_parameters",
    observe=observe_lora_pair_parameters,
    judge=judge_lora_pair_parameters,
    visible={"shapes": [[576, 576, 8], [576, 192, 8], [1536, 576, 16]]},  # q, k, down of SmolLM2
    variant=_pair_variant,
)


def check_lora_pair_parameters(lora_pair_parameters) -> None:
    """Exercise 03.1: trainable parameters of one LoRA pair on an in -> out linear layer."""
    LORA_PAIR_PARAMETERS.check(lora_pair_parameters)


# --- 03.2 lora_parameters_for_config(config, targets, r) --------------------------------------

# Llama-style architectures with grouped-query attention: fewer key/value heads than query heads
GQA_ARCHITECTURES = tuple(
    name
    for name, (_, fields, _) in ARCHITECTURES.items()
    if fields["num_key_value_heads"] < fields["num_attention_heads"]
)

# The classic slips, each a way to get a layer's shapes or the total wrong; a learner's count is
# compared with every combination of them, and the messages of the matching one are shown.
CONFIG_MISTAKES = {
    "one_layer": "that is one decoder block's count: each of the config's num_hidden_layers "
    "blocks has its own adapted projections",
    "kv_full": "k_proj and v_proj counted at full width: under grouped-query attention they are "
    "narrower than q_proj (only num_key_value_heads heads)",
    "kv_divided": "k_proj and v_proj have the wrong width: they have num_key_value_heads heads, "
    "each of head_dim features, and head_dim comes from num_attention_heads",
    "mlp_square": "gate_proj, up_proj and down_proj counted as (hidden, hidden): the MLP "
    "projections go between hidden_size and intermediate_size, which is wider",
    "bias_B": "a bias counted: LoRA's A and B are plain matrices, with no bias",
    "bias_AB": "biases counted: LoRA's A and B are plain matrices, with no bias",
}
KV_CHOICES = ((), ("kv_full",), ("kv_divided",))
BIAS_CHOICES = ((), ("bias_B",), ("bias_AB",))
MISTAKE_COMBINATIONS = sorted(
    (
        (*layers, *kv, *mlp, *bias)
        for layers, kv, mlp, bias in itertools.product(
            ((), ("one_layer",)), KV_CHOICES, ((), ("mlp_square",)), BIAS_CHOICES
        )
    ),
    key=len,
)[1:]  # fewest mistakes first; the empty combination is the right answer


def _count_with(config, targets, r: int, mistakes) -> int:
    """The count a learner gets for `targets` at rank r when making `mistakes` (a set of keys)."""
    hidden = config.hidden_size
    shapes = dict(projection_shapes(config))
    if "kv_full" in mistakes or "kv_divided" in mistakes:
        width = hidden if "kv_full" in mistakes else hidden // config.num_key_value_heads
        shapes["k_proj"] = shapes["v_proj"] = (hidden, width)
    if "mlp_square" in mistakes:
        shapes.update({t: (hidden, hidden) for t in MLP})
    per_block = 0
    for target in targets:
        n_in, n_out = shapes[target]
        per_block += lora_pair_parameters(n_in, n_out, r)
        per_block += n_out if "bias_B" in mistakes else 0
        per_block += n_out + r if "bias_AB" in mistakes else 0
    return per_block * (1 if "one_layer" in mistakes else config.num_hidden_layers)


def observe_lora_parameters_for_config(lora_parameters_for_config, case):
    """Exercise 03.2: the learner's count for each query (a named config, targets, r)."""
    observations, counts = {}, []
    for k, q in enumerate(case["queries"]):
        targets = list(q["targets"])  # a fresh config and list per call: nothing carries over
        counts.append(
            observe_number(
                observations,
                f"q{k}",
                lambda q=q, t=targets: lora_parameters_for_config(
                    build_config(q["config"]), t, q["r"]
                ),
            )
        )
        observations[f"q{k}_targets"] = attempt(  # the list as the call left it
            observations,
            f"q{k}_targets",
            lambda t=targets: [x if isinstance(x, str) else describe(x) for x in list(t)],
        )
    observations["counts"] = counts
    return observations


def judge_lora_parameters_for_config(observations, case) -> None:
    """Exercise 03.2: the sum of r * (in + out) over the targets, in every block."""
    queries = case["queries"]
    configs = [build_config(q["config"]) for q in queries]
    for k, q in enumerate(queries):
        judge_number(
            observations,
            f"q{k}",
            f"lora_parameters_for_config({q['config']}, {q['targets']}, r={q['r']})",
        )
    for k, q in enumerate(queries):
        after = observations.get(f"q{k}_targets")
        require(
            f"q{k}_targets_error" not in observations and (after is None or after == q["targets"]),
            f"lora_parameters_for_config changed the targets list it was given: {q['targets']} "
            f"became {after} (an in-place change such as targets.sort(), append or remove). "
            "The caller's list must stay as it was: sorted(targets) or a copy leaves it alone",
        )
    got = observations["counts"]
    want = [lora_parameters(c, q["targets"], q["r"]) for c, q in zip(configs, queries, strict=True)]
    if got == want:
        return
    for combination in MISTAKE_COMBINATIONS:
        wrong = [
            _count_with(c, q["targets"], q["r"], combination)
            for c, q in zip(configs, queries, strict=True)
        ]
        if matches_all(got, wrong):
            messages = [CONFIG_MISTAKES[m] for m in combination]
            if len(messages) == 1:
                raise AssertionError(messages[0])
            raise AssertionError(
                f"{len(messages)} mistakes: "
                + "; ".join(f"({i}) {m}" for i, m in enumerate(messages, 1))
            )
    everything = [
        lora_parameters(c, PROJECTIONS, q["r"]) for c, q in zip(configs, queries, strict=True)
    ]
    require(
        not matches_all(got, everything),
        "you counted all seven projections whatever the targets: count only those in targets",
    )
    q, g, w = next((q, g, w) for q, g, w in zip(queries, got, want, strict=True) if g != w)
    raise AssertionError(
        f"{q['targets']} at r = {q['r']} on {q['config']}: expected {w:,}, got {show(g)}"
    )


def _config_variant(rng: random.Random):
    others = [name for name in GQA_ARCHITECTURES if name != "SmolLM2-135M"]

    def subset(required=(), allow_all=True):
        while True:
            chosen = {t for t in PROJECTIONS if rng.random() < 0.4}
            chosen |= {rng.choice(group) for group in required}
            if chosen and (allow_all or len(chosen) < len(PROJECTIONS)):
                return [t for t in PROJECTIONS if t in chosen]

    # three different ranks, never a layer count (16, 30, 32): r * one block must not be a total
    ranks = rng.sample([1, 2, 4, 8, 12, 24, 48, 64], 3)

    while True:
        queries = [  # every draw has GQA k/v, the MLP, a config where h // kv != kv * head_dim
            {
                "config": rng.choice(others),
                "targets": subset([("k_proj", "v_proj"), MLP]),
                "r": ranks[0],
            },
            {"config": rng.choice(GQA_ARCHITECTURES), "targets": subset((), False), "r": ranks[1]},
            {"config": rng.choice(GQA_ARCHITECTURES), "targets": subset(), "r": ranks[2]},
        ]
        if any(q["targets"] != sorted(q["targets"]) for q in queries):  # targets.sort() shows
            return {"queries": queries}


LORA_PARAMETERS_FOR_CONFIG = Exercise(
    id="03.2",
    target="lora_parameters_for_config",
    observe=observe_lora_parameters_for_config,
    judge=judge_lora_parameters_for_config,
    visible={
        "queries": [
            {"config": "SmolLM2-135M", "targets": ["q_proj", "v_proj"], "r": 8},
            {"config": "SmolLM2-135M", "targets": list(PROJECTIONS), "r": 16},
            {"config": "Llama-3.2-1B", "targets": ["k_proj", "up_proj", "down_proj"], "r": 4},
        ]
    },
    variant=_config_variant,
)


def check_lora_parameters_for_config(lora_parameters_for_config) -> None:
    """Exercise 03.2: LoRA parameters for a config's targets, grouped-query attention included."""
    LORA_PARAMETERS_FOR_CONFIG.check(lora_parameters_for_config)


# --- 03.3 trainable_parameters(model) ---------------------------------------------------------


def _injected_model(case):
    """tiny_llama with LoRA on the case's targets, and the case's modules unfrozen as well."""
    from ..inject import inject_lora
    from ..models import tiny_llama

    with torch.random.fork_rng(devices=[]):  # tiny_llama seeds torch: leave the caller's RNG be
        model = tiny_llama(seed=case["seed"], **case.get("sizes", {}))
        inject_lora(model, case["targets"], r=case["r"])
    for name in case["unfreeze"]:  # model.embed_tokens is tied to lm_head: one shared tensor
        model.get_submodule(name).requires_grad_(True)
    return model


def observe_trainable_parameters(trainable_parameters, case):
    """Exercise 03.3: the learner's count on a tiny Llama with LoRA and unfrozen embeddings."""
    observations = {}
    model = attempt(observations, "model", lambda: _injected_model(case))
    if model is None:
        return observations
    observations["count"] = observe_number(
        observations, "call", lambda: trainable_parameters(model)
    )
    observations["flags"] = attempt(  # the judge compares them with its own model's
        observations, "flags", lambda: [bool(p.requires_grad) for p in model.parameters()]
    )
    return observations


def judge_trainable_parameters(observations, case) -> None:
    """Exercise 03.3: the elements of every parameter with requires_grad, each tensor once."""
    raised(observations, "model", "building the check's model")
    judge_number(observations, "call", "trainable_parameters(model)")
    raised(observations, "flags", "reading requires_grad after trainable_parameters(model)")
    model = _injected_model(case)
    require(
        observations["flags"] == [p.requires_grad for p in model.parameters()],
        "trainable_parameters changed requires_grad on the model: counting must not change "
        "what trains",
    )
    unique = list(model.parameters())
    every = [p for _, p in model.named_parameters(remove_duplicate=False)]
    got = observations["count"]
    want = sum(p.numel() for p in unique if p.requires_grad)
    if got == want:
        return
    mistakes = (
        (
            sum(p.numel() for p in unique),
            "the count includes frozen parameters: count only those the optimizer will update",
        ),
        (
            sum(p.numel() for p in unique if not p.requires_grad),
            "that counts the frozen parameters: the condition is the wrong way round",
        ),
        (
            sum(p.numel() for p in every if p.requires_grad),
            "the tied embedding is counted twice: lm_head and embed_tokens share one tensor, "
            "and the optimizer updates it once (model.parameters() lists it once)",
        ),
        (
            sum(p.numel() for p in every),
            "the count includes frozen parameters, and the tied embedding twice",
        ),
        (
            sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
            "only the LoRA matrices are counted: here the embeddings were unfrozen too, and "
            "requires_grad, not the name, decides what trains",
        ),
        (
            sum(1 for p in unique if p.requires_grad),
            "that is the number of trainable tensors: count their elements",
        ),
        (
            0,
            "0 trainable parameters: count the parameters whose requires_grad is True (no "
            "gradient exists before a backward pass, so .grad is None; and the tensors of "
            "state_dict() are detached, requires_grad False)",
        ),
    )
    for wrong, message in mistakes:
        require(got != wrong, message)
    raise AssertionError(f"expected {want:,} trainable parameters, got {show(got)}")


def _trainable_variant(rng: random.Random):
    targets = [t for t in PROJECTIONS if rng.random() < 0.4] or [rng.choice(PROJECTIONS)]
    return {
        "seed": rng.randrange(2**31),
        "sizes": {
            "num_hidden_layers": rng.randint(1, 3),
            "intermediate_size": rng.choice([48, 96, 160]),
            "vocab_size": rng.choice([96, 128, 200]),
        },
        "targets": targets,
        "r": rng.randint(1, 8),
        "unfreeze": ["model.embed_tokens"] + (["model.norm"] if rng.random() < 0.5 else []),
    }


TRAINABLE_PARAMETERS = Exercise(
    id="03.3",
    target="trainable_parameters",
    observe=observe_trainable_parameters,
    judge=judge_trainable_parameters,
    visible={
        "seed": 0,
        "sizes": {},
        "targets": ["q_proj", "v_proj"],
        "r": 4,
        "unfreeze": ["model.embed_tokens"],
    },
    variant=_trainable_variant,
)


def check_trainable_parameters(trainable_parameters) -> None:
    """Exercise 03.3: count the parameters the optimizer will update."""
    TRAINABLE_PARAMETERS.check(trainable_parameters)


EXERCISES = (LORA_PAIR_PARAMETERS, LORA_PARAMETERS_FOR_CONFIG, TRAINABLE_PARAMETERS)
