"""Serving many adapters on one base: a mixed batch answers each row with its own adapter."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lora_course import tiny_llama
from lora_course.evaluation import generate_batch
from lora_course.serving import BASE, route_adapters, served_vs_merged_gap

ADAPTERS = ("sql", "poem")  # PEFT warns about names inside "lora_", such as "a"


def two_adapters(seed: int = 1, std: float = 1.0):
    """A tiny PeftModel with adapters "sql" and "poem", each B random, so each changes outputs."""
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(tiny_llama(seed=0), config, adapter_name=ADAPTERS[0])
    model.add_adapter(ADAPTERS[1], config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()  # PEFT refuses adapter_names in training mode


@pytest.fixture
def model():
    return two_adapters()


def logits(model, tokens, **kwargs):
    with torch.no_grad():
        return model(input_ids=tokens, **kwargs).logits


def alone(model, name: str, tokens):
    """The logits with only adapter `name` active ("__base__": none)."""
    if name == BASE:
        with model.disable_adapter():
            return logits(model, tokens)
    model.set_adapter(name)
    return logits(model, tokens)


# --- routing --------------------------------------------------------------------------------


def test_route_adapters_keeps_the_requests_order_and_sends_none_to_the_base():
    routes = {"sql": "sql-v3", "poem": "poem-v1"}
    tags = ["sql", None, "poem", "sql", None]
    assert route_adapters(tags, routes) == ["sql-v3", "__base__", "poem-v1", "sql-v3", "__base__"]
    assert route_adapters([], routes) == []
    assert route_adapters([None], {}) == [BASE] == ["__base__"]


def test_route_adapters_refuses_an_unknown_tag_and_names_it():
    with pytest.raises(
        KeyError, match=r"request 2 asks for 'french'; this server routes poem, sql"
    ):
        route_adapters(["sql", None, "french"], {"sql": "sql-v3", "poem": "poem-v1"})
    with pytest.raises(KeyError, match="routes none"):
        route_adapters(["sql"], {})


# --- one forward pass, several adapters -----------------------------------------------------


def test_a_mixed_batch_gives_each_row_its_own_adapters_logits(model):
    names = ["sql", BASE, "poem", "sql"]
    tokens = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(0))  # (4, 12)
    mixed = logits(model, tokens, adapter_names=names)  # (4, 12, vocab)
    each = {name: alone(model, name, tokens) for name in set(names)}
    for row, name in enumerate(names):
        assert torch.allclose(mixed[row], each[name][row], atol=1e-6), (row, name)
    for a, b in [("sql", "poem"), ("sql", BASE), ("poem", BASE)]:
        assert not torch.allclose(each[a], each[b], atol=1e-3), f"{a} and {b} must differ"


def test_peft_refuses_adapter_names_on_merged_layers(model, tokens):
    """A merged adapter is inside W0 for every row, so no row can be routed around it."""
    model.set_adapter("sql")
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged"):
        logits(model, tokens, adapter_names=["poem", BASE])
    model.unmerge_adapter()
    assert logits(model, tokens, adapter_names=["poem", BASE]).shape == (2, 10, 128)


def test_peft_refuses_adapter_names_with_dora(tokens):
    """DoRA rescales each column of W0 + BA by its norm: not a per-row addition PEFT can split."""
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True)
    model = get_peft_model(tiny_llama(seed=0), config, adapter_name="sql").eval()
    with pytest.raises(ValueError, match="DoRA"):
        logits(model, tokens, adapter_names=["sql", BASE])


# --- generation: a mixed batch of chat requests ---------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A 128-word tokenizer with a chat template, built offline: tiny_llama's vocabulary size."""
    words = ["<pad>", "<s>", "</s>", "<unk>", "system", "user", "assistant", ":", "|"]
    words += [f"w{i}" for i in range(128 - len(words))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role }} : {{ m.content }} | {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    assert len(tokenizer) == 128
    return tokenizer


PROMPTS = ["w1 w2", "w3", "w4 w5 w6", "w9"]


def replies(model, tokenizer, system="w7", **kwargs):
    return generate_batch(
        model, tokenizer, PROMPTS, system, max_new_tokens=5, progress=False, **kwargs
    )


def test_generate_batch_answers_each_row_with_its_own_adapter(model, chat_tokenizer):
    names = ["sql", BASE, "poem", "sql"]
    mixed = replies(model, chat_tokenizer, adapter_names=names)
    each = {}
    for name in ADAPTERS:
        model.set_adapter(name)
        each[name] = replies(model, chat_tokenizer)
    with model.disable_adapter():
        each[BASE] = replies(model, chat_tokenizer)
    assert len({tuple(r) for r in each.values()}) == 3, "the adapters must answer differently"
    assert mixed == [each[name][row] for row, name in enumerate(names)]


def test_generate_batch_takes_one_system_prompt_per_row(model, chat_tokenizer):
    model.set_adapter("sql")
    systems = ["w7", None, "w8 w8", "w7"]
    mixed = replies(model, chat_tokenizer, system=systems)
    each = {system: replies(model, chat_tokenizer, system=system) for system in set(systems)}
    assert mixed == [each[system][row] for row, system in enumerate(systems)]
    assert each["w7"] != each[None], "the system prompt must matter"
    assert replies(model, chat_tokenizer, system=tuple(systems)) == mixed


def test_generate_batch_wants_one_system_prompt_and_one_adapter_per_prompt(model, chat_tokenizer):
    with pytest.raises(ValueError, match="3 system prompts for 4 prompts: one per prompt"):
        replies(model, chat_tokenizer, system=["w7"] * 3)
    with pytest.raises(ValueError, match="5 adapter_names for 4 prompts: one per prompt"):
        replies(model, chat_tokenizer, adapter_names=["sql"] * 5)


# --- the merged copy ------------------------------------------------------------------------


def test_served_vs_merged_gap_is_rounding_in_fp32_more_in_bf16_and_changes_nothing():
    served = two_adapters(std=0.5)
    served.set_adapter("poem")
    merged = copy.deepcopy(served).merge_and_unload()
    batch = {
        "input_ids": torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0)),
        "attention_mask": torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9]),  # left padded
    }
    before = {name: t.clone() for name, t in served.state_dict().items()}
    before_merged = {name: t.clone() for name, t in merged.state_dict().items()}

    fp32 = served_vs_merged_gap(served, merged, batch, torch.float32)
    bf16 = served_vs_merged_gap(served, merged, batch, torch.bfloat16)
    assert fp32 < 1e-5
    assert bf16 > 100 * max(fp32, 1e-7) and bf16 > 1e-3, (fp32, bf16)

    for original, saved in ((served, before), (merged, before_merged)):
        assert {t.dtype for t in original.state_dict().values()} == {torch.float32}
        state = original.state_dict()
        assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    assert not any(getattr(m, "merged", False) for m in served.modules())
    assert served.active_adapter == "poem"
    other = tiny_llama(seed=0)  # and the gap does see a wrong merge
    assert served_vs_merged_gap(served, other, batch, torch.float32) > 1e-2
