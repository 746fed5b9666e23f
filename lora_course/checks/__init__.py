"""Checks for the exercises (exercises 01-11), declared once per lesson, for learners and grader.

`lesson01` ... `lesson11` each declare their exercises (exercise.py): the name the learner
defines, how to observe it on a case, how to judge the observations, the visible case and how to
draw an instructor-only variant. A learner's check cell calls `checks.check_energy_captured(...)`,
which observes and judges on the visible case, here. The classroom grader (lora_course.grading)
reads `EXERCISES`: it observes in the student's sandbox and judges in its own process. A new
lesson adds its module here and nothing else: the grader needs no change.
"""

from . import (
    lesson01,
    lesson02,
    lesson03,
    lesson04,
    lesson05,
    lesson06,
    lesson07,
    lesson08,
    lesson09,
    lesson10,
    lesson11,
)
from .exercise import Exercise
from .lesson01 import check_energy_captured, check_low_rank_approximation, check_rank_for_energy
from .lesson02 import (
    check_delta_weight,
    check_lora_forward,
    check_lora_init,
    check_merge,
    check_unmerge,
)
from .lesson03 import (
    check_lora_pair_parameters,
    check_lora_parameters_for_config,
    check_trainable_parameters,
)
from .lesson04 import check_alpha_predictions, check_rslora_ratio, check_scaling
from .lesson05 import check_answer_only_labels, check_exact_match, check_pick_precision
from .lesson06 import check_mlp_share, check_plan_adapter, check_rank_for_budget
from .lesson07 import check_adapter_shapes_fit, check_changed_parameters, check_merged_weight
from .lesson08 import (
    check_bits_per_parameter,
    check_nf4_levels,
    check_qlora_forward,
    check_quantize_4bit,
)
from .lesson09 import check_dora_forward, check_loraplus_param_groups, check_pissa_factors
from .lesson10 import (
    check_latest_compatible,
    check_route_adapters,
    check_served_vs_merged_gap,
)
from .lesson11 import check_assistant_mask, check_batch_arithmetic, check_diagnose_run

EXERCISES: dict[str, tuple[Exercise, ...]] = {
    module.__name__[-2:]: module.EXERCISES
    for module in (
        lesson01,
        lesson02,
        lesson03,
        lesson04,
        lesson05,
        lesson06,
        lesson07,
        lesson08,
        lesson09,
        lesson10,
        lesson11,
    )
}

__all__ = [
    "EXERCISES",
    "Exercise",
    "check_adapter_shapes_fit",
    "check_alpha_predictions",
    "check_answer_only_labels",
    "check_assistant_mask",
    "check_batch_arithmetic",
    "check_bits_per_parameter",
    "check_changed_parameters",
    "check_delta_weight",
    "check_diagnose_run",
    "check_dora_forward",
    "check_energy_captured",
    "check_exact_match",
    "check_latest_compatible",
    "check_lora_forward",
    "check_lora_init",
    "check_lora_pair_parameters",
    "check_lora_parameters_for_config",
    "check_loraplus_param_groups",
    "check_low_rank_approximation",
    "check_merge",
    "check_merged_weight",
    "check_mlp_share",
    "check_nf4_levels",
    "check_pick_precision",
    "check_pissa_factors",
    "check_plan_adapter",
    "check_qlora_forward",
    "check_quantize_4bit",
    "check_rank_for_budget",
    "check_rank_for_energy",
    "check_route_adapters",
    "check_rslora_ratio",
    "check_scaling",
    "check_served_vs_merged_gap",
    "check_trainable_parameters",
    "check_unmerge",
]
