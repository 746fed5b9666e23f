"""Training health (notebook 11): diagnose_run's rules on curves, the NaN-stopping callback."""

import math

import pytest
import torch

from lora_course import choose_precision, tiny_llama
from lora_course.finetune import FinetuneConfig, make_trainer, training_settings
from lora_course.health import (
    DIAGNOSES,
    NonFiniteLossError,
    diagnose_run,
    smoothed,
    stop_on_nonfinite_loss,
)

CPU = choose_precision(cuda_available=False, cpu_bf16="")


def decay(start=2.0, end=0.1, steps=40, rate=0.15):
    return [end + (start - end) * math.exp(-rate * i) for i in range(steps)]


CURVES = {
    "healthy": decay(),
    "too_high": decay(steps=15) + [0.1 + 0.3 * i for i in range(25)],  # found low loss, left it
    "too_low": [2.0 - 0.02 * i for i in range(40)],  # still falling, slowly: 2.0 -> 1.2
    "nonfinite": decay()[:20] + [float("nan")] * 20,
}


@pytest.mark.parametrize("kind", list(CURVES))
def test_each_curve_gets_its_diagnosis(kind):
    assert diagnose_run(CURVES[kind]) == kind
    assert kind in DIAGNOSES


def test_an_oscillating_run_that_never_goes_below_its_start_is_too_high():
    assert diagnose_run([2.0, 0.8, 3.0, 0.9, 2.5, 1.0, 4.0, 2.2] * 4) == "too_high"


def test_a_noisy_run_near_zero_loss_is_healthy():
    # notebook 11's LoRA at 3e-3, seed 0: its end (0.14) is 2.5 x its best single loss (0.055),
    # one batch's noise at that loss, not a divergence (the rule's first version said too_high)
    losses = [1.947, 1.232, 0.712, 0.532, 0.631, 0.29, 0.2, 0.313, 0.126, 0.16, 0.208, 0.069,
              0.138, 0.238, 0.116, 0.055]  # fmt: skip
    assert diagnose_run(losses) == "healthy"


@pytest.mark.parametrize("climb, want", [(1.15, "too_high"), (0.95, "healthy")])
def test_too_high_means_giving_back_over_half_the_fall(climb, want):
    # start 2.0, best 0.2: the fall is 1.8, so an end above 0.2 + 0.9 = 1.1 gave back over half
    losses = [2.0] * 4 + [0.2] * 16 + [climb] * 20
    assert diagnose_run(losses) == want


def test_a_nan_gradient_norm_is_enough():
    assert diagnose_run(decay(), grad_norms=[1.0] * 39 + [float("inf")]) == "nonfinite"


def test_the_start_is_a_mean_not_the_first_step():
    """A noisy first step alone must not decide: the first tenth of the steps is averaged."""
    curve = [9.0] + [1.0] * 3 + decay(start=1.0, end=0.6, steps=36)  # start = mean(9, 1, 1, 1) = 3
    assert diagnose_run(curve) == "healthy"
    assert diagnose_run([1.0] * 4 + decay(start=1.0, end=0.6, steps=36)) == "too_low"


def test_too_short_a_curve_is_refused():
    with pytest.raises(ValueError, match="at least 4 logged losses"):
        diagnose_run([1.0, 0.5, 0.2])


def test_smoothed_is_a_trailing_mean():
    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="window"):
        smoothed([1.0], 0)


def test_the_recipe_logs_nonfinite_losses_as_they_are():
    assert training_settings(FinetuneConfig(), CPU, "out")["logging_nan_inf_filter"] is False


def _rows_with_an_empty_answer():
    rows = [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, 4, 5, 6]}] * 7
    return rows + [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100] * 6}]  # nothing to learn


class _Tokenizer:
    pad_token_id = 0


def _trainer(tmp_path, callbacks):
    from peft import get_peft_model

    config = FinetuneConfig(steps=8, batch_size=1, r=4, targets=("q_proj", "v_proj"), lr=1e-3)
    model = get_peft_model(tiny_llama(), config.lora_config())
    return make_trainer(model, _Tokenizer(), _rows_with_an_empty_answer(), config, CPU, tmp_path,
                        progress=False, callbacks=callbacks)  # fmt: skip


def test_the_callback_stops_the_run_at_the_nan_step(tmp_path):
    trainer = _trainer(tmp_path, [stop_on_nonfinite_loss()])
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step \d+ \(learning rate"):
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert math.isnan(losses[-1]) and all(math.isfinite(x) for x in losses[:-1])


def test_without_it_the_trainers_default_hides_the_nan(tmp_path):
    trainer = _trainer(tmp_path, [])
    trainer.args.logging_nan_inf_filter = True  # transformers' default
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)


def test_the_callback_refuses_to_run_blind(tmp_path):
    trainer = _trainer(tmp_path, [stop_on_nonfinite_loss()])
    trainer.args.logging_nan_inf_filter = True
    with pytest.raises(ValueError, match="logging_nan_inf_filter"):
        trainer.train()
    assert torch.isfinite(next(trainer.model.parameters())).all()
