"""Exercises 06: the checks pass right answers and name each classic mistake, on every case."""

import math
import re

import pytest
from exercise_harness import Unprintable, fails, judged_odd, passes, raising

from lora_course.checks import lesson06
from lora_course.counting import lora_parameters, projection_shapes
from lora_course.targets import ATTENTION, MLP, PROJECTIONS

UNWRITTEN = raising(NotImplementedError("the count is linear in r"))  # a stub
SEEDS = range(20)  # variants a right answer must pass
WRONG_SEEDS = (1, 2, 3)  # variants each wrong answer must fail

# --- 06.1 rank_for_budget ---------------------------------------------------------------------


def rank_for_budget(config, targets, budget):  # the solution notebook's answer
    return max(1, round(budget / lora_parameters(config, targets, 1)))


def rank_for_budget_by_hand(config, targets, budget):
    """Pure Python from the config's fields: compare the two ranks around the budget."""
    head_dim = config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    h, i = config.hidden_size, config.intermediate_size
    sizes = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h,
             "gate_proj": h + i, "up_proj": h + i, "down_proj": i + h}  # fmt: skip
    per = config.num_hidden_layers * sum(sizes[t] for t in targets)
    low = max(1, budget // per)
    return min((low, low + 1), key=lambda r: (abs(r * per - budget), r))


def rank_for_budget_by_search(config, targets, budget):
    r = 1
    while lora_parameters(config, targets, r + 1) <= budget:
        r += 1  # the largest rank that fits; the next one may be closer
    above = lora_parameters(config, targets, r + 1) - budget
    return r + 1 if above < abs(budget - lora_parameters(config, targets, r)) else r


def _per(config, targets):
    return lora_parameters(config, targets, 1)


def _per_full_width(config, targets):
    shapes = projection_shapes(config)
    wide = {t: (i, shapes["q_proj"][1] if t in ("k_proj", "v_proj") else o)
            for t, (i, o) in shapes.items()}  # fmt: skip
    return config.num_hidden_layers * sum(i + o for t, (i, o) in wide.items() if t in targets)


WRONG_RANKS = [
    (lambda c, t, b: b // _per(c, t), "rounds down"),
    (lambda c, t, b: max(1, int(b / _per(c, t))), "rounds down"),
    (lambda c, t, b: max(1, math.ceil(b / _per(c, t))), "rounds up"),
    (lambda c, t, b: round(b / _per(c, t)), "rank at least 1"),
    (lambda c, t, b: max(1, round(b / (_per(c, t) / c.num_hidden_layers))), "num_hidden_layers"),
    (lambda c, t, b: max(1, round(b / _per_full_width(c, t))), "full width"),
    (lambda c, t, b: max(1, round(b / _per(c, PROJECTIONS))), "whatever the targets"),
    (lambda c, t, b: max(1, round(b / _per(c, ["q_proj", "v_proj"]))), "whatever the targets"),
    (lambda c, t, b: b / _per(c, t), "whole number"),
    (lambda c, t, b: rank_for_budget(c, t, b) + 1, "should be"),
    (lambda c, t, b: str(rank_for_budget(c, t, b)), "should return a number, got str"),
    (lambda c, t, b: None, "should return a number, got NoneType"),
    (lambda c, t, b: Unprintable(), "should return a number, got exercise_harness.Unprintable"),
    (UNWRITTEN, "not written yet"),
    (lambda c, t, b: c.no_such_field, "raised AttributeError"),
]

# --- 06.2 plan_adapter ------------------------------------------------------------------------

PLACEMENTS = [list(PROJECTIONS), list(ATTENTION), ["q_proj", "v_proj"]]


def plan_adapter(config, budget, min_rank=4):  # the solution notebook's answer
    for targets in PLACEMENTS:
        r = budget // lora_parameters(config, targets, 1)
        if r >= min_rank:
            return targets, r
    return PLACEMENTS[-1], min_rank


def plan_adapter_by_search(config, budget, min_rank=4):
    for targets in PLACEMENTS:
        r = min_rank
        while lora_parameters(config, targets, r + 1) <= budget:
            r += 1
        if lora_parameters(config, targets, r) <= budget:
            return tuple(reversed(targets)), r  # any order, any sequence
    return PLACEMENTS[-1], min_rank


def planner(
    placements=PLACEMENTS, rank=lambda b, per: b // per, fits=lambda r, m: r >= m, fixed=None
):
    def plan(config, budget, min_rank=4):
        m = fixed or min_rank
        for targets in placements:
            r = rank(budget, lora_parameters(config, targets, 1))
            if fits(r, m):
                return list(targets), r
        return placements[-1], m

    return plan


def strict_largest_rank(config, budget, min_rank=4):
    """Issue #20's learner: `<` where the largest rank that fits may cost exactly the budget."""
    for targets in PLACEMENTS:
        if lora_parameters(config, targets, min_rank) <= budget:
            r = min_rank
            while lora_parameters(config, targets, r + 1) < budget:
                r += 1
            return targets, r
    return PLACEMENTS[-1], min_rank


def strict_fit(config, budget, min_rank=4):
    """Issue #20's learner: a placement "fits" only if it costs less than the budget."""
    for targets in PLACEMENTS:
        if lora_parameters(config, targets, min_rank) < budget:
            return targets, budget // lora_parameters(config, targets, 1)
    return PLACEMENTS[-1], min_rank


def _other_pair(plan):
    """q_proj and k_proj where q_proj and v_proj are due: as cheap, but not the placement."""
    targets, r = plan
    return (["q_proj", "k_proj"], r) if set(targets) == {"q_proj", "v_proj"} else plan


WRONG_PLANS = [
    (planner(placements=[["q_proj", "v_proj"]]), "adapt more module types"),
    (planner(placements=list(reversed(PLACEMENTS))), "adapt more module types"),
    (planner(placements=[PLACEMENTS[0], PLACEMENTS[2]]), "adapt more module types"),
    (planner(rank=lambda b, per: round(b / per)), "not the closest"),
    (planner(rank=lambda b, per: -(-b // per)), "not the closest"),
    (planner(fits=lambda r, m: r > m), "within the budget): a rank of at least min_rank includes"),
    (strict_largest_rank, "costs exactly the budget fits, so take the largest rank"),
    (strict_fit, "exactly the budget, and it fits: a plan that costs exactly the budget fits"),
    (planner(rank=lambda b, per: (b - 1) // per), "a plan that costs exactly the budget fits"),
    (planner(fixed=4), "use the min_rank you are given"),
    (lambda c, b, min_rank=4: (planner()(c, b, min_rank)[0], min_rank), "still fits"),
    (lambda c, b, min_rank=4: ("all linear", 8), "is not a projection"),
    (lambda c, b, min_rank=4: (PLACEMENTS[1] + ["q_proj"], 4), "listed twice"),
    (lambda c, b, min_rank=4: planner()(c, b, min_rank)[1], "should return (targets, r)"),
    (lambda c, b, min_rank=4: (PLACEMENTS[0], None), "should be a number"),
    (lambda c, b, min_rank=4: (PLACEMENTS[0], 4.5), "not a whole number"),
    (lambda c, b, min_rank=4: (PLACEMENTS[0], 10**9), "over the budget"),
    (lambda c, b, min_rank=4: (PLACEMENTS[0], 1), "below min_rank"),
    (lambda c, b, min_rank=4: _other_pair(plan_adapter(c, b, min_rank)), "broadest first"),
    (UNWRITTEN, "not written yet"),
    (lambda c, b: plan_adapter(c, b), "raised TypeError"),  # no min_rank parameter
]

# --- 06.3 mlp_share ---------------------------------------------------------------------------


def mlp_share(config):  # the solution notebook's answer
    sizes = {name: i * o for name, (i, o) in projection_shapes(config).items()}
    return sum(sizes[n] for n in ("gate_proj", "up_proj", "down_proj")) / sum(sizes.values())


def mlp_share_by_hand(config):
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * h // config.num_attention_heads
    return 3 * h * i / (3 * h * i + 2 * h * h + 2 * h * kv)


def _share(config, size=lambda i, o: i * o, kv_full=False, mlp=MLP, denominator=None):
    shapes = projection_shapes(config)
    if kv_full:
        shapes.update({t: (config.hidden_size, config.hidden_size) for t in ("k_proj", "v_proj")})
    sizes = {t: size(i, o) for t, (i, o) in shapes.items()}
    total = sum(sizes.values()) if denominator is None else sum(sizes[t] for t in denominator)
    return sum(sizes[t] for t in mlp) / total


def _share_with_embeddings(config):
    sizes = [i * o for i, o in projection_shapes(config).values()]
    mlp = sum(i * o for t, (i, o) in projection_shapes(config).items() if t in MLP)
    embed = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    layers = config.num_hidden_layers
    return layers * mlp / (layers * sum(sizes) + embed)


WRONG_SHARES = [
    (lambda c: _share(c, kv_full=True), "full width"),
    (lambda c: 100 * mlp_share(c), "percentage"),
    (lambda c: 1 - mlp_share(c), "attention's share"),
    (lambda c: _share(c, denominator=ATTENTION), "MLP / attention"),
    (lambda c: _share(c, size=lambda i, o: i + o), "in × out"),
    (_share_with_embeddings, "embeddings are counted"),
    (lambda c: _share(c, mlp=("up_proj", "down_proj")), "three projections"),
    (lambda c: 0, "integer division"),
    (lambda c: mlp_share(c) * 1.01, "should be"),
    (lambda c: f"{mlp_share(c):.3f}", "should return a number, got str"),
    (lambda c: [mlp_share(c)] * 2, "should return a number, got list"),
    (UNWRITTEN, "not written yet"),
]


@pytest.mark.parametrize("name", ["SmolLM2-135M", "Mistral-7B"])
def test_a_share_of_the_whole_model_is_named(name):
    config = lesson06.build_config(name)
    mlp = sum(i * o for t, (i, o) in projection_shapes(config).items() if t in MLP)
    share = config.num_hidden_layers * mlp / lesson06.ARCHITECTURES[name][2]
    with pytest.raises(AssertionError, match="share of the whole model"):
        lesson06.MLP_SHARE.check(lambda c: share, {"config": name})


# --- shared tests -----------------------------------------------------------------------------

RIGHT = [
    (lesson06.RANK_FOR_BUDGET, rank_for_budget),
    (lesson06.RANK_FOR_BUDGET, rank_for_budget_by_hand),
    (lesson06.RANK_FOR_BUDGET, rank_for_budget_by_search),
    (lesson06.PLAN_ADAPTER, plan_adapter),
    (lesson06.PLAN_ADAPTER, plan_adapter_by_search),
    (lesson06.MLP_SHARE, mlp_share),
    (lesson06.MLP_SHARE, mlp_share_by_hand),
]
WRONG = [
    *[(lesson06.RANK_FOR_BUDGET, f, m) for f, m in WRONG_RANKS],
    *[(lesson06.PLAN_ADAPTER, f, m) for f, m in WRONG_PLANS],
    *[(lesson06.MLP_SHARE, f, m) for f, m in WRONG_SHARES],
]


@pytest.mark.parametrize(("exercise", "answer"), RIGHT)
def test_right_answers_pass_the_visible_case_and_variants(exercise, answer):
    passes(exercise, answer, SEEDS)


@pytest.mark.parametrize(("exercise", "answer", "message"), WRONG)
def test_each_mistake_is_named_on_the_visible_case_and_variants(exercise, answer, message):
    fails(exercise, answer, re.escape(message), WRONG_SEEDS)


@pytest.mark.parametrize("exercise", lesson06.EXERCISES)
def test_observations_are_json_and_odd_learners_are_judged(exercise):
    odd = [raising(ZeroDivisionError("learner bug")), None, lambda *a, **k: None,
           lambda *a, **k: "text", lambda *a, **k: [[1, 2]],
           lambda *a, **k: (Unprintable(), Unprintable()), lambda *a, **k: Unprintable(),
           lambda *a, **k: ([1, 2], "r"), lambda *a, **k: float("nan")]  # fmt: skip
    for learner in odd:
        judged_odd(exercise, learner)


def test_visible_cases_separate_the_mistakes():
    """Rounding down and up both differ from the closest rank somewhere in the visible case."""
    config = lesson06.build_config("SmolLM2-135M")
    queries = lesson06.RANK_FOR_BUDGET.visible["queries"]
    fractions = [b / _per(config, t) % 1 for t, b in queries]
    assert any(f > 0.5 for f in fractions) and any(0 < f < 0.5 for f in fractions)
    assert any(b < _per(config, t) / 2 for t, b in queries)
    assert all(abs(f - 0.5) > 0.01 for f in fractions)  # no ties


def test_rank_for_budget_that_changes_the_callers_targets_fails_by_name():
    from lora_course.checks.lesson06 import RANK_FOR_BUDGET
    from lora_course.counting import rank_for_budget

    def appends(config, targets, budget):
        targets.append("q_proj")  # a learner's "all of these plus q_proj"
        return rank_for_budget(config, targets, budget)

    fails(RANK_FOR_BUDGET, appends, "changed the targets list")
