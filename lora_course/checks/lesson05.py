"""Exercises 05: labels for the answer only, exact-match scoring, precision for a GPU."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import numpy as np

from ..devices import BF16_MIN_CAPABILITY, FP16_MIN_CAPABILITY
from ..tasks.tickets import FIELDS, make_example
from .exercise import (
    Exercise,
    attempt,
    describe,
    raised,
    require,
)

IGNORE_INDEX = -100  # cross-entropy's ignore_index in torch and transformers

# --- 05.1 answer_only_labels(prompt_ids, answer_ids) ------------------------------------------


def _ids(values) -> list[int]:
    return [int(v) for v in values]


def _after(ids) -> list[int] | str:
    """The caller's list as the learner's call left it (a description if it holds non-ids)."""
    try:
        return _ids(ids)
    except Exception:  # noqa: BLE001 - the learner put something else in it
        return describe(ids)


def observe_answer_only_labels(answer_only_labels, case):
    """Exercise 05.1: the learner's row for each (prompt, answer), and whether it changed them."""
    observations, rows = {}, []
    for k, (prompt, answer) in enumerate(case["rows"]):
        prompt_ids, answer_ids = list(prompt), list(answer)  # the caller's lists
        row = attempt(
            observations, f"row{k}", lambda p=prompt_ids, a=answer_ids: answer_only_labels(p, a)
        )
        if f"row{k}_error" in observations:
            rows.append(None)
            continue
        try:
            if not isinstance(row, Mapping):
                raise TypeError("not a dict")
            seen = {
                "input_ids": _ids(row["input_ids"]),
                "labels": _ids(row["labels"]),
                "same_list": row["labels"] is row["input_ids"],
            }
        except Exception:  # noqa: BLE001 - not a dict of two id lists
            observations[f"row{k}_returned"] = describe(row)
            rows.append(None)
            continue
        seen["prompt_after"] = _after(prompt_ids)  # the judge compares them with the case's
        seen["answer_after"] = _after(answer_ids)
        rows.append(seen)
    observations["rows"] = rows
    return observations


def _judge_row(row, prompt: list[int], answer: list[int]) -> None:
    """One row: input_ids = prompt + answer, labels = IGNORE_INDEX on the prompt, answer ids."""
    n = len(prompt)
    require(
        row["prompt_after"] == prompt and row["answer_after"] == answer,
        "answer_only_labels changed the caller's prompt_ids or answer_ids (+=, .extend or "
        "item assignment modify a list in place): build new lists",
    )
    input_ids, labels = row["input_ids"], row["labels"]
    if input_ids != prompt + answer:
        require(
            not (row["same_list"] or IGNORE_INDEX in input_ids),
            "labels and input_ids are the same list object: masking the labels changed the "
            "input_ids too; make labels a new list",
        )
        require(input_ids != answer + prompt, "input_ids must be the prompt first, then the answer")
        raise AssertionError(
            f"input_ids must be the prompt's ids followed by the answer's, got {input_ids}"
        )
    masked = [IGNORE_INDEX] * n
    shifted = (
        [IGNORE_INDEX] * (n - 1) + answer,
        [IGNORE_INDEX] * (n - 1) + answer + [IGNORE_INDEX],
        [IGNORE_INDEX] * (n + 1) + answer[:-1],
        [IGNORE_INDEX] * (n + 1) + answer,
        input_ids[1:],
        input_ids[1:] + [IGNORE_INDEX],
    )
    require(
        labels not in shifted,
        "labels are shifted by one: give labels aligned with input_ids (the model shifts them "
        "itself inside the loss, to predict token i + 1 from token i)",
    )
    require(
        len(labels) == len(input_ids),
        f"labels must be as long as input_ids ({len(input_ids)}), got {len(labels)}: one label "
        f"per token, {IGNORE_INDEX} where the loss should not look",
    )
    require(
        labels != input_ids,
        f"the prompt is not masked: its labels must be {IGNORE_INDEX} so the loss ignores it",
    )
    prompt_labels = set(labels[:n])
    if labels[n:] == answer and len(prompt_labels) == 1 and prompt_labels != {IGNORE_INDEX}:
        value = prompt_labels.pop()
        raise AssertionError(
            f"the prompt's labels are {value}: cross-entropy skips only {IGNORE_INDEX} (its "
            f"ignore_index); {value} is a real token id, which the model would learn to predict"
        )
    require(
        labels != prompt + [IGNORE_INDEX] * len(answer),
        "inverted: mask the prompt and keep the answer's ids, not the other way round",
    )
    require(
        labels[n:] != [IGNORE_INDEX] * len(answer),
        "the answer is masked too: its labels must be its token ids, or nothing is learned",
    )
    require(
        labels[:n] == masked,
        f"every prompt label must be {IGNORE_INDEX}, got {labels[:n]}",
    )
    require(
        labels[n:] == answer, f"the answer's labels must be its own token ids, got {labels[n:]}"
    )


def judge_answer_only_labels(observations, case) -> None:
    """Exercise 05.1: labels -100 on the prompt, the token ids on the answer."""
    for k, (prompt, answer) in enumerate(case["rows"]):
        what = f"answer_only_labels({prompt}, {answer})"
        raised(observations, f"row{k}", what)
        returned = observations.get(f"row{k}_returned")
        require(
            returned is None,
            f"{what} should return a dict with 'input_ids' and 'labels' lists, got {returned}",
        )
        _judge_row(observations["rows"][k], list(prompt), list(answer))


def _labels_variant(rng: random.Random):
    def ids(low, high):
        return [rng.randrange(1, 49152) for _ in range(rng.randint(low, high))]

    return {"rows": [[ids(3, 12), ids(2, 6)], [ids(3, 12), ids(2, 6)]]}


ANSWER_ONLY_LABELS = Exercise(
    id="05.1",
    target="answer_only_labels",
    observe=observe_answer_only_labels,
    judge=judge_answer_only_labels,
    visible={"rows": [[[1, 9690, 198, 39, 7], [5, 2683, 17, 2]], [[1, 4093, 198], [2683, 33, 2]]]},
    variant=_labels_variant,
)


def check_answer_only_labels(answer_only_labels) -> None:
    """Exercise 05.1: a training row whose loss looks at the answer only."""
    ANSWER_ONLY_LABELS.check(answer_only_labels)


# --- 05.2 exact_match(prediction, gold) -------------------------------------------------------

# What each kind of trial tests; the first trial a learner's function gets wrong is named.
# Decided: extra keys in a prediction are ignored (the four fields are what is scored), as in
# lora_course.tasks.tickets.score; values are compared exactly, as the JSON parser returns them.
MATCH_MESSAGES = {
    "identical": "identical answers must match",
    "reordered": "compare the parsed fields, not the strings: key order does not matter",
    "whitespace": "compare the parsed fields, not the strings: spaces and newlines between "
    "JSON tokens do not matter",
    "invalid": "a prediction that is not valid JSON is simply wrong: it must not match",
    "not an object": "valid JSON but not an object (a list, string, number or null): it must "
    "not match",
    "missing": "a prediction missing a field must not match: check every field of the gold "
    "answer, not just those the prediction has",
    "wrong": "a prediction with a wrong field must not match",
    "extra key": "extra keys do not make the four fields wrong: compare the gold answer's "
    "fields, not the whole dict",
    "empty": "{} has none of the fields: it must not match",
    "case": "letter case counts: the course's scorer (lora_course.tasks.tickets.score) "
    "compares values exactly, so a value written in other capitals is a wrong field",
}
CRASH_MESSAGES = {
    "invalid": "a prediction that is not valid JSON is simply wrong: catch the parse error "
    "and return False",
    "not an object": "the prediction is valid JSON but not an object (a list, string, number "
    "or null): return False for it",
    "missing": "a field missing from the prediction makes it wrong, not an error: return False",
    "extra key": "an extra key is not an error: extra keys are ignored",
}


def _match_trials(seed: int) -> tuple[str, list[tuple[str, str, bool, str]]]:
    """The gold answer and the trials: (kind, prediction, expected result, what changed)."""
    rng = random.Random(seed)
    gold = json.loads(make_example(rng)["answer"])
    other = {f: v for f, v in json.loads(make_example(rng)["answer"]).items() if v != gold[f]}
    text = json.dumps(gold)
    trials = [
        ("identical", text, True, ""),
        ("reordered", json.dumps(dict(reversed(list(gold.items())))), True, ""),
        ("whitespace", json.dumps(gold, indent=2) + "\n", True, ""),
        ("whitespace", " " + json.dumps(gold, separators=(",", ":")), True, ""),
        ("invalid", "{not json", False, ""),
        ("invalid", "", False, ""),
        ("invalid", text[: rng.randint(10, len(text) - 2)], False, ""),  # a cut-off generation
        ("not an object", json.dumps(list(gold.values())), False, ""),
        ("not an object", json.dumps(gold["product"]), False, ""),
        ("not an object", "null", False, ""),
        ("not an object", str(rng.randint(1, 999)), False, ""),
    ]
    missing = rng.choice(FIELDS)
    trials.append(
        ("missing", json.dumps({f: v for f, v in gold.items() if f != missing}), False, missing)
    )
    for field in FIELDS:  # every field is compared
        value = other.get(field, gold[field] + "x")
        trials.append(("wrong", json.dumps({**gold, field: value}), False, field))
    extra = rng.choice(["note", "customer", "sentiment", "reason"])
    trials.append(("extra key", json.dumps({**gold, extra: "n/a"}), True, extra))
    trials.append(("empty", "{}", False, ""))
    cased = rng.choice(["product", "issue", "urgency"])  # "Router" is not "router"
    trials.append(("case", json.dumps({**gold, cased: gold[cased].capitalize()}), False, cased))
    return text, trials


def observe_exact_match(exact_match, case):
    """Exercise 05.2: the learner's verdict on each trial prediction against a gold answer."""
    gold, trials = _match_trials(case["seed"])
    observations, results = {}, []
    for k, (_, prediction, _, _) in enumerate(trials):
        result = attempt(observations, f"t{k}", lambda p=prediction: exact_match(p, gold))
        if f"t{k}_error" not in observations and not isinstance(result, bool | np.bool_):
            observations[f"t{k}_returned"] = describe(result)
            result = None
        results.append(None if result is None else bool(result))  # numpy's bool too
    observations["results"] = results
    return observations


def judge_exact_match(observations, case) -> None:
    """Exercise 05.2: every field right; anything that is not a JSON object is wrong, quietly."""
    _, trials = _match_trials(case["seed"])
    for k, (kind, prediction, expected, detail) in enumerate(trials):
        error = observations.get(f"t{k}_error")
        if error is not None:
            if str(error).startswith("NotImplementedError"):
                raise AssertionError(f"exact_match is not written yet ({error})")
            advice = CRASH_MESSAGES.get(kind, "it must return True or False, never raise")
            raise AssertionError(f"exact_match crashed on {prediction!r} ({error}): {advice}")
        returned = observations.get(f"t{k}_returned")
        require(
            returned is None,
            f"exact_match must return True or False (a bool), got {returned} for {prediction!r}",
        )
        if observations["results"][k] != expected:
            detail = f" ({detail!r})" if detail else ""
            raise AssertionError(
                f"{MATCH_MESSAGES[kind]}{detail}; the prediction was {prediction!r}"
            )


EXACT_MATCH = Exercise(
    id="05.2",
    target="exact_match",
    observe=observe_exact_match,
    judge=judge_exact_match,
    visible={"seed": 0},
    variant=lambda rng: {"seed": rng.randrange(1, 2**31)},
)


def check_exact_match(exact_match) -> None:
    """Exercise 05.2: every field right; anything that is not a JSON object is wrong."""
    EXACT_MATCH.check(exact_match)


# --- 05.3 pick_precision(capability) ----------------------------------------------------------

NAMES = {"bf16", "fp16", "fp32"}
LONG_NAMES = {
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"
}  # fmt: skip


def _reference(capability) -> str:
    if capability is None or capability < FP16_MIN_CAPABILITY:
        return "fp32"
    return "bf16" if capability >= BF16_MIN_CAPABILITY else "fp16"


def _as_capability(value):
    return None if value is None else tuple(value)


def observe_pick_precision(pick_precision, case):
    """Exercise 05.3: the learner's choice for each compute capability (None: no GPU)."""
    observations, results = {}, []
    for k, capability in enumerate(map(_as_capability, case["capabilities"])):
        result = attempt(observations, f"c{k}", lambda c=capability: pick_precision(c))
        if f"c{k}_error" not in observations and not isinstance(result, str):
            observations[f"c{k}_returned"] = describe(result)
            result = None
        results.append(result)
    observations["results"] = results
    return observations


def _wrong_choice(capability, got: str, want: str) -> str:
    """The message for one wrong choice, naming the GPU generation's fact."""
    if capability is None:
        return "None means no GPU: train in 'fp32' on the CPU"
    major, minor = capability
    if want == "fp16" and got == "bf16":
        return (
            f"compute capability {major}.{minor} has no native bf16 (a T4 is 7.5: there bf16 is "
            "emulated, slowly; it is native from Ampere, 8.0, on): use fp16 with loss scaling"
        )
    if capability == BF16_MIN_CAPABILITY:
        return "an A100 is 8.0 exactly: bf16 is native from 8.0 on, 8.0 included"
    if capability == FP16_MIN_CAPABILITY:
        return "a P100 is 6.0 exactly: fp16 is fast from 6.0 on, 6.0 included"
    if major >= 10:
        return (
            f"compute capability {major}.{minor} is newer than Hopper (9.0): bf16 is native on "
            "every GPU from Ampere (8.0) on, the future ones included"
        )
    if want == "bf16":
        return f"compute capability {major}.{minor} is Ampere (8.0) or newer: bf16 is native"
    if want == "fp32":
        return f"compute capability {major}.{minor} is older than 6.0: no fast fp16, use 'fp32'"
    return f"compute capability {major}.{minor} has fast fp16 but no bf16: 'fp16'"


def judge_pick_precision(observations, case) -> None:
    """Exercise 05.3: 'bf16' from compute capability 8.0, 'fp16' from 6.0, else 'fp32'."""
    capabilities = [_as_capability(c) for c in case["capabilities"]]
    for k, capability in enumerate(capabilities):
        error = observations.get(f"c{k}_error")
        if str(error).startswith("NotImplementedError"):
            raised(observations, f"c{k}", "pick_precision")
        if capability is None and error is not None:
            raise AssertionError(
                f"pick_precision(None) raised {error}: None means no GPU; answer it before "
                "comparing anything"
            )
        if error is not None and "float" in str(error) and "tuple" in str(error):
            raise AssertionError(
                f"pick_precision({capability}) raised {error}: the capability is a "
                "(major, minor) tuple; compare it with a tuple, not with a float"
            )
        raised(observations, f"c{k}", f"pick_precision({capability})")
        returned = observations.get(f"c{k}_returned")
        require(
            returned is None,
            f"pick_precision({capability}) should return 'bf16', 'fp16' or 'fp32', got {returned}",
        )
    results = observations["results"]
    for capability, got in zip(capabilities, results, strict=True):
        short = LONG_NAMES.get(got.lower().removeprefix("torch."))
        require(
            short is None,
            f"pick_precision({capability}) returned {got!r}: use the short names 'bf16', "
            "'fp16' and 'fp32'",
        )
        require(
            got in NAMES,
            f"pick_precision({capability}) should return 'bf16', 'fp16' or 'fp32', got {got!r}",
        )
    wrong = [
        (c, g, _reference(c))
        for c, g in zip(capabilities, results, strict=True)
        if g != _reference(c)
    ]
    if not wrong:
        return
    # the most telling mistake first: bf16 on a T4, on 6.x-7.x, the two boundaries, the rest
    order = (
        lambda c, g, w: c == (7, 5) and g == "bf16",  # the T4, the free GPU of Colab
        lambda c, g, w: c is not None and w == "fp16" and g == "bf16",
        lambda c, g, w: c in (BF16_MIN_CAPABILITY, FP16_MIN_CAPABILITY),
        lambda c, g, w: True,
    )
    for first in order:
        for capability, got, want in wrong:
            if first(capability, got, want):
                raise AssertionError(
                    f"pick_precision({capability}) returned {got!r}: "
                    + _wrong_choice(capability, got, want)
                )


def _precision_variant(rng: random.Random):
    capabilities = [
        None,
        [rng.randint(3, 5), rng.choice([0, 2, 3, 7])],  # Kepler to Maxwell: fp32
        [6, 0],  # the fp16 boundary (P100)
        [rng.choice([6, 7]), rng.choice([1, 2])],  # Pascal, Volta: fp16
        [7, 5],  # T4: no native bf16
        [8, 0],  # the bf16 boundary (A100)
        [rng.choice([8, 9]), rng.choice([0, 6, 7, 9])],  # Ampere, Ada, Hopper: bf16
        [rng.randint(10, 12), rng.choice([0, 1])],  # newer than any rule written for Hopper
    ]
    rng.shuffle(capabilities)
    return {"capabilities": capabilities}


PICK_PRECISION = Exercise(
    id="05.3",
    target="pick_precision",
    observe=observe_pick_precision,
    judge=judge_pick_precision,
    visible={
        "capabilities": [
            None,
            [3, 7],
            [5, 2],
            [6, 0],
            [6, 1],
            [7, 0],
            [7, 5],
            [8, 0],
            [8, 6],
            [9, 0],
            [12, 0],
        ]
    },  # fmt: skip
    variant=_precision_variant,
)


def check_pick_precision(pick_precision) -> None:
    """Exercise 05.3: the training precision for a GPU's compute capability."""
    PICK_PRECISION.check(pick_precision)


EXERCISES = (ANSWER_ONLY_LABELS, EXACT_MATCH, PICK_PRECISION)
