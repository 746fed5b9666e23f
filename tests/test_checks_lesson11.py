"""Exercises 11: the checks pass right answers and name each classic mistake, on every case."""

import math
import random
import re
import statistics

import numpy as np
import pytest
import torch
from exercise_harness import defined, judged_odd, shared_tests, through_json

from lora_course.checks import lesson11
from lora_course.checks.lesson11 import ASSISTANT_MASK, BATCH_ARITHMETIC, DIAGNOSE_RUN
from lora_course.finetune import effective_batch_size, steps_per_epoch
from lora_course.health import DIAGNOSES, diagnose_run
from lora_course.sft import assistant_mask

NAME = "11_training_in_practice.ipynb"
SOLUTION, UNTOUCHED = defined("solutions", NAME), defined("exercises", NAME)
solution_diagnose = SOLUTION["diagnose_run"]
solution_mask = SOLUTION["assistant_mask"]
solution_batch = SOLUTION["batch_arithmetic"]
SEEDS = {"11.1": range(20), "11.2": range(6), "11.3": range(20)}  # variants a right answer passes
WRONG_SEEDS = {"11.1": (1, 2, 3), "11.2": (1, 2), "11.3": (1, 2, 3)}  # each wrong answer fails


# --- 11.1 diagnose_run ------------------------------------------------------------------------


def diagnose_by(start="mean", end="mean", best="smoothed", tenth=0, quarter=0, window=0,
                finite=math.isfinite, grads=True, rise=True, ratio=False,
                labels=None):  # fmt: skip
    """diagnose_run written by a learner who took one step another way."""

    def diagnose(losses, grad_norms=None):
        seen = list(losses) + (list(grad_norms or []) if grads else [])
        if not all(finite(v) for v in seen):
            return "nonfinite"
        n = len(losses)
        t, q = max(1, n // 10 + tenth), max(1, n // 4 + quarter)
        first = losses[0] if start == "first" else sum(losses[:t]) / t
        last = losses[-1] if end == "last" else sum(losses[-q:]) / q
        w = max(1, t + window)
        running = [np.mean(losses[max(0, i - w + 1) : i + 1]) for i in range(n)]
        low = min(losses) if best == "raw" else min(running)
        # gave back over half the fall from start to best; with ratio, health.py's first rule:
        # rose above 1.5 x best
        high = last > 1.5 * low if ratio else last - low > 0.5 * (first - low)
        label = "too_high" if high or (rise and last >= first) else None
        label = label or ("too_low" if last > 0.5 * first else "healthy")
        return (labels or {}).get(label, label)

    return diagnose


def diagnose_numpy(losses, grad_norms=None):
    """Right, in numpy: other float rounding than the package's sums."""
    values = np.asarray(losses, dtype=np.float64)
    if not np.isfinite(values).all() or not np.isfinite(np.asarray(grad_norms or [])).all():
        return "nonfinite"
    tenth, quarter = max(1, len(values) // 10), max(1, len(values) // 4)
    running = np.convolve(values, np.ones(tenth), "full")[: len(values)] / np.minimum(
        np.arange(1, len(values) + 1), tenth
    )
    start, end = statistics.fmean(values[:tenth]), values[-quarter:].mean()
    if end >= start or end - running.min() > 0.5 * (start - running.min()):
        return np.str_("too_high")
    return "too_low" if end > 0.5 * start else "healthy"


SWAPPED = {"too_high": "too_low", "too_low": "too_high"}


def diagnose_with_nan_check_only(losses, grad_norms=None):
    if any(math.isnan(v) for v in list(losses) + list(grad_norms or [])):
        return "nonfinite"
    return diagnose_by(finite=lambda v: True)(losses, grad_norms)


def diagnose_without_default(losses, grad_norms):
    return diagnose_run(losses, grad_norms)


def diagnose_short_without_max(losses, grad_norms=None):
    if len(losses) // 10 == 0:
        return sum(losses[:0]) / 0
    return diagnose_run(losses, grad_norms)


WRONG_DIAGNOSE = [
    (diagnose_by(labels=SWAPPED), "too_high and too_low are swapped: a curve that fell from"),
    (
        diagnose_by(labels={"too_high": "too_low"}),
        re.compile(
            "climbed back to .*, giving back over half its fall, is a learning rate that "
            "is too high, not too low"
        ),
    ),
    (diagnose_by(labels={"too_low": "too_high"}), "is a learning rate that is too low, not too"),
    (
        diagnose_by(ratio=True, rise=False),
        re.compile("no lower than its start .* too high, not too low"),
    ),
    (diagnose_by(start="first"), "the start is the mean of the first tenth"),
    (diagnose_by(end="last"), "the end is the mean of the last quarter"),
    (diagnose_by(best="raw"), "not the lowest single loss"),
    *[
        (diagnose_by(**{name: sign}), re.compile(f"off-by-one window: the {what} .* one {more}"))
        for name, what in (
            ("tenth", "first tenth"),
            ("quarter", "last quarter"),
            ("window", "running mean"),
        )
        for sign, more in ((1, "more"), (-1, "fewer"))
    ],  # fmt: skip
    (diagnose_by(grads=False), "its grad_norms hold a NaN: a NaN gradient norm makes the run"),
    (diagnose_with_nan_check_only, "an inf loss is not finite either"),
    (diagnose_by(finite=lambda v: True), 'return "nonfinite" before any arithmetic'),
    (diagnose_by(labels={"healthy": "too_low"}), 'should be "healthy", got "too_low"'),
    (diagnose_by(labels={"too_high": "nonfinite"}), '"nonfinite" is for a NaN or inf'),
    (diagnose_by(labels={"healthy": "ok"}), re.compile('should return one of .*got "ok"')),
    (lambda losses, grad_norms=None: True, re.compile("should return one of .*got bool True")),
    (diagnose_short_without_max, re.compile(r"with \d losses a tenth of them is max\(1, n // ")),
    (diagnose_without_default, "missing 1 required positional argument"),
]


def test_every_curve_is_labelled_by_the_package_as_the_check_expects():
    cases = [DIAGNOSE_RUN.visible] + [DIAGNOSE_RUN.variant(random.Random(s)) for s in range(60)]
    for case in cases:
        assert lesson11._curve_conditions(case)
        curves = lesson11._curves(case)
        assert [diagnose_run(c["losses"], c["grad_norms"]) for c in curves] == [
            c["want"] for c in curves
        ]
        assert {c["want"] for c in curves} == set(DIAGNOSES)
        assert sum(c["grad_norms"] is not None for c in curves) == 3
        assert {len(c["losses"]) for c in curves} == {case["steps"], len(curves[8]["losses"])}


def test_the_curves_hold_the_kinds_the_exercise_names():
    curves = lesson11._curves(DIAGNOSE_RUN.visible)
    dip = curves[2]["losses"]
    lowest = dip.index(min(dip))
    assert 0 < lowest < len(dip) / 2 and dip[-1] > 2 * min(dip)  # fell, then climbed back
    bad = [[v for v in c["losses"] + (c["grad_norms"] or []) if not math.isfinite(v)]
           for c in curves if c["want"] == "nonfinite"]  # fmt: skip
    assert [str(v[0]) for v in bad] == ["nan", "inf", "nan", "inf"]
    n, tenth, quarter = len(dip), len(dip) // 10, len(dip) // 4
    spikes = {c["what"]: c["losses"] for c in curves if "spike" in c["what"]}
    for at, losses in zip((tenth - 1, tenth, n - quarter, n - quarter - 1), spikes.values(),
                          strict=True):  # fmt: skip
        assert losses[at] > 2 * max(losses[at - 1], losses[at + 1])  # a spike, where it says


# --- 11.2 assistant_mask ----------------------------------------------------------------------


def mask_with(transform):
    """The right mask, then changed by the mistake `transform` makes."""

    def mask(tokenizer, messages):
        ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
        return transform(assistant_mask(tokenizer, messages), ids, messages)

    return mask


def spans_changed(change):
    return mask_with(lambda m, ids, msgs: lesson11._marked(len(m), change(lesson11._spans(m))))


def mask_by_offsets(tokenizer, messages):
    """Right, another way: the characters of each assistant turn in the rendered text."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    header, spans, at = "<|im_start|>assistant\n", [], 0
    while (at := text.find(header, at)) >= 0:
        end = text.index("<|im_end|>", at) + len("<|im_end|>")
        spans.append((at + len(header), end))
        at = end
    return [int(any(s <= a < e for s, e in spans)) for a, _ in encoded["offset_mapping"]]


def mask_without_default_system(tokenizer, messages):
    mask = assistant_mask(tokenizer, messages)
    if messages[0]["role"] == "system":
        return mask
    ids = tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
    return mask[ids.index(ids[0], 1) :]


def mask_with_generation_prompt(tokenizer, messages):
    return assistant_mask(tokenizer, messages) + [0, 0, 0, 0]


WRONG_MASK = [
    (mask_with(lambda m, ids, msgs: [0] * len(m)), "the mask is all zeros"),
    (mask_with(lambda m, ids, msgs: [1] * len(m)), "the mask is all ones"),
    (mask_with(lambda m, ids, msgs: [1 - v for v in m]), "the mask is inverted"),
    (spans_changed(lambda spans: [(s - 4, e) for s, e in spans]), "the role header"),
    (spans_changed(lambda spans: [(s, e - 1) for s, e in spans]), "closing <|im_end|> is 0"),
    (spans_changed(lambda spans: [(s, e + 1) for s, e in spans]), "the newline after"),
    (spans_changed(lambda spans: spans[-1:]), "only the last assistant turn is marked"),
    (spans_changed(lambda spans: spans[:1]), "only the first assistant turn is marked"),
    (mask_with(lambda m, ids, msgs: [0, *m[:-1]]), "shifted one token to the right"),
    (mask_with(lambda m, ids, msgs: [*m[1:], 0]), "shifted one token to the left"),
    (spans_changed(lambda spans: [(s + 1, e) for s, e in spans]), "should be 1, got 0"),
    (mask_without_default_system, "inserts a default one"),
    (mask_with_generation_prompt, "add_generation_prompt=True"),
    (mask_with(lambda m, ids, msgs: m[:-1]), "one value per token"),
    (mask_with(lambda m, ids, msgs: [2 * v for v in m]), "holds 2: a mask holds 0 and 1 only"),
    (mask_with(lambda m, ids, msgs: "".join(map(str, m))), "should return a list of 0s and 1s"),
]


def test_the_conversations_give_each_mistake_its_own_mask():
    cases = [ASSISTANT_MASK.visible] + [ASSISTANT_MASK.variant(random.Random(s)) for s in range(20)]
    for case in cases:
        assert lesson11._mask_conditions(case)
        systems = [c[0]["role"] == "system" for c in case["conversations"]]
        assert True in systems and False in systems
        for conversation in case["conversations"]:
            assert sum(m["role"] == "assistant" for m in conversation) >= 2


def test_the_checks_tokenizer_is_smollm2s(smollm2_folder, smollm2_tokenizer):
    tokenizer = lesson11.smollm2_tokenizer()
    source = lesson11.resolve_source()
    if source.kind == "gguf":  # where models._converted_gguf put the converted copy
        assert lesson11.cache_dir() / "models" / smollm2_folder.name == smollm2_folder
    for conversation in ASSISTANT_MASK.visible["conversations"]:
        ids = tokenizer.apply_chat_template(conversation, return_dict=True)["input_ids"]
        assert (
            ids
            == smollm2_tokenizer.apply_chat_template(conversation, return_dict=True)["input_ids"]
        )
        mask = assistant_mask(tokenizer, conversation)
        text = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
        answers = [m["content"] for m in conversation if m["role"] == "assistant"]
        assert text == "".join(a + "<|im_end|>" for a in answers)


@pytest.mark.slow  # reads the tokenizer out of the GGUF: seconds
def test_a_tokenizer_from_the_gguf_alone_renders_the_same(smollm2_tokenizer, monkeypatch,
                                                         tmp_path):  # fmt: skip
    """The grader's sandbox has an empty cache: there the check reads the GGUF's tokenizer."""
    monkeypatch.setenv("LORA_COURSE_CACHE", str(tmp_path))
    monkeypatch.setenv("LORA_COURSE_MODEL", "packaged")
    lesson11.smollm2_tokenizer.cache_clear()
    try:
        tokenizer = lesson11.smollm2_tokenizer()
    finally:
        lesson11.smollm2_tokenizer.cache_clear()
    assert not list(tmp_path.iterdir())  # nothing converted
    for conversation in ASSISTANT_MASK.visible["conversations"]:
        assert assistant_mask(tokenizer, conversation) == assistant_mask(
            smollm2_tokenizer, conversation
        )


# --- 11.3 batch_arithmetic --------------------------------------------------------------------


def batch_by(effective=lambda b, g, p: b * g * p, steps=lambda rows, e, b: rows // e,
             check=lambda rows, e: rows < e, error=ValueError):  # fmt: skip
    """batch_arithmetic written by a learner who took one step another way."""

    def arithmetic(rows, batch_size, grad_accum, processes):
        e = effective(batch_size, grad_accum, processes)
        if check(rows, e):
            raise error(f"{rows} rows cannot fill a step of {e}")
        return e, steps(rows, e, batch_size)

    return arithmetic


def batch_package(rows, batch_size, grad_accum, processes):
    return (
        effective_batch_size(batch_size, grad_accum, processes),
        steps_per_epoch(rows, batch_size, grad_accum, processes),
    )


WRONG_BATCH = [
    (batch_by(effective=lambda b, g, p: b * g), "leaves out the processes"),
    (batch_by(effective=lambda b, g, p: b * p), "leaves out gradient accumulation"),
    (batch_by(effective=lambda b, g, p: b, check=lambda r, e: False), "not the per-device"),
    (batch_by(steps=lambda r, e, b: math.ceil(r / e)), "rounded up"),
    (batch_by(steps=lambda r, e, b: round(r / e)), "rounded to the nearest"),
    (batch_by(steps=lambda r, e, b: r / e), "are a whole number"),
    (batch_by(steps=lambda r, e, b: r // b), "divide the rows by the per-device batch_size"),
    (batch_by(check=lambda r, e: False), "Raise a ValueError saying so"),
    (batch_by(check=lambda r, e: False, steps=lambda r, e, b: max(1, r // e)), "cannot fill"),
    (batch_by(check=lambda r, e: r <= e), "fill exactly one step"),
    (batch_by(error=RuntimeError), re.compile("raised RuntimeError: .*raise a ValueError")),
    (batch_by(steps=lambda r, e, b: r // e + 2), "should be"),
    (lambda *setting: {"effective": 1, "steps": 2}, "should return a number, got str"),
    (lambda *setting: (1, 2, 3), "should return (effective batch size, steps per epoch)"),
]


def test_the_batch_settings_separate_every_mistake():
    cases = [BATCH_ARITHMETIC.visible]
    cases += [BATCH_ARITHMETIC.variant(random.Random(s)) for s in range(300)]
    for case in cases:
        assert lesson11._batch_conditions(case)
        for rows, batch, accum, processes in case["settings"]:
            if rows < batch * accum * processes:
                with pytest.raises(ValueError, match="cannot fill one step"):
                    steps_per_epoch(rows, batch, accum, processes)


# --- shared tests -----------------------------------------------------------------------------

RIGHT = [
    (DIAGNOSE_RUN, solution_diagnose, True),
    (DIAGNOSE_RUN, diagnose_run, False),
    (DIAGNOSE_RUN, diagnose_numpy, False),
    (DIAGNOSE_RUN, diagnose_by(), False),
    (ASSISTANT_MASK, solution_mask, True),
    (ASSISTANT_MASK, assistant_mask, False),
    (ASSISTANT_MASK, mask_by_offsets, False),
    (ASSISTANT_MASK, mask_with(lambda m, ids, msgs: torch.tensor(m)), False),
    (ASSISTANT_MASK, mask_with(lambda m, ids, msgs: np.array(m, dtype=bool)), False),
    (BATCH_ARITHMETIC, solution_batch, True),
    (BATCH_ARITHMETIC, batch_package, False),
    (BATCH_ARITHMETIC, batch_by(steps=lambda r, e, b: float(math.floor(r / e))), False),
    (BATCH_ARITHMETIC, lambda *setting: list(batch_package(*setting)), False),
]
WRONG = [
    *[(DIAGNOSE_RUN, f, m) for f, m in WRONG_DIAGNOSE],
    *[(ASSISTANT_MASK, f, m) for f, m in WRONG_MASK],
    *[(BATCH_ARITHMETIC, f, m) for f, m in WRONG_BATCH],
]
globals().update(shared_tests(lesson11, UNTOUCHED, RIGHT, WRONG, SEEDS, WRONG_SEEDS))
MAIN = (solution_diagnose, solution_mask, solution_batch)


def test_the_solutions_agree_with_the_package():
    rng = random.Random(0)
    for case in [DIAGNOSE_RUN.variant(rng) for _ in range(30)]:
        for curve in lesson11._curves(case):
            want = diagnose_run(curve["losses"], curve["grad_norms"])
            assert solution_diagnose(curve["losses"], curve["grad_norms"]) == want
    tokenizer = lesson11.smollm2_tokenizer()
    for case in [ASSISTANT_MASK.variant(rng) for _ in range(10)]:
        for messages in case["conversations"]:
            assert solution_mask(tokenizer, messages) == assistant_mask(tokenizer, messages)
    for setting in [[rows, b, g, p] for rows in (1, 63, 64, 65, 1000) for b in (1, 8)
                    for g in (1, 4) for p in (1, 2)]:  # fmt: skip
        right = lesson11._arithmetic(*setting)
        if right is None:
            with pytest.raises(ValueError):
                solution_batch(*setting)
        else:
            assert solution_batch(*setting) == right


def test_judging_uses_only_the_case_and_the_observations():
    """The grader's process rebuilds the references: the judge needs no learner state."""
    for exercise, answer in zip(lesson11.EXERCISES, MAIN, strict=True):
        case = exercise.variant(random.Random(5))
        observations = exercise.observe(answer, case)
        exercise.judge(observations, through_json(case))


def tokenizer_changer(tokenizer, messages):
    tokenizer.chat_template = "{{ 'nothing' }}"
    return assistant_mask(tokenizer, messages)


def messages_changer(tokenizer, messages):
    messages.insert(0, {"role": "system", "content": "changed"})
    return [0]


@pytest.mark.parametrize(
    ("exercise", "learner", "message"),
    [
        (DIAGNOSE_RUN, lambda losses, grad_norms=None: losses.clear() or "healthy", "should be"),
        (ASSISTANT_MASK, tokenizer_changer, "raised ValueError"),
        (ASSISTANT_MASK, messages_changer, "values for"),
        (ASSISTANT_MASK, lambda tokenizer, messages: [float("nan")], "values for"),
        (BATCH_ARITHMETIC, lambda *s: (float("nan"), float("inf")), "should be"),
    ],
)
def test_odd_learners_are_judged_without_raising(exercise, learner, message):
    judged_odd(exercise, learner, message)


def test_a_learner_that_changes_the_tokenizer_leaves_the_reference_alone():
    template = lesson11.smollm2_tokenizer().chat_template
    with pytest.raises(AssertionError):
        ASSISTANT_MASK.check(tokenizer_changer)
    assert lesson11.smollm2_tokenizer().chat_template == template
    ASSISTANT_MASK.check(solution_mask)
