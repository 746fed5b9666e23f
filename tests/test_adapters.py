"""Adapters saved with their base's fingerprint: the right base loads, any other is refused."""

import copy
import json
import re

import pytest
import torch
from conftest import randomize_lora
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from lora_course import (
    AdapterMismatchError,
    base_fingerprint,
    check_adapter_fits,
    export_peft_adapter,
    inject_lora,
    load_peft_adapter,
    lora_layers,
    save_peft_adapter,
    tiny_llama,
)

TARGETS = ["q_proj", "v_proj"]


def peft_wrapped(model):
    """`model` with a PEFT q/v adapter whose B is not zero, so it changes the outputs."""
    config = LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, config)


def state(model) -> dict:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.fixture
def saved(tmp_path, tokens):
    """A fresh tiny base, the folder of a PEFT adapter trained on its twin, and its logits."""
    peft_model = peft_wrapped(tiny_llama(seed=0))
    folder = save_peft_adapter(peft_model, tmp_path / "adapter")
    with torch.no_grad():
        logits = peft_model(tokens).logits
    return tiny_llama(seed=0), folder, logits


def test_the_right_base_loads_and_gives_the_same_outputs(saved, tokens):
    base, folder, logits = saved
    record = json.loads((folder / "lora_course_base.json").read_text())
    assert record == {"fingerprint": base_fingerprint(base)}
    model = load_peft_adapter(base, folder)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, logits)
        with model.disable_adapter():
            assert not torch.equal(model(tokens).logits, logits), "the adapter must matter"


def test_a_second_adapter_loads_into_a_peft_model(saved, tokens):
    base, folder, logits = saved
    model = load_peft_adapter(base, folder, adapter_name="first")
    assert load_peft_adapter(model, folder, adapter_name="second") is model
    assert set(model.peft_config) == {"first", "second"}
    model.set_adapter("second")  # the saved weights, not a freshly initialized adapter
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, logits)


def test_fingerprint_is_one_value_for_plain_peft_wrapped_from_scratch_and_bf16(base):
    plain = base_fingerprint(base)
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", plain)
    scratch = copy.deepcopy(base)
    inject_lora(scratch, ["q_proj", "v_proj", "down_proj"], r=4)
    randomize_lora(scratch)  # LoRA values must not count
    same = {
        "peft": base_fingerprint(peft_wrapped(copy.deepcopy(base))),
        "from scratch": base_fingerprint(scratch),
        "bf16": base_fingerprint(copy.deepcopy(base).to(torch.bfloat16)),
        "bf16 from scratch": base_fingerprint(scratch.to(torch.bfloat16)),
    }
    assert same == dict.fromkeys(same, plain)
    assert base_fingerprint(tiny_llama(seed=1)) != plain


def test_fingerprint_covers_every_base_weight_including_those_under_lora(base):
    plain = base_fingerprint(base)
    scratch = copy.deepcopy(base)
    inject_lora(scratch, TARGETS, r=4)
    with torch.no_grad():
        scratch.model.layers[0].self_attn.q_proj.base.weight[0, 0] += 0.5  # under a LoRALinear
    assert base_fingerprint(scratch) != plain
    with torch.no_grad():
        base.model.norm.weight[0] += 0.5  # no adapter anywhere near it
    assert base_fingerprint(base) != plain


def test_a_merged_model_cannot_be_fingerprinted(saved, tmp_path):
    _, folder, _ = saved
    bf16_checkpoint = tiny_llama(seed=0).to(torch.bfloat16).float()  # W0 holds bf16 values
    plain = base_fingerprint(bf16_checkpoint)
    model = load_peft_adapter(bf16_checkpoint, folder)
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged.*unmerge first"):
        base_fingerprint(model)
    with pytest.raises(ValueError, match="unmerge first"):
        save_peft_adapter(model, tmp_path / "merged")
    assert not (tmp_path / "merged").exists(), "a refused save must write nothing"
    model.unmerge_adapter()  # W0 back up to fp32 rounding, which bf16 rounding absorbs here
    assert base_fingerprint(model) == plain

    scratch = tiny_llama(seed=0)
    inject_lora(scratch, TARGETS, r=4)
    next(iter(lora_layers(scratch).values())).merge()
    with pytest.raises(ValueError, match="unmerge first"):
        base_fingerprint(scratch)


def test_a_different_architecture_is_refused_naming_modules_and_widths(saved):
    base, folder, _ = saved
    wider = tiny_llama(seed=0, hidden_size=96, intermediate_size=192)
    name = "model.layers.0.self_attn.q_proj"
    old, new = base.get_submodule(name), wider.get_submodule(name)
    widths = f"{name}: adapter in->out {old.in_features}->{old.out_features}, "
    widths += f"model {new.in_features}->{new.out_features}"
    adapted = {
        key.rpartition(".lora_")[0] for key in load_file(folder / "adapter_model.safetensors")
    }
    with pytest.raises(AdapterMismatchError, match="different architecture") as error:
        check_adapter_fits(wider, folder)
    assert widths in str(error.value)
    assert f"; and {len(adapted) - 3} more." in str(error.value)  # 3 listed, the rest counted

    shallower = tiny_llama(seed=0, num_hidden_layers=1)
    with pytest.raises(AdapterMismatchError) as error:
        check_adapter_fits(shallower, folder)
    assert "model.layers.1.self_attn.q_proj: not in this model" in str(error.value)
    assert "model.layers.0" not in str(error.value), "layer 0 fits: it must not be listed"


def test_same_shapes_different_weights_are_refused(saved):
    base, folder, _ = saved
    with pytest.raises(AdapterMismatchError, match="same shapes, different weights"):
        check_adapter_fits(tiny_llama(seed=1), folder)
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[0, 0] += 0.5  # not even an adapted module
    with pytest.raises(AdapterMismatchError, match="same shapes, different weights"):
        check_adapter_fits(base, folder)


def test_a_refused_load_leaves_the_model_unchanged(saved):
    base, folder, _ = saved
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[0, 0] += 0.5
    before = state(base)
    with pytest.raises(AdapterMismatchError):
        load_peft_adapter(base, folder)
    after = state(base)
    assert after.keys() == before.keys(), "no LoRA tensors may have been added"
    assert all(torch.equal(after[name], before[name]) for name in before)

    other = peft_wrapped(tiny_llama(seed=1))
    before = state(other)
    with pytest.raises(AdapterMismatchError):
        load_peft_adapter(other, folder, adapter_name="second")
    assert set(other.peft_config) == {"default"}
    assert state(other).keys() == before.keys()


def test_an_adapter_without_a_base_record_needs_an_explicit_opt_out(saved, tokens):
    base, folder, logits = saved
    (folder / "lora_course_base.json").unlink()
    with pytest.raises(AdapterMismatchError, match="base it was trained on is unknown"):
        check_adapter_fits(base, folder)
    check_adapter_fits(base, folder, check_weights=False)
    model = load_peft_adapter(base, folder, check_weights=False)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, logits)


def test_a_folder_without_an_adapter_is_not_found(saved):
    base, folder, _ = saved
    with pytest.raises(FileNotFoundError, match="not a saved PEFT adapter"):
        check_adapter_fits(base, folder.parent)
    with pytest.raises(FileNotFoundError, match="not a saved PEFT adapter"):
        load_peft_adapter(base, folder.parent)


def test_an_exported_from_scratch_adapter_loads_in_peft_with_the_same_outputs(tokens, tmp_path):
    scratch = tiny_llama(seed=0)
    inject_lora(scratch, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8, use_rslora=True)
    randomize_lora(scratch, std=0.05)
    folder = export_peft_adapter(scratch, tmp_path / "exported")

    guarded = load_peft_adapter(tiny_llama(seed=0), folder)
    plain = PeftModel.from_pretrained(tiny_llama(seed=0), folder)
    with torch.no_grad():
        expected = scratch(tokens).logits
        for loaded in (guarded, plain):
            torch.testing.assert_close(loaded(tokens).logits, expected, rtol=1e-5, atol=1e-5)
        with guarded.disable_adapter():
            untouched = guarded(tokens).logits
    assert (expected - untouched).abs().max() > 1e-3, "the adapter must change the outputs"
    with pytest.raises(AdapterMismatchError, match="different weights"):
        load_peft_adapter(tiny_llama(seed=1), folder)


def test_export_needs_from_scratch_lora_layers(base, tmp_path):
    with pytest.raises(ValueError, match="inject_lora"):
        export_peft_adapter(base, tmp_path)


def test_saving_again_replaces_the_adapter_whole_and_leaves_no_staging_files(saved, tokens):
    """Notebooks 05 and 07 may save and load the same cached adapter at once (nbval runs in
    parallel): files are moved in complete, adapter_config.json last, and a re-save replaces."""
    base, folder, _ = saved
    other = peft_wrapped(tiny_llama(seed=0))  # same base, other adapter weights
    torch.manual_seed(5)
    randomize_lora(other, seed=5)
    save_peft_adapter(other, folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no staging folder
    reloaded = load_peft_adapter(base, folder)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, other(tokens).logits)
