"""What a course task is, and the one generator that draws its splits (read by data.py).

A task is data, not a protocol: `Task` holds every field the rest of the package reads, so loading
(data.py), fine-tuning (finetune.py) and scoring (evaluation.py) need nothing else from a task's
module. Examples come from a seeded draw; `make_splits` turns draws into disjoint splits.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Example = dict[str, str]  # {input_field: prompt text, "answer": target text}
MAX_DRAWS_PER_EXAMPLE = 100  # a split that needs more draws than this per example is a bug


@dataclass(frozen=True)
class Task:
    """One course task: how its examples are drawn, prompted and scored."""

    name: str  # the folder under data/ and the name notebooks pass (load_task("tickets"))
    input_field: str  # the key of an example that holds the prompt; the target is "answer"
    system_prompt: str
    splits: dict[str, tuple[int, int]]  # split: (size, seed), in the order they are drawn
    # (rng, split) -> one example for that split, or None: rejected for it (draw again)
    draw: Callable[[random.Random, str], Example | None]
    score: Callable[[str, str], dict[str, bool]]  # (prediction, answer) -> one bool per check
    main_metric: str  # the key of score's dict that notebooks report as accuracy


def make_splits(task: Task) -> dict[str, list[Example]]:
    """Every split of `task`, drawn from its seed; no input text appears twice, in or across splits.

    Splits are drawn in order, each from `random.Random(seed)`, until it has `size` examples; a
    draw that is rejected (None) or repeats an input already taken is skipped.
    """
    seen, splits = set(), {}
    for split, (size, seed) in task.splits.items():
        rng, examples = random.Random(seed), []
        for _ in range(MAX_DRAWS_PER_EXAMPLE * size):
            if len(examples) == size:
                break
            example = task.draw(rng, split)
            if example is None or example[task.input_field] in seen:
                continue
            seen.add(example[task.input_field])
            examples.append(example)
        if len(examples) < size:
            raise RuntimeError(
                f"{task.name}/{split}: {len(examples)} of {size} examples after "
                f"{MAX_DRAWS_PER_EXAMPLE * size} draws; draw() rejects almost everything"
            )
        splits[split] = examples
    return splits
