"""The shared figures draw what they are given (headless: the Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from lora_course.plotting import new_figure, plot_energy_curves, plot_loss_curves  # noqa: E402
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
