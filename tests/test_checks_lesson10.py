"""Exercises 10: the checks pass right answers and name each classic mistake, on every case."""

import copy
import json
import random
import re
from pathlib import Path

import pytest
import torch
from exercise_harness import (
    ODD_OBJECTS,
    Weird,
    cases_vary,
    fails,
    judged_odd,
    passes,
    through_json,
)

from lora_course.checks import lesson10
from lora_course.checks.lesson10 import LATEST_COMPATIBLE, ROUTE_BATCH, SERVED_VS_MERGED
from lora_course.registry import choose_version, compatibility_problems
from lora_course.serving import BASE, route_adapters, served_vs_merged_gap

ROOT = Path(__file__).resolve().parents[1]
NAME = "10_serving_and_shipping_adapters.ipynb"
SEEDS = {"10.1": range(20), "10.2": range(20), "10.3": range(6)}  # variants a right answer passes
WRONG_SEEDS = {"10.1": (1, 2, 3), "10.2": (1, 2, 3), "10.3": (1,)}  # each wrong answer fails


def defined(folder: str) -> dict:
    """What the code cells of a notebook of `folder` (solutions/ or exercises/) define."""
    cells = json.loads((ROOT / folder / NAME).read_text())["cells"]
    namespace = {"copy": copy, "torch": torch}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith(("class ", "def ")):
            exec(source, namespace)  # the course's own notebook
    return namespace


SOLUTION, UNTOUCHED = defined("solutions"), defined("exercises")
solution_routes = SOLUTION["route_adapters"]
solution_latest = SOLUTION["latest_compatible"]
solution_gap = SOLUTION["served_vs_merged_gap"]
MAIN = (solution_routes, solution_latest, solution_gap)


@pytest.mark.parametrize("exercise", lesson10.EXERCISES, ids=lambda e: e.id)
@pytest.mark.parametrize("name", ODD_OBJECTS)
def test_observe_never_raises_and_judge_names_the_problem(exercise, name):
    judged_odd(exercise, ODD_OBJECTS[name], "not written yet" if name == "not written" else None)


@pytest.mark.parametrize("exercise", lesson10.EXERCISES, ids=lambda e: e.id)
def test_cases_are_json_and_variants_differ(exercise):
    cases_vary(exercise)


def test_the_untouched_exercises_are_not_written_yet():
    for exercise, target in zip(lesson10.EXERCISES, MAIN, strict=True):
        fails(exercise, UNTOUCHED[target.__name__], "not written yet", WRONG_SEEDS[exercise.id])


def test_the_visible_check_functions_are_the_exercises():
    lesson10.check_route_adapters(solution_routes)
    lesson10.check_latest_compatible(solution_latest)
    lesson10.check_served_vs_merged_gap(solution_gap)
    assert [e.id for e in lesson10.EXERCISES] == ["10.1", "10.2", "10.3"]
    assert [e.target for e in lesson10.EXERCISES] == [t.__name__ for t in MAIN]


# --- 10.1 route_adapters ----------------------------------------------------------------------


def routes_comprehension(tags, routes):
    return [BASE if tag is None else routes[tag] for tag in tags]  # KeyError names the tag


def routes_tuple(tags, routes):
    return tuple(route_adapters(tags, routes))


def routes_with(transform):
    """The right names, then transformed: the mistake `transform` makes."""
    return lambda tags, routes: transform(solution_routes(tags, routes), tags, routes)


def routes_misaligned(tags, routes):
    """Two tagged requests with different adapters swap names; the others keep their row."""
    names = solution_routes(tags, routes)
    tagged = [i for i, name in enumerate(names) if name != BASE]
    i, j = next((i, j) for i in tagged for j in tagged if names[i] != names[j])
    names[i], names[j] = names[j], names[i]
    return names


def routes_by_route_order(tags, routes):
    names = [name for tag, name in routes.items() for t in tags if t == tag]
    return names + [BASE] * tags.count(None)


def routes_none_as(value):
    return lambda tags, routes: [value if t is None else routes[t] for t in tags]


def routes_none_looked_up(tags, routes):
    return [routes[t] for t in tags]


def routes_unknown_to_base(tags, routes):
    return [routes.get(t, BASE) for t in tags]


def routes_unknown_dropped(tags, routes):
    return [BASE if t is None else routes[t] for t in tags if t is None or t in routes]


def routes_unknown_raises(error):
    def route(tags, routes):
        unknown = [t for t in tags if t is not None and t not in routes]
        if unknown:
            raise error
        return solution_routes(tags, routes)

    return route


class UnknownTag(KeyError):
    """A KeyError of the learner's own: still a KeyError."""


def routes_own_key_error(tags, routes):
    for tag in tags:
        if tag is not None and tag not in routes:
            raise UnknownTag(f"no adapter for {tag}")  # the tag as a word, not quoted
    return solution_routes(tags, routes)


def routes_sorting_tags_in_place(tags, routes):
    names = solution_routes(tags, routes)
    tags.sort(key=str)
    return names


def routes_adding_none(tags, routes):
    routes[None] = BASE
    return [routes[t] for t in tags]


def routes_empty_is_none(tags, routes):
    return solution_routes(tags, routes) if tags else None


WRONG_ROUTES = [
    (UNTOUCHED["route_adapters"], "is not written yet"),
    (routes_with(lambda n, t, r: sorted(n)), "the names are sorted"),
    (routes_with(lambda n, t, r: sorted(n, key=n.index)), "the names are grouped by adapter"),
    (lambda tags, routes: [n for tag, n in routes.items() if tag in tags], "one name per route"),
    (routes_by_route_order, "the names follow the order of `routes`"),
    (routes_with(lambda n, t, r: list(dict.fromkeys(n))), "the names are deduplicated"),
    (routes_with(lambda n, t, r: n[1:] + n[:1]), "shifted by one row (row i holds row i + 1"),
    (routes_with(lambda n, t, r: n[-1:] + n[:-1]), "shifted by one row (row i holds row i - 1"),
    (
        routes_with(lambda n, t, r: [x for x, tag in zip(n, t, strict=True) if tag is not None]),
        "requests without a tag (None) are left out",
    ),
    (routes_with(lambda n, t, r: [BASE if x is None else x for x in t]), "the tags themselves"),
    (routes_misaligned, "the right names in the wrong rows"),
    (routes_none_as("base"), re.compile(r"request \d+ has no tag \(None\).*got \"base\"")),
    (routes_none_as(None), re.compile(r"request \d+ has no tag \(None\).*got null")),
    (routes_none_as(""), re.compile(r"request \d+ has no tag \(None\)")),
    (routes_none_looked_up, "a request without a tag (None) is for the base model"),
    (routes_unknown_to_base, "sent that request to the base model"),
    (routes_unknown_dropped, "dropped that request"),
    (routes_unknown_raises(ValueError("unknown tag")), "raise a KeyError (the tag is a key"),
    (routes_unknown_raises(KeyError("unknown tag")), "say which tag"),
    (routes_unknown_raises(KeyError("unknown tag: is it loaded?")), "say which tag"),
    (routes_unknown_raises(KeyError("no route for a wholesales tag")), "say which tag"),
    (routes_sorting_tags_in_place, "changed the tags or routes it was given"),
    (routes_adding_none, "changed the tags or routes it was given"),
    (routes_empty_is_none, re.compile(re.escape("route_adapters([], ") + r".*should give \[\]")),
    (routes_with(lambda n, t, r: " ".join(n)), "should return a list of adapter names, got str"),
    (routes_with(lambda n, t, r: [*n, BASE]), "names for"),
    (routes_with(lambda n, t, r: [len(x) for x in n]), "every adapter name is a str, got {"),
]


def test_the_routing_cases_separate_every_mistake():
    cases = [ROUTE_BATCH.visible] + [ROUTE_BATCH.variant(random.Random(s)) for s in range(300)]
    for case in cases:
        assert lesson10._route_conditions(case)
        tags, routes = case["tags"], case["routes"]
        assert None in tags and len(tags) != len(set(tags))  # repeats
        assert len(set(routes.values())) < len(routes)  # two tags share an adapter
        assert set(routes) - set(tags)  # a route nobody asks for
        assert list(routes) != list(dict.fromkeys(t for t in tags if t is not None))
        assert case["unknown"] not in routes and 0 <= case["unknown_at"] <= len(tags)
        assert len(case["unknown"]) > 2  # "it" or "hr" is a word of many an unrelated message
        assert not set(routes) & set(routes.values())  # adapter names are not tags


def test_the_routing_reference_keeps_the_order_and_refuses_unknown_tags():
    case = ROUTE_BATCH.visible
    names = lesson10._routed(case)
    assert names[1] == names[5] == BASE and names[2] == names[4] == names[7]
    with pytest.raises(KeyError, match="sales"):
        route_adapters(["sales"], case["routes"])


def test_the_unknown_tag_is_named_quoted_or_as_a_whole_word():
    assert lesson10._names_tag("KeyError: \"no route for 'sales'\"", "sales")
    assert lesson10._names_tag("UnknownTag: 'no adapter for sales'", "sales")
    assert not lesson10._names_tag("KeyError: 'no route for a wholesales tag'", "sales")
    assert not lesson10._names_tag("KeyError: 'unknown tag'", "sales")


# --- 10.2 latest_compatible -------------------------------------------------------------------

SAME = ("architecture", "hidden_size", "num_hidden_layers", "tokenizer", "fingerprint")


def latest_by(fits, order=None, pick=max, key=lambda m: m["version"]):
    """latest_compatible with its own rule for what fits and which one to take."""

    def latest(manifests, base):
        fitting = [m for m in manifests if fits(m, base)]
        if not fitting:
            raise LookupError("nothing fits")
        return pick(fitting, key=key) if order is None else order(fitting)

    return latest


def fits_if(*fields, yanked=True):
    return lambda m, base: (
        (not yanked or "yanked" not in m) and all(m["base"][k] == base[k] for k in fields)
    )


def latest_sorted_first(manifests, base):
    for manifest in sorted(manifests, key=lambda m: m["version"], reverse=True):
        if not manifest.get("yanked") and not compatibility_problems(manifest, base):
            return manifest
    raise ValueError("no version fits")


def latest_copy(manifests, base):
    return dict(solution_latest(manifests, base))


def latest_max_of_empty(manifests, base):
    fitting = [m for m in manifests if fits_if(*SAME)(m, base)]
    return max(fitting, key=lambda m: m["version"])  # ValueError on an empty list: an error


def latest_or_none(manifests, base):
    try:
        return solution_latest(manifests, base)
    except LookupError:
        return None


def latest_sorting_in_place(manifests, base):
    manifests.sort(key=lambda m: m["version"], reverse=True)
    return solution_latest(manifests, base)


def latest_popping_yanked(manifests, base):
    for manifest in manifests:
        manifest.pop("metrics", None)
    return solution_latest(manifests, base)


def latest_indexing_yanked(manifests, base):
    fitting = [m for m in manifests if not m["yanked"] and fits_if(*SAME)(m, base)]
    return max(fitting, key=lambda m: m["version"])


WRONG_LATEST = [
    (UNTOUCHED["latest_compatible"], "is not written yet"),
    (latest_by(fits_if(*SAME), key=lambda m: str(m["version"])), "compared as strings"),
    (latest_by(fits_if(*SAME), key=lambda m: f"v{m['version']}"), "compared as strings"),
    (latest_by(lambda m, base: "yanked" not in m and m["base"] == base), "model_id included"),
    (latest_by(fits_if(*SAME), order=lambda f: f[0]), "the first fitting version in the list"),
    (latest_by(fits_if(*SAME), order=lambda f: f[-1]), "the last fitting version in the list"),
    (latest_by(fits_if(*SAME), pick=min), "the oldest fitting version"),
    (latest_by(fits_if(*SAME, yanked=False)), "which is yanked"),
    (latest_by(fits_if("fingerprint")), "compare the tokenizer too"),
    (
        latest_by(fits_if("architecture", "tokenizer")),
        re.compile("another model size|the same shapes with other weights"),
    ),
    (latest_by(fits_if(*SAME[:4])), "the same shapes with other weights"),
    (latest_by(fits_if()), "does not fit this base"),
    (latest_by(fits_if(yanked=False)), re.compile("which is yanked|does not fit this base")),
    (latest_or_none, "returned None: when no version fits"),
    (lambda m, b: solution_latest(m, b)["version"], "returned a version number"),
    (lambda m, b: solution_latest(m, b)["name"], "should return one of the manifests, got str"),
    (lambda m, b: {**solution_latest(m, b), "chosen": True}, "but changed"),
    (latest_indexing_yanked, "only a withdrawn version has a 'yanked' key"),
    (latest_sorting_in_place, "reordered the list it was given"),
    (latest_popping_yanked, "changed the manifests or the base record"),
]


def test_the_registry_cases_separate_every_mistake():
    cases = [LATEST_COMPATIBLE.visible]
    cases += [LATEST_COMPATIBLE.variant(random.Random(s)) for s in range(200)]
    for case in cases:
        assert lesson10._registry_conditions(case)
        base, manifests, none_fit = lesson10._registry(case)
        answer = choose_version(manifests, base)
        assert answer["version"] == case["answer"] and 10 <= case["answer"] <= 19
        assert answer["base"]["model_id"] != base["model_id"]  # only model_id differs
        assert {m["version"] for m in manifests} == set(range(1, case["answer"] + 6)) - set(
            range(10, case["answer"])
        )
        newer = [m for m in manifests if m["version"] > case["answer"]]
        assert sum("yanked" in m for m in newer) == 1
        assert all(m.get("yanked") or compatibility_problems(m, base) for m in newer)
        assert all(m.get("yanked") or compatibility_problems(m, base) for m in none_fit)
        nine = next(m for m in manifests if m["version"] == 9)
        assert lesson10._fits(nine, base)  # "9" > "1x" as strings
        assert [m["version"] for m in manifests] != sorted(m["version"] for m in manifests)


def test_the_registry_traps_each_fail_one_comparison():
    base, manifests, _ = lesson10._registry(LATEST_COMPATIBLE.visible)
    newer = {m["version"]: m for m in manifests if m["version"] > 10}
    differing = sorted(
        tuple(k for k in SAME if m["base"][k] != base[k])
        for m in newer.values()
        if "yanked" not in m
    )
    assert differing == sorted(
        [
            ("tokenizer",),  # same weights, a changed tokenizer
            ("fingerprint",),  # same shapes, other weights
            ("hidden_size", "num_hidden_layers", "fingerprint"),  # SmolLM2-360M, same tokenizer
            SAME,  # another architecture altogether
        ]
    )


# --- 10.3 served_vs_merged_gap ----------------------------------------------------------------


def gap_in_dtype(served, merged, batch, dtype):
    """Right: the difference taken in dtype itself, padded positions set to zero."""
    mask = batch["attention_mask"][..., None].bool()  # (rows, T, 1)
    with torch.no_grad():
        a = copy.deepcopy(served).to(dtype=dtype)(**batch).logits
        b = copy.deepcopy(merged).to(dtype=dtype)(**batch).logits
    return torch.where(mask, (a - b).abs(), torch.zeros((), dtype=dtype)).max()


def gap_with(served_dtype=True, merged_dtype=True, merged_batch=None, reduce="max", pads=False,
             in_place=False):  # fmt: skip
    """served_vs_merged_gap with one step done the wrong way."""

    def gap(served, merged, batch, dtype):
        mask = batch["attention_mask"].bool()
        s = served if in_place else copy.deepcopy(served)
        m = merged if in_place else copy.deepcopy(merged)
        s, m = s.to(dtype) if served_dtype else s, m.to(dtype) if merged_dtype else m
        other = batch if merged_batch is None else merged_batch(batch)
        with torch.no_grad():
            diff = (s(**batch).logits.float() - m(**other).logits.float()).abs()
        diff = diff if pads else diff[mask]
        return getattr(diff, reduce)().item()

    return gap


def gap_rule(rule):
    """served_vs_merged_gap that measures with its own rule on the right logits (float32)."""

    def gap(served, merged, batch, dtype):
        mask = batch["attention_mask"].bool()  # (rows, T)
        with torch.no_grad():
            a, b = (copy.deepcopy(m).to(dtype)(**batch).logits.float() for m in (served, merged))
        return float(rule(a, b, mask))

    return gap


def last_real(a, b, mask):
    rows, last = torch.arange(mask.shape[0]), mask.long().sum(1) - 1
    return (a - b)[rows, last].abs().max()


def gap_merging_the_original(served, merged, batch, dtype):
    served.merge_adapter()
    return solution_gap(served, merged, batch, dtype)


def gap_bool_mask(served, merged, batch, dtype):
    batch["attention_mask"] = batch["attention_mask"].bool()
    return solution_gap(served, merged, batch, dtype)


def gap_tensor(served, merged, batch, dtype):
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        logits = [copy.deepcopy(m).to(dtype)(**batch).logits.float() for m in (served, merged)]
    return (logits[0] - logits[1])[mask].abs()


WRONG_GAP = [
    (UNTOUCHED["served_vs_merged_gap"], "is not written yet"),
    (gap_with(merged_batch=lambda b: {k: v.roll(1, 0) for k, v in b.items()}), "other input_ids"),
    (gap_with(merged_batch=lambda b: {"input_ids": b["input_ids"]}), "without the attention mask"),
    (
        gap_with(merged_batch=lambda b: {**b, "attention_mask": torch.ones_like(b["input_ids"])}),
        "another attention_mask",
    ),
    (gap_with(merged_dtype=False), "cast only the served model to"),
    (gap_with(served_dtype=False), "cast only the merged model to"),
    (gap_with(served_dtype=False, merged_dtype=False), "ran neither model in"),
    (gap_with(in_place=True), "changed the caller's served model to"),
    (gap_with(pads=True), "the gap counts padded positions"),
    (gap_with(reduce="mean"), "that is the mean |difference|"),
    (gap_rule(lambda a, b, m: (a - b)[m].max()), "that is the signed max"),
    (gap_rule(lambda a, b, m: (a - b)[0][m[0]].abs().max()), "the first row only"),
    (gap_rule(last_real), "each row's last real position only"),
    (
        gap_rule(lambda a, b, m: (a.max(-1).values - b.max(-1).values)[m].abs().max()),
        "that is |max(a) - max(b)| per position",
    ),
    (
        gap_rule(lambda a, b, m: (a.log_softmax(-1) - b.log_softmax(-1))[m].abs().max()),
        "that is the gap of log_softmax",
    ),
    (
        gap_rule(lambda a, b, m: 1.5 * (a - b)[m].abs().mean()),  # neither the mean nor the max
        re.compile(r"your function got give [^:]*: cast a copy\.deepcopy"),
    ),
    (gap_rule(lambda a, b, m: 1.001 * (a - b)[m].abs().max()), "your function got give"),
    (gap_merging_the_original, "changed the weights of the caller's served model"),
    (gap_bool_mask, "changed the batch it was given"),
    (gap_tensor, "should return a number, got torch.Tensor"),
]


def test_the_gap_cases_give_each_mistake_its_own_number():
    cases = [SERVED_VS_MERGED.visible]
    cases += [SERVED_VS_MERGED.variant(random.Random(s)) for s in range(6)]
    for case in cases:
        batch = lesson10._batch(case)
        mask = batch["attention_mask"].bool()
        assert not mask.all() and (batch["input_ids"][mask] != case["pad_id"]).all()
        assert sorted(case["dtypes"]) == sorted(lesson10.DTYPES)
        wrong = set()  # the mistakes some dtype of the case tells from the right gap
        for dtype in case["dtypes"]:
            served, merged = lesson10._models(case)
            with torch.no_grad():
                a, b = (
                    m.to(getattr(torch, dtype))(**batch).logits.float() for m in (served, merged)
                )
            measures = lesson10._measures(a, b, mask, dtype)
            want = lesson10._reference_gap(case, dtype)
            assert measures["right"][0] == want and 0 < want < (1e-4 if dtype == "float32" else 0.5)
            assert measures["pads"][0] > 10 * want  # the pad embedding differs
            wrong |= {
                name
                for name, values in measures.items()
                if all(not lesson10._close(v, r) for v in values for r in measures["right"])
            }
        assert wrong >= set(measures) - {"right", "signed_other"}  # max(b - a) may be the gap


def test_the_merged_copy_differs_from_the_served_model_only_at_padded_positions():
    case = SERVED_VS_MERGED.visible
    served, merged = lesson10._models(case)
    batch = lesson10._batch(case)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        a, b = served(**batch).logits, merged(**batch).logits
        base = served.get_base_model()
        with served.disable_adapter():
            plain = base(**batch).logits
    assert (a - b)[mask].abs().max() < 1e-4  # the merge is right in float32
    assert (a - b)[~mask].abs().max() > 1  # the pad embedding differs
    assert (a - plain)[mask].abs().max() > 0.1  # the adapter is not zero


def test_the_gap_reference_is_the_solution_notebooks():
    case = SERVED_VS_MERGED.visible
    for dtype in lesson10.DTYPES:
        served, merged = lesson10._models(case)
        batch = lesson10._batch(case)
        want = served_vs_merged_gap(served, merged, batch, getattr(torch, dtype))
        assert solution_gap(served, merged, batch, getattr(torch, dtype)) == want


# --- shared tests -----------------------------------------------------------------------------

RIGHT = [
    (ROUTE_BATCH, solution_routes),
    (ROUTE_BATCH, route_adapters),
    (ROUTE_BATCH, routes_comprehension),
    (ROUTE_BATCH, routes_tuple),
    (LATEST_COMPATIBLE, solution_latest),
    (LATEST_COMPATIBLE, choose_version),
    (LATEST_COMPATIBLE, latest_sorted_first),
    (LATEST_COMPATIBLE, latest_copy),
    (LATEST_COMPATIBLE, latest_max_of_empty),
    (SERVED_VS_MERGED, solution_gap),
    (SERVED_VS_MERGED, served_vs_merged_gap),
    (SERVED_VS_MERGED, gap_in_dtype),
    (SERVED_VS_MERGED, gap_rule(lambda a, b, m: (a.double() - b.double())[m].abs().max())),
    (ROUTE_BATCH, routes_own_key_error),
]
WRONG = [
    *[(ROUTE_BATCH, f, m) for f, m in WRONG_ROUTES],
    *[(LATEST_COMPATIBLE, f, m) for f, m in WRONG_LATEST],
    *[(SERVED_VS_MERGED, f, m) for f, m in WRONG_GAP],
]


def _id(row):
    exercise, answer, message = row
    name = getattr(answer, "__qualname__", "answer").split(".")[0]
    return f"{exercise.id}-{name}-{str(getattr(message, 'pattern', message))[:30]}"


@pytest.mark.parametrize(("exercise", "answer"), RIGHT, ids=[_id((*r, "")) for r in RIGHT])
def test_right_answers_pass_the_visible_case_and_variants(exercise, answer):
    seeds = SEEDS[exercise.id]
    passes(exercise, answer, seeds if answer in MAIN else seeds[:3])


@pytest.mark.parametrize(("exercise", "answer", "message"), WRONG, ids=[_id(w) for w in WRONG])
def test_each_mistake_is_named_on_the_visible_case_and_variants(exercise, answer, message):
    pattern = message if isinstance(message, re.Pattern) else re.escape(message)
    fails(exercise, answer, pattern, WRONG_SEEDS[exercise.id])


def test_judging_uses_only_the_case_and_the_observations():
    """The grader's process rebuilds the references: the judge needs no learner state."""
    for exercise, answer in zip(lesson10.EXERCISES, MAIN, strict=True):
        case = exercise.variant(random.Random(5))
        observations = exercise.observe(answer, case)
        torch.manual_seed(123)  # whatever the global RNG holds
        lesson10._pristine.cache_clear()  # and whatever the cache holds
        exercise.judge(observations, through_json(case))


def test_the_checks_leave_the_global_rng_alone():
    lesson10._pristine.cache_clear()  # tiny_llama seeds torch when it builds a model
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for exercise, answer in zip(lesson10.EXERCISES, MAIN, strict=True):
        exercise.check(answer)
    assert torch.equal(torch.rand(3), expected)


# --- odd learners: observe never raises, judge fails with an AssertionError only -------------


def returns_weird_names(tags, routes):
    return [Weird() for _ in tags]


def routes_mutating_into_weird(tags, routes):
    tags.append(Weird())
    routes[Weird()] = "x"
    return []


def latest_weird_version(manifests, base):
    return {"version": Weird()}


def latest_mutating_into_weird(manifests, base):
    manifests.append(Weird())
    base["fingerprint"] = Weird()
    return solution_latest(manifests[:-1], base)


def gap_breaking_the_models(served, merged, batch, dtype):
    del served.base_model
    merged.model = None
    return 0.1


def gap_weird_batch(served, merged, batch, dtype):
    batch["input_ids"] = Weird()
    return 0.1


def gap_nan_after_running(served, merged, batch, dtype):
    solution_gap(served, merged, batch, dtype)
    return float("nan")


@pytest.mark.parametrize(
    ("exercise", "learner"),
    [
        (ROUTE_BATCH, returns_weird_names),
        (ROUTE_BATCH, routes_mutating_into_weird),
        (LATEST_COMPATIBLE, latest_weird_version),
        (LATEST_COMPATIBLE, latest_mutating_into_weird),
        (SERVED_VS_MERGED, gap_breaking_the_models),
        (SERVED_VS_MERGED, gap_weird_batch),
        (SERVED_VS_MERGED, gap_nan_after_running),
    ],
    ids=lambda x: getattr(x, "__name__", getattr(x, "id", "?")),
)
def test_odd_learners_are_judged_without_raising(exercise, learner):
    judged_odd(exercise, learner)
