"""Saving and loading only the adapter, and refusing adapters that do not fit."""

import json

import pytest
import torch
from conftest import randomize_lora

from lora_course import (
    base_fingerprint,
    inject_lora,
    load_adapter,
    lora_layers,
    save_adapter,
    tiny_llama,
)


@pytest.fixture
def trained(base):
    """The tiny base with a non-trivial q/v adapter."""
    inject_lora(base, ["q_proj", "v_proj"], r=4, alpha=8, use_rslora=True)
    randomize_lora(base)
    return base


def test_round_trip_into_a_fresh_base_gives_the_same_outputs(trained, tokens, tmp_path):
    save_adapter(trained, tmp_path)
    fresh = load_adapter(tiny_llama(seed=0), tmp_path)
    torch.testing.assert_close(fresh(tokens).logits, trained(tokens).logits, rtol=0, atol=0)
    layer = next(iter(lora_layers(fresh).values()))
    assert (layer.r, layer.alpha, layer.use_rslora) == (4, 8, True)


def test_loading_into_a_model_with_the_same_lora_layers_works(trained, tokens, tmp_path):
    save_adapter(trained, tmp_path)
    ready = tiny_llama(seed=0)
    inject_lora(ready, ["q_proj", "v_proj"], r=4, alpha=8, use_rslora=True)
    load_adapter(ready, tmp_path)
    torch.testing.assert_close(ready(tokens).logits, trained(tokens).logits, rtol=0, atol=0)


def test_only_adapter_weights_are_saved(trained, tmp_path):
    save_adapter(trained, tmp_path)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter.safetensors")
    assert set(saved) == {f"{n}.{ab}" for n in lora_layers(trained) for ab in ("lora_A", "lora_B")}
    assert sum(t.numel() for t in saved.values()) == 2 * 4 * (128 + 96)
    config = json.loads((tmp_path / "adapter.json").read_text())
    assert config["modules"]["model.layers.0.self_attn.v_proj"] == [32, 64]


def test_a_different_architecture_is_refused(trained, tmp_path):
    save_adapter(trained, tmp_path)
    wider = tiny_llama(seed=0, hidden_size=96, intermediate_size=192)
    with pytest.raises(ValueError, match="does not fit.*expects 64->64, model has 96->96"):
        load_adapter(wider, tmp_path)
    deeper = tiny_llama(seed=0, num_hidden_layers=1)
    with pytest.raises(ValueError, match="layers.1.self_attn.q_proj: missing"):
        load_adapter(deeper, tmp_path)


def test_same_architecture_different_weights_is_refused(trained, tokens, tmp_path):
    save_adapter(trained, tmp_path)
    other = tiny_llama(seed=1)
    with pytest.raises(ValueError, match="different base model"):
        load_adapter(other, tmp_path)
    assert not lora_layers(other), "a refused adapter must leave the model as it was"
    modified = tiny_llama(seed=0)
    with torch.no_grad():
        modified.model.layers[1].self_attn.v_proj.weight[0, 0] += 1e-2
    with pytest.raises(ValueError, match="different base model"):
        load_adapter(modified, tmp_path)
    load_adapter(tiny_llama(seed=1), tmp_path, check_base=False)  # the explicit override


def test_fingerprint_ignores_dtype_of_the_same_checkpoint(trained):
    bf16 = tiny_llama(seed=0).to(torch.bfloat16)
    inject_lora(bf16, ["q_proj", "v_proj"], r=4)
    assert base_fingerprint(lora_layers(bf16)) == base_fingerprint(lora_layers(trained))


def test_merged_models_cannot_be_saved(trained, tmp_path):
    next(iter(lora_layers(trained).values())).merge()
    with pytest.raises(ValueError, match="unmerge"):
        save_adapter(trained, tmp_path)


def test_loading_into_a_model_with_other_lora_layers_is_refused(trained, tmp_path):
    save_adapter(trained, tmp_path)
    other = tiny_llama(seed=0)
    inject_lora(other, ["q_proj"], r=4)
    with pytest.raises(ValueError, match="already has LoRA layers that differ"):
        load_adapter(other, tmp_path)


def test_missing_or_foreign_adapter_folders_are_explained(tmp_path, base):
    with pytest.raises(FileNotFoundError, match="no adapter.json"):
        load_adapter(base, tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="PEFT adapter"):
        load_adapter(base, tmp_path)


def test_saving_a_model_without_lora_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match="inject_lora"):
        save_adapter(base, tmp_path)
