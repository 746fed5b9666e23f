"""Exercises 10: routing a mixed batch, the latest compatible version, served vs merged per dtype.

10.1 `route_adapters(tags, routes)`, 10.2 `latest_compatible(manifests, base)`, 10.3
`served_vs_merged_gap(served, merged, batch, dtype)`. Every check judges against the package's own
version (lora_course.serving.route_adapters, lora_course.registry.choose_version and
lora_course.serving.served_vs_merged_gap) on the same case. Cases are built so that the classic
mistakes give other answers: tags repeat, two tags share an adapter and the routes are in another
order than the requests; version 9 fits next to 1x (9 > 1x as strings), a yanked, a retrained and
a retokenized version sit above the answer, and the answer's base differs from the server's only
in model_id; the merged copy reads its own pad embedding, so padded positions differ, and the
check records what each model ran on and in which dtype.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import re
import warnings

import torch

from ..registry import choose_version, compatibility_problems
from ..serving import BASE, route_adapters, served_vs_merged_gap
from .exercise import (
    Exercise,
    attempt,
    describe,
    first_fit,
    judge_number,
    observe_number,
    raised,
    require,
)

# --- 10.1 route_adapters(tags, routes) -> list[str] -------------------------------------------

ROUTE = 'row i of adapter_names is routes[tags[i]], or "__base__" when tags[i] is None'
TAG_POOL = ("support", "billing", "refunds", "legal", "shipping", "returns", "sales", "hr", "it")


def _routed(case) -> list[str]:
    """The reference: the package's route_adapters on the case's main batch."""
    return route_adapters(case["tags"], case["routes"])


def _grouped(names: list[str], order: list[str]) -> list[str]:
    """`names` regrouped: every copy of order[0] first, then of order[1], ..."""
    return [name for key in order for name in names if name == key]


def _route_mistakes(case) -> list[tuple[list[str], str]]:
    """(the names a mistake gives on the main batch, the mistake it names), most telling first."""
    tags, routes = case["tags"], case["routes"]
    want = _routed(case)
    by_route = [routes[tag] for tag in routes for t in tags if t == tag]
    misaligned = "adapter_names[i] is the adapter of request i, so row i is answered by it"
    return [
        (
            sorted(want),
            f"the names are sorted: {misaligned}; sorting sends rows to other adapters (PEFT "
            "groups the rows itself and puts them back in order). Keep the requests' order",
        ),
        (
            _grouped(want, list(dict.fromkeys(want))),
            f"the names are grouped by adapter: {misaligned}; PEFT groups the rows itself, and "
            "puts them back in order. Keep the requests' order",
        ),
        (
            [routes[tag] for tag in routes if tag in tags],
            "one name per route, in the order of `routes`: adapter_names has one name per "
            "request, in the requests' order (loop over tags, not over routes)",
        ),
        (
            by_route + [BASE] * tags.count(None),
            "the names follow the order of `routes` (the dict), not the requests: loop over "
            f"tags, one name each. {misaligned}",
        ),
        (
            list(dict.fromkeys(want)),
            "the names are deduplicated: adapter_names has one name per request (row), repeats "
            "included, even when many requests use the same adapter",
        ),
        (
            want[1:] + want[:1],
            f"the names are shifted by one row (row i holds row i + 1's name): {misaligned}",
        ),
        (
            want[-1:] + want[:-1],
            f"the names are shifted by one row (row i holds row i - 1's name): {misaligned}",
        ),
        (
            [name for name, tag in zip(want, tags, strict=True) if tag is not None],
            'requests without a tag (None) are left out: they get "__base__", PEFT\'s name for '
            "the base model without any adapter, so every row keeps its place",
        ),
        (
            [BASE if tag is None else tag for tag in tags],
            "the names are the tags themselves: each tag routes to an adapter, routes[tag], and "
            "adapter_names holds the adapters' names",
        ),
    ]


def _route_call(route_adapters_, tags, routes, observations, key: str) -> None:
    """Call the learner on copies of tags and routes; record the names (or what came instead)."""
    tags_in, routes_in = list(tags), dict(routes)

    def call():
        try:
            return route_adapters_(tags_in, routes_in)
        except Exception as error:
            observations[f"{key}_keyerror"] = isinstance(error, KeyError)  # subclasses too
            raise

    result = attempt(observations, key, call)
    if f"{key}_error" not in observations:
        if isinstance(result, list | tuple):
            observations[key] = [
                n if n is None or isinstance(n, str) else {"not a str": describe(n)} for n in result
            ]
        else:
            observations[f"{key}_returned"] = describe(result)
    same = attempt(
        observations,
        f"{key}_inputs",
        lambda: tags_in == list(tags) and list(routes_in.items()) == list(routes.items()),
    )
    observations[f"{key}_inputs_kept"] = bool(same) if same is not None else False


def observe_routes(route_adapters_, case):
    """Exercise 10.1: the learner's names for the main batch, an empty one, one without routes,
    and one with an unknown tag; whether each call left the caller's tags and routes alone."""
    observations = {}
    tags, routes = case["tags"], case["routes"]
    _route_call(route_adapters_, tags, routes, observations, "main")
    _route_call(route_adapters_, [], routes, observations, "empty")
    _route_call(route_adapters_, [None, None], {}, observations, "no_routes")
    unknown = [*tags[: case["unknown_at"]], case["unknown"], *tags[case["unknown_at"] :]]
    _route_call(route_adapters_, unknown, routes, observations, "unknown")
    return observations


def _names_text(names) -> str:
    text = json.dumps(names)
    return text if len(text) < 300 else text[:297] + "..."


def _judge_main_routes(observations, case, call: str) -> None:
    tags, routes = case["tags"], case["routes"]
    want = _routed(case)
    error = observations.get("main_error") or ""
    require(
        not (observations.get("main_keyerror") is True and "None" in error),
        f"{call} raised {error}: a request without a tag (None) is for the base model; give it "
        '"__base__" (PEFT\'s name for no adapter) without looking it up in routes',
    )
    raised(observations, "main", call)
    returned = observations.get("main_returned")
    require(returned is None, f"{call} should return a list of adapter names, got {returned}")
    got = observations["main"]
    if got == want:
        return
    for wrong, message in _route_mistakes(case):
        require(got != wrong, message)
    require(
        len(got) == len(tags),
        f"{call} gave {len(got)} names for {len(tags)} requests: one name per request, in the "
        f"requests' order ({ROUTE})",
    )
    odd = [n for n in got if n is not None and not isinstance(n, str)]
    require(not odd, f"every adapter name is a str, got {_names_text(odd[0]) if odd else ''}")
    bad = [i for i, tag in enumerate(tags) if tag is None and got[i] != BASE]
    if bad:
        raise AssertionError(
            f"request {bad[0]} has no tag (None), so it is for the base model: its name is "
            f'"__base__", PEFT\'s name for no adapter, got {_names_text(got[bad[0]])}'
        )
    if sorted(got) == sorted(want):
        raise AssertionError(
            f"the right names in the wrong rows: {_names_text(got)} instead of "
            f"{_names_text(want)}. {ROUTE}, so each row is answered by its own adapter"
        )
    row = next(i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
    raise AssertionError(
        f"request {row} (tag {json.dumps(tags[row])}) should get {json.dumps(want[row])}, got "
        f"{json.dumps(got[row])}: {ROUTE} (routes = {json.dumps(routes)})"
    )


def _judge_unknown(observations, case) -> None:
    at, tag = case["unknown_at"], case["unknown"]
    call = f"route_adapters(tags, routes) with tags[{at}] = {tag!r}, a tag not in routes"
    error = observations.get("unknown_error")
    if error is None:
        got = observations.get("unknown")
        returned = observations.get("unknown_returned")
        require(got is not None, f"{call} should raise a KeyError, got {returned}")
        require(
            not (len(got) == len(case["tags"]) + 1 and got[at] == BASE),
            f'{call} sent that request to the base model ("__base__") without a word: an unknown '
            "tag is an error (raise a KeyError naming it); the client asked for an adapter this "
            "server does not have, and would get the base model's answer as if it were its own",
        )
        require(
            len(got) != len(case["tags"]),
            f"{call} dropped that request: its row disappears and every row after it moves up "
            "one. Raise a KeyError naming the tag instead",
        )
        raise AssertionError(f"{call} should raise a KeyError naming the tag, got {got}")
    raised_not_written = error.startswith("NotImplementedError")
    require(not raised_not_written, f"{call} is not written yet ({error})")
    require(
        observations.get("unknown_keyerror") is True,
        f"{call} raised {error}: raise a KeyError (the tag is a key routes does not have)",
    )
    require(
        _names_tag(error, tag),
        f"{call} raised {error}: say which tag ({tag!r}) is unknown, so the client learns what it "
        "asked for",
    )


def _names_tag(error: str, tag: str) -> bool:
    """Whether the error's text names `tag`: quoted, or as a whole word (not inside another)."""
    return repr(tag) in error or re.search(rf"(?<!\w){re.escape(tag)}(?!\w)", error) is not None


def judge_routes(observations, case) -> None:
    """Exercise 10.1: the package's route_adapters: request order, "__base__" for None,
    a KeyError for an unknown tag, the caller's tags and routes unchanged."""
    _judge_main_routes(observations, case, "route_adapters(tags, routes)")
    for key, tags, routes, want in (
        ("empty", [], case["routes"], []),
        ("no_routes", [None, None], {}, [BASE, BASE]),
    ):
        call = f"route_adapters({tags}, {json.dumps(routes) if routes else '{}'})"
        raised(observations, key, call)
        got = observations.get(key, observations.get(f"{key}_returned"))
        require(got == want, f"{call} should give {json.dumps(want)}, got {got}")
    _judge_unknown(observations, case)
    for key in ("main", "empty", "no_routes", "unknown"):
        require(
            observations.get(f"{key}_inputs_kept") is True,
            "route_adapters changed the tags or routes it was given (an in-place sort, append, "
            "pop or a new key in routes): build a new list and leave the caller's alone",
        )


def _route_conditions(case) -> bool:
    """Whether every listed mistake gives its own names, none of them the right ones."""
    names = [_routed(case), *(wrong for wrong, _ in _route_mistakes(case))]
    return len({json.dumps(n) for n in names}) == len(names)


def _routes_variant(rng: random.Random) -> dict:
    """Drawn tags and routes: repeats, None, two tags on one adapter, a route nobody asks for."""
    for _ in range(1000):
        pool = rng.sample(TAG_POOL, 6)
        shared, *rest = pool[:4]
        routes = {tag: f"{tag}-lora-v{rng.randint(1, 12)}" for tag in [shared, *rest]}
        routes[pool[4]] = routes[shared]  # two tags, one adapter
        items = list(routes.items())
        rng.shuffle(items)
        routes = dict(items)
        asked = [t for t in routes if t != rest[-1]]  # rest[-1]: routed, never asked for
        tags = [rng.choice([*asked, None]) for _ in range(rng.randint(6, 10))]
        case = {"tags": tags, "routes": routes, "unknown": pool[5],
                "unknown_at": rng.randint(0, len(tags))}  # fmt: skip
        if len(pool[5]) <= 2:  # an unknown "it" or "hr" is a word of many a message: no proof
            continue
        if None in tags and len(set(tags) - {None}) >= 3 and _route_conditions(case):
            return case
    raise RuntimeError("no routing case found")  # never: the tests draw hundreds


ROUTE_BATCH = Exercise(
    id="10.1",
    target="route_adapters",
    observe=observe_routes,
    judge=judge_routes,
    visible={
        "tags": ["support", None, "billing", "support", "refunds", None, "legal", "billing"],
        "routes": {
            "legal": "legal-lora-v2",
            "billing": "billing-lora-v5",
            "shipping": "shipping-lora-v1",
            "support": "support-lora-v12",
            "refunds": "billing-lora-v5",
        },
        "unknown": "sales",
        "unknown_at": 3,
    },
    variant=_routes_variant,
)


def check_route_adapters(route_adapters) -> None:
    """Exercise 10.1: one adapter name per request, in the requests' order, for adapter_names."""
    ROUTE_BATCH.check(route_adapters)


# --- 10.2 latest_compatible(manifests, base) -> manifest --------------------------------------

FITS = (
    "a version fits when it is not yanked and its manifest's base has this base's architecture, "
    "hidden_size, num_hidden_layers, tokenizer and fingerprint (model_id may differ: the same "
    "weights load from a hub name or a local path)"
)
SERVER_PATH = "/srv/models/SmolLM2-135M-Instruct"  # where this server loads its base from
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _digest(rng: random.Random) -> str:
    return "sha256:" + "".join(rng.choice("0123456789abcdef") for _ in range(16))


def _manifest(name: str, version: int, base: dict, yanked: str | None = None) -> dict:
    manifest = {
        "name": name,
        "version": version,
        "base": dict(base),
        "adapter": {"r": 16, "alpha": 32, "targets": ["q_proj", "v_proj"], "scaling": "alpha/r",
                    "dora": False},
        "metrics": {"exact_match": round(0.5 + version / 100, 2)},
    }  # fmt: skip
    if yanked is not None:
        manifest["yanked"] = yanked
    return manifest


def _registry(case) -> tuple[dict, list[dict], list[dict]]:
    """The server's base record, the case's manifests (in their listed order), and a list of
    manifests none of which fits. Built from the case alone, for the learner and the judge."""
    rng = random.Random(case["seed"])
    name, answer = case["name"], case["answer"]
    base = {"model_id": SERVER_PATH, "architecture": "LlamaForCausalLM", "hidden_size": 576,
            "num_hidden_layers": 30}  # fmt: skip
    base |= {"fingerprint": _digest(rng), "tokenizer": _digest(rng)}
    hub = {**base, "model_id": HUB_NAME}  # the same weights, named as the hub names them
    bases = {
        "retokenized": {**hub, "tokenizer": _digest(rng)},  # same weights, a changed tokenizer
        "retrained": {**hub, "fingerprint": _digest(rng)},  # same shapes, other weights
        "bigger": {**hub, "model_id": "HuggingFaceTB/SmolLM2-360M-Instruct", "hidden_size": 960,
                   "num_hidden_layers": 32, "fingerprint": _digest(rng)},  # same tokenizer
        "qwen": {"model_id": "Qwen/Qwen2.5-0.5B-Instruct", "architecture": "Qwen2ForCausalLM",
                 "hidden_size": 896, "num_hidden_layers": 24, "fingerprint": _digest(rng),
                 "tokenizer": _digest(rng)},
    }  # fmt: skip
    traps = ["yanked", *bases]
    rng.shuffle(traps)
    manifests = []
    for offset, trap in enumerate(traps, 1):  # every trap is newer than the answer
        if trap == "yanked":
            manifests.append(_manifest(name, answer + offset, hub, "exact match fell to 0.41"))
        else:
            manifests.append(_manifest(name, answer + offset, bases[trap]))
    manifests.append(_manifest(name, answer, hub))  # the answer: model_id is the hub's name
    manifests.append(_manifest(name, 9, hub))  # fits: "9" > "1x" as strings
    for version in range(1, 9):  # older versions, from the server's own path
        kind = case["old"][version - 1]
        if kind == "fits":
            manifests.append(_manifest(name, version, base))
        elif kind == "yanked":
            manifests.append(_manifest(name, version, base, "trained on a leaked test set"))
        else:
            manifests.append(_manifest(name, version, bases[kind]))
    order = case["order"]
    manifests = [manifests[i] for i in order]
    none_fit = [
        _manifest(name, 3, base, "a tokenizer bug in its training data"),
        _manifest(name, 2, bases["retokenized"]),
        _manifest(name, 1, bases["qwen"]),
    ]
    rng.shuffle(none_fit)
    return base, manifests, none_fit


def _fits(manifest: dict, base: dict) -> bool:
    return not manifest.get("yanked") and not compatibility_problems(manifest, base)


def _registry_mistakes(case) -> list[tuple[int, str]]:
    """(the version a mistaken rule returns, the mistake it names), on the case's manifests."""
    base, manifests, _ = _registry(case)
    fitting = [m for m in manifests if _fits(m, base)]
    version = [m["version"] for m in fitting]
    same_dict = [m["version"] for m in fitting if m["base"] == base]
    return [
        (
            max(version, key=str),
            f"versions were compared as strings (or as folder names v1, v2, ...): '9' > "
            f"'{case['answer']}' as text, while 9 < {case['answer']} as numbers. Compare "
            "manifest['version'], an int",
        ),
        (
            max(same_dict),
            "the whole base record was compared, model_id included: the newest fitting version "
            f"was trained on the same weights loaded as {HUB_NAME!r}, this server loads them "
            f"from {SERVER_PATH!r}. Compare architecture, hidden_size, num_hidden_layers, "
            "tokenizer and fingerprint, not the name they were loaded under",
        ),
        (
            version[0],
            "that is the first fitting version in the list, not the newest: the list is in no "
            "particular order; take the highest version number",
        ),
        (
            version[-1],
            "that is the last fitting version in the list, not the newest: the list is in no "
            "particular order; take the highest version number",
        ),
        (min(version), "that is the oldest fitting version: take the highest version number"),
    ]


def _registry_conditions(case) -> bool:
    """Whether every mistaken rule returns another version than the answer, and each its own."""
    wrong = [v for v, _ in _registry_mistakes(case)]
    return case["answer"] not in wrong and len(set(wrong)) == len(wrong)


def _manifest_call(latest_compatible, manifests, base, observations, key: str) -> None:
    """Call the learner on deep copies; record the version it returned and whether it kept them."""
    given, base_given = copy.deepcopy(manifests), dict(base)
    result = attempt(observations, key, lambda: latest_compatible(given, base_given))
    if f"{key}_error" not in observations:
        version = result.get("version") if isinstance(result, dict) else None
        if isinstance(version, int) and not isinstance(version, bool):
            observations[key] = version
            observations[f"{key}_given"] = any(result == m for m in manifests)
        else:
            observations[f"{key}_returned"] = describe(result)
            observations[f"{key}_version"] = isinstance(result, int) and result in [
                m["version"] for m in manifests
            ]
    kept = attempt(
        observations,
        f"{key}_inputs",
        lambda: (
            sorted(map(json.dumps, given)) == sorted(map(json.dumps, manifests))
            and base_given == base,
            given == manifests,
        ),
    )
    observations[f"{key}_content_kept"] = bool(kept is not None and kept[0])
    observations[f"{key}_order_kept"] = bool(kept is not None and kept[1])


def observe_registry(latest_compatible, case):
    """Exercise 10.2: the version the learner chose from the case's manifests, from a list where
    none fits and from an empty list; whether it left the manifests as they were."""
    observations = {}
    base, manifests, none_fit = _registry(case)
    _manifest_call(latest_compatible, manifests, base, observations, "main")
    _manifest_call(latest_compatible, none_fit, base, observations, "none_fit")
    _manifest_call(latest_compatible, [], base, observations, "empty")
    return observations


def _judge_chosen(got: int, manifests: list[dict], base: dict, call: str) -> None:
    """Fail, naming the reason, if version `got` is yanked or does not fit `base`."""
    chosen = next((m for m in manifests if m["version"] == got), None)
    require(chosen is not None, f"{call} returned a manifest with version {got}, not in the list")
    require(
        not chosen.get("yanked"),
        f"{call} returned v{got}, which is yanked ({chosen.get('yanked')}): a withdrawn version "
        "is never served; skip manifests that have a 'yanked' key",
    )
    problems = compatibility_problems(chosen, base)
    if problems:
        trained = chosen["base"]
        sizes = ("hidden_size", "num_hidden_layers")
        if trained["architecture"] != base["architecture"]:
            hint = "another architecture: the adapter's matrices were shaped for another model"
        elif any(trained[k] != base[k] for k in sizes):
            hint = ("another model size (the same architecture, another width and depth): the "
                    "adapter's shapes do not fit")  # fmt: skip
        elif trained["tokenizer"] != base["tokenizer"]:
            hint = ("the same weights with a changed tokenizer: token ids mean other things, so "
                    "compare the tokenizer too, not only the fingerprint")  # fmt: skip
        else:
            hint = (
                "the same shapes with other weights (a retrained or updated base): the "
                "adapter loads without an error and answers worse; compare the fingerprint"
            )
        raise AssertionError(
            f"{call} returned v{got}, which does not fit this base: it was trained on {hint} "
            f"({'; '.join(problems)}). {FITS}"
        )


def _judge_refusal(observations, key: str, manifests, base, call: str) -> None:
    """A list where no version fits: the learner raises (anything but NotImplementedError)."""
    error = observations.get(f"{key}_error")
    if error is not None:
        require(not error.startswith("NotImplementedError"), f"{call} is not written yet ({error})")
        return
    if key in observations:
        _judge_chosen(observations[key], manifests, base, call)
    returned = observations.get(f"{key}_returned")
    require(
        returned is None or not returned.startswith("NoneType"),
        f"{call} returned None: when no version fits, raise an exception (any kind; ideally one "
        "saying no version fits: the package raises IncompatibleAdapterError, naming why each "
        "version was refused). A None is easy to pass on unchecked, and the server would start "
        "without its adapter, answering from the base model, or fail later far from the cause",
    )
    raise AssertionError(f"{call} should raise an error, got {returned}")


def judge_registry(observations, case) -> None:
    """Exercise 10.2: the package's choose_version on the same manifests: the highest version
    that is not yanked and fits; an error when none fits; the caller's manifests unchanged."""
    base, manifests, none_fit = _registry(case)
    call = f"latest_compatible(manifests, base) on {len(manifests)} versions of {case['name']}"
    error = observations.get("main_error") or ""
    require(
        not error.startswith("KeyError: 'yanked'"),
        f"{call} raised {error}: only a withdrawn version has a 'yanked' key (its value says "
        "why); read it with manifest.get('yanked')",
    )
    raised(observations, "main", call)
    require(
        not observations.get("main_version"),
        f"{call} returned a version number: return the chosen manifest (the dict from the list), "
        "which the loader reads",
    )
    returned = observations.get("main_returned")
    require(returned is None, f"{call} should return one of the manifests, got {returned}")
    want = choose_version(manifests, base)["version"]
    got = observations["main"]
    if got != want:
        _judge_chosen(got, manifests, base, call)
        for version, message in _registry_mistakes(case):
            require(got != version, f"{call} returned v{got}, v{want} expected: {message}")
        raise AssertionError(
            f"{call} returned v{got}: v{want} is newer and fits too. {FITS}; of those, return "
            "the highest version"
        )
    require(
        observations.get("main_content_kept") is not False,
        f"{call} changed the manifests or the base record it was given: read them, and leave the "
        "caller's registry as it was",
    )
    require(
        observations.get("main_given") is True,
        f"{call} returned a manifest with the right version, but changed: return the manifest "
        "as it was given",
    )
    _judge_refusal(observations, "none_fit", none_fit, base,
                   "latest_compatible(manifests, base) where none fits")  # fmt: skip
    _judge_refusal(observations, "empty", [], base, "latest_compatible([], base)")
    for key in ("main", "none_fit", "empty"):
        require(
            observations.get(f"{key}_content_kept") is True,
            "latest_compatible changed the manifests or the base record it was given: read "
            "them, and leave the caller's registry as it was",
        )
        require(
            observations.get(f"{key}_order_kept") is True,
            "latest_compatible reordered the list it was given (list.sort sorts in place): "
            "sort a copy, sorted(manifests, ...), or take max(...)",
        )


def _old_versions(rng: random.Random) -> list[str]:
    kinds = ["fits", "fits", "fits", "fits", "yanked", "retrained", "retokenized", "qwen"]
    rng.shuffle(kinds)
    return kinds


def _registry_case(seed: int, answer: int, name: str) -> dict:
    """A case whose listed order and old versions make every mistaken rule give its own version."""
    rng = random.Random(seed)
    for _ in range(1000):  # about one order in four passes
        n = 5 + 2 + 8  # traps, the answer and v9, v1-v8
        case = {"seed": seed, "name": name, "answer": answer, "old": _old_versions(rng),
                "order": rng.sample(range(n), n)}  # fmt: skip
        if _registry_conditions(case):
            return case
    raise RuntimeError("no registry case found")  # never: the tests draw hundreds


def _registry_variant(rng: random.Random) -> dict:
    """A drawn registry: digests, the answer's version (10-19), the old versions, the order."""
    name = rng.choice(["support", "billing", "sql", "tickets", "legal"]) + "-lora"
    return _registry_case(rng.randrange(2**31), rng.randint(10, 19), name)


LATEST_COMPATIBLE = Exercise(
    id="10.2",
    target="latest_compatible",
    observe=observe_registry,
    judge=judge_registry,
    visible=_registry_case(seed=0, answer=10, name="support-lora"),
    variant=_registry_variant,
)


def check_latest_compatible(latest_compatible) -> None:
    """Exercise 10.2: the newest version that is not yanked and fits the base, else an error."""
    LATEST_COMPATIBLE.check(latest_compatible)


# --- 10.3 served_vs_merged_gap(served, merged, batch, dtype) -> float -------------------------

DTYPES = ("float32", "bfloat16", "float16")
GAP = (
    "cast a copy.deepcopy of each model to dtype, run both on the same batch (input_ids and "
    "attention_mask), and take the largest |logit difference| over the positions where "
    "attention_mask is 1"
)
WINDOW = 2.5  # the learner's models' gap is within this factor of the reference (machines round
# differently); the value returned must be that gap, from the logits its own runs produced:
RTOL, ATOL = 1e-3, 1e-9  # float32 differences of float32 logits are exact, so this is ample


def _model_key(case) -> str:
    return json.dumps({k: case[k] for k in ("seed", "pad_id", "r", "alpha")}, sort_keys=True)


@functools.lru_cache(maxsize=4)
def _pristine(key: str):
    """(served, merged) for a case: a tiny Llama with LoRA on q_proj and v_proj, B not zero, and
    its merge_and_unload copy, whose pad token has an embedding row of its own."""
    from peft import LoraConfig, get_peft_model

    from ..models import tiny_llama

    case = json.loads(key)
    config = LoraConfig(r=case["r"], lora_alpha=case["alpha"], target_modules=["q_proj", "v_proj"])
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # library deprecation notices: not the learner's concern
        base = tiny_llama(seed=case["seed"], tie_word_embeddings=False, initializer_range=0.2)
        served = get_peft_model(base, config).eval()
        g = torch.Generator().manual_seed(case["seed"] + 1)
        with torch.no_grad():
            for name, param in served.named_parameters():
                if "lora_B" in name:  # trained, so not zero: the merge changes the weights
                    param.copy_(0.3 * torch.randn(param.shape, generator=g))
            merged = copy.deepcopy(served).merge_and_unload().eval()
            row = merged.get_input_embeddings().weight[case["pad_id"]]
            row.copy_(torch.randn(row.shape, generator=g))  # read by padded positions only
    return served, merged


def _models(case):
    """Fresh copies of the case's served and merged models (the learner may change them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(copy.deepcopy(model) for model in _pristine(_model_key(case)))


def _batch(case) -> dict[str, torch.Tensor]:
    """Right-padded rows of the case's lengths; no real token is the pad token."""
    lengths, pad = case["lengths"], case["pad_id"]
    g = torch.Generator().manual_seed(case["seed"] + 2)
    input_ids = torch.full((len(lengths), max(lengths)), pad)  # (rows, T)
    attention_mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)  # (rows, T)
    for row, n in enumerate(lengths):
        ids = torch.randint(0, 127, (n,), generator=g)
        input_ids[row, :n] = ids + (ids >= pad).long()  # 0..127 without pad
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _inner(model):
    """The LlamaModel inside a PEFT model or a causal LM: every forward pass goes through it."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def _dtype_names(module) -> list[str]:
    return sorted({str(p.dtype).removeprefix("torch.") for p in module.parameters()})


def _watch(model, tag: str, runs: list) -> None:
    """Record each forward pass of `model`, and of any deep copy of it: inputs, dtypes, logits."""

    def hook(module, args, kwargs):
        if len(runs) >= 8:
            return
        try:
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            runs.append({
                "model": tag, "dtypes": _dtype_names(module),
                "input_ids": ids.detach().to(torch.float64, copy=True).cpu()
                if isinstance(ids, torch.Tensor) else None,
                "attention_mask": mask.detach().to(torch.float64, copy=True).cpu()
                if isinstance(mask, torch.Tensor) else None,
            })  # fmt: skip
        except Exception:  # noqa: BLE001 - a hook must never break the learner's run
            runs.append({"model": tag, "dtypes": [], "input_ids": None, "attention_mask": None})

    def logits_hook(module, args, output):
        try:  # the lm_head's output is the run's logits, (rows, T, vocab): tiny here
            if runs and runs[-1]["model"] == tag and "logits" not in runs[-1]:
                runs[-1]["logits"] = output.detach().to(torch.float64, copy=True).cpu()
        except Exception:  # noqa: BLE001 - a hook must never break the learner's run
            pass

    _inner(model).register_forward_pre_hook(hook, with_kwargs=True)
    outer = model.get_base_model() if hasattr(model, "get_base_model") else model
    outer.get_output_embeddings().register_forward_hook(logits_hook)


def _changed(model, before: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters of `model` whose values differ from `before` (at most 3)."""
    now = dict(model.named_parameters())
    names = [
        n for n, t in before.items()
        if n not in now or now[n].shape != t.shape or not torch.equal(now[n].detach().float(), t)
    ]  # fmt: skip
    return names[:3]


def _observe_dtype(gap_function, case, dtype: str, observations) -> None:
    served, merged = _models(case)
    runs: list[dict] = []
    _watch(served, "served", runs)
    _watch(merged, "merged", runs)
    models = {"served": served, "merged": merged}
    before = {tag: {n: p.detach().clone() for n, p in m.named_parameters()}
              for tag, m in models.items()}  # fmt: skip
    batch = _batch(case)
    value = observe_number(
        observations, dtype, lambda: gap_function(served, merged, batch, getattr(torch, dtype))
    )
    if value is not None:
        observations[f"{dtype}_gap"] = value
    observations[f"{dtype}_runs"] = [
        {"model": r["model"], "dtypes": r["dtypes"], "mask": r["attention_mask"] is not None}
        for r in runs
    ]
    for i, run in enumerate(runs):
        for name in ("input_ids", "attention_mask", "logits"):
            if run.get(name) is not None:
                observations[f"{dtype}_run{i}_{name}"] = run[name]
    for tag, model in models.items():
        observations[f"{dtype}_{tag}_dtypes"] = attempt(
            observations, f"{dtype}_{tag}_after", lambda m=model: _dtype_names(m)
        )
        observations[f"{dtype}_{tag}_changed"] = attempt(
            observations, f"{dtype}_{tag}_after", lambda m=model, t=tag: _changed(m, before[t])
        )
    kept = attempt(
        observations,
        f"{dtype}_batch",
        lambda: (
            list(batch) == ["input_ids", "attention_mask"]
            and all(
                batch[k].dtype == v.dtype and torch.equal(batch[k], v)
                for k, v in _batch(case).items()
            )
        ),
    )
    observations[f"{dtype}_batch_kept"] = kept is True


def observe_gap(served_vs_merged_gap_, case):
    """Exercise 10.3: the learner's gap in each of the case's dtypes; what each model ran on, in
    which dtype, and the logits it produced; whether the caller's models and batch were left as
    they were."""
    observations = {}
    for dtype in case["dtypes"]:
        _observe_dtype(served_vs_merged_gap_, case, dtype, observations)
    return observations


def _same(observations, key: str, want: torch.Tensor) -> bool:
    got = observations.get(key)
    return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got, want)


def _run_status(observations, case, dtype: str) -> dict[str, tuple[str, dict]]:
    """For each model: ("ok" | "dtype" | "inputs" | "none", the run that tells)."""
    batch = {k: v.double() for k, v in _batch(case).items()}
    status = {}
    for tag in ("served", "merged"):
        runs = []
        for i, run in enumerate(observations.get(f"{dtype}_runs") or []):
            if run.get("model") != tag:
                continue
            run = dict(run, index=i)
            run["same_ids"] = _same(observations, f"{dtype}_run{i}_input_ids", batch["input_ids"])
            run["same_mask"] = _same(
                observations, f"{dtype}_run{i}_attention_mask", batch["attention_mask"]
            )
            run["in_dtype"] = run.get("dtypes") == [dtype]
            runs.append(run)
        same = [r for r in runs if r["same_ids"] and r["same_mask"]]
        if not runs:
            status[tag] = ("none", {})
        elif any(r["in_dtype"] for r in same):
            status[tag] = ("ok", {})
        elif same:
            status[tag] = ("dtype", same[0])
        else:
            status[tag] = ("inputs", next((r for r in runs if r["in_dtype"]), runs[0]))
    return status


def _judge_runs(observations, case, dtype: str, call: str) -> None:
    status = _run_status(observations, case, dtype)
    for tag, (state, _) in status.items():
        require(
            state != "none",
            f"{call} never ran the {tag} model it was given, nor a copy.deepcopy of it (the check "
            f"watches both): {GAP}",
        )
    for tag, (state, run) in status.items():
        if state != "inputs":
            continue
        require(
            run.get("mask"),
            f"{call} ran the {tag} model without the attention mask: pass the batch as given "
            "(model(**batch)), as the spec asks; with left padding a missing mask would change "
            "real tokens",
        )
        require(
            run.get("same_ids"),
            f"{call} ran the {tag} model on other input_ids than the batch: compare the two models "
            "on the same prompts, the same batch, or the gap measures the difference between "
            "prompts, not the merge",
        )
        raise AssertionError(
            f"{call} ran the {tag} model with another attention_mask than the batch's: run both "
            "models on the batch as given"
        )
    wrong = [tag for tag, (state, _) in status.items() if state == "dtype"]
    if wrong:
        seen = {tag: "/".join(status[tag][1].get("dtypes") or ["?"]) for tag in wrong}
        if len(wrong) == 2:
            raise AssertionError(
                f"{call} ran neither model in {dtype} (served: {seen['served']}, merged: "
                f"{seen['merged']}): cast a copy of each, copy.deepcopy(model).to(dtype), since "
                "the gap is what each dtype gives"
            )
        tag, other = wrong[0], next(t for t in status if t != wrong[0])
        raise AssertionError(
            f"{call} cast only the {other} model to {dtype}: the {tag} model ran in "
            f"{seen[tag]}. Then the gap measures what casting one model does, not the merge: "
            f"cast both (copies), copy.deepcopy(model).to(dtype)"
        )


def _judge_untouched(observations, dtype: str, call: str) -> None:
    for tag in ("served", "merged"):
        raised(observations, f"{dtype}_{tag}_after", f"reading the {tag} model after {call}")
        dtypes = observations.get(f"{dtype}_{tag}_dtypes")
        require(
            dtypes == ["float32"],
            f"{call} changed the caller's {tag} model to {'/'.join(dtypes or ['?'])}: "
            "Module.to(dtype) casts the module itself (and returns it), so the caller's model is "
            "cast too. Cast a copy: copy.deepcopy(model).to(dtype)",
        )
        changed = observations.get(f"{dtype}_{tag}_changed")
        require(
            not changed,
            f"{call} changed the weights of the caller's {tag} model ({', '.join(changed or [])}"
            "): measure on copies, and leave the models you were given as they were",
        )
    require(
        observations.get(f"{dtype}_batch_kept") is True,
        f"{call} changed the batch it was given: leave input_ids and attention_mask as they were",
    )


def _reference_gap(case, dtype: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return served_vs_merged_gap(*_models(case), _batch(case), getattr(torch, dtype))


def _close(got: float, value: float) -> bool:
    return abs(got - value) <= max(ATOL, RTOL * abs(value))


def _own_logits(observations, case, dtype: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(served logits, merged logits) of every pair of the learner's runs on the batch, in dtype."""
    found = {tag: [] for tag in ("served", "merged")}
    batch = _batch(case)
    for tag, logits in found.items():
        for i, run in enumerate(observations.get(f"{dtype}_runs") or []):
            got = observations.get(f"{dtype}_run{i}_logits")
            shape = (*batch["input_ids"].shape, 128)
            ok = _same(observations, f"{dtype}_run{i}_input_ids", batch["input_ids"].double())
            ok = ok and _same(
                observations, f"{dtype}_run{i}_attention_mask", batch["attention_mask"].double()
            )
            if run.get("model") == tag and run.get("dtypes") == [dtype] and ok and (
                isinstance(got, torch.Tensor) and tuple(got.shape) == shape
            ):  # fmt: skip
                logits.append(got.float())
    return [(a, b) for a in found["served"] for b in found["merged"]][:4]


def _measures(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, dtype: str) -> dict:
    """What the right rule and each mistaken one give on one pair of logits, (rows, T, vocab):
    each measure in float32 and in dtype itself (the learner may subtract in either)."""
    last = mask.long().sum(1) - 1  # (rows,): each row's last real position (right padding)
    rows = torch.arange(mask.shape[0])
    values: dict[str, list[float]] = {}
    for x, y in ((a, b), (a.to(getattr(torch, dtype)), b.to(getattr(torch, dtype)))):
        diff = (x - y).abs()  # (rows, T, vocab)
        log = (x.log_softmax(-1) - y.log_softmax(-1)).abs()
        for name, value in {
            "right": diff[mask].max(),
            "pads": diff.max(),
            "mean": diff[mask].float().mean(),
            "signed": (x - y)[mask].max(),
            "signed_other": (y - x)[mask].max(),
            "first_row": diff[0][mask[0]].max(),
            "last_position": diff[rows, last].max(),
            "max_of_each": (x.max(-1).values - y.max(-1).values)[mask].abs().max(),
            "log_softmax": log[mask].max(),
        }.items():
            values.setdefault(name, []).append(float(value))
    return values


def _judge_value(observations, case, dtype: str, call: str) -> None:
    got = observations[f"{dtype}_gap"]
    require(math.isfinite(got), f"{call} returned {got}: a gap is a finite number")
    want = _reference_gap(case, dtype)
    pairs = _own_logits(observations, case, dtype)
    if not pairs:  # the logits went unrecorded (a run outside the lm_head?): the window alone
        require(
            want / WINDOW <= got <= want * WINDOW,
            f"{call} returned {got:.3g}, about {want:.3g} expected: {GAP}",
        )
        return
    mask = _batch(case)["attention_mask"].bool()  # (rows, T)
    measures = [_measures(a, b, mask, dtype) for a, b in pairs]
    own = [v for m in measures for v in m["right"] if _close(got, v)]
    if own:
        require(
            want / WINDOW <= own[0] <= want * WINDOW,
            f"{call} returned {got:.3g}, about {want:.3g} expected (the logits of your runs give "
            f"{got:.3g} too): the two models answer unlike the check's copies. {GAP}",
        )
        return
    mine = measures[0]["right"][0]
    start = f"{call} returned {got:.3g}, while the logits your function got give {mine:.3g}"
    mistakes = {
        "pads": "the gap counts padded positions. They are no prompt's tokens (the check's "
        "merged copy even reads its own pad embedding there); leave out the positions where "
        "attention_mask is 0",
        "mean": "that is the mean |difference|; the gap is the largest one, .max(), the worst "
        "logit a user could get",
        "signed": "that is the signed max, max(a - b), without abs: a logit the merged copy "
        "puts higher counts as much as one it puts lower; take .abs() before .max()",
        "first_row": "that is the max over the first row only: take it over all rows and every "
        "real position, (a - b)[mask].abs().max()",
        "last_position": "that is the max over each row's last real position only: take it over "
        "every real position of all rows, (a - b)[mask].abs().max()",
        "max_of_each": "that is |max(a) - max(b)| per position, the gap between the two top "
        "logits: compare the logits one by one, |a - b|, then take the largest",
        "log_softmax": "that is the gap of log_softmax (log-probabilities), not of the logits: "
        "compare model(**batch).logits themselves",
    }
    hits = [
        message
        for name, message in mistakes.items()
        if any(
            _close(got, v)
            for m in measures
            for n in (("signed", "signed_other") if name == "signed" else (name,))
            for v in m[n]
        )
    ]  # on this case two mistakes may give the same number: then both are named
    require(not hits, f"{start}: " + "; or ".join(hits))
    raise AssertionError(f"{start}: {GAP}")


def judge_gap(observations, case) -> None:
    """Exercise 10.3: the package's served_vs_merged_gap in each dtype, both models run on the
    batch in that dtype, the caller's models and batch left as they were."""
    for dtype in case["dtypes"]:
        call = f"served_vs_merged_gap(served, merged, batch, torch.{dtype})"
        judge_number(observations, dtype, call)
        _judge_runs(observations, case, dtype, call)
        _judge_untouched(observations, dtype, call)
        _judge_value(observations, case, dtype, call)


def _mistakes_told_apart(case) -> bool:
    """Each mistaken measure of _measures gives, in some dtype of the case, another number than
    the gap, so that no mistake passes (max(b - a) may be the gap: the judge tries both signs)."""
    batch = _batch(case)
    mask = batch["attention_mask"].bool()  # (rows, T)
    apart = set()
    for dtype in case["dtypes"]:
        served, merged = _models(case)
        with torch.no_grad():
            a, b = (m.to(getattr(torch, dtype))(**batch).logits.float() for m in (served, merged))
        measures = _measures(a, b, mask, dtype)
        apart |= {
            name
            for name, values in measures.items()
            if all(not _close(v, r) for v in values for r in measures["right"])
        }
    return apart >= set(measures) - {"right", "signed_other"}


def _gap_variant(rng: random.Random) -> dict:
    """Drawn weights, LoRA rank and alpha, rows (one shorter than the longest), pad id, dtypes:
    the first draw on which every mistake gives its own number (a float's rounding can make
    two equal, and differs between CPUs)."""

    def draw() -> dict:
        rows = rng.randint(3, 5)
        lengths = [rng.randint(2, 9) for _ in range(rows)]
        lengths[rng.randrange(rows)] = max(lengths) + rng.randint(1, 3)
        r = rng.choice([2, 4, 8])
        alpha = rng.choice([r, 2 * r, 16])
        return {"seed": rng.randrange(2**31), "lengths": lengths, "pad_id": rng.randrange(128),
                "r": r, "alpha": alpha, "dtypes": rng.sample(DTYPES, 3)}  # fmt: skip

    return first_fit(draw, _mistakes_told_apart)


SERVED_VS_MERGED = Exercise(
    id="10.3",
    target="served_vs_merged_gap",
    observe=observe_gap,
    judge=judge_gap,
    visible={
        "seed": 0,
        "lengths": [7, 4, 6, 2],
        "pad_id": 0,
        "r": 4,
        "alpha": 8,
        "dtypes": list(DTYPES),
    },
    variant=_gap_variant,
)


def check_served_vs_merged_gap(served_vs_merged_gap) -> None:
    """Exercise 10.3: the largest logit gap, in a dtype, between a served adapter and its merge."""
    SERVED_VS_MERGED.check(served_vs_merged_gap)


EXERCISES = (ROUTE_BATCH, LATEST_COMPATIBLE, SERVED_VS_MERGED)
