"""The training loop learns, touches only trainable parameters, and evaluates like HF's loss."""

import pytest
import torch

from lora_course import inject_lora
from lora_course.data import collate
from lora_course.devices import Precision
from lora_course.training import evaluate_loss, run_lora, train


@pytest.fixture
def rows():
    """A learnable task: 8 random 6-token prompts, each followed by the same 6-token answer."""
    g = torch.Generator().manual_seed(0)
    answer = [7, 8, 9, 10, 11, 12]
    prompts = [torch.randint(13, 128, (6,), generator=g).tolist() for _ in range(8)]
    return [{"input_ids": p + answer, "labels": [-100] * 6 + answer} for p in prompts]


def test_lora_training_lowers_the_loss(base, rows):
    inject_lora(base, ["q_proj", "v_proj", "down_proj"], r=4, alpha=8)
    before = evaluate_loss(base, rows, pad_id=0)
    losses = train(base, rows, steps=40, lr=1e-2, pad_id=0, batch_size=4, progress=False)
    after = evaluate_loss(base, rows, pad_id=0)
    assert after < 0.85 * before, (before, after)  # measured: 4.72 -> 3.60
    assert len(losses) == 40 and not base.training


def test_evaluate_loss_matches_the_models_own_loss(base, rows):
    batch = collate(rows[:1], pad_id=0)
    with torch.no_grad():
        expected = base(**batch).loss.item()
    assert evaluate_loss(base, rows[:1], pad_id=0) == pytest.approx(expected, rel=1e-5)


def test_answer_only_logits_give_the_same_loss_and_gradients(base, rows):
    """The output layer on the answer positions only (data.answer_positions) changes nothing."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)  # B != 0, so every LoRA weight gets a gradient
    ragged = [rows[0], {"input_ids": rows[1]["input_ids"][:9], "labels": rows[1]["labels"][:9]}]
    results = []
    for answer_logits_only in (False, True):
        model.zero_grad()
        output = model(**collate(ragged, pad_id=0, answer_logits_only=answer_logits_only))
        output.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((output.loss, grads, output.logits.shape))
    (full_loss, full_grads, full_shape), (loss, grads, shape) = results
    assert full_shape[:2] == (2, 12) and shape[0] == 6 + 3  # logits for 9 answer tokens only
    torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=0)
    for grad, full_grad in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(grad, full_grad, rtol=1e-5, atol=1e-7)


def test_training_runs_eager_attention_on_a_cpu_and_restores_the_models_own(base, rows):
    seen = []
    base.model.layers[0].self_attn.register_forward_hook(
        lambda module, args, out: seen.append(module.config._attn_implementation)
    )
    base.set_attn_implementation("sdpa")
    inject_lora(base, ["q_proj"], r=2)
    cpu = Precision("cpu", torch.float32, torch.float32, False, "test")
    train(base, rows, steps=2, lr=1e-3, pad_id=0, batch_size=4, precision=cpu, progress=False)
    assert seen == ["eager", "eager"] and base.config._attn_implementation == "sdpa"
    with pytest.raises(FloatingPointError), torch.no_grad():  # restored on the way out of an error
        base.model.norm.weight[0] = float("nan")
        train(base, rows, steps=1, lr=1e-3, pad_id=0, batch_size=4, precision=cpu, progress=False)
    assert base.config._attn_implementation == "sdpa"


def test_a_fully_frozen_model_is_refused(base, rows):
    base.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(base, rows, steps=1, lr=1e-3, pad_id=0, progress=False)


def test_divergence_is_reported_not_hidden(base, rows):
    with torch.no_grad():
        base.model.norm.weight[0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        train(base, rows, steps=5, lr=1e-3, pad_id=0, batch_size=4, progress=False)


def test_run_lora_leaves_the_base_untouched_and_is_reproducible(base, rows, capsys):
    before = {n: p.clone() for n, p in base.state_dict().items()}
    settings = dict(targets=["q_proj"], r=2, alpha=4, lr=1e-2, steps=5, pad_id=0, batch_size=4)
    first = run_lora(base, rows, rows, **settings)
    assert "/5 [" in capsys.readouterr().err, "the step bar"
    second = run_lora(base, rows, rows, **settings, progress=False)
    assert capsys.readouterr().err == "", "no bar: a sweep shows its own"
    assert first["losses"] == second["losses"] and first["eval_loss"] == second["eval_loss"]
    assert all(torch.equal(p, before[n]) for n, p in base.state_dict().items())
    assert first["eval_loss"] < evaluate_loss(base, rows, pad_id=0)


def test_run_lora_scores_exact_answers_and_keeps_the_model_when_asked(base, rows):
    """QLoRA too (notebook 08): a base with 4-bit layers trains through the same call."""
    from lora_course.inject import lora_layers, quantize_linears

    settings = dict(targets=["q_proj", "v_proj"], r=2, alpha=4, lr=1e-2, steps=5, pad_id=0)
    plain = run_lora(base, rows, rows, **settings, batch_size=4, progress=False)
    assert "model" not in plain and 0 <= plain["exact"] <= 1
    quantize_linears(base, ["q_proj", "v_proj"])
    kept = run_lora(base, rows, rows, **settings, batch_size=4, progress=False, keep_model=True)
    adapted = {n for n, _ in base.named_modules() if n.endswith(("q_proj", "v_proj"))}
    assert set(lora_layers(kept["model"])) == adapted
    assert kept["losses"][-1] < kept["losses"][0]


def test_run_lora_clips_the_gradient_only_when_asked(base, rows, monkeypatch):
    """max_grad_norm reaches the loop, every step (notebook 08 clips as the Trainer does)."""
    clip, norms = torch.nn.utils.clip_grad_norm_, []

    def spy(params, max_norm):
        norms.append(max_norm)
        return clip(params, max_norm)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    settings = dict(targets=["q_proj"], r=2, alpha=4, lr=1e-2, steps=3, pad_id=0, batch_size=4)
    run_lora(base, rows, rows, **settings, progress=False)
    assert norms == []
    run_lora(base, rows, rows, **settings, progress=False, max_grad_norm=1.0)
    assert norms == [1.0, 1.0, 1.0]


def test_a_batch_larger_than_the_data_is_refused(base, rows):
    with pytest.raises(ValueError, match="between 1 and the 8 rows, got 9"):
        train(base, rows, steps=1, lr=1e-3, pad_id=0, batch_size=9, progress=False)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_train_runs_the_forward_pass_in_the_precisions_compute_dtype(base, rows, compute_dtype):
    """The hand-written loop enters the policy's autocast (CPU autocast stands in for CUDA's)."""
    precision = Precision("cpu", torch.float32, compute_dtype, False, "test")
    inject_lora(base, ["q_proj"], r=2)
    seen = []
    base.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    train(base, rows, steps=1, lr=1e-3, pad_id=0, batch_size=4, precision=precision,
          progress=False)  # fmt: skip
    assert seen == [compute_dtype]
    assert base.lm_head.weight.dtype == torch.float32, "weights stay fp32 under autocast"
