"""Config-based LoRA counts agree with PEFT; published architecture totals are reproduced."""

import pytest
from peft import LoraConfig, get_peft_model

from lora_course import tiny_llama
from lora_course.architectures import ARCHITECTURES, build_config, meta_model
from lora_course.counting import (
    TARGET_PRESETS,
    count_parameters,
    lora_pair_parameters,
    lora_parameters,
    projection_shapes,
)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_configs_reproduce_the_published_totals(name):
    assert count_parameters(meta_model(build_config(name))).total == ARCHITECTURES[name][2]


@pytest.mark.parametrize("name", ["SmolLM2-135M", "Llama-3.1-8B"])
@pytest.mark.parametrize("preset", list(TARGET_PRESETS))
def test_config_counts_equal_peft_on_meta_models(name, preset):
    config = build_config(name)
    targets = list(TARGET_PRESETS[preset])
    peft_model = get_peft_model(meta_model(config), LoraConfig(r=16, target_modules=targets))
    assert lora_parameters(config, targets, 16) == peft_model.get_nb_trainable_parameters()[0]


def test_grouped_query_attention_narrows_k_and_v():
    shapes = projection_shapes(tiny_llama().config)  # 4 query heads, 2 KV heads, width 64
    assert shapes["q_proj"] == (64, 64) and shapes["k_proj"] == shapes["v_proj"] == (64, 32)
    assert lora_pair_parameters(64, 32, 4) == 384


def test_unknown_projections_and_architectures_are_named():
    with pytest.raises(ValueError, match="unknown projections \\['qkv'\\]"):
        lora_parameters(tiny_llama().config, ["qkv"], 8)
    with pytest.raises(ValueError, match="unknown architecture 'GPT-5'"):
        build_config("GPT-5")


def test_rank_for_budget_matches_smollm2_placements_to_a_few_percent():
    from lora_course.counting import rank_for_budget

    config = build_config("SmolLM2-135M")
    budget = lora_parameters(config, ["q_proj", "v_proj"], 32)
    mlp = ["gate_proj", "up_proj", "down_proj"]
    assert rank_for_budget(config, ["q_proj", "k_proj", "v_proj", "o_proj"], budget) == 16
    assert rank_for_budget(config, mlp, budget) == 10
    assert abs(lora_parameters(config, mlp, 10) / budget - 1) < 0.05
    with pytest.raises(ValueError, match="positive"):
        rank_for_budget(config, mlp, 0)
