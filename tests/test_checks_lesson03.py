"""Exercises 03: each classic counting mistake fails by name, visible case and variants alike."""

import pytest
import torch
from exercise_harness import Weird, cases_vary, fails, judged_odd, passes, raising

from lora_course.checks import lesson03
from lora_course.checks.lesson03 import (
    LORA_PAIR_PARAMETERS,
    LORA_PARAMETERS_FOR_CONFIG,
    TRAINABLE_PARAMETERS,
)
from lora_course.counting import count_parameters

ODD_OBJECTS = {
    "not written": raising(NotImplementedError("A is (r, in) and B is (out, r)")),
    "raises": raising(ValueError("boom")),
    "returns None": lambda *a, **k: None,
    "returns a string": lambda *a, **k: "1234",
    "returns a list": lambda *a, **k: [1, 2],
    "returns a tensor": lambda *a, **k: torch.ones(3),
    "returns a weird object": lambda *a, **k: Weird(),
    "not callable": 42,
}


@pytest.mark.parametrize("exercise", lesson03.EXERCISES, ids=lambda e: e.id)
@pytest.mark.parametrize("name", ODD_OBJECTS)
def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
    judged_odd(exercise, ODD_OBJECTS[name], "not written yet" if name == "not written" else None)


@pytest.mark.parametrize("exercise", lesson03.EXERCISES, ids=lambda e: e.id)
def test_cases_are_json_and_variants_differ(exercise):
    cases_vary(exercise)


# --- 03.1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pair",
    [
        lambda i, o, r: r * (i + o),  # the solution
        lambda i, o, r: float(r * i + r * o),
        lambda i, o, r: torch.tensor(r) * (i + o),
        lambda i, o, r: torch.zeros(r, i).numel() + torch.zeros(o, r).numel(),
    ],
)
def test_correct_pair_counts_pass(pair):
    passes(LORA_PAIR_PARAMETERS, pair)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (lambda i, o, r: i * o, "frozen weight's size"),
        (lambda i, o, r: i * o + r * (i + o), "includes the frozen weight"),
        (lambda i, o, r: 2 * r * i, "assumes a square layer"),
        (lambda i, o, r: 2 * r * o, "assumes a square layer"),
        (lambda i, o, r: r * i, "only A is counted"),
        (lambda i, o, r: r * o, "only B is counted"),
        (lambda i, o, r: (r * i) * (o * r), "do not multiply"),
        (lambda i, o, r: r * i * o, "count each one's entries"),
        (lambda i, o, r: i + o, "rank r is missing"),
        (lambda i, o, r: r * (i + o) + 1, r"should be [\d,]+, got"),
        (lambda i, o, r: str(r * (i + o)), "should return a number, got str"),
    ],
)
def test_each_pair_mistake_is_named(pair, message):
    fails(LORA_PAIR_PARAMETERS, pair, message)


# --- 03.2 ---------------------------------------------------------------------------------------


def count_for_config(config, targets, r, mistake=None):
    """The notebook's solution, with one classic mistake switched on by name."""
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = hidden // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    if mistake == "kv full":
        kv = hidden
    if mistake == "kv divided":
        kv = hidden // config.num_key_value_heads
    mlp = (hidden, hidden) if mistake == "mlp square" else (hidden, inter)
    shapes = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden),
        "gate_proj": mlp,
        "up_proj": mlp,
        "down_proj": mlp[::-1],
    }
    if mistake == "all targets":
        targets = list(shapes)
    per_layer = 0
    for target in targets:
        n_in, n_out = shapes[target]
        per_layer += r * (n_in + n_out) + (n_out if mistake == "bias" else 0)
    return config.num_hidden_layers * per_layer


@pytest.mark.parametrize(
    "count",
    [
        count_for_config,
        lambda c, t, r: float(count_for_config(c, t, r)),
        lambda c, t, r: lesson03.lora_parameters(c, t, r),
    ],
)
def test_correct_config_counts_pass(count):
    passes(LORA_PARAMETERS_FOR_CONFIG, count)


def sorts_targets(config, targets, r):
    """Right counts, but the caller's list is sorted in place."""
    targets.sort()
    return count_for_config(config, targets, r)


def appends_targets(config, targets, r):
    count = count_for_config(config, targets, r)
    targets.append("lm_head")
    return count


def one_layer(config, targets, r):
    return count_for_config(config, targets, r) // config.num_hidden_layers


def one_layer_kv_full(config, targets, r):
    return count_for_config(config, targets, r, "kv full") // config.num_hidden_layers


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (one_layer, "one decoder block's count"),
        (lambda c, t, r: count_for_config(c, t, r, "kv full"), "counted at full width"),
        (
            lambda c, t, r: count_for_config(c, t, r, "kv divided"),
            "k_proj and v_proj have the wrong",
        ),
        (lambda c, t, r: count_for_config(c, t, r, "mlp square"), r"\(hidden, hidden\)"),
        (lambda c, t, r: count_for_config(c, t, r, "bias"), "a bias counted"),
        (lambda c, t, r: count_for_config(c, t, r, "all targets"), "all seven projections"),
        (one_layer_kv_full, r"2 mistakes: \(1\) that is one decoder block.*\(2\) k_proj"),
        (lambda c, t, r: count_for_config(c, t, 1), r"expected [\d,]+, got"),
        (lambda c, t, r: None, "should return a number, got NoneType"),
        (sorts_targets, r"changed the targets list it was given: .* targets.sort\(\)"),
        (appends_targets, "changed the targets list it was given"),
    ],
)
def test_each_config_mistake_is_named(count, message):
    fails(LORA_PARAMETERS_FOR_CONFIG, count, message)


def test_the_visible_config_case_has_gqa_the_mlp_and_a_second_architecture():
    queries = LORA_PARAMETERS_FOR_CONFIG.visible["queries"]
    targets = {t for q in queries for t in q["targets"]}
    assert {"k_proj", "up_proj", "down_proj"} <= targets
    assert {q["config"] for q in queries} == {"SmolLM2-135M", "Llama-3.2-1B"}


# --- 03.3 ---------------------------------------------------------------------------------------


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def by_modules(model):  # every module's own parameters: a tied tensor belongs to two modules
    return sum(
        p.numel() for m in model.modules() for p in m.parameters(recurse=False) if p.requires_grad
    )


def freezing_count(model):  # "makes sure" only LoRA trains, then counts
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return trainable(model)


@pytest.mark.parametrize(
    "count",
    [
        trainable,
        lambda m: torch.tensor(trainable(m)),
        lambda m: count_parameters(m).trainable,
        lambda m: sum(
            {
                id(p): p.numel() for _, p in m.named_parameters(remove_duplicate=False)
                if p.requires_grad
            }.values()
        ),
    ],
)  # fmt: skip
def test_correct_trainable_counts_pass(count):
    passes(TRAINABLE_PARAMETERS, count, seeds=range(8))


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (lambda m: sum(p.numel() for p in m.parameters()), "includes frozen parameters"),
        (
            lambda m: sum(p.numel() for p in m.parameters() if not p.requires_grad),
            "the wrong way round",
        ),
        (
            lambda m: sum(
                p.numel() for _, p in m.named_parameters(remove_duplicate=False) if p.requires_grad
            ),
            "tied embedding is counted twice",
        ),
        (by_modules, "tied embedding is counted twice"),
        (lambda m: sum(v.numel() for v in m.state_dict().values()), "and the tied embedding twice"),
        (
            lambda m: sum(v.numel() for v in m.state_dict().values() if v.requires_grad),
            "state_dict",
        ),
        (
            lambda m: sum(p.numel() for n, p in m.named_parameters() if "lora" in n),
            "only the LoRA matrices",
        ),
        (
            lambda m: sum(1 for p in m.parameters() if p.requires_grad),
            "number of trainable tensors",
        ),
        (freezing_count, "changed requires_grad"),
        (
            lambda m: sum(p.numel() for p in m.parameters() if p.grad is not None),
            "0 trainable parameters: count the parameters whose requires_grad is True .*"
            "no gradient exists before a backward pass",
        ),
        (
            lambda m: sum(v.numel() for v in m.state_dict().values() if v.requires_grad),
            "0 trainable parameters: .*state_dict\\(\\) are detached",
        ),
        (
            lambda m: count_parameters(m),
            "should return a number, got lora_course.counting.ParamCount",
        ),
        (lambda m: trainable(m) - 1, r"expected [\d,]+ trainable parameters"),
    ],
)
def test_each_trainable_mistake_is_named(count, message):
    fails(TRAINABLE_PARAMETERS, count, message, seeds=range(3))


def test_observing_trainable_parameters_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TRAINABLE_PARAMETERS.check(trainable)
    assert torch.equal(torch.rand(3), expected)
