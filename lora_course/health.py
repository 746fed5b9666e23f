"""Training health: read a run from its curves, stop it on a NaN loss (notebook 11).

`diagnose_run` names what a loss curve shows with a few stated rules: a run whose learning rate
is too high gave back much of what it had learned (it diverged or oscillates), one whose rate is
too low is still falling slowly when the budget ends (a plateau of slow progress).
`StopOnNonFiniteLoss` is a transformers TrainerCallback that ends a run with a clear error the
step its loss stops being a number, instead of letting it train on for hours.
"""

from __future__ import annotations

import math

#: what diagnose_run can return
DIAGNOSES = ("healthy", "too_high", "too_low", "nonfinite")

# the rules' thresholds, round numbers. A first version called a run too high when its end was
# above 1.5 x its best: notebook 11 ran it on real 16-step curves and it called every healthy run
# too high (at a loss of 0.05 one batch's noise is of that size), so the rise is now measured
# against how far the run had fallen
GAVE_BACK = 0.5  # the end gave back over half of the fall from start to best: diverged
STILL_HIGH = 0.5  # the end above half the start: the run learned too little to call it done


def smoothed(values: list[float], window: int) -> list[float]:
    """Running mean over the last `window` values (fewer at the start): diagnose_run's smoothing."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1) : i + 1]
        out.append(sum(part) / len(part))
    return out


def diagnose_run(losses: list[float], grad_norms: list[float] | None = None) -> str:
    """What a training curve says about its learning rate, by the rules below (notebook 11).

    - "nonfinite": a loss or gradient norm that is NaN or infinite (fp16 overflow, divergence);
    - "too_high": the end of the curve (its last quarter, averaged) is no lower than the start, or
      it gave back over GAVE_BACK of the fall from the start to the lowest point of the smoothed
      curve (end - best > GAVE_BACK x (start - best)): the run found a lower loss and left it
      (divergence, oscillation);
    - "too_low": otherwise, if the end is still above STILL_HIGH x the start: it learned, slowly;
    - "healthy": the loss fell to under half its start and stayed near its best.
    The start is the mean of the first tenth of the steps; smoothing is over a tenth of the steps.
    """
    values = [float(v) for v in losses]
    if len(values) < 4:
        raise ValueError(f"need at least 4 logged losses to read a curve, got {len(values)}")
    if not all(math.isfinite(v) for v in values + [float(g) for g in grad_norms or []]):
        return "nonfinite"
    tenth, quarter = max(1, len(values) // 10), max(1, len(values) // 4)
    start = sum(values[:tenth]) / tenth
    end = sum(values[-quarter:]) / quarter
    best = min(smoothed(values, tenth))
    if end >= start or end - best > GAVE_BACK * (start - best):
        return "too_high"
    if end > STILL_HIGH * start:
        return "too_low"
    return "healthy"


class NonFiniteLossError(FloatingPointError):
    """Raised by StopOnNonFiniteLoss when a logged loss is NaN or infinite."""


def stop_on_nonfinite_loss():
    """A TrainerCallback that raises NonFiniteLossError at the first NaN or inf loss (notebook 11).

    It reads the losses the Trainer logs, so it needs `logging_steps=1` to act at once, and
    `logging_nan_inf_filter=False`: by default the Trainer replaces a non-finite loss with the mean
    of the losses since the last log (0.0 at `logging_steps=1`), and no callback would ever see it
    (finetune.training_settings sets both). It refuses to start otherwise.
    """
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if args.logging_nan_inf_filter:
                raise ValueError(
                    "StopOnNonFiniteLoss cannot see a NaN loss while logging_nan_inf_filter=True "
                    "(the Trainer's default replaces it before logging): set it to False"
                )

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if value is not None and not math.isfinite(value):
                    rate = logs.get("learning_rate", args.learning_rate)
                    raise NonFiniteLossError(
                        f"{key} is {value} at step {state.global_step} (learning rate "
                        f"{rate:.2g}): the run is stopped. "
                        "Look at the steps before it: a loss that rose first means the learning "
                        "rate is too high; a sudden NaN under fp16 means an overflow (use bf16, or "
                        "fp16 with loss scaling)."
                    )

    return StopOnNonFiniteLoss()
