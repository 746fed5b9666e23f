"""Results across seeds: mean, spread, and whether two arms separate (notebook 06).

A comparison in this course runs every arm with several seeds (../shared/EXPERIMENTS.md) and
claims "A beats B" only when the seeds say so; these are the few numbers that decision reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """One arm's values across seeds, with the summaries a table and a plot need (from `spread`)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n

    @property
    def sd(self) -> float:
        """Sample standard deviation (n - 1 in the denominator); 0 for a single value."""
        if self.n == 1:
            return 0.0
        return math.sqrt(sum((v - self.mean) ** 2 for v in self.values) / (self.n - 1))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def spread(values) -> Spread:
    """The Spread of one arm's values across seeds (notebooks 04 and 06); refuses NaN or none."""
    values = tuple(float(v) for v in values)
    if not values:
        raise ValueError("no values: an arm needs at least one seed")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite, got {values}")
    return Spread(values)


def separated(a: Spread, b: Spread) -> bool:
    """True when every value of one arm lies below every value of the other (notebooks 04 and 06).

    With three seeds per arm, two arms of equal quality still separate by chance in 1 case of 10
    (2 of the 20 ways to split six values into two groups of three): read it with the gap.
    """
    return a.high < b.low or b.high < a.low
