"""The adapter registry: versions in order, the latest compatible loads, the rest is refused."""

import json
import re
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from lora_course import AdapterMismatchError, save_peft_adapter, tiny_llama
from lora_course.registry import (
    AdapterRegistry,
    IncompatibleAdapterError,
    RegistryError,
    adapter_record,
    base_record,
    choose_version,
    compatibility_problems,
    tokenizer_fingerprint,
)

TARGETS = ["q_proj", "v_proj"]


class FakeTokenizer:
    """All the registry reads from a tokenizer: its vocabulary and its special tokens."""

    def __init__(self, size: int = 128, special=("<s>", "</s>")):
        self.vocab = {f"tok{i}": i for i in range(size)}
        self.all_special_tokens = list(special)

    def get_vocab(self) -> dict:
        return dict(self.vocab)


@pytest.fixture
def tokenizer():
    return FakeTokenizer()


def randomize_peft_lora(model, seed: int, std: float = 0.5) -> None:
    """Non-zero values in every PEFT lora_B ("...lora_B.default.weight"), so the adapter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def trained(base, folder, r: int = 4, seed: int = 1):
    """Save a PEFT adapter with a non-zero B on a copy of `base`; return (folder, its model)."""
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS)
    peft_model = get_peft_model(base, config).eval()
    randomize_peft_lora(peft_model, seed=seed)
    return save_peft_adapter(peft_model, folder), peft_model


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture
def registry(tmp_path):
    return AdapterRegistry(tmp_path / "registry")


@pytest.fixture
def published(tmp_path, registry, tokenizer, tokens):
    """Two versions of "sql" on the seed-0 base, and the logits of each adapter when published."""
    outputs = {}
    for version, seed in ((1, 1), (2, 2)):
        folder, peft_model = trained(tiny_llama(seed=0), tmp_path / f"run{version}", seed=seed)
        release = registry.publish(
            folder, "sql", base_record(peft_model, tokenizer, "tiny"), {"data": "d"}, {"acc": 0.5}
        )
        assert release.version == version
        outputs[version] = logits(peft_model, tokens)
    assert not torch.equal(outputs[1], outputs[2]), "the two versions must differ"
    return registry, outputs


# --- the records a manifest holds ----------------------------------------------------------


def test_tokenizer_fingerprint_sees_the_vocabulary_and_special_tokens_not_dict_order():
    plain = tokenizer_fingerprint(FakeTokenizer())
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", plain)
    reordered = FakeTokenizer()
    reordered.vocab = dict(reversed(list(reordered.vocab.items())))
    assert tokenizer_fingerprint(reordered) == plain
    assert tokenizer_fingerprint(FakeTokenizer(size=129)) != plain
    renamed = FakeTokenizer()
    renamed.vocab["other"] = renamed.vocab.pop("tok5")  # same size, one token changed
    assert tokenizer_fingerprint(renamed) != plain
    assert tokenizer_fingerprint(FakeTokenizer(special=("<s>", "<pad>"))) != plain


def test_base_record_is_the_same_for_the_plain_and_the_peft_wrapped_base(base, tokenizer):
    record = base_record(base, tokenizer, "tiny")
    assert record["model_id"] == "tiny"
    assert record["architecture"] == "LlamaForCausalLM"
    assert (record["hidden_size"], record["num_hidden_layers"]) == (64, 2)
    assert record["tokenizer"] == tokenizer_fingerprint(tokenizer)
    wrapped = get_peft_model(tiny_llama(seed=0), LoraConfig(r=4, target_modules=TARGETS))
    assert base_record(wrapped, tokenizer, "tiny") == record


def test_adapter_record_reads_rank_alpha_targets_and_scaling(tmp_path, base):
    folder, _ = trained(base, tmp_path / "adapter", r=4)
    assert adapter_record(folder) == {
        "r": 4,
        "alpha": 8,
        "targets": ["q_proj", "v_proj"],
        "scaling": "alpha/r",
        "dora": False,
    }
    config = {"r": 16, "lora_alpha": 16, "target_modules": "q_proj", "use_rslora": True}
    (tmp_path / "rs").mkdir()
    (tmp_path / "rs" / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_record(tmp_path / "rs") == {
        "r": 16,
        "alpha": 16,
        "targets": ["q_proj"],  # one string is one target
        "scaling": "alpha/sqrt(r)",
        "dora": False,
    }


def manifest(version, base, r=4, targets=TARGETS, yanked=None):
    found = {"name": "sql", "version": version, "base": base, "adapter": {"r": r}}
    found["adapter"]["targets"] = sorted(targets)
    return found | ({"yanked": yanked} if yanked else {})


def test_choose_version_takes_the_newest_that_fits_and_says_why_each_other_was_refused(
    base, tokenizer
):
    here = base_record(base, tokenizer, "tiny")
    other = base_record(tiny_llama(seed=1), tokenizer, "tiny")
    manifests = [manifest(1, here), manifest(3, other), manifest(2, here, r=16)]
    assert choose_version(manifests, here)["version"] == 2
    assert choose_version(manifests, here, {"targets": TARGETS, "max_rank": 8})["version"] == 1
    assert choose_version(manifests, other)["version"] == 3
    manifests[0]["yanked"] = "leaks the schema"
    with pytest.raises(IncompatibleAdapterError) as error:
        choose_version(manifests, here, {"targets": TARGETS, "max_rank": 8})
    message = str(error.value)
    assert message.startswith("no version of sql fits this base and slot")
    assert "v3: a different base" in message
    assert "v2: rank 16 does not fit the slot's max rank 8" in message
    assert "v1: yanked (leaks the schema)" in message
    with pytest.raises(IncompatibleAdapterError, match="none is published"):
        choose_version([], here)


def test_compatibility_problems_name_each_kind_of_mismatch(base, tokenizer):
    here = base_record(base, tokenizer, "tiny")
    fits = manifest(1, here)
    assert compatibility_problems(fits, here) == []
    assert (
        compatibility_problems(fits, here, {"targets": ["v_proj", "q_proj"], "max_rank": 4}) == []
    )
    (problem,) = compatibility_problems(fits, base_record(tiny_llama(seed=1), tokenizer, ""))
    assert problem.startswith("a different base: same shapes, other weights")
    wider = base_record(tiny_llama(hidden_size=32), tokenizer, "")
    (problem,) = compatibility_problems(fits, wider)
    assert problem == "a different model size (hidden_size 64 vs 32)"
    (problem,) = compatibility_problems(fits, base_record(base, FakeTokenizer(size=129), ""))
    assert problem.startswith("a changed tokenizer or vocabulary")
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128))
    (problem,) = compatibility_problems(fits, base_record(gpt2, tokenizer, ""))
    assert problem.startswith("a different architecture (LlamaForCausalLM, this base is a GPT2")
    slot = {"targets": ["q_proj", "k_proj", "v_proj"], "max_rank": 2}
    assert compatibility_problems(fits, here, slot) == [
        "rank 4 does not fit the slot's max rank 2",
        "targets ['q_proj', 'v_proj'] are not the slot's ['k_proj', 'q_proj', 'v_proj']",
    ]


# --- publishing and loading ----------------------------------------------------------------


def test_publish_numbers_versions_and_writes_a_manifest_that_checks_every_file(published):
    registry, _ = published
    assert registry.names() == ["sql"]
    v1, v2 = registry.releases("sql")
    assert (v1.version, v2.version) == (1, 2)
    assert v2.folder == registry.root / "sql" / "v2"
    assert sorted(p.name for p in v2.folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "lora_course_base.json",
        "manifest.json",
    ]
    assert v2.manifest == json.loads((v2.folder / "manifest.json").read_text())
    assert v2.manifest["training"] == {"data": "d"} and v2.manifest["metrics"] == {"acc": 0.5}
    assert v2.manifest["adapter"]["r"] == 4
    assert set(v2.manifest["files"]) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "lora_course_base.json",
    }
    assert v2.yanked is None
    assert registry.problems("sql") == {}
    assert [p.name for p in (registry.root / "sql").iterdir() if p.name.startswith(".")] == []


def test_v10_comes_after_v9(tmp_path, registry, base, tokenizer):
    folder, _ = trained(base, tmp_path / "adapter")
    record = base_record(base, tokenizer, "tiny")
    for version in range(1, 11):
        assert registry.publish(folder, "sql", record, {}, {}).version == version
    assert [r.version for r in registry.releases("sql")] == list(range(1, 11))
    assert registry.latest_compatible("sql", base, tokenizer).version == 10
    assert registry.publish(folder, "sql", record, {}, {}).version == 11


def test_load_gives_the_outputs_of_the_adapter_that_was_published(published, tokenizer, tokens):
    registry, outputs = published
    base = tiny_llama(seed=0)
    model = registry.load("sql", base, tokenizer)  # the latest: v2
    assert list(model.peft_config) == ["sql-v2"]
    assert torch.equal(logits(model, tokens), outputs[2])
    registry.load("sql", model, tokenizer, version=1, adapter_name="old")
    model.set_adapter("old")
    assert torch.equal(logits(model, tokens), outputs[1])


def test_latest_compatible_picks_the_newest_version_that_fits(tmp_path, registry, tokenizer):
    """v1 on base 0, v2 on base 1, v3 on base 0 with rank 8: each base and slot gets its own."""
    plan = [(0, 4), (1, 4), (0, 8)]
    for version, (seed, r) in enumerate(plan, start=1):
        base = tiny_llama(seed=seed)
        folder, _ = trained(base, tmp_path / f"run{version}", r=r)
        registry.publish(folder, "sql", base_record(base, tokenizer, "tiny"), {}, {})
    base0, base1 = tiny_llama(seed=0), tiny_llama(seed=1)
    assert registry.latest_compatible("sql", base0, tokenizer).version == 3
    assert registry.latest_compatible("sql", base1, tokenizer).version == 2
    slot = {"targets": TARGETS, "max_rank": 4}
    assert registry.latest_compatible("sql", base0, tokenizer, slot=slot).version == 1
    model = registry.load("sql", base0, tokenizer, slot=slot)
    assert list(model.peft_config) == ["sql-v1"]


@pytest.mark.parametrize(
    "other, why",
    [
        (lambda: (tiny_llama(seed=1), FakeTokenizer()), "a different base: same shapes"),
        (lambda: (tiny_llama(hidden_size=32), FakeTokenizer()), "hidden_size 64 vs 32"),
        (lambda: (tiny_llama(num_hidden_layers=3), FakeTokenizer()), "num_hidden_layers 2 vs 3"),
        (lambda: (tiny_llama(seed=0), FakeTokenizer(size=129)), "a changed tokenizer"),
        (
            lambda: (
                GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128)),
                FakeTokenizer(),
            ),
            "a different architecture",
        ),
    ],
    ids=["other weights", "wider", "deeper", "tokenizer", "architecture"],
)
def test_load_refuses_a_base_or_tokenizer_the_adapter_was_not_trained_for(published, other, why):
    registry, _ = published
    model, tokenizer = other()
    with pytest.raises(IncompatibleAdapterError, match=why) as error:
        registry.load("sql", model, tokenizer)
    assert "v1:" in str(error.value) and "v2:" in str(error.value)  # each version says why
    with pytest.raises(IncompatibleAdapterError, match=f"sql v1: .*{why}"):
        registry.load("sql", model, tokenizer, version=1)  # a pinned version is checked too
    assert not hasattr(model, "peft_config")


def test_load_refuses_a_slot_of_another_rank_or_other_targets(published, base, tokenizer):
    registry, _ = published
    with pytest.raises(IncompatibleAdapterError, match="rank 4 does not fit the slot's max rank 2"):
        registry.load("sql", base, tokenizer, slot={"targets": TARGETS, "max_rank": 2})
    with pytest.raises(IncompatibleAdapterError, match="are not the slot's"):
        registry.load("sql", base, tokenizer, slot={"targets": ["q_proj"], "max_rank": 8})
    assert not hasattr(base, "peft_config")
    model = registry.load("sql", base, tokenizer, slot={"targets": TARGETS, "max_rank": 8})
    assert list(model.peft_config) == ["sql-v2"]


def test_yanking_the_latest_rolls_back_to_the_previous_version(published, tokenizer, tokens):
    registry, outputs = published
    registry.yank("sql", 2, "  drops WHERE clauses  \n")
    assert registry.release("sql", 2).yanked == "drops WHERE clauses"
    assert (registry.root / "sql" / "v2" / "YANKED").is_file()
    assert [r.version for r in registry.releases("sql")] == [1, 2]  # still listed, not served
    base = tiny_llama(seed=0)
    assert registry.latest_compatible("sql", base, tokenizer).version == 1
    model = registry.load("sql", base, tokenizer)
    assert torch.equal(logits(model, tokens), outputs[1])
    registry.yank("sql", 1, "")
    with pytest.raises(IncompatibleAdapterError, match=r"v2: yanked \(drops WHERE clauses\)"):
        registry.latest_compatible("sql", base, tokenizer)


# --- what a crash, a disk or a person can do to the folders ---------------------------------


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # in the last tensor's values: the file still parses
    path.write_bytes(bytes(data))


def test_a_corrupt_version_is_refused_and_leaves_the_model_as_it_was(published, tokenizer, tokens):
    registry, outputs = published
    flip_a_byte(registry.root / "sql" / "v2" / "adapter_model.safetensors")
    assert list(registry.problems("sql")) == [2]
    assert "does not match its manifest" in registry.problems("sql")[2]
    base = tiny_llama(seed=0)
    before = logits(base, tokens)
    with pytest.raises(RegistryError, match="sql v2: adapter_model.safetensors does not match"):
        registry.load("sql", base, tokenizer)  # loud: no quiet fall-back to v1
    assert not hasattr(base, "peft_config")
    assert not any("lora_" in name for name, _ in base.named_parameters())
    assert torch.equal(logits(base, tokens), before)

    model = registry.load("sql", base, tokenizer, version=1)  # a PeftModel with one adapter
    with pytest.raises(RegistryError, match="does not match its manifest"):
        registry.load("sql", model, tokenizer, version=2)
    assert list(model.peft_config) == ["sql-v1"]
    assert torch.equal(logits(model, tokens), outputs[1])


def test_a_version_missing_a_file_is_reported_and_refused(published, base, tokenizer):
    registry, _ = published
    (registry.root / "sql" / "v2" / "lora_course_base.json").unlink()
    assert registry.problems("sql") == {2: "sql v2: lora_course_base.json is missing"}
    with pytest.raises(RegistryError, match="lora_course_base.json is missing"):
        registry.load("sql", base, tokenizer)
    assert not hasattr(base, "peft_config")


def test_a_version_without_a_manifest_is_reported_skipped_and_never_reused(
    tmp_path, published, base, tokenizer
):
    registry, _ = published
    half = registry.root / "sql" / "v3"
    shutil.copytree(registry.root / "sql" / "v2", half)
    (half / "manifest.json").unlink()
    assert registry.problems("sql") == {3: "sql v3: no manifest.json (incomplete)"}
    assert [r.version for r in registry.releases("sql")] == [1, 2]
    assert registry.latest_compatible("sql", base, tokenizer).version == 2
    with pytest.raises(RegistryError, match="no manifest.json"):
        registry.release("sql", 3)
    folder, _ = trained(tiny_llama(seed=0), tmp_path / "next")
    assert registry.publish(folder, "sql", base_record(base, tokenizer, ""), {}, {}).version == 4


def test_a_copied_or_garbled_manifest_is_reported(published):
    registry, _ = published
    shutil.copytree(registry.root / "sql" / "v1", registry.root / "sql" / "v5")  # by hand
    (registry.root / "sql" / "v2" / "manifest.json").write_text('{"name": "sql", ')
    problems = registry.problems("sql")
    assert sorted(problems) == [2, 5]
    assert problems[2].startswith("sql v2: unreadable manifest.json")
    assert problems[5] == "sql v5: its manifest names sql v1"
    assert [r.version for r in registry.releases("sql")] == [1]


def test_a_staging_folder_left_by_a_crash_is_ignored(tmp_path, published, base, tokenizer):
    registry, _ = published
    staging = registry.root / "sql" / ".v3.partial-123"
    shutil.copytree(registry.root / "sql" / "v2", staging)  # even with a complete manifest
    hidden = registry.root / ".v1.partial-9"  # and one where an adapter name would be
    hidden.mkdir()
    assert registry.names() == ["sql"]
    assert [r.version for r in registry.releases("sql")] == [1, 2]
    assert registry.problems("sql") == {}
    folder, _ = trained(tiny_llama(seed=0), tmp_path / "next")
    release = registry.publish(folder, "sql", base_record(base, tokenizer, ""), {}, {})
    assert release.version == 3 and release.folder.name == "v3"
    assert staging.is_dir()  # another process's leftovers are not ours to delete


def test_an_unknown_adapter_has_no_versions(registry, base, tokenizer):
    assert registry.names() == [] and registry.releases("nope") == []
    assert registry.problems("nope") == {}
    with pytest.raises(RegistryError, match="no complete version of 'nope'"):
        registry.load("nope", base, tokenizer)
    with pytest.raises(RegistryError, match="no manifest.json"):
        registry.release("nope", 1)


# --- what publish refuses -------------------------------------------------------------------


def test_publish_refuses_an_adapter_trained_on_another_base(tmp_path, registry, tokenizer):
    folder, _ = trained(tiny_llama(seed=1), tmp_path / "adapter")
    described = base_record(tiny_llama(seed=0), tokenizer, "tiny")
    with pytest.raises(AdapterMismatchError, match="trained on base sha256:"):
        registry.publish(folder, "sql", described, {}, {})
    assert registry.names() == []


@pytest.mark.parametrize("lost", ["lora_course_base.json", "adapter_model.safetensors"])
def test_publish_refuses_a_folder_missing_a_file(tmp_path, registry, base, tokenizer, lost):
    folder, _ = trained(base, tmp_path / "adapter")
    (folder / lost).unlink()
    with pytest.raises(
        RegistryError, match=f"adapter lacks {lost}: save it with save_peft_adapter"
    ):
        registry.publish(folder, "sql", base_record(base, tokenizer, ""), {}, {})
    assert registry.releases("sql") == []


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "-flag", "two words", "v1?"])
def test_publish_refuses_names_that_are_not_one_plain_folder(tmp_path, registry, name):
    with pytest.raises(ValueError, match="adapter name"):
        registry.publish(tmp_path, name, {}, {}, {})  # refused before anything is read
    assert not registry.root.exists()


def test_publish_accepts_letters_digits_dots_dashes_and_underscores(
    tmp_path, registry, base, tokenizer
):
    folder, _ = trained(base, tmp_path / "adapter")
    record = base_record(base, tokenizer, "")
    assert registry.publish(folder, "SQL_v2.1-de", record, {}, {}).folder.parent.name == (
        "SQL_v2.1-de"
    )
