"""Summaries across seeds: the numbers a comparison's verdict reads must be right."""

import math

import pytest

from lora_course.stats import separated, spread


def test_spread_summarizes_the_values():
    s = spread([1.0, 2.0, 4.0])
    assert (s.n, s.mean, s.low, s.high) == (3, pytest.approx(7 / 3), 1.0, 4.0)
    assert s.sd == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert spread([0.5]).sd == 0.0 and spread([0.5]).mean == 0.5


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf")]])
def test_spread_refuses_what_cannot_be_summarized(values):
    with pytest.raises(ValueError):
        spread(values)


def test_separated_means_no_overlap_in_either_direction():
    low, high = spread([0.10, 0.12, 0.11]), spread([0.13, 0.15, 0.14])
    assert separated(low, high) and separated(high, low)
    touching = spread([0.12, 0.16, 0.14])  # 0.12 equals low's highest value
    assert not separated(low, touching)
    assert not separated(low, spread([0.05, 0.20]))  # one range inside the other
