"""Matplotlib figures the notebooks share (first used in notebook 01)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def plot_energy_curves(ax, curves: dict, title: str, marks=(8, 64)):
    """Energy captured vs rank, one line per matrix, with dotted guides at `marks`."""
    for label, curve in curves.items():
        ranks = np.arange(1, len(curve) + 1)
        ax.plot(ranks, np.asarray(curve) * 100, label=label)
    for r in marks:
        ax.axvline(r, color="0.7", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_ylim(0, 101)
    ax.set_xlabel("rank r (log scale)")
    ax.set_ylabel("energy captured (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_loss_curves(ax, curves: dict, title: str, smooth: int = 1):
    """Training loss per step, one line per run; `smooth` > 1 adds a running mean."""
    for label, losses in curves.items():
        losses = np.asarray(losses, dtype=float)
        (line,) = ax.plot(np.arange(1, len(losses) + 1), losses, alpha=0.35 if smooth > 1 else 1)
        if smooth > 1 and len(losses) >= smooth:
            mean = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
            ax.plot(np.arange(smooth, len(losses) + 1), mean, color=line.get_color(), label=label)
        else:
            line.set_label(label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6):
    """A row of `ncols` axes of a readable size."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def plot_spread(ax, spreads: dict, ylabel: str, title: str, percent: bool = False):
    """One column per arm: each seed's value as a dot, the mean ± one standard deviation as a bar.

    `spreads` maps labels to stats.Spread (notebook 06); `percent` shows values in [0, 1] as %.
    """
    scale = 100 if percent else 1
    for x, spread in enumerate(spreads.values()):
        values = np.asarray(spread.values) * scale
        ax.scatter(np.full(len(values), x) + 0.12, values, s=14, color="0.55", zorder=3)
        ax.errorbar(x, spread.mean * scale, yerr=spread.sd * scale, fmt="o", capsize=4, zorder=4)
    ax.set_xticks(range(len(spreads)), list(spreads), fontsize=8)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.set_title(title)
    return ax
