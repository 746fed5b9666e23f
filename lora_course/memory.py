"""Training-memory arithmetic: full fine-tuning vs LoRA vs QLoRA (introduced in notebook 03).

A calculator, not a simulator. Every assumption is a named argument or stated below:
- frozen weights are stored in `weight_bytes` per parameter (fp32 = 4, bf16 = 2); a QLoRA base
  stores the linear layers of its decoder blocks in 4-bit NF4 (`bnb_4bit_quant_type="nf4"`) with
  one fp32 scale per 64 weights (0.5 + 4/64 = 0.5625 bytes per parameter; no double quantization,
  `BitsAndBytesConfig`'s default; the QLoRA paper's double quantization makes it about 0.516)
  and keeps the rest (the embedding, the output layer `lm_head`, the norms) in `weight_bytes`, as
  bitsandbytes and transformers do: only `nn.Linear` layers are quantized, and `lm_head` is left
  out;
- every trained parameter is held in fp32 with an fp32 gradient and two fp32 AdamW moments
  (4 + 4 + 8 = 16 bytes): mixed precision, so full fine-tuning keeps fp32 weights whatever
  `weight_bytes` says, and LoRA's A and B are fp32 (PEFT's default);
- activations kept for the backward pass, per token and per decoder block, are about
  10 h + 2 kv + 4 i + a s values (h: hidden size, kv: key/value width, i: MLP width, a: heads,
  s: sequence length; that is two norms, attention inputs, eager attention probabilities and MLP
  intermediates), plus 3 V values per token for the logits, their log-softmax and its gradient
  (V: vocabulary size);
- LoRA is charged the same activations as full fine-tuning: an upper bound, since frozen layers
  need not keep their inputs;
- nothing else: no allocator caching, no framework overhead, no gradient checkpointing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .counting import projection_shapes

QLORA_BYTES = 0.5 + 4 / 64  # NF4 weights plus one fp32 absmax per 64-weight block


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component; `total` is their sum."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_gib(self) -> dict[str, float]:
        parts = ("weights", "gradients", "optimizer", "activations", "total")
        return {part: getattr(self, part) / 2**30 for part in parts}


def activation_bytes(
    config, batch: int, seq: int, bytes_per_value: int = 4, checkpointing: bool = False
) -> float:
    """Activations kept for backward, by the per-token count in the module docstring.

    With `checkpointing` (gradient checkpointing) each block keeps only its input (h per token) and
    one block at a time recomputes its own activations during the backward pass.
    """
    shapes = projection_shapes(config)
    h, kv, i = config.hidden_size, shapes["k_proj"][1], config.intermediate_size
    per_block = 10 * h + 2 * kv + 4 * i + config.num_attention_heads * seq
    if checkpointing:
        blocks = config.num_hidden_layers * h + per_block
    else:
        blocks = config.num_hidden_layers * per_block
    per_token = blocks + 3 * config.vocab_size
    return batch * seq * per_token * bytes_per_value


def quantized_parameters(config) -> int:
    """Parameters in the decoder blocks' linear layers: what QLoRA keeps in 4 bits (notebook 03)."""
    block = sum(n_in * n_out for n_in, n_out in projection_shapes(config).values())
    return config.num_hidden_layers * block


def estimate_training_memory(
    config,
    method: str,
    base_params: int,
    lora_params: int,
    batch: int,
    seq: int,
    weight_bytes: float = 4,
    activation_value_bytes: int = 4,
    quantized_bytes: float = QLORA_BYTES,
    checkpointing: bool = False,
) -> MemoryEstimate:
    """Memory to train with `method` ('full', 'lora' or 'qlora'), by the stated assumptions.

    `base_params` counts the model without adapters; `lora_params` the adapters' A and B (unused
    for 'full', which trains every base parameter). `quantized_bytes` is what 'qlora' stores per
    4-bit parameter: QLORA_BYTES, or about 0.516 with double quantization (notebook 08).
    `checkpointing`: activations as gradient checkpointing keeps them (activation_bytes).
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', got {method!r}")
    if method == "full":
        frozen_bytes, trained = 0.0, base_params
    elif method == "lora":
        frozen_bytes, trained = base_params * weight_bytes, lora_params
    else:
        quantized = quantized_parameters(config)
        frozen_bytes = quantized * quantized_bytes + (base_params - quantized) * weight_bytes
        trained = lora_params
    return MemoryEstimate(
        weights=frozen_bytes + trained * 4,  # trained weights kept in fp32
        gradients=trained * 4,
        optimizer=trained * 8,  # AdamW: first and second moments
        activations=activation_bytes(config, batch, seq, activation_value_bytes, checkpointing),
    )


def measure_training_peak(
    method: str,
    batch: int = 4,
    seq: int = 128,
    steps: int = 2,
    r: int = 8,
    targets=None,
    checkpointing: bool = False,
) -> dict:
    """Train SmolLM2 for `steps` steps in a fresh Python process and report its peak memory.

    A fresh process, because peak RSS only ever grows: measuring in the notebook's own process
    would include everything done before. Returns bytes: {'peak', 'device', ...}. On a CPU the
    figure is the peak resident set (RSS) while training, less the process's RSS after its
    imports; on a GPU it is torch.cuda.max_memory_allocated() while training. The CPU measurement
    reads /proc: Linux only. `checkpointing` turns on gradient checkpointing (notebook 11); the
    result's 'seconds_per_step' is the mean time of all steps, the first included.
    """
    import json
    import os
    import subprocess
    import sys

    args = ["--method", method, "--batch", str(batch), "--seq", str(seq), "--steps", str(steps)]
    args += ["--r", str(r), "--targets", ",".join(targets or ("q_proj", "v_proj"))]
    args += ["--checkpointing"] if checkpointing else []
    # glibc returns freed blocks of 128 KiB and more to the system at once, instead of keeping
    # them for reuse (its default raises that threshold as the program runs): the peak RSS then
    # follows the live tensors, run after run, and not what the allocator happened to hold
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    result = subprocess.run(
        [sys.executable, "-m", "lora_course.memory", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> None:
    """Start the peak (VmHWM) again from the current RSS.

    Needed because a child process inherits its parent's high-water mark through fork and exec
    (getrusage's ru_maxrss does too), so a probe started from a notebook holding a model would
    otherwise report the notebook's peak.
    """
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _probe(
    method: str, batch: int, seq: int, steps: int, r: int, targets: list[str], checkpointing: bool
) -> dict:
    """The measurement itself, run by `python -m lora_course.memory` in a fresh process."""
    import torch

    from .counting import count_parameters
    from .devices import choose_precision
    from .inject import inject_lora
    from .layers import LoRALinear
    from .models import load_smollm2
    from .training import train

    on_gpu = torch.cuda.is_available()
    baseline = 0 if on_gpu else _rss_bytes("VmRSS")  # the interpreter and its imports
    model, tokenizer = load_smollm2(verbose=False)
    if method in ("lora", "dora"):
        from .variants import DoRALinear

        layer = DoRALinear if method == "dora" else LoRALinear
        inject_lora(model, targets, r=r, alpha=2 * r, layer=layer)
    elif method != "full":
        raise ValueError(f"can measure 'full', 'lora' or 'dora' here, not {method!r}")
    # the peak of training, not of loading (which may hold a second copy of the weights briefly)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()  # the peak restarts from the current RSS: the weights, now resident
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch * steps):  # exactly `seq` tokens each, so the estimate's seq is exact
        ids = torch.randint(0, tokenizer.vocab_size, (seq,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": ids})
    if checkpointing:  # non-reentrant: the LoRA layers get gradients without input grads
        non_reentrant = {"use_reentrant": False}
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
    # fp32, as the calculator counts 4 bytes per activation; eager attention on a CPU, as it trains
    precision = choose_precision().in_fp32()
    start = time.perf_counter()  # one optimizer for every step: its state is part of the peak
    train(model, rows, steps=steps, lr=1e-5, pad_id=0, batch_size=batch, precision=precision,
          progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    counts = count_parameters(model)
    lora = counts.trainable if method != "full" else 0
    return {
        "method": method,
        "device": "cuda" if on_gpu else "cpu",
        "peak": torch.cuda.max_memory_allocated() if on_gpu else _rss_bytes("VmHWM") - baseline,
        "base": counts.total - lora,  # the model without adapters
        "lora": lora,
        "seconds_per_step": seconds / steps,  # the first, slower step included
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Measure peak training memory of SmolLM2.")
    parser.add_argument("--method", required=True)
    for name, default in (("batch", 4), ("seq", 128), ("steps", 2), ("r", 8)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--checkpointing", action="store_true")
    a = parser.parse_args()
    targets = a.targets.split(",")
    print(json.dumps(_probe(a.method, a.batch, a.seq, a.steps, a.r, targets, a.checkpointing)))
