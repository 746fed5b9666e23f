"""GGUF export: a tiny Llama written for llama.cpp reads back with the same weights and logits."""

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from lora_course import inject_lora, tiny_llama
from lora_course.gguf_export import (
    GGUF_TYPES,
    gguf_tensor_types,
    llama_cpp_lora_problems,
    read_gguf,
    write_gguf,
)

LAYERS = 2  # tiny_llama's: 7 weight matrices and 2 norms per layer
MATRICES, NORMS = 7 * LAYERS + 1, 2 * LAYERS + 1  # + token_embd, + output_norm


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def stored(path) -> dict:
    """The tensors as they lie in the file (F32 files: the values llama.cpp reads)."""
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_f32_round_trip_is_exact(tmp_path, base, tokens):
    path = write_gguf(base, tmp_path / "tiny.gguf")
    assert files(tmp_path) == ["tiny.gguf"]  # no staging file left behind
    assert gguf_tensor_types(path) == {"F32": MATRICES + NORMS}  # tied: no output.weight
    back = read_gguf(path)
    expected, found = base.state_dict(), back.state_dict()
    assert sorted(found) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(found[name], tensor), name
    assert torch.equal(logits(back, tokens), logits(base, tokens))


def test_untied_embeddings_write_output_weight_and_round_trip(tmp_path, tokens):
    model = tiny_llama(seed=0, tie_word_embeddings=False)
    path = write_gguf(model, tmp_path / "untied.gguf")
    assert "output.weight" in stored(path)
    back = read_gguf(path)
    assert not back.config.tie_word_embeddings
    assert torch.equal(back.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(back.lm_head.weight, back.model.embed_tokens.weight)
    assert torch.equal(logits(back, tokens), logits(model, tokens))


def test_every_type_reads_back_with_a_gap_that_grows_as_bits_shrink(tmp_path, base, tokens):
    reference = logits(base, tokens)
    weight_gap, logit_gap = {}, {}
    for tensor_type in ("F16", "Q8_0", "Q4_1", "Q4_0"):
        path = write_gguf(base, tmp_path / f"tiny-{tensor_type}.gguf", tensor_type)
        # 2-d weights in the file's type, 1-d norms in F32 as llama.cpp keeps them
        assert gguf_tensor_types(path) == {tensor_type: MATRICES, "F32": NORMS}
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        assert {n for n, t in types.items() if t == "F32"} == {
            n for n in types if n.endswith("_norm.weight")
        }
        back = read_gguf(path)
        found = back.state_dict()
        weight_gap[tensor_type] = max(
            (found[name] - tensor).abs().max().item() for name, tensor in base.state_dict().items()
        )
        logit_gap[tensor_type] = (logits(back, tokens) - reference).abs().max().item()
    assert 0 < weight_gap["F16"] < 1e-4 and 0 < logit_gap["F16"] < 1e-3
    assert weight_gap["Q8_0"] < 1e-3 and logit_gap["Q8_0"] < 2e-2
    assert weight_gap["Q4_0"] < 2e-2 and logit_gap["Q4_0"] < 0.3
    assert weight_gap["Q4_1"] < 2e-2 and logit_gap["Q4_1"] < 0.3
    for gaps in (weight_gap, logit_gap):
        assert gaps["F16"] < gaps["Q8_0"] < min(gaps["Q4_0"], gaps["Q4_1"]), gaps


def llama_cpp_rows(hf_weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order, one row at a time: file row 2i + j of a head is HF row j * d/2 + i.

    transformers rotates row i of a head with row i + d/2; llama.cpp rotates rows 2i and 2i + 1.
    """
    head_dim = hf_weight.shape[0] // heads
    out = np.empty_like(hf_weight)
    for head in range(heads):
        for i in range(head_dim // 2):
            for j in (0, 1):
                out[head * head_dim + 2 * i + j] = hf_weight[
                    head * head_dim + j * head_dim // 2 + i
                ]
    return out


def test_q_and_k_rows_are_stored_in_llama_cpps_rotary_order(tmp_path, base):
    path = write_gguf(base, tmp_path / "tiny.gguf")
    tensors = stored(path)
    attention = base.model.layers[1].self_attn
    q, k, v = (
        proj.weight.detach().numpy()
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
    )
    assert q.shape == (64, 64) and k.shape == (32, 64)  # 4 query heads, 2 key/value heads of 16
    assert not np.array_equal(tensors["blk.1.attn_q.weight"], q)  # permuted, not copied
    assert np.array_equal(tensors["blk.1.attn_q.weight"], llama_cpp_rows(q, heads=4))
    assert np.array_equal(tensors["blk.1.attn_k.weight"], llama_cpp_rows(k, heads=2))
    assert np.array_equal(tensors["blk.1.attn_v.weight"], v)  # v is not rotated: as it is


def test_a_merged_peft_model_writes_and_reads_back_its_merged_logits(tmp_path, tokens):
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(tiny_llama(seed=0), config).eval()
    served = logits(peft_model, tokens)
    assert not torch.allclose(served, logits(tiny_llama(seed=0), tokens)), "the adapter must matter"
    merged = peft_model.merge_and_unload()
    assert torch.allclose(logits(merged, tokens), served, atol=1e-5)
    back = read_gguf(write_gguf(merged, tmp_path / "merged.gguf"))
    assert torch.equal(logits(back, tokens), logits(merged, tokens))


def test_a_model_that_still_holds_lora_layers_is_refused(tmp_path, base):
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(ValueError, match=r"still holds LoRA layers: merge them first"):
        write_gguf(peft_model, tmp_path / "peft.gguf")
    peft_model.merge_adapter()  # merged in place, but the LoRA layers are still there
    with pytest.raises(ValueError, match="still holds LoRA layers"):
        write_gguf(peft_model, tmp_path / "peft.gguf")
    scratch = tiny_llama(seed=0)
    inject_lora(scratch, ["q_proj", "v_proj"], r=4)  # the course's own LoRALinear
    with pytest.raises(ValueError, match="still holds LoRA layers"):
        write_gguf(scratch, tmp_path / "scratch.gguf")
    assert files(tmp_path) == []


def test_a_model_that_is_not_llama_is_refused(tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=128))
    with pytest.raises(ValueError, match="Llama models only; this is 'gpt2'"):
        write_gguf(gpt2, tmp_path / "gpt2.gguf")
    assert files(tmp_path) == []


@pytest.mark.parametrize("tensor_type", ["f16", "Q4_K", "BF16", ""])
def test_an_unknown_tensor_type_is_refused(tmp_path, base, tensor_type):
    with pytest.raises(ValueError, match="tensor_type must be one of F32, F16, Q8_0, Q4_1, Q4_0"):
        write_gguf(base, tmp_path / "tiny.gguf", tensor_type)
    assert files(tmp_path) == []
    assert set(GGUF_TYPES) == {"F32", "F16", "Q8_0", "Q4_1", "Q4_0"}


def tokenizer_gguf(path, tokens: list[str], name: str = "tiny-tok", alignment=None) -> None:
    """A GGUF file holding only a name and a tokenizer, like the packaged model's header."""
    writer = gguf.GGUFWriter(path, "llama")
    if alignment is not None:
        writer.add_custom_alignment(alignment)  # a general.* key too, but not one to copy
    writer.add_name(name)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_chat_template("{{ messages }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_the_tokenizer_is_copied_from_a_file_with_the_same_vocabulary(tmp_path, base, tokens):
    source = tmp_path / "source.gguf"
    tokenizer_gguf(source, [f"t{i}" for i in range(128)])
    (tmp_path / "out").mkdir()
    path = write_gguf(base, tmp_path / "out" / "tiny.gguf", tokenizer_from=source)
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.ggml.tokens"].contents() == [f"t{i}" for i in range(128)]
    assert fields["tokenizer.chat_template"].contents() == "{{ messages }}"
    assert fields["general.name"].contents() == "tiny-tok"
    assert fields["general.architecture"].contents() == "llama"
    renamed = write_gguf(base, tmp_path / "out" / "named.gguf", tokenizer_from=source, name="mine")
    assert gguf.GGUFReader(renamed).fields["general.name"].contents() == "mine"


def test_the_source_files_alignment_is_not_copied(tmp_path, base, tokens):
    source = tmp_path / "source.gguf"
    tokenizer_gguf(source, [f"t{i}" for i in range(128)], alignment=64)
    assert gguf.GGUFReader(source).fields["general.alignment"].contents() == 64
    (tmp_path / "out").mkdir()
    path = write_gguf(base, tmp_path / "out" / "tiny.gguf", tokenizer_from=source)
    assert "general.alignment" not in gguf.GGUFReader(path).fields  # its tensors: 32-byte padded
    assert torch.equal(logits(read_gguf(path), tokens), logits(base, tokens))


def test_a_tokenizer_with_another_vocabulary_size_is_refused(tmp_path, base):
    source = tmp_path / "source.gguf"
    tokenizer_gguf(source, [f"t{i}" for i in range(130)])
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="source.gguf has 130 tokens, the model 128"):
        write_gguf(base, tmp_path / "out" / "tiny.gguf", tokenizer_from=source)
    assert files(tmp_path / "out") == []


@pytest.mark.parametrize("failing", ["write_tensors_to_file", "quantize"])
def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, base, monkeypatch, failing):
    writers = []

    def fail(*args, **kwargs):
        writers.extend(a for a in args if isinstance(a, gguf.GGUFWriter))
        raise OSError("disk full")

    if failing == "quantize":  # while tensors are prepared, before the file is opened
        monkeypatch.setattr(gguf.quants, "quantize", fail)
    else:  # after the header and metadata are on disk
        monkeypatch.setattr(gguf.GGUFWriter, failing, fail)
    with pytest.raises(OSError, match="disk full"):
        write_gguf(base, tmp_path / "tiny.gguf", "Q8_0")
    assert files(tmp_path) == []  # neither the target nor a staging file
    (tmp_path / "tiny.gguf").write_bytes(b"the previous export")
    with pytest.raises(OSError, match="disk full"):
        write_gguf(base, tmp_path / "tiny.gguf", "Q8_0")
    assert files(tmp_path) == ["tiny.gguf"]
    assert (tmp_path / "tiny.gguf").read_bytes() == b"the previous export"
    assert all(writer.fout is None for writer in writers)  # the staging file was closed too
    assert len(writers) == (2 if failing == "write_tensors_to_file" else 0)


def test_llama_cpp_lora_problems_names_what_a_lora_gguf_cannot_carry():
    plain = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    assert llama_cpp_lora_problems(plain) == []
    assert llama_cpp_lora_problems({**plain, "rank_pattern": {"q_proj": 16}}) == []  # r per tensor
    cases = {
        "use_rslora": (True, "sqrt(r)"),
        "use_dora": (True, "magnitude"),
        "alpha_pattern": ({"q_proj": 32}, "single alpha"),
        "target_modules": (["q_proj", "embed_tokens"], "embed_tokens"),
        "modules_to_save": (["lm_head"], "modules_to_save"),
    }
    for key, (value, named) in cases.items():
        problems = llama_cpp_lora_problems({**plain, key: value})
        assert len(problems) == 1 and named in problems[0], (key, problems)
