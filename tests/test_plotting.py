"""The shared figures draw what they are given (headless: the Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from lora_course.plotting import new_figure, plot_energy_curves, plot_loss_curves  # noqa: E402
from lora_course.spectra import energy_curve  # noqa: E402


def test_energy_curves_are_plotted_in_percent_with_rank_guides():
    fig, (ax,) = new_figure(1)
    curve = energy_curve(torch.tensor([3.0, 2.0, 1.0]))
    plot_energy_curves(ax, {"m": curve}, "title", marks=(2,))
    (line,) = [line for line in ax.get_lines() if line.get_label() == "m"]
    assert list(line.get_xdata()) == [1, 2, 3]
    assert line.get_ydata()[-1] == pytest.approx(100)
    assert ax.get_xscale() == "log" and ax.get_title() == "title"


def test_loss_curves_smooth_with_a_running_mean():
    fig, axes = new_figure(2)
    plot_loss_curves(axes[0], {"run": [4.0, 2.0, 3.0, 1.0]}, "raw")
    plot_loss_curves(axes[1], {"run": [4.0, 2.0, 3.0, 1.0]}, "smooth", smooth=2)
    assert list(axes[0].get_lines()[0].get_ydata()) == [4.0, 2.0, 3.0, 1.0]
    smoothed = [line for line in axes[1].get_lines() if line.get_label() == "run"][0]
    assert list(smoothed.get_ydata()) == [3.0, 2.5, 2.0]
    assert len(axes) == 2
