"""From-scratch LoRALinear vs PEFT's LoRA layer: forward + backward time on SmolLM2-shaped layers.

Both layers wrap the same frozen base weights with the same A and B (checked equal first). Timing
alternates between the two in rounds, so drift on a busy machine hits both alike; each layer's
time is the median over rounds. The output is a ratio from this one run, not an absolute number.

    python benchmarks/bench_lora_layer.py [--rounds 30] [--steps 10] [--r 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from lora_course import LoRALinear, peft_lora_linear
from lora_course.architectures import build_config
from lora_course.counting import projection_shapes
from lora_course.targets import PROJECTIONS

# (name, in_features, out_features) of one SmolLM2-135M decoder block: q_proj 576 -> 576, ...
_SHAPES = projection_shapes(build_config("SmolLM2-135M"))
SMOLLM2_LAYERS = [(name, *_SHAPES[name]) for name in PROJECTIONS]


def make_pair(in_features: int, out_features: int, r: int):
    base = nn.Linear(in_features, out_features, bias=False)
    ours = LoRALinear(copy.deepcopy(base), r=r, alpha=2 * r)
    theirs = peft_lora_linear(copy.deepcopy(base), r=r, alpha=2 * r)
    with torch.no_grad():
        ours.lora_B.normal_(std=0.02)  # non-zero B, so both branches do real work
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    return ours, theirs


def step_seconds(layer: nn.Module, x: torch.Tensor, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        layer(x).sum().backward()  # (batch, seq, out) -> scalar
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10, help="steps timed per round")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; r={args.r}, "
        f"input ({args.batch}, {args.seq}, in); median of {args.rounds} rounds x {args.steps} steps"
    )
    print(f"{'layer':<10}{'shape':>12}{'ours (ms)':>12}{'PEFT (ms)':>12}{'ours/PEFT':>11}")
    total_ours = total_peft = 0.0
    for name, d_in, d_out in SMOLLM2_LAYERS:
        ours, theirs = make_pair(d_in, d_out, args.r)
        x = torch.randn(args.batch, args.seq, d_in)  # (batch, seq, in)
        torch.testing.assert_close(ours(x), theirs(x))  # same computation, or the timing is moot
        for layer in (ours, theirs):
            step_seconds(layer, x, 3)  # warm-up
        times = {"ours": [], "peft": []}
        for round_ in range(args.rounds):
            order = [("ours", ours), ("peft", theirs)]
            for key, layer in order if round_ % 2 == 0 else order[::-1]:
                times[key].append(step_seconds(layer, x, args.steps))
        t_ours, t_peft = statistics.median(times["ours"]), statistics.median(times["peft"])
        total_ours, total_peft = total_ours + t_ours, total_peft + t_peft
        print(
            f"{name:<10}{f'{d_in}x{d_out}':>12}{1e3 * t_ours:>12.3f}{1e3 * t_peft:>12.3f}"
            f"{t_ours / t_peft:>11.3f}"
        )
    print(
        f"{'block':<10}{'':>12}{1e3 * total_ours:>12.3f}{1e3 * total_peft:>12.3f}"
        f"{total_ours / total_peft:>11.3f}"
    )
    print(
        f"\nfrom-scratch LoRALinear takes {total_ours / total_peft:.3f}x PEFT's time per "
        "forward+backward (target: within 1.10x)"
    )


if __name__ == "__main__":
    main()
