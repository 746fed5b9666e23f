"""The shared figures draw what they are given (headless: the Agg backend)."""

import matplotlib
import matplotlib.collections

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from lora_course.plotting import (  # noqa: E402
    new_figure,
    plot_energy_curves,
    plot_loss_curves,
    plot_spread,
)
from lora_course.spectra import energy_curve  # noqa: E402


def curve_line(ax, label):
    """The one line of `ax` drawn with `label`."""
    (line,) = [line for line in ax.get_lines() if line.get_label() == label]
    return line


def test_energy_curves_are_plotted_in_percent_with_rank_guides():
    fig, (ax,) = new_figure(1)
    curve = energy_curve(torch.tensor([3.0, 2.0, 1.0]))
    plot_energy_curves(ax, {"m": curve}, "title", marks=(2,))
    line = curve_line(ax, "m")
    assert list(line.get_xdata()) == [1, 2, 3]
    # energy of singular values 3, 2, 1: 9/14, 13/14, 14/14
    assert list(line.get_ydata()) == pytest.approx([900 / 14, 1300 / 14, 100])
    guides = [other for other in ax.get_lines() if other is not line]
    assert [list(guide.get_xdata()) for guide in guides] == [[2, 2]], "one guide, at rank 2"
    assert ax.get_xscale() == "log" and ax.get_title() == "title"


def test_loss_curves_smooth_with_a_running_mean():
    fig, axes = new_figure(2)
    plot_loss_curves(axes[0], {"run": [4.0, 2.0, 3.0, 1.0]}, "raw")
    plot_loss_curves(axes[1], {"run": [4.0, 2.0, 3.0, 1.0]}, "smooth", smooth=2)
    assert list(axes[0].get_lines()[0].get_ydata()) == [4.0, 2.0, 3.0, 1.0]
    smoothed = curve_line(axes[1], "run")
    assert list(smoothed.get_ydata()) == [3.0, 2.5, 2.0]
    assert list(smoothed.get_xdata()) == [2, 3, 4], "each mean is drawn at its window's last step"


def test_spread_plot_shows_every_seed_and_the_mean_with_its_sd():
    from lora_course.stats import spread

    fig, (ax,) = new_figure(1)
    plot_spread(ax, {"a": spread([0.2, 0.4, 0.6]), "b": spread([0.5])}, "exact", "t", percent=True)
    scatters = [c for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection)]
    seeds = sorted(float(y) for c in scatters for _, y in c.get_offsets())
    assert seeds == pytest.approx([20.0, 40.0, 50.0, 60.0])  # every seed's value, in percent
    means = [list(line.get_ydata()) for line in ax.get_lines() if line.get_marker() == "o"]
    assert means == [pytest.approx([40.0]), pytest.approx([50.0])]
    assert ax.get_ylabel() == "exact (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
