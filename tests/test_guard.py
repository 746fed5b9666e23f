"""The PEFT adapter guard: right base loads, other architectures and modified bases are refused."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lora_course import tiny_llama
from lora_course.guard import (
    AdapterMismatchError,
    base_fingerprint_of,
    check_adapter_fits,
    load_peft_adapter,
    save_peft_adapter,
)


@pytest.fixture
def saved(tmp_path, tokens):
    base = tiny_llama(seed=0)
    peft_model = get_peft_model(
        tiny_llama(seed=0),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    folder = save_peft_adapter(peft_model, tmp_path / "adapter")
    with torch.no_grad():
        logits = peft_model(tokens).logits
    return base, folder, logits


def test_the_right_base_loads_and_gives_the_same_outputs(saved, tokens):
    base, folder, logits = saved
    model = load_peft_adapter(base, folder)
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, logits)


def test_fingerprint_sees_through_peft_wrapping_but_not_merging(saved):
    base, folder, _ = saved
    plain = base_fingerprint_of(base)
    model = load_peft_adapter(base, folder)
    assert base_fingerprint_of(model) == plain
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged"):
        base_fingerprint_of(model)


def test_a_different_architecture_is_refused(saved):
    _, folder, _ = saved
    with pytest.raises(AdapterMismatchError, match="different architecture or size"):
        check_adapter_fits(tiny_llama(seed=0, hidden_size=32), folder)


def test_a_modified_base_is_refused_before_anything_loads(saved):
    base, folder, _ = saved
    with torch.no_grad():
        base.model.layers[0].mlp.up_proj.weight[0, 0] += 0.5  # not even an adapted module
    with pytest.raises(AdapterMismatchError, match="same shapes, different weights"):
        load_peft_adapter(base, folder)
    assert not any("lora_" in name for name, _ in base.named_parameters())


def test_an_adapter_without_a_base_record_needs_an_explicit_opt_out(saved):
    base, folder, _ = saved
    (folder / "lora_course_base.json").unlink()
    with pytest.raises(AdapterMismatchError, match="base it was trained on is unknown"):
        check_adapter_fits(base, folder)
    check_adapter_fits(base, folder, check_weights=False)
    with pytest.raises(FileNotFoundError, match="not a saved PEFT adapter"):
        check_adapter_fits(base, folder.parent)
