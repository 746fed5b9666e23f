"""Exercises 06: a rank for a budget, an adapter planned for a budget, the MLP's share."""

from __future__ import annotations

import math
import random

from ..architectures import ARCHITECTURES, build_config
from ..counting import lora_parameters, projection_shapes
from ..targets import ATTENTION, MLP, PROJECTIONS, TARGET_PRESETS
from .exercise import (
    Exercise,
    attempt,
    describe,
    judge_number,
    observe_number,
    raised,
    require,
)

# Llama-style architectures with grouped-query attention (fewer key/value heads than query
# heads): on them, counting k_proj and v_proj at full width gives a different answer.
GQA_ARCHITECTURES = tuple(
    name
    for name, (_, fields, _) in ARCHITECTURES.items()
    if fields["num_key_value_heads"] < fields["num_attention_heads"]
)


def _per_rank(config, targets) -> int:
    return lora_parameters(config, targets, 1)  # the count is linear in r


def _names(targets) -> str:
    return ", ".join(targets)


def _budget(per: int, rank: float) -> int:
    """The budget that buys `rank` ranks (a fraction of one included) at `per` parameters each."""
    return round(per * rank)


# --- 06.1 rank_for_budget(config, targets, budget) --------------------------------------------


def _raw_rank(config, targets, budget, mistake=None) -> int:
    """The rank a learner gets for one query, before any max(1, ...), making `mistake`."""
    per = _per_rank(config, targets)
    if mistake == "floor":
        return budget // per
    if mistake == "ceil":
        return -(-budget // per)
    if mistake == "one_layer":  # one decoder block's count per rank
        return round(budget * config.num_hidden_layers / per)
    if mistake == "kv_full":  # k_proj and v_proj at q_proj's width
        shapes = projection_shapes(config)
        q_width = shapes["q_proj"][1]
        per = config.num_hidden_layers * sum(
            shapes[t][0] + (q_width if t in ("k_proj", "v_proj") else shapes[t][1]) for t in targets
        )
    elif mistake in TARGET_PRESETS:  # the rank of a fixed placement, whatever the targets
        per = _per_rank(config, TARGET_PRESETS[mistake])
    return round(budget / per)


RANK_MISTAKES = {  # checked in this order, against every query at once
    "floor": "it rounds down: the closest rank may cost a little more than the budget "
    "(rank_for_budget({config}, [{targets}], {budget:,}): rank {want} costs {want_count:,}, "
    "closer to the budget than rank {got}'s {got_count:,})",
    "ceil": "it rounds up: the closest rank may cost a little less than the budget "
    "(rank_for_budget({config}, [{targets}], {budget:,}): rank {want} costs {want_count:,}, "
    "closer to the budget than rank {got}'s {got_count:,})",
    "one_layer": "your ranks are about num_hidden_layers times too large: the budget pays for "
    "the adapted projections of every decoder block, not of one",
    "kv_full": "k_proj and v_proj counted at full width: under grouped-query attention they are "
    "narrower than q_proj (num_key_value_heads heads), so a rank costs less than that",
}


def _matches(got: list, raws: list) -> bool:
    """Each learner rank equals the mistake's rank, with or without max(1, ...)."""
    return all(g in (raw, max(1, raw)) for g, raw in zip(got, raws, strict=True))


def observe_rank_for_budget(rank_for_budget, case):
    """Exercise 06.1: the learner's rank for each (targets, budget) on the case's config."""
    observations = {}
    ranks = []
    for k, (targets, budget) in enumerate(case["queries"]):
        config = build_config(case["config"])  # a fresh one per call: nothing carries over
        given = list(targets)
        call = lambda c=config, t=given, b=budget: rank_for_budget(c, t, b)  # noqa: E731
        ranks.append(observe_number(observations, f"q{k}", call))
        observations[f"q{k}_targets"] = [str(t) for t in given]  # the list as the call left it
    observations["ranks"] = ranks
    return observations


def judge_rank_for_budget(observations, case) -> None:
    """Exercise 06.1: the rank (at least 1) whose parameter count is closest to the budget."""
    config, name, queries = build_config(case["config"]), case["config"], case["queries"]
    for k, (targets, budget) in enumerate(queries):
        judge_number(
            observations, f"q{k}", f"rank_for_budget({name}, [{_names(targets)}], {budget:,})"
        )
    for k, (targets, budget) in enumerate(queries):
        left = observations.get(f"q{k}_targets", list(targets))
        require(
            left == list(targets),
            f"rank_for_budget({name}, [{_names(targets)}], {budget:,}) changed the targets list "
            f"it was given (now [{_names(left)}]): leave the caller's list as it is",
        )
    got = observations["ranks"]
    for (targets, budget), g in zip(queries, got, strict=True):
        require(
            float(g).is_integer(),
            f"rank_for_budget({name}, [{_names(targets)}], {budget:,}) returned {g:g}: a rank "
            "is a whole number; return the closest one",
        )
    got = [int(g) for g in got]

    def distance(targets, budget, r) -> int:
        return abs(lora_parameters(config, targets, r) - budget)

    want = [max(1, _raw_rank(config, t, b)) for t, b in queries]
    if all(
        g == w or (g >= 1 and distance(t, b, g) == distance(t, b, w))  # a tie: either is closest
        for (t, b), g, w in zip(queries, got, want, strict=True)
    ):
        return
    for mistake, message in RANK_MISTAKES.items():
        if _matches(got, [_raw_rank(config, t, b, mistake) for t, b in queries]):
            k = next(k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
            (targets, budget), g, w = queries[k], got[k], want[k]
            raise AssertionError(
                message.format(
                    config=name,
                    targets=_names(targets),
                    budget=budget,
                    want=w,
                    want_count=lora_parameters(config, targets, w),
                    got=g,
                    got_count=lora_parameters(config, targets, g),
                )
            )
    for preset, fixed in TARGET_PRESETS.items():
        require(
            not _matches(got, [_raw_rank(config, t, b, preset) for t, b in queries]),
            f"your ranks are those of {preset} ({_names(fixed)}) whatever the targets: the cost "
            "of a rank depends on the targets you are given",
        )
    for (targets, budget), g in zip(queries, got, strict=True):
        require(
            g >= 1,
            f"rank_for_budget({name}, [{_names(targets)}], {budget:,}) returned {g}: the "
            "budget is less than half a rank here, but an adapter needs rank at least 1",
        )
    k = next(k for k, (g, w) in enumerate(zip(got, want, strict=True)) if g != w)
    (targets, budget), g, w = queries[k], got[k], want[k]
    raise AssertionError(
        f"rank_for_budget({name}, [{_names(targets)}], {budget:,}) should be {w} "
        f"({lora_parameters(config, targets, w):,} parameters), got {g} "
        f"({lora_parameters(config, targets, g):,})"
    )


def _budget_variant(rng: random.Random):
    name = rng.choice([n for n in GQA_ARCHITECTURES if n != "SmolLM2-135M"])
    config = build_config(name)
    presets = list(TARGET_PRESETS.values())
    first = list(rng.choice([TARGET_PRESETS["q, v"], ATTENTION]))  # k/v counted wide differ here
    upper, lower, tiny = (list(rng.choice(presets)) for _ in range(3))
    while upper == lower:
        lower = list(rng.choice(presets))
    mixed = []  # a set that is no preset, with k_proj or v_proj (narrow under GQA)
    while not mixed or tuple(mixed) in presets:
        chosen = {rng.choice(("k_proj", "v_proj"))} | {t for t in PROJECTIONS if rng.random() < 0.4}
        mixed = [t for t in PROJECTIONS if t in chosen]

    def per(targets) -> int:
        return _per_rank(config, targets)

    return {
        "config": name,
        "queries": [  # an exact rank, upper and lower halves, no preset, below half a rank
            [first, per(first) * rng.randint(8, 64)],
            [upper, _budget(per(upper), rng.randint(2, 30) + rng.uniform(0.55, 0.9))],
            [lower, _budget(per(lower), rng.randint(2, 30) + rng.uniform(0.1, 0.45))],
            [mixed, _budget(per(mixed), rng.randint(6, 40) + rng.uniform(0.55, 0.9))],
            [tiny, _budget(per(tiny), rng.uniform(0.1, 0.4))],
        ],
    }


RANK_FOR_BUDGET = Exercise(
    id="06.1",
    target="rank_for_budget",
    observe=observe_rank_for_budget,
    judge=judge_rank_for_budget,
    visible={
        "config": "SmolLM2-135M",
        "queries": [  # SmolLM2's cost of one rank: q, v 57,600; attention 115,200;
            [list(TARGET_PRESETS["q, v"]), 1_843_200],  # 32 ranks exactly
            [list(PROJECTIONS), 1_099_008],  # 3.6 ranks of all linear (305,280 each)
            [list(MLP), 997_920],  # 5.25 ranks of the MLP (190,080 each)
            [["k_proj", "o_proj", "down_proj"], 1_548_288],  # 12.8 ranks (120,960 each)
            [list(ATTENTION), 40_000],  # about a third of one rank
        ],
    },
    variant=_budget_variant,
)


def check_rank_for_budget(rank_for_budget) -> None:
    """Exercise 06.1: the rank whose count for the targets is closest to a budget."""
    RANK_FOR_BUDGET.check(rank_for_budget)


# --- 06.2 plan_adapter(config, budget, min_rank) ----------------------------------------------

PLACEMENTS = (PROJECTIONS, ATTENTION, TARGET_PRESETS["q, v"])  # the broadest first


def _plan(config, budget: int, min_rank: int, rank=None, fits=None):
    """The broadest placement that fits at min_rank or more, at the largest rank that fits.

    `rank` (rank for a budget at `per` parameters a rank) and `fits` (is a rank at least
    min_rank) can be replaced by a learner's mistake.
    """
    rank = rank or (lambda budget, per: budget // per)
    fits = fits or (lambda r, m: r >= m)
    for targets in PLACEMENTS:
        r = rank(budget, _per_rank(config, targets))
        if fits(r, min_rank):
            return set(targets), r
    return None


def observe_plan_adapter(plan_adapter, case):
    """Exercise 06.2: the learner's (targets, r) for each (budget, min_rank) on the config."""
    observations = {}
    plans = []
    for k, (budget, min_rank) in enumerate(case["queries"]):
        config = build_config(case["config"])
        key = f"q{k}"
        call = lambda c=config, b=budget, m=min_rank: plan_adapter(c, b, min_rank=m)  # noqa: E731
        plan = attempt(observations, key, call)
        plans.append(None)
        if f"{key}_error" in observations:
            continue
        try:
            targets, r = plan
            targets = list(targets)
        except Exception:  # noqa: BLE001 - not a pair, or targets not a sequence
            observations[f"{key}_returned"] = describe(plan)
            continue
        odd = [t for t in targets if not isinstance(t, str)]
        if odd:
            observations[f"{key}_returned"] = f"targets holding {describe(odd[0])}"
            continue
        rank = observe_number(observations, f"{key}_r", lambda r=r: r)
        if rank is not None:
            plans[k] = {"targets": [str(t) for t in targets], "r": rank}
    observations["plans"] = plans
    return observations


def judge_plan_adapter(observations, case) -> None:
    """Exercise 06.2: the broadest placement at rank >= min_rank, at the largest rank that fits."""
    config, name = build_config(case["config"]), case["config"]
    for k, (budget, min_rank) in enumerate(case["queries"]):
        call = f"plan_adapter({name}, {budget:,}, min_rank={min_rank})"
        raised(observations, f"q{k}", call)
        returned = observations.get(f"q{k}_returned")
        require(returned is None, f"{call} should return (targets, r), got {returned}")
        raised(observations, f"q{k}_r", f"converting the rank of {call}")
        returned = observations.get(f"q{k}_r_returned")
        require(returned is None, f"the rank of {call} should be a number, got {returned}")
    for (budget, min_rank), plan in zip(case["queries"], observations["plans"], strict=True):
        _judge_plan(config, name, budget, min_rank, plan["targets"], plan["r"])


def _judge_plan(config, name, budget, min_rank, targets, r) -> None:
    call = f"plan_adapter({name}, {budget:,}, min_rank={min_rank})"
    unknown = [t for t in targets if t not in PROJECTIONS]
    require(
        not unknown,
        f"{call}: {unknown[0] if unknown else ''!r} is not a projection: the targets are names "
        f"such as 'q_proj' ({_names(PROJECTIONS)})",
    )
    require(len(set(targets)) == len(targets), f"{call}: a target is listed twice in {targets}")
    require(float(r).is_integer(), f"{call}: rank {r:g} is not a whole number")
    r = int(r)
    want_targets, want_r = _plan(config, budget, min_rank)
    if set(targets) == want_targets and r == want_r:
        return
    got = (set(targets), r)
    chose = f"you chose [{_names(targets)}] at rank {r}"
    broadest = [t for t in PROJECTIONS if t in want_targets]
    require(
        min_rank == 4 or got != _plan(config, budget, 4),
        f"{call}: min_rank is {min_rank} here, and your plan is the one for min_rank = 4: use "
        "the min_rank you are given",
    )
    want_cost = lora_parameters(config, want_targets, want_r)
    above_min = _plan(config, budget, min_rank, fits=lambda r, m: r > m)  # rank > min_rank
    under_budget = _plan(config, budget, min_rank, rank=lambda b, per: (b - 1) // per)  # cost <
    require(
        want_r != min_rank or want_cost != budget or got not in (above_min, under_budget),
        f"{call}: [{_names(broadest)}] at rank {want_r}, exactly min_rank, costs {want_cost:,}, "
        "exactly the budget, and it fits: a plan that costs exactly the budget fits, and a rank "
        f"of at least min_rank includes min_rank itself ({chose})",
    )
    require(
        got != above_min,
        f"{call}: [{_names(broadest)}] fits at rank {want_r}, exactly min_rank (it costs "
        f"{want_cost:,}, within the budget): a rank of at least min_rank includes min_rank "
        f"itself ({chose})",
    )
    cost = lora_parameters(config, targets, r)
    require(
        got != _plan(config, budget, min_rank, rank=lambda b, per: round(b / per)),
        f"{call}: [{_names(targets)}] at rank {r} costs {cost:,}, over the budget: here the "
        "plan must fit, so take the largest rank that fits, not the closest (06.1's question)",
    )
    require(cost <= budget, f"{call}: {chose}, which costs {cost:,}, over the budget")
    require(r >= min_rank, f"{call}: {chose}, below min_rank = {min_rank}")
    require(
        len(targets) >= len(want_targets),
        f"{call}: [{_names(broadest)}] fits at rank >= min_rank: adapt more module types "
        f"before raising the rank ({chose})",
    )
    require(
        set(targets) == want_targets,
        f"{call}: {chose}; try the placements broadest first: all linear layers, then the "
        "attention projections, then q_proj and v_proj",
    )
    more = lora_parameters(config, targets, r + 1)
    require(
        more != budget,
        f"{call}: {chose}, but rank {r + 1} costs {more:,}, exactly the budget: a plan that "
        "costs exactly the budget fits, so take the largest rank whose cost is at most the "
        "budget",
    )
    require(
        more > budget,
        f"{call}: {chose}, but rank {r + 1} still fits ({more:,} parameters): use the largest "
        "rank that fits the budget",
    )
    raise AssertionError(f"{call}: {chose}, expected rank {want_r}")


def _plan_variant(rng: random.Random):
    name = rng.choice([n for n in GQA_ARCHITECTURES if n != "SmolLM2-135M"])
    config = build_config(name)
    every, attention, qv = (_per_rank(config, p) for p in PLACEMENTS)

    def upper() -> float:
        return rng.uniform(0.55, 0.9)  # so that rounding to the closest rank goes over

    high = rng.choice([6, 8, 10, 12])  # all linear fits at 4 but not at `high`: attention
    low_k = max(math.ceil(every * 4 / attention), high + 1)  # above min_rank
    high_k = math.ceil(every * high / attention) - 1
    low = rng.choice([2, 3])  # all linear fits at `low` but not at 4
    exact = rng.choice([4, 5, 6])  # below 4, min_rank = 4 would give the same plan
    return {
        "config": name,
        "queries": [  # [budget, min_rank]
            [_budget(every, rng.randint(6, 24) + upper()), 4],
            [_budget(every, 4 + rng.uniform(0.15, 0.85)), 4],  # fits at min_rank, under budget
            [every * exact, exact],  # fits at exactly min_rank, for exactly the budget
            [every * rng.randint(exact + 1, 16), 4],  # a rank above min_rank, exactly the budget
            [_budget(attention, rng.randint(5, every * 4 // attention - 1) + upper()), 4],
            [_budget(qv, rng.randint(5, attention * 4 // qv - 1) + upper()), 4],
            [_budget(attention, rng.randint(low_k, high_k - 1) + upper()), high],
            [_budget(every, rng.randint(low, 3) + upper()), low],
        ],
    }


PLAN_ADAPTER = Exercise(
    id="06.2",
    target="plan_adapter",
    observe=observe_plan_adapter,
    judge=judge_plan_adapter,
    visible={
        "config": "SmolLM2-135M",
        "queries": [  # [budget, min_rank]; a rank costs 305,280 (all linear), 115,200, 57,600
            [3_266_496, 4],  # 10.7 ranks of all linear
            [1_404_288, 4],  # 4.6 ranks of all linear: fits at 4, under the budget
            [1_221_120, 4],  # all linear at exactly rank 4, for exactly the budget
            [2_136_960, 4],  # all linear at exactly rank 7, for exactly the budget
            [990_720, 4],  # 8.6 ranks of attention (all linear: 3.2)
            [391_680, 4],  # 6.8 ranks of q, v (attention: 3.4)
            [1_451_520, 8],  # all linear fits at 4, not at 8; attention at 12.6
            [1_068_480, 2],  # 3.5 ranks of all linear: fits at 2
        ],
    },
    variant=_plan_variant,
)


def check_plan_adapter(plan_adapter) -> None:
    """Exercise 06.2: the most module types at rank >= min_rank within a budget."""
    PLAN_ADAPTER.check(plan_adapter)


# --- 06.3 mlp_share(config) -------------------------------------------------------------------


def _share_mistakes(name: str):
    """(what the learner computed, the mistake it names), most likely first."""
    config = build_config(name)
    shapes = projection_shapes(config)
    size = {t: i * o for t, (i, o) in shapes.items()}
    mlp, block = sum(size[t] for t in MLP), sum(size.values())
    attention = block - mlp
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    q_width = shapes["q_proj"][1]
    narrow = ("k_proj", "v_proj")
    full = mlp + sum(
        i * (q_width if t in narrow else o) for t, (i, o) in shapes.items() if t in ATTENTION
    )
    added = {t: i + o for t, (i, o) in shapes.items()}
    embeddings = vocab * hidden * (1 if config.tie_word_embeddings else 2)
    return (
        (
            mlp / full,
            "k_proj and v_proj counted at full width: under grouped-query attention they are "
            "narrower than q_proj (num_key_value_heads heads), so the MLP's share is larger",
        ),
        (0.0, "the share came out 0: integer division (//) drops the fraction"),
        (100 * mlp / block, "that is a percentage: return a fraction between 0 and 1"),
        (attention / block, "the attention's share: the MLP is gate_proj, up_proj, down_proj"),
        (mlp / attention, "that is MLP / attention: divide by all seven projections of the block"),
        (
            sum(added[t] for t in MLP) / sum(added.values()),
            "a linear layer holds in × out weights; in + out is what one LoRA rank adds to it",
        ),
        (
            layers * mlp / (layers * block + embeddings),
            "the embeddings are counted: only the seven projections of a block are its linear "
            "layers",
        ),
        (
            layers * mlp / ARCHITECTURES[name][2],
            "that is a share of the whole model: count only the seven projections of a block "
            "(no embeddings, no norms)",
        ),
        (
            (size["up_proj"] + size["down_proj"]) / block,
            "the MLP has three projections: gate_proj, up_proj and down_proj",
        ),
    )


def observe_mlp_share(mlp_share, case):
    """Exercise 06.3: the learner's MLP share on the case's config."""
    observations = {}
    config = build_config(case["config"])
    observations["share"] = observe_number(observations, "call", lambda: mlp_share(config))
    return observations


def judge_mlp_share(observations, case) -> None:
    """Exercise 06.3: in × out of gate, up and down over in × out of all seven projections."""
    name = case["config"]
    judge_number(observations, "call", f"mlp_share({name})")
    got = observations["share"]
    shapes = projection_shapes(build_config(name))
    size = {t: i * o for t, (i, o) in shapes.items()}
    want = sum(size[t] for t in MLP) / sum(size.values())
    if math.isclose(got, want, rel_tol=1e-6):
        return
    for wrong, message in _share_mistakes(name):
        require(not math.isclose(got, wrong, rel_tol=1e-6, abs_tol=1e-12), message)
    raise AssertionError(f"mlp_share({name}) should be {want:.4f}, got {got:.4f}")


MLP_SHARE = Exercise(
    id="06.3",
    target="mlp_share",
    observe=observe_mlp_share,
    judge=judge_mlp_share,
    visible={"config": "SmolLM2-135M"},
    variant=lambda rng: {
        "config": rng.choice([n for n in GQA_ARCHITECTURES if n != "SmolLM2-135M"])
    },
)


def check_mlp_share(mlp_share) -> None:
    """Exercise 06.3: the fraction of a block's linear-layer weights that sit in the MLP."""
    MLP_SHARE.check(mlp_share)


EXERCISES = (RANK_FOR_BUDGET, PLAN_ADAPTER, MLP_SHARE)
