"""Exercises 11: reading a training curve, the assistant-only loss mask, the batch arithmetic.

11.1 `diagnose_run(losses, grad_norms=None)`, 11.2 `assistant_mask(tokenizer, messages)`, 11.3
`batch_arithmetic(rows, batch_size, grad_accum, processes)`. Every check judges against the
package's own version (lora_course.health.diagnose_run, lora_course.sft.assistant_mask,
lora_course.finetune.effective_batch_size and steps_per_epoch) on the same case. The curves are
seeded and come with traps: a loss spike just inside or just outside a window, one easy batch,
a noisy first or last loss, so that each classic mistake gives other labels than the rules. The
conversations have two or three assistant turns, with and without a system message; the batch
settings include one that fills exactly one step and two that cannot fill any.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
from collections.abc import Mapping
from pathlib import Path

from ..finetune import effective_batch_size, steps_per_epoch
from ..health import DIAGNOSES, GAVE_BACK, STILL_HIGH, diagnose_run, smoothed
from ..models import _quiet_transformers, resolve_source
from ..settings import cache_dir
from ..sft import assistant_mask
from .exercise import (
    Exercise,
    attempt,
    describe,
    first_fit,
    judge_number,
    judge_numbers,
    observe_number,
    raised,
    require,
)

# --- 11.1 diagnose_run(losses, grad_norms=None) -> str ----------------------------------------

RULES = (
    "n logged losses: start = the mean of the first max(1, n // 10), end = the mean of the last "
    "max(1, n // 4), best = the lowest point of their running mean over max(1, n // 10) steps; "
    '"too_high" if end >= start or end - best > 0.5 x (start - best), else "too_low" if '
    'end > 0.5 x start, else "healthy"'
)


def _noisy(rng: random.Random, values: list[float], spread: float) -> list[float]:
    return [v * (1 + rng.uniform(-spread, spread)) for v in values]


def _curves(case) -> list[dict]:
    """The case's curves: {"what", "want" (the label the rules give), "losses", "grad_norms"}."""
    rng, n = random.Random(case["seed"]), case["steps"]
    u, tenth, quarter = rng.uniform, max(1, n // 10), max(1, n // 4)
    curves = []

    def add(want, what, losses, grad_norms=None):
        curves.append({"want": want, "what": what, "losses": losses, "grad_norms": grad_norms})

    def decay(low=(0.12, 0.22), noise=0.03, steps=n, tau=(0.06, 0.12)):
        top = u(1.8, 3.0)
        floor, scale = top * u(*low), u(*tau) * steps
        curve = [floor + (top - floor) * math.exp(-t / scale) for t in range(steps)]
        return _noisy(rng, curve, noise)

    def slow(drop=(0.12, 0.3)):
        top, d = u(1.8, 3.0), u(*drop)
        return _noisy(rng, [top * (1 - d * t / n) for t in range(n)], 0.02)

    def dip_and_climb():
        top, at = u(1.8, 3.0), int(n * u(0.3, 0.45))
        low, high = top * u(0.08, 0.18), top * u(0.65, 0.8)
        curve = [low + (top - low) * (1 - t / at) ** 2 if t < at
                 else low + (high - low) * (t - at) / (n - 1 - at) for t in range(n)]  # fmt: skip
        return _noisy(rng, curve, 0.03)

    def norms():
        return [u(0.3, 2.0) for _ in range(n)]

    def spiked(curve, at, height):
        curve[at] = height
        return curve

    for _ in range(2):
        add("healthy", "falls fast, then flattens near its best", decay())
        add("too_low", "falls slowly and steadily to the end", slow())
        add("too_high", "falls, then climbs back", dip_and_climb())
    add("healthy", "falls fast, then flattens (grad_norms given, all finite)", decay(), norms())
    top, rise, swing = u(1.8, 3.0), u(0.15, 0.3), u(0.1, 0.2)
    bounce = [top * (1 + rise * t / n) * (1 + swing * math.sin(2 * math.pi * t / tenth))
              for t in range(n)]  # fmt: skip
    add("too_high", "bounces and ends above where it started", _noisy(rng, bounce, 0.02))
    short = rng.randint(5, 9)
    add("healthy", f"a short run of {short} losses", decay(steps=short, tau=(0.2, 0.3), noise=0))

    at = rng.randint(n // 2, n - 2)
    add("nonfinite", f"falls, climbs, then NaN from step {at} on",
        dip_and_climb()[:at] + [math.nan] * (n - at))  # fmt: skip
    at = rng.randrange(n)
    add("nonfinite", f"an inf loss at step {at}", spiked(decay(), at, math.inf))
    at = rng.randrange(n)
    add("nonfinite", f"finite losses, a NaN gradient norm at step {at}", decay(),
        spiked(norms(), at, math.nan))  # fmt: skip
    at = rng.randrange(n)
    add("nonfinite", f"finite losses, an inf gradient norm at step {at}", slow(),
        spiked(norms(), at, math.inf))  # fmt: skip

    curve = slow(drop=(0.1, 0.15))
    add("too_low", "a first loss twice the next ones", spiked(curve, 0, curve[1] * u(2.2, 2.6)))
    curve = decay(low=(0.1, 0.16))
    start, _, best = _reading(curve)  # the last loss alone gives back over half the fall
    add("healthy", "a last loss far above the ones before",
        spiked(curve, -1, best + u(0.6, 0.75) * (start - best)))  # fmt: skip
    # a run that ends above half its start is too high only if its best is under 2 x end - start
    # (then end - best > half the fall): an easy batch that low is no best, only a raw minimum
    curve, at = slow(drop=(0.45, 0.5)), int(n * 0.6)
    start, end, _ = _reading(curve)
    add("too_low", f"falls slowly, one easy batch at step {at}",
        spiked(curve, at, u(0.3, 0.6) * (2 * end - start)))  # fmt: skip

    # a plateau at 1, a spike at the edge of the first tenth, then a fall to 0.62 (too_low)
    top, level = u(1.8, 3.0), u(0.58, 0.66)
    plateau = [top * (level + (1 - level) * math.exp(-max(0, t - tenth) / (0.1 * n)))
               for t in range(n)]  # fmt: skip
    add("healthy", f"a spike at step {tenth - 1}, the first tenth's last",
        spiked(list(plateau), tenth - 1, top * (1 + 0.45 * tenth)))  # fmt: skip
    add("too_low", f"a spike at step {tenth}, just after the first tenth",
        spiked(list(plateau), tenth, top * (1.6 + 0.5 * tenth)))  # fmt: skip

    # a spike that lifts the mean of the last quarter to best + 0.65 x the fall
    curve = decay(low=(0.1, 0.16), noise=0.01)
    start, _, best = _reading(curve)
    height = quarter * (best + 0.65 * (start - best)) - sum(curve[n - quarter + 1 :])
    add("too_high", f"a spike at step {n - quarter}, the last quarter's first",
        spiked(list(curve), n - quarter, height))  # fmt: skip
    add("healthy", f"a spike at step {n - quarter - 1}, just before the last quarter",
        spiked(curve, n - quarter - 1, height))  # fmt: skip

    # a dip under 2 x end - start as long as the smoothing window (its mean is the best: too
    # high) or one shorter (too low): a high loss on either side lifts every window that holds
    # a loss outside the dip above 2 x end - start
    at = int(n * 0.55)
    for length, want in ((tenth, "too_high"), (tenth - 1, "too_low")):
        curve = slow(drop=(0.45, 0.5))
        start, end, _ = _reading(curve)
        low = u(0.3, 0.5) * (2 * end - start)
        high = max(2 * curve[at], 1.3 * (tenth * (2 * end - start) - (tenth - 1) * low))
        curve[at - 1 : at + length + 1] = [high] + [low] * length + [high]
        add(want, f"falls slowly, {length} low losses in a row from step {at}", curve)
    return curves


def _reading(losses, tenth=0, quarter=0, window=0, first=False, last=False, raw=False):
    """(start, end, best) by diagnose_run's rules, or with a MISTAKES deviation: a window one
    longer or shorter, the first or last loss alone, the lowest raw loss."""
    n = len(losses)
    t, q = max(1, n // 10 + tenth), max(1, n // 4 + quarter)  # a window holds 1 loss at least
    start = losses[0] if first else sum(losses[:t]) / t
    end = losses[-1] if last else sum(losses[-q:]) / q
    best = min(losses) if raw else min(smoothed(losses, max(1, t + window)))
    return start, end, best


def _verdict(start, end, best) -> str:
    if end >= start or end - best > GAVE_BACK * (start - best):
        return "too_high"
    return "too_low" if end > STILL_HIGH * start else "healthy"


def _finite(curve) -> bool:
    return all(math.isfinite(v) for v in curve["losses"] + (curve["grad_norms"] or []))


def _numbers(curve) -> str:
    start, end, best = _reading(curve["losses"])
    n = len(curve["losses"])
    return f"{n} losses: start {start:.3g}, best {best:.3g}, end {end:.3g}"


MISTAKES = {  # a deviation of _reading, and what that mistake is
    "swapped": (
        {},
        "too_high and too_low are swapped: {dip}. too_low is a run still falling slowly when "
        "its budget ends ({slow})",
    ),
    "first": (
        {"first": True},
        "the start is the mean of the first tenth of the losses, not the first loss: one noisy "
        "first batch would decide the verdict",
    ),
    "last": (
        {"last": True},
        "the end is the mean of the last quarter of the losses, not the last loss: one noisy "
        "batch at the end would decide the verdict",
    ),
    "raw": (
        {"raw": True},
        "the best is the lowest point of the smoothed curve (the running mean over a tenth of the "
        "steps), not the lowest single loss: one easy batch is no level the run reached",
    ),
    **{
        f"{name}{sign:+d}": (
            {name: sign},
            f"an off-by-one window: {what}; yours holds one {'more' if sign > 0 else 'fewer'}",
        )
        for name, what in (
            ("tenth", "the first tenth is max(1, n // 10) losses, losses[:tenth]"),
            ("quarter", "the last quarter is max(1, n // 4) losses, losses[-quarter:]"),
            ("window", "the running mean at step i is over losses[max(0, i - tenth + 1) : i + 1]"),
        )
        for sign in (1, -1)
    },
}
SWAP = {"too_high": "too_low", "too_low": "too_high"}


def _mistaken(curves, mistake: str) -> list[str]:
    """The labels of the case's finite curves under one of MISTAKES."""
    labels = [_verdict(*_reading(c["losses"], **MISTAKES[mistake][0])) for c in curves]
    return [SWAP.get(label, label) for label in labels] if mistake == "swapped" else labels


def _why(curve, want: str, got: str) -> str:
    """Why a curve is `want`, when the learner said `got`."""
    start, end, best = _reading(curve["losses"])
    if want == "too_high" and got == "too_low" and end >= start:
        return (
            f"a curve that ends at {end:.2g}, no lower than its start ({start:.2g}), is a learning "
            "rate that is too high, not too low: the steps are so large the loss only bounces"
        )
    if want == "too_high" and got == "too_low":
        return (
            f"a curve that fell from {start:.2g} to {best:.2g} and climbed back to {end:.2g}, "
            "giving back over half its fall, is a learning rate that is too high, not too low: "
            "the steps overshoot the minimum and leave it"
        )
    if want == "too_low" and got == "too_high":
        return (
            f"a curve still falling slowly at the end (from {start:.2g} to {end:.2g}, its best "
            f"{best:.2g}) is a learning rate that is too low, not too high"
        )
    if got == "nonfinite":
        return '"nonfinite" is for a NaN or inf loss or gradient norm only: this curve has none'
    return RULES


def _judge_nonfinite(curve, got, call: str) -> None:
    losses, grads = curve["losses"], curve["grad_norms"] or []
    bad = next(v for v in losses + grads if not math.isfinite(v))
    where = "loss" if any(not math.isfinite(v) for v in losses) else "gradient norm"
    if math.isinf(bad):
        hint = (
            f"an inf {where} is not finite either (an fp16 overflow logs inf): math.isfinite is "
            "False for NaN and inf alike, math.isnan only for NaN"
        )
    elif where == "gradient norm":
        hint = (
            "its losses are all finite, its grad_norms hold a NaN: a NaN gradient norm makes the "
            'run "nonfinite" too. Check grad_norms when it is given (it may be None)'
        )
    else:
        hint = (
            'return "nonfinite" before any arithmetic: NaN compares False with everything, so '
            "every rule after it answers as if by chance"
        )
    raise AssertionError(f'{call} should be "nonfinite", got {json.dumps(got)}: {hint}')


def observe_diagnose(diagnose_run_, case):
    """Exercise 11.1: the learner's label for each of the case's curves, grad_norms given only
    where the curve has them."""
    observations = {}
    for k, curve in enumerate(_curves(case)):
        args = [list(curve["losses"])]
        if curve["grad_norms"] is not None:
            args.append(list(curve["grad_norms"]))
        label = attempt(observations, f"curve{k}", lambda a=args: diagnose_run_(*a))
        if f"curve{k}_error" not in observations:  # a label, or what came instead
            observations[f"curve{k}"] = (
                json.dumps(label) if isinstance(label, str) else describe(label)
            )
            observations[f"curve{k}_label"] = str(label) if isinstance(label, str) else None
    return observations


def judge_diagnose(observations, case) -> None:
    """Exercise 11.1: the package's diagnose_run on every curve, each mistake named."""
    curves, calls, labels = _curves(case), [], []
    for k, curve in enumerate(curves):
        grads = "" if curve["grad_norms"] is None else ", grad_norms"
        call = f"diagnose_run(losses{grads}) on curve {k} ({curve['what']})"
        if f"curve{k}_error" in observations and len(curve["losses"]) < 10:
            call += f": with {len(curve['losses'])} losses a tenth of them is max(1, n // 10) = 1"
        raised(observations, f"curve{k}", call)
        got = observations.get(f"curve{k}_label")
        require(
            got in DIAGNOSES,
            f"{call} should return one of {', '.join(map(json.dumps, DIAGNOSES))}, got "
            f"{observations.get(f'curve{k}')}",
        )
        calls.append(call)
        labels.append(got)
    for call, curve, got in zip(calls, curves, labels, strict=True):
        if not _finite(curve) and got != "nonfinite":
            _judge_nonfinite(curve, got, call)
    finite = [(c, curve, got) for c, curve, got in zip(calls, curves, labels, strict=True)
              if _finite(curve)]  # fmt: skip
    got = [g for _, _, g in finite]
    want = [diagnose_run(c["losses"], c["grad_norms"]) for _, c, _ in finite]
    if got == want:
        return
    dip = next(c for c in curves if c["want"] == "too_high")  # the first falls, then climbs
    slow = next(c for c in curves if c["want"] == "too_low")
    start, end, _ = _reading(slow["losses"])
    for mistake, (_, message) in MISTAKES.items():
        require(
            got != _mistaken([c for _, c, _ in finite], mistake),
            message.format(dip=_why(dip, "too_high", "too_low"),
                           slow=f"from {start:.2g} to {end:.2g}"),
        )  # fmt: skip
    call, curve, label, right = next(
        (c, curve, g, w) for (c, curve, g), w in zip(finite, want, strict=True) if g != w
    )
    raise AssertionError(
        f"{call} should be {json.dumps(right)}, got {json.dumps(label)} ({_numbers(curve)}): "
        f"{_why(curve, right, label)}"
    )


def _curve_conditions(case) -> bool:
    """Each curve gets its label from the rules with 1% to spare on every threshold, and every
    mistake of MISTAKES labels the finite curves in its own way."""
    curves = _curves(case)
    if any(diagnose_run(c["losses"], c["grad_norms"]) != c["want"] for c in curves):
        return False
    finite = [c for c in curves if _finite(c)]
    for start, end, best in (_reading(c["losses"]) for c in finite):
        thresholds = (start, best + GAVE_BACK * (start - best), STILL_HIGH * start)
        if not all(abs(end - t) > 0.01 * t for t in thresholds):
            return False
    labels = [tuple(_mistaken(finite, m)) for m in MISTAKES]
    return len({tuple(c["want"] for c in finite), *labels}) == len(MISTAKES) + 1


def _curves_variant(rng: random.Random) -> dict:
    """Drawn curves: a seed and a run length."""
    lengths = (40, 48, 60, 64, 80, 100, 120)
    return first_fit(
        lambda: {"seed": rng.randrange(2**31), "steps": rng.choice(lengths)}, _curve_conditions
    )


DIAGNOSE_RUN = Exercise(
    id="11.1",
    target="diagnose_run",
    observe=observe_diagnose,
    judge=judge_diagnose,
    visible={"seed": 0, "steps": 60},
    variant=_curves_variant,
)


def check_diagnose_run(diagnose_run) -> None:
    """Exercise 11.1: what a loss curve says about the learning rate, by the stated rules."""
    DIAGNOSE_RUN.check(diagnose_run)


# --- 11.2 assistant_mask(tokenizer, messages) -> list[int] ------------------------------------

MASK_RULE = (
    "1 on each token an assistant wrote, its closing <|im_end|> included; 0 on the system and "
    "user turns, on each role header and on the newline after each <|im_end|>"
)
HEADER = "<|im_start|>assistant\n"


@functools.cache
def smollm2_tokenizer():
    """SmolLM2's tokenizer alone (no weights), from where load_smollm2 finds the model.

    For the packaged GGUF: its converted copy in the course cache when there is one (half a
    second), else the GGUF itself (seconds: the grader's sandbox starts with an empty cache).
    """
    from transformers import AutoTokenizer

    source = resolve_source()
    with _quiet_transformers():
        if source.kind != "gguf":
            return AutoTokenizer.from_pretrained(source.location, local_files_only=source.local)
        gguf = Path(source.location)
        converted = cache_dir() / "models" / gguf.stem.lower()  # models._converted_gguf's
        if (converted / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(converted, local_files_only=True)
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _rendered(conversation) -> tuple[list[int], list[int]]:
    """The conversation's token ids by the tokenizer's own template, and the package's mask."""
    tokenizer = smollm2_tokenizer()
    ids = tokenizer.apply_chat_template(conversation, return_dict=True)["input_ids"]
    return list(ids), assistant_mask(tokenizer, conversation)


def _marked(size: int, spans) -> list[int]:
    mask = [0] * size
    for start, end in spans:
        mask[start:end] = [1] * (end - start)
    return mask


def _spans(mask: list[int]) -> list[tuple[int, int]]:
    """(first, one past the last) position of each run of ones in `mask`."""
    ends = [i for i, (a, b) in enumerate(zip([0, *mask], [*mask, 0], strict=True)) if a != b]
    return list(zip(ends[::2], ends[1::2], strict=True))


def _mask_mistakes(conversation) -> list[tuple[list[int], str]]:
    """(the mask a mistake gives on the conversation, the mistake it names)."""
    _, want = _rendered(conversation)
    spans = _spans(want)
    size, header = len(want), len(smollm2_tokenizer().encode(HEADER, add_special_tokens=False))
    return [
        ([0] * size, "the mask is all zeros: nothing of the conversation would train"),
        (
            [1] * size,
            "the mask is all ones: the loss would train the system prompt, the user's turns and "
            "the template too, and the model would learn to write the user's questions",
        ),
        ([1 - v for v in want], "the mask is inverted: 1 where the assistant wrote, else 0"),
        (
            _marked(size, [(s - header, e) for s, e in spans]),
            "the role header <|im_start|>assistant\\n is marked 1: the template writes it, not the "
            "assistant (at inference the prompt already ends with it), so leave it at 0",
        ),
        (
            _marked(size, [(s, e - 1) for s, e in spans]),
            "the assistant's closing <|im_end|> is 0: mark it 1, it is how the model learns to "
            "stop; trained without it, the model never ends its answer",
        ),
        (
            _marked(size, [(s, e + 1) for s, e in spans]),
            "the newline after <|im_end|> is marked 1: the template writes it after the turn has "
            "ended (generation stops at <|im_end|>), so leave it at 0",
        ),
        (_marked(size, spans[-1:]), "only the last assistant turn is marked: mark every one"),
        (_marked(size, spans[:1]), "only the first assistant turn is marked: mark every one"),
        (
            [0, *want[:-1]],
            "the mask is shifted one token to the right: mask[i] is for token i itself (the shift "
            "to next-token targets happens inside the loss, not here)",
        ),
        ([*want[1:], 0], "the mask is shifted one token to the left: mask[i] is for token i"),
    ]


def observe_mask(assistant_mask_, case):
    """Exercise 11.2: the learner's mask for each conversation, with SmolLM2's tokenizer (a copy:
    a learner may set its chat_template)."""
    observations = {}
    tokenizer = copy.deepcopy(smollm2_tokenizer())
    for k, conversation in enumerate(case["conversations"]):
        messages = copy.deepcopy(conversation)
        mask = attempt(observations, f"c{k}", lambda m=messages: assistant_mask_(tokenizer, m))
        if f"c{k}_error" in observations:
            continue
        try:
            if isinstance(mask, str | bytes | Mapping):
                raise TypeError("not a sequence of numbers")
            values = [float(v) for v in mask]
            observations[f"c{k}"] = [int(v) if v.is_integer() else v for v in values]
        except Exception:  # noqa: BLE001 - not a sequence of numbers
            observations[f"c{k}_returned"] = describe(mask)
    return observations


def _judge_one_mask(got, conversation, call: str) -> None:
    ids, want = _rendered(conversation)
    if got == want:
        return
    tokenizer = smollm2_tokenizer()
    header = len(tokenizer.encode(HEADER, add_special_tokens=False))
    default = ids.index(ids[0], 1)  # tokens of the default system message: up to the next turn
    require(
        not (conversation[0]["role"] != "system" and len(got) == len(want) - default),
        f"{call} gave {len(got)} values for {len(want)} tokens: with no system message, SmolLM2's "
        "template inserts a default one. Mark the tokens of tokenizer.apply_chat_template("
        "messages), the template's own rendering",
    )
    require(
        len(got) != len(want) + header,
        f"{call} gave {len(got)} values for {len(want)} tokens: the conversation was rendered with "
        "add_generation_prompt=True; it is complete, with no assistant turn to open",
    )
    require(
        len(got) == len(want),
        f"{call} gave {len(got)} values for {len(want)} tokens: one value per token of "
        "tokenizer.apply_chat_template(messages)",
    )
    odd = sorted({v for v in got if v not in (0, 1)}, key=str)
    require(not odd, f"{call} holds {odd[0] if odd else ''}: a mask holds 0 and 1 only")
    for wrong, message in _mask_mistakes(conversation):
        require(got != wrong, f"{call}: {message}")
    i = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
    around = tokenizer.decode(ids[max(0, i - 4) : i + 2])
    raise AssertionError(
        f"{call}: token {i}, {tokenizer.convert_ids_to_tokens(ids[i])!r} (in {around!r}), should "
        f"be {want[i]}, got {got[i]}: {MASK_RULE}"
    )


def judge_mask(observations, case) -> None:
    """Exercise 11.2: the package's assistant_mask on every conversation, each mistake named."""
    for k, conversation in enumerate(case["conversations"]):
        turns = sum(m["role"] == "assistant" for m in conversation)
        system = "a" if conversation[0]["role"] == "system" else "no"
        call = (
            f"assistant_mask(tokenizer, messages) on conversation {k} ({system} system message, "
            f"{turns} assistant turns)"
        )
        raised(observations, f"c{k}", call)
        returned = observations.get(f"c{k}_returned")
        require(returned is None, f"{call} should return a list of 0s and 1s, got {returned}")
        _judge_one_mask(observations[f"c{k}"], conversation, call)


SYSTEMS = ("Be brief.", "You sort support tickets. Answer in JSON.", "Answer in one sentence.")
USERS = (
    "My laptop will not charge. Order 123456.",
    "What is 2 + 2?",
    "And 3 + 3?",
    "Can you say that in fewer words?",
    "Thanks! One more: the printer jams on every page.",
    "Where is my refund?",
)
ANSWERS = (
    '{"product": "laptop", "issue": "battery", "urgency": "high", "order_id": "123456"}',
    "4",
    "6\nDone.",
    "It jams.",
    "Your refund left on Monday.\nIt takes 3-5 days.",
    "Yes.",
)


def _conversation(system: str | None, turns: list[tuple[str, str]]) -> list[dict]:
    messages = [] if system is None else [{"role": "system", "content": system}]
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages


def _mask_conditions(case) -> bool:
    """Every mistake gives its own mask on every conversation, none of them the right one."""
    for conversation in case["conversations"]:
        masks = [_rendered(conversation)[1], *(m for m, _ in _mask_mistakes(conversation))]
        if len({json.dumps(m) for m in masks}) < len(masks):
            return False
    return True


def _mask_variant(rng: random.Random) -> dict:
    """Drawn conversations: two or three assistant turns; with, then without, a system message."""

    def draw():
        systems = (rng.choice(SYSTEMS), None, rng.choice((None, *SYSTEMS)))
        turns = [[(rng.choice(USERS), rng.choice(ANSWERS)) for _ in range(rng.randint(2, 3))]
                 for _ in systems]  # fmt: skip
        return {"conversations": list(map(_conversation, systems, turns))}

    return first_fit(draw, _mask_conditions, tries=100)


ASSISTANT_MASK = Exercise(
    id="11.2",
    target="assistant_mask",
    observe=observe_mask,
    judge=judge_mask,
    visible={
        "conversations": [
            _conversation(SYSTEMS[0], [(USERS[1], ANSWERS[1]), (USERS[2], ANSWERS[2])]),
            _conversation(None, [(USERS[0], ANSWERS[0]), (USERS[3], ANSWERS[3])]),
            _conversation(
                SYSTEMS[1], [(USERS[5], ANSWERS[4]), (USERS[4], ANSWERS[5]), (USERS[3], ANSWERS[3])]
            ),
        ]
    },  # fmt: skip
    variant=_mask_variant,
)


def check_assistant_mask(assistant_mask) -> None:
    """Exercise 11.2: which tokens of a chat the loss trains on, with SmolLM2's chat template."""
    ASSISTANT_MASK.check(assistant_mask)


# --- 11.3 batch_arithmetic(rows, batch_size, grad_accum, processes) -> (int, int) -------------


def _arithmetic(rows, batch, accum, processes) -> tuple[int, int] | None:
    """The package's (effective batch size, steps per epoch), or None if no step fits."""
    try:
        return effective_batch_size(batch, accum, processes), steps_per_epoch(
            rows, batch, accum, processes
        )
    except ValueError:
        return None


def observe_batch(batch_arithmetic_, case):
    """Exercise 11.3: the learner's (effective batch size, steps per epoch) for each setting."""
    observations = {}
    for k, setting in enumerate(case["settings"]):
        result = attempt(observations, f"s{k}", lambda s=setting: batch_arithmetic_(*s))
        if f"s{k}_error" in observations:
            continue
        try:
            pair = tuple(result)
            if len(pair) != 2:
                raise ValueError("not two values")
        except Exception:  # noqa: BLE001 - not two values
            observations[f"s{k}_returned"] = describe(result)
            continue
        observations[f"s{k}"] = [
            observe_number(observations, f"s{k}_{i}", lambda v=v: v) for i, v in enumerate(pair)
        ]
    return observations


def _judge_impossible(observations, key: str, setting) -> None:
    rows, batch, accum, processes = setting
    step = batch * accum * processes
    error = observations.get(f"{key}_error")
    text = f"batch_arithmetic({rows}, {batch}, {accum}, {processes})"
    if error is None:
        got = observations.get(key) or observations.get(f"{key}_returned")
        if isinstance(got, list):  # (64.0, 0.0) as (64, 0)
            got = tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in got)
        raise AssertionError(
            f"{text} returned {got}: "
            f"{rows} rows cannot fill one step of {step} rows, so an epoch has no whole step. "
            "Raise a ValueError saying so: a run of 0 steps trains nothing, without a word"
        )
    require(not error.startswith("NotImplementedError"), f"{text} is not written yet ({error})")
    require(
        error.startswith("ValueError"),
        f"{text} raised {error}: raise a ValueError ({rows} rows cannot fill one step of {step})",
    )


def judge_batch(observations, case) -> None:
    """Exercise 11.3: the package's effective_batch_size and steps_per_epoch, each mistake
    named, and a ValueError when the rows cannot fill one step."""
    calls, got, want, settings = [], [], [], []
    for k, setting in enumerate(case["settings"]):
        right = _arithmetic(*setting)
        if right is None:
            continue
        call = f"batch_arithmetic({', '.join(map(str, setting))})"
        error = observations.get(f"s{k}_error") or ""
        require(
            not (right[1] == 1 and error.startswith("ValueError")),
            f"{call} raised {error}: {setting[0]} rows fill exactly one step of {right[0]} rows "
            "(raise only when rows < the effective batch size)",
        )
        raised(observations, f"s{k}", call)
        returned = observations.get(f"s{k}_returned")
        require(
            returned is None,
            f"{call} should return (effective batch size, steps per epoch), got {returned}",
        )
        for i, name in enumerate(("the effective batch size", "the steps per epoch")):
            judge_number(observations, f"s{k}_{i}", f"{name} of {call}")
        calls.append(call)
        got.append(observations[f"s{k}"])
        want.append(right)
        settings.append(setting)
    _judge_pairs(calls, got, want, settings)
    for k, setting in enumerate(case["settings"]):
        if _arithmetic(*setting) is None:
            _judge_impossible(observations, f"s{k}", setting)


def _judge_pairs(calls, got, want, settings) -> None:
    rows = [s[0] for s in settings]
    per_device = [s[1] for s in settings]
    effective = [w[0] for w in want]
    judge_numbers(
        [f"the effective batch size of {c}" for c in calls],
        [g[0] for g in got],
        effective,
        [
            ([b * g for _, b, g, _ in settings],
             "the effective batch size leaves out the processes: each of them takes its own "
             "batches every step, batch_size x grad_accum x processes rows in all"),
            ([b * p for _, b, _, p in settings],
             "the effective batch size leaves out gradient accumulation: each step adds up "
             "grad_accum batches per process, batch_size x grad_accum x processes rows in all"),
            (per_device, "the effective batch size is batch_size x grad_accum x processes, the "
             "rows behind one optimizer step, not the per-device batch_size"),
        ],
    )  # fmt: skip
    judge_numbers(
        [f"the steps per epoch of {c}" for c in calls],
        [g[1] for g in got],
        [w[1] for w in want],
        [
            ([math.ceil(r / e) for r, e in zip(rows, effective, strict=True)],
             "the steps per epoch are rounded up: a last, partial step is not a step (round down, "
             "rows // effective batch size; its rows are seen in the next epoch)"),
            ([round(r / e) for r, e in zip(rows, effective, strict=True)],
             "the steps per epoch are rounded to the nearest: round down, rows // effective batch "
             "size"),
            ([r / e for r, e in zip(rows, effective, strict=True)],
             "the steps per epoch are a whole number: rows // effective batch size, not rows / "
             "effective batch size"),
            ([r // b for r, b in zip(rows, per_device, strict=True)],
             "the steps per epoch divide the rows by the per-device batch_size only: one step "
             "takes batch_size x grad_accum x processes rows"),
        ],
    )  # fmt: skip


def _batch_conditions(case) -> bool:
    """Every mistake gives other numbers than the right ones, and than each other; one setting
    fills exactly one step, two cannot fill any."""
    settings = case["settings"]
    right = [_arithmetic(*s) for s in settings]
    possible = [(s, r) for s, r in zip(settings, right, strict=True) if r is not None]
    if right.count(None) != 2 or sum(r[1] == 1 for _, r in possible) != 1:
        return False
    effective = [[r[0] for _, r in possible], [s[1] * s[2] for s, _ in possible],
                 [s[1] * s[3] for s, _ in possible], [s[1] for s, _ in possible]]  # fmt: skip
    fractions = [s[0] / r[0] for s, r in possible]
    steps = [[r[1] for _, r in possible], [math.ceil(f) for f in fractions],
             [round(f) for f in fractions], fractions,
             [s[0] // s[1] for s, _ in possible]]  # fmt: skip
    distinct = [{tuple(map(float, v)) for v in values} for values in (effective, steps)]
    return len(distinct[0]) == len(effective) and len(distinct[1]) == len(steps)


SIZES = ((1, 2, 4, 8, 16, 32), (1, 2, 4, 8, 16), (1, 2, 4, 8))  # batch_size, accum, processes
SMALL_SIZES = ((2, 4, 8), (2, 4), (2, 4))


def _batch_variant(rng: random.Random) -> dict:
    """Drawn settings: sizes, accumulation and processes; one exact step, two impossible."""

    def draw():
        settings = []
        for kind in ("any",) * 5 + ("exact", "short", "short"):  # one fills a step, two cannot
            sizes = [rng.choice(c) for c in (SIZES if kind == "any" else SMALL_SIZES)]
            step = math.prod(sizes)  # batch_size x grad_accum x processes
            low, high = {"any": (step + 1, 20000), "exact": (step, step), "short": (1, step - 1)}[
                kind
            ]
            settings.append([rng.randint(low, high), *sizes])
        rng.shuffle(settings)
        return {"settings": settings}

    return first_fit(draw, _batch_conditions)


BATCH_ARITHMETIC = Exercise(
    id="11.3",
    target="batch_arithmetic",
    observe=observe_batch,
    judge=judge_batch,
    visible={
        "settings": [
            [1000, 8, 4, 2],  # 64 rows a step: 15 steps and 40 rows left over
            [5000, 16, 1, 4],
            [2400, 4, 8, 1],
            [48, 8, 4, 2],  # cannot fill one step of 64
            [777, 3, 5, 2],
            [64, 8, 4, 2],  # exactly one step
            [100, 32, 2, 2],  # cannot fill one step of 128
        ]
    },
    variant=_batch_variant,
)


def check_batch_arithmetic(batch_arithmetic) -> None:
    """Exercise 11.3: the rows behind one optimizer step, and how many steps make an epoch."""
    BATCH_ARITHMETIC.check(batch_arithmetic)


EXERCISES = (DIAGNOSE_RUN, ASSISTANT_MASK, BATCH_ARITHMETIC)
