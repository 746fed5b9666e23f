"""Config-based LoRA counts agree with PEFT; published architecture totals are reproduced."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Phi3Config, Qwen2Config

from lora_course import tiny_llama
from lora_course.architectures import ARCHITECTURES, build_config, meta_model
from lora_course.counting import (
    count_lora_parameters,
    count_parameters,
    lora_pair_parameters,
    lora_parameters,
    projection_shapes,
)
from lora_course.targets import ATTENTION, MLP, PROJECTIONS, TARGET_PRESETS

# Qwen2.5-0.5B and Phi-3-mini: the config.json fields that decide the shapes
QWEN2 = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                    num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                    tie_word_embeddings=True)  # fmt: skip
PHI3 = Phi3Config(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32064)  # fmt: skip


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_configs_reproduce_the_published_totals(name):
    assert count_parameters(meta_model(build_config(name))).total == ARCHITECTURES[name][2]


@pytest.mark.parametrize("preset", list(TARGET_PRESETS))
def test_config_counts_equal_peft_on_meta_models(preset):
    config = build_config("SmolLM2-135M")  # every architecture: the meta-walk test below
    targets = list(TARGET_PRESETS[preset])
    peft_model = get_peft_model(meta_model(config), LoraConfig(r=16, target_modules=targets))
    assert lora_parameters(config, targets, 16) == peft_model.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("name", [*ARCHITECTURES, "Qwen2.5-0.5B"])
def test_config_count_equals_the_meta_walk_and_peft(name):
    config = QWEN2 if name == "Qwen2.5-0.5B" else build_config(name)
    model = meta_model(config)
    for projection in PROJECTIONS:  # one at a time: two wrong shapes cannot cancel out
        assert lora_parameters(config, [projection], 4) == count_lora_parameters(
            model, [projection], 4
        ), projection
    everything = count_lora_parameters(model, PROJECTIONS, 16)
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=list(PROJECTIONS)))
    assert everything == peft_model.get_nb_trainable_parameters()[0]
    assert everything == lora_parameters(config, TARGET_PRESETS["all linear"], 16)


def test_fused_projections_are_counted_on_the_meta_model_and_refused_from_the_config():
    model = meta_model(PHI3)  # Phi-3-mini: qkv_proj and gate_up_proj are single fused layers
    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    walked = count_lora_parameters(model, targets, 16)
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=targets))
    assert walked == peft_model.get_nb_trainable_parameters()[0] == 25_165_824
    with pytest.raises(ValueError, match=r"model_type 'phi3'.*count_lora_parameters\(meta_model"):
        lora_parameters(PHI3, TARGET_PRESETS["all linear"], 16)


def test_a_target_that_matches_nothing_lists_the_linear_layers():
    model = meta_model(PHI3)
    with pytest.raises(ValueError, match=r"\['q_proj'\] match no linear layer.*: down_proj, "
                                         r"gate_up_proj, lm_head, o_proj, qkv_proj$"):  # fmt: skip
        count_lora_parameters(model, ["q_proj", "o_proj"], 8)
    with pytest.raises(ValueError, match="targets is empty"):
        count_lora_parameters(model, [], 8)
    with pytest.raises(TypeError, match=r"a list of layer names, like \['o_proj'\]"):
        count_lora_parameters(model, "o_proj", 8)  # PEFT would read the string as a regex
    # matched on the last dotted part, as PEFT does: v_proj is not the end of qkv_proj, and a
    # layer named twice is counted once
    assert count_lora_parameters(model, ["o_proj", "self_attn.o_proj"], 8) == 32 * 8 * 6144
    with pytest.raises(ValueError, match=r"\['v_proj', 'up_proj'\] match no linear layer"):
        count_lora_parameters(model, ["v_proj", "up_proj"], 8)


def test_projections_are_a_llama_blocks_linear_layers_in_the_order_they_run():
    model = tiny_llama()
    ran = []  # (name in block 0, in, out) of each nn.Linear, in the order the forward calls it
    for name, module in model.model.layers[0].named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(
                lambda m, args, out, name=name: ran.append((name, m.in_features, m.out_features))
            )
    model(torch.zeros(1, 4, dtype=torch.long))
    shapes = projection_shapes(model.config)  # (in, out) from the config alone
    assert ran == [(f"self_attn.{p}", *shapes[p]) for p in ATTENTION] + [
        (f"mlp.{p}", *shapes[p]) for p in MLP
    ]
    assert [name.rpartition(".")[2] for name, _, _ in ran] == list(PROJECTIONS)


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
    mlp = list(MLP)
    assert rank_for_budget(config, ATTENTION, budget) == 16
    assert rank_for_budget(config, mlp, budget) == 10
    assert abs(lora_parameters(config, mlp, 10) / budget - 1) < 0.05
    with pytest.raises(ValueError, match="positive"):
        rank_for_budget(config, mlp, 0)
