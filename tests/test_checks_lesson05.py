"""Exercises 05: each classic labelling, scoring and precision mistake fails by name."""

import json

import numpy as np
import pytest
import torch
from exercise_harness import Weird, cases_vary, fails, judged_odd, passes, raising

from lora_course.checks import lesson05
from lora_course.checks.lesson05 import ANSWER_ONLY_LABELS, EXACT_MATCH, PICK_PRECISION
from lora_course.tasks import tickets

ODD_OBJECTS = {
    "not written": raising(NotImplementedError("[-100] * len(prompt_ids)")),
    "raises": raising(ValueError("boom")),
    "returns None": lambda *a, **k: None,
    "returns a string": lambda *a, **k: "bf16 please",
    "returns a list": lambda *a, **k: [1, 2],
    "returns a tensor": lambda *a, **k: torch.ones(3),
    "returns a weird object": lambda *a, **k: Weird(),
    "not callable": 42,
}


@pytest.mark.parametrize("exercise", lesson05.EXERCISES, ids=lambda e: e.id)
@pytest.mark.parametrize("name", ODD_OBJECTS)
def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
    judged_odd(exercise, ODD_OBJECTS[name], "not written yet" if name == "not written" else None)


@pytest.mark.parametrize("exercise", lesson05.EXERCISES, ids=lambda e: e.id)
def test_cases_are_json_and_variants_differ(exercise):
    cases_vary(exercise)


# --- 05.1 ---------------------------------------------------------------------------------------


def labels(prompt_ids, answer_ids):
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids}


def shifted(prompt_ids, answer_ids):  # what the model does inside the loss, done twice
    ids = prompt_ids + answer_ids
    return {"input_ids": ids, "labels": [-100] * (len(prompt_ids) - 1) + answer_ids + [-100]}


def extending(prompt_ids, answer_ids):
    n = len(prompt_ids)
    prompt_ids += answer_ids  # changes the caller's list
    return {"input_ids": prompt_ids, "labels": [-100] * n + answer_ids}


def aliased(prompt_ids, answer_ids):
    ids = prompt_ids + answer_ids
    row_labels = ids  # the same list
    row_labels[: len(prompt_ids)] = [-100] * len(prompt_ids)
    return {"input_ids": ids, "labels": row_labels}


@pytest.mark.parametrize(
    "answer_only_labels",
    [
        labels,
        lambda p, a: {
            "input_ids": torch.tensor(p + a),
            "labels": torch.tensor([-100] * len(p) + a),
        },
        lambda p, a: {
            "input_ids": [*p, *a],
            "labels": [-100 if i < len(p) else t for i, t in enumerate(p + a)],
        },
    ],
)
def test_correct_labels_pass(answer_only_labels):
    passes(ANSWER_ONLY_LABELS, answer_only_labels)


@pytest.mark.parametrize(
    ("answer_only_labels", "message"),
    [
        (lambda p, a: {"input_ids": p + a, "labels": p + a}, "prompt is not masked"),
        (shifted, "shifted by one"),
        (lambda p, a: {"input_ids": p + a, "labels": (p + a)[1:] + [-100]}, "shifted by one"),
        (lambda p, a: {"input_ids": p + a, "labels": [-100] * (len(p) - 1) + a}, "shifted by one"),
        (lambda p, a: {"input_ids": p + a, "labels": [0] * len(p) + a}, "labels are 0: .* -100"),
        (lambda p, a: {"input_ids": p + a, "labels": [-1] * len(p) + a}, "labels are -1"),
        (lambda p, a: {"input_ids": p + a, "labels": a}, "as long as input_ids"),
        (lambda p, a: {"input_ids": p + a, "labels": p + [-100] * len(a)}, "inverted"),
        (lambda p, a: {"input_ids": p + a, "labels": [-100] * len(p + a)}, "answer is masked"),
        (extending, "changed the caller's prompt_ids"),
        (aliased, "same list object"),
        (lambda p, a: {"input_ids": a + p, "labels": [-100] * len(p) + a}, "prompt first"),
        (lambda p, a: (p + a, [-100] * len(p) + a), "should return a dict"),
        (lambda p, a: {"ids": p + a, "labels": [-100] * len(p) + a}, "should return a dict"),
    ],
)
def test_each_labels_mistake_is_named(answer_only_labels, message):
    fails(ANSWER_ONLY_LABELS, answer_only_labels, message)


# --- 05.2 ---------------------------------------------------------------------------------------


def exact_match(prediction, gold):  # the solution notebook's
    try:
        predicted = json.loads(prediction)
    except json.JSONDecodeError:
        return False
    if not isinstance(predicted, dict):
        return False
    expected = json.loads(gold)
    return all(predicted.get(field) == value for field, value in expected.items())


def whole_dict(prediction, gold):
    try:
        predicted = json.loads(prediction)
    except ValueError:
        return False
    return predicted == json.loads(gold)


def no_type_check(prediction, gold):
    try:
        predicted = json.loads(prediction)
    except ValueError:
        return False
    return all(predicted.get(f) == v for f, v in json.loads(gold).items())


def indexing(prediction, gold):
    try:
        predicted = json.loads(prediction)
    except ValueError:
        return False
    if not isinstance(predicted, dict):
        return False
    return all(predicted[f] == v for f, v in json.loads(gold).items())


def prediction_fields(prediction, gold):  # iterates over what the prediction has
    try:
        predicted = json.loads(prediction)
    except ValueError:
        return False
    if not isinstance(predicted, dict):
        return False
    expected = json.loads(gold)
    return all(expected.get(f) == v for f, v in predicted.items() if f in expected)


def three_fields(prediction, gold):
    try:
        predicted = json.loads(prediction)
    except ValueError:
        return False
    if not isinstance(predicted, dict):
        return False
    expected = json.loads(gold)
    return all(predicted.get(f) == expected[f] for f in ("product", "issue", "urgency"))


def case_insensitive(prediction, gold):
    """Issue #20's learner: compares the values whatever their letter case."""
    try:
        predicted = json.loads(prediction)
    except json.JSONDecodeError:
        return False
    if not isinstance(predicted, dict):
        return False
    expected = json.loads(gold)
    return all(str(predicted.get(f, "")).lower() == v.lower() for f, v in expected.items())


@pytest.mark.parametrize(
    "match",
    [
        exact_match,
        lambda p, g: tickets.score(p, g)["exact"],
        lambda p, g: bool(exact_match(p, g)),
        lambda p, g: np.bool_(exact_match(p, g)),  # what a numpy comparison gives
    ],
)
def test_correct_exact_match_passes(match):
    passes(EXACT_MATCH, match)


@pytest.mark.parametrize(
    ("match", "message"),
    [
        (lambda p, g: p == g, "key order"),
        (lambda p, g: p.strip() == g.strip(), "key order"),
        (lambda p, g: json.loads(p) == json.loads(g), "crashed on .*not valid JSON"),
        (no_type_check, "crashed on .*valid JSON but not an object"),
        (indexing, "crashed on .*missing from the prediction"),
        (prediction_fields, "missing a field must not match"),
        (three_fields, r"must not match.*\('order_id'\)"),
        (whole_dict, "extra keys do not make"),
        (lambda p, g: int(exact_match(p, g)), "must return True or False"),
        (case_insensitive, r"letter case counts: .*\('(product|issue|urgency)'\)"),
    ],
)
def test_each_exact_match_mistake_is_named(match, message):
    fails(EXACT_MATCH, match, message)


def test_every_kind_of_trial_is_in_the_visible_case_and_every_variant():
    for seed in [EXACT_MATCH.visible["seed"], *range(1, 6)]:
        _, trials = lesson05._match_trials(seed)
        assert {kind for kind, *_ in trials} == set(lesson05.MATCH_MESSAGES)
        assert {detail for kind, _, _, detail in trials if kind == "wrong"} == set(tickets.FIELDS)
        gold = json.loads(lesson05._match_trials(seed)[0])
        for kind, prediction, expected, detail in trials:
            assert tickets.score(prediction, json.dumps(gold))["exact"] is expected, kind
            if kind == "case":  # differs from the gold answer in letter case alone
                value = json.loads(prediction)[detail]
                assert value != gold[detail] and value.lower() == gold[detail].lower()


# --- 05.3 ---------------------------------------------------------------------------------------


def precision(capability):  # the solution notebook's
    if capability is None or capability < (6, 0):
        return "fp32"
    return "bf16" if capability >= (8, 0) else "fp16"


def as_float(capability):
    if capability is None:
        return "fp32"
    value = capability[0] + capability[1] / 10
    return "bf16" if value >= 8.0 else "fp16" if value >= 6.0 else "fp32"


def string_fp16(capability):  # compares the text "(12, 0)" with "(6, 0)", character by character
    return "fp16" if str(capability) >= "(6, 0)" else "fp32"


@pytest.mark.parametrize(
    "pick",
    [precision, as_float, lambda c: "fp32" if c is None else precision(tuple(c))],
)
def test_correct_precision_passes(pick):
    passes(PICK_PRECISION, pick)


@pytest.mark.parametrize(
    ("pick", "message"),
    [
        (lambda c: "fp32" if c is None or c < (6, 0) else "bf16" if c >= (7, 0) else "fp16", "T4"),
        (
            lambda c: "fp32" if c is None or c < (6, 0) else "bf16",
            r"\(7, 5\)\) returned 'bf16'.*T4",
        ),
        (lambda c: "fp32" if c is None else "bf16" if c >= 8.0 else "fp16", "not with a float"),
        (lambda c: precision((0, 0) if c is None else c) if c else "fp16", "None means no GPU"),
        (lambda c: "bf16" if c >= (8, 0) else "fp16" if c >= (6, 0) else "fp32", "None means"),
        (
            lambda c: "fp32" if c is None or c < (6, 0) else "bf16" if c > (8, 0) else "fp16",
            "A100 is 8.0 exactly",
        ),
        (
            lambda c: "fp32" if c is None or c <= (6, 0) else "bf16" if c >= (8, 0) else "fp16",
            "P100 is 6.0 exactly",
        ),
        (
            lambda c: "fp32" if c is None or c < (6, 0) else "bf16" if c[0] in (8, 9) else "fp16",
            "newer than Hopper",
        ),
        (
            lambda c: "fp32" if c is None else "bf16" if str(c) >= "(8, 0)" else string_fp16(c),
            "newer than Hopper",
        ),
        (lambda c: "fp32" if c is None else precision(c).replace("32", "16"), "older than 6.0"),
        (
            lambda c: {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision(c)],
            "short names",
        ),
        (
            lambda c: {"bf16": torch.bfloat16}.get(precision(c), precision(c)),
            "should return 'bf16'",
        ),
        (lambda c: precision(c).upper(), "should return 'bf16', 'fp16' or 'fp32', got '(BF|FP)"),
    ],
)
def test_each_precision_mistake_is_named(pick, message):
    fails(PICK_PRECISION, pick, message)
