"""Figures for reports, drawn with matplotlib's Agg canvas.

Figures are built as `matplotlib.figure.Figure` on an explicit Agg canvas, not
through pyplot: no display is needed, no global backend is switched (a caller's
interactive session is left alone) and no figure lingers in pyplot's registry.
"""

from __future__ import annotations

import io
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lake.storage import write_bytes_atomic
from trainers.metrics import normalized_confusion

# Up to this many classes each cell is big enough to print its value in.
MAX_CLASSES_WITH_VALUES = 12


def plot_confusion(cm, class_names: list[str], path, title: str) -> str:
    """Save the confusion matrix normalised per true class (rows sum to 1) as a PNG; returns `path`.

    The figure grows with the class count (about a third of an inch per class)
    and the label font shrinks to a floor of 7 pt, so 36-40 emotion names stay
    legible; `bbox_inches="tight"` makes room for long names such as
    "Intoxication/Altered States of Consciousness".
    """
    cm = np.asarray(cm)
    n = len(class_names)
    if cm.ndim != 2 or cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {n} class names")
    share = normalized_confusion(cm)

    side = max(5.0, 0.35 * n + 2.5)  # inches
    font = float(np.clip(13 - n / 4, 7, 11))
    fig = Figure(figsize=(side + 1.2, side), dpi=100)  # + room for the colour bar
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of true class", fontsize=font)
    cbar.ax.tick_params(labelsize=font)

    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    if n > MAX_CLASSES_WITH_VALUES:
        ax.set_xticklabels(class_names, rotation=90, fontsize=font)
    else:
        ax.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticklabels(class_names, fontsize=font)
    ax.set_xlabel("predicted", fontsize=font + 1)
    ax.set_ylabel("true", fontsize=font + 1)
    ax.set_title(title, fontsize=font + 2)

    if n <= MAX_CLASSES_WITH_VALUES:
        for t in range(n):
            for p in range(n):
                ax.text(p, t, f"{share[t, p]:.2f}", ha="center", va="center", fontsize=font - 1,
                        color="white" if share[t, p] > 0.5 else "black")
    return _save(fig, path)


def plot_matrix(values, row_names: list[str], col_names: list[str], path, title: str, marked=None) -> str:
    """A heatmap of a train x test table (each cell's value printed in it, with a `*` where `marked`); returns
    `path`."""
    values = np.asarray(values, dtype=float)
    fig = Figure(figsize=(max(4.0, 1.3 * len(col_names) + 2.5), max(3.0, 0.7 * len(row_names) + 1.8)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(len(col_names)))
    ax.set_xticklabels(col_names, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(len(row_names)))
    ax.set_yticklabels(row_names)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    ax.set_title(title, fontsize=10)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            star = " *" if marked is not None and marked[i][j] else ""
            ax.text(j, i, f"{values[i, j]:.3f}{star}", ha="center", va="center",
                    color="black" if values[i, j] > 0.6 else "white")
    return _save(fig, path)


def _new_figure(n: int) -> tuple[Figure, object]:
    """A figure about `n` layers wide (half an inch a layer, at least 5 inches) and its one axes."""
    fig = Figure(figsize=(max(5.0, 0.45 * n + 2.0), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path) -> str:
    """Write the figure's PNG as the reports are written: drawn in memory, then put in place atomically, so a
    failed write (a full disk) names the file and leaves no half PNG behind."""
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, png.getvalue())
    return path


def _layer_ticks(ax, layers: list[str]) -> None:
    ax.set_xticks(np.arange(len(layers)))
    ax.set_xticklabels(layers, rotation=45 if len(layers) > 8 else 0, ha="right" if len(layers) > 8 else "center")
    ax.set_xlabel("stored layer")


def plot_layer_metric(layers: list[str], series: dict[str, list[float]], references: dict[str, float], metric: str,
                      path, title: str, best: str | None = None) -> str:
    """The per-layer probe: one line per metric in `series` over the layers (the first solid, the rest dotted),
    `references` as dashed horizontal lines (probes that do not depend on the layer), the `best` layer ringed."""
    fig, ax = _new_figure(len(layers))
    x = np.arange(len(layers))
    for i, (name, values) in enumerate(series.items()):
        ax.plot(x, values, marker="o", linestyle="-" if i == 0 else ":", color=f"C{i}", label=f"audio: {name}")
    colours = iter(("tab:gray", "tab:red", "tab:purple", "tab:brown"))
    for name, value in references.items():
        ax.axhline(value, linestyle="--", linewidth=1.2, color=next(colours, "black"), label=f"{name}: {metric}")
    if best is not None:
        i = layers.index(best)
        ax.plot([i], [series[metric][i]], marker="o", markersize=14, markerfacecolor="none", color="black",
                linestyle="none", label=f"best on validation: {best}")
    _layer_ticks(ax, layers)
    ax.set_ylabel(metric)
    ax.set_ylim(0.0, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    return _save(fig, path)


def plot_layer_weights(mixes: dict[str, dict[str, float]], path, title: str) -> str:
    """Learned layer weights: for each mix ({what: {layer: weight}}) a bar per layer, side by side; a dotted line at
    the equal weight the mixes started from."""
    layers = list(dict.fromkeys(name for weights in mixes.values() for name in weights))
    fig, ax = _new_figure(len(layers))
    width = 0.8 / max(1, len(mixes))
    for i, (what, weights) in enumerate(mixes.items()):
        x = np.array([layers.index(name) for name in weights]) + (i - (len(mixes) - 1) / 2) * width
        ax.bar(x, list(weights.values()), width=width, color=f"C{i}", label=what)
    for weights in {len(w) for w in mixes.values()}:
        ax.axhline(1.0 / weights, linestyle=":", color="black", linewidth=1,
                   label=f"equal weights (1/{weights}), where training started")
    _layer_ticks(ax, layers)
    ax.set_ylabel("softmax weight")
    ax.set_ylim(0.0, 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title)
    return _save(fig, path)
