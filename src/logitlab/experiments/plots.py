"""Figures of the report, as deterministic PNG bytes (matplotlib, Agg backend).

Every function takes plain data (lists and dicts read from the records) and returns the PNG.
The same data give the same bytes: the Agg backend, a fixed style and DPI, and no
``Software`` metadata in the file.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

__all__ = [
    "reliability_grid",
    "calibration_bars",
    "training_curves",
    "gradient_norms",
    "line_panels",
    "bar_panel",
    "confusion_matrices",
    "small_multiples",
]

_STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.3,
    "axes.prop_cycle": None,  # filled in _pyplot (needs cycler)
    "svg.hashsalt": "logitlab",
    "path.simplify": True,
}
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#aec7e8", "#ff9896", "#98df8a", "#ffbb78", "#c5b0d5"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from cycler import cycler

    style = dict(_STYLE)
    style["axes.prop_cycle"] = cycler(color=_COLORS)
    return plt, style


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis tick labels as plain numbers (``0.01``, ``1e-06``): the default ones are mathtext,
    whose parsing was a large share of the report's rendering time."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_locator(NullLocator())  # no minor ticks: each is a tick object to lay out and draw


def color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    # zlib level 1: most of a figure's PNG time was its compression at the default level 6
    fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight", pad_inches=0.05,
                pil_kwargs={"compress_level": 1})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _finite(values: Sequence[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def reliability_grid(diagrams: Mapping[str, Mapping[str, Sequence[float]]], *, columns: int = 5) -> bytes:
    """One reliability diagram per combination: bin accuracy (bars) vs mean confidence (dots).

    Beside each accuracy bar, a narrow gray bar gives the bin's share of the test points (the
    confidence histogram); the title gives their number.

    ``diagrams[name]`` holds per-bin lists ``lower``, ``upper``, ``count``, ``confidence``,
    ``accuracy`` (pooled over seeds); empty bins are drawn empty.
    """
    plt, style = _pyplot()
    with plt.rc_context(style):
        names = list(diagrams)
        rows = max(1, math.ceil(len(names) / columns))
        fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.1 * rows), squeeze=False,
                                 sharex=True, sharey=True)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for i, (ax, name) in enumerate(zip(axes.flat, names)):
            d = diagrams[name]
            lower, upper = _finite(d["lower"]), _finite(d["upper"])
            widths = [hi - lo for lo, hi in zip(lower, upper)]
            filled = [c > 0 for c in d["count"]]
            ax.bar([lo for lo, f in zip(lower, filled) if f], [a for a, f in zip(d["accuracy"], filled) if f],
                   width=[w for w, f in zip(widths, filled) if f], align="edge", color=color(i), alpha=0.55,
                   edgecolor="black", linewidth=0.4, label="accuracy")
            total = sum(d["count"]) or 1
            ax.bar([lo for lo, f in zip(lower, filled) if f], [c / total for c, f in zip(d["count"], filled) if f],
                   width=[w * 0.5 for w, f in zip(widths, filled) if f], align="edge", color="gray", alpha=0.6,
                   linewidth=0, label="share of points")
            ax.plot([c for c, f in zip(d["confidence"], filled) if f],
                    [a for a, f in zip(d["accuracy"], filled) if f], ".", color="black", markersize=3)
            ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=0.8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xticks([0, 0.5, 1])  # few tick objects: 15 panels of default ticks were most of this figure's time
            ax.set_yticks([0, 0.5, 1])
            ax.set_title(name if len(name) <= 34 else name[:32] + "…", fontsize=6)
        for ax in axes[-1]:
            ax.set_xlabel("confidence")
        for ax in axes[:, 0]:
            ax.set_ylabel("accuracy")
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.6 / (2.1 * rows), top=1 - 0.3 / (2.1 * rows),
                            wspace=0.1, hspace=0.3)  # fixed: tight_layout would draw the 15 panels once more
        return _png(fig)


def bar_panel(panels: Sequence[tuple[str, Sequence[str], Sequence[float], Sequence[float]]], *,
              ylabel: Sequence[str] | None = None) -> bytes:
    """Side-by-side horizontal bar charts: each panel is (title, labels, means, spreads)."""
    plt, style = _pyplot()
    with plt.rc_context(style):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 0.32 * len(panels[0][1]) + 1.0),
                                 squeeze=False, sharey=True)
        for ax, (title, labels, means, spreads) in zip(axes[0], panels):
            positions = list(range(len(labels)))
            ax.barh(positions, _finite(means), xerr=_finite(spreads), color=[color(i) for i in positions],
                    alpha=0.75, error_kw={"elinewidth": 0.8, "capsize": 2})
            ax.set_yticks(positions)
            ax.set_yticklabels(labels, fontsize=6.5)
            ax.invert_yaxis()
            ax.set_title(title)
        fig.tight_layout()
        return _png(fig)


def calibration_bars(labels: Sequence[str], panels: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> bytes:
    """ECE (equal-width, equal-mass) and MCE per combination, mean with the spread over seeds."""
    return bar_panel([(title, labels, m, s) for title, (m, s) in panels.items()])


def line_panels(panels: Sequence[Mapping[str, Any]], *, width: float = 4.2, height: float = 3.0) -> bytes:
    """Generic line plots, one panel per dict.

    Each panel: title, xlabel, ylabel; optional 'logy', 'logx', 'ylim', 'styles' (label -> line
    style), 'vlines' (list of (x, label)), 'legend' (bool), 'legend_loc', 'legend_cols',
    'legend_outside'; and 'series': a list of (label, xs, ys[, lower, upper[, color]]), with an
    optional shaded band between lower and upper (None for none).
    """
    plt, style = _pyplot()
    with plt.rc_context(style):
        fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for i, series in enumerate(panel["series"]):
                label, xs, ys = series[0], _finite(series[1]), _finite(series[2])
                c = series[5] if len(series) > 5 and series[5] else color(i)
                ax.plot(xs, ys, label=label, color=c, linestyle=panel.get("styles", {}).get(label, "-"))
                if len(series) > 4 and series[3] is not None:
                    ax.fill_between(xs, _finite(series[3]), _finite(series[4]), color=c, alpha=0.15, linewidth=0)
            for x, label in panel.get("vlines", []):
                ax.axvline(x, color="gray", linestyle="--", linewidth=0.8)
                ax.annotate(label, (x, 0.5), xycoords=("data", "axes fraction"), rotation=90, fontsize=6.5,
                            ha="right", va="center", color="dimgray")
            if panel.get("logy"):
                ax.set_yscale("log")
                _plain_log_ticks(ax.yaxis)
            if panel.get("logx"):
                ax.set_xscale("log")
                _plain_log_ticks(ax.xaxis)
            ax.set_title(panel.get("title", ""))
            ax.set_xlabel(panel.get("xlabel", ""))
            ax.set_ylabel(panel.get("ylabel", ""))
            if panel.get("ylim"):
                ax.set_ylim(*panel["ylim"])
            if panel.get("legend", True) and panel["series"]:
                if panel.get("legend_outside"):
                    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                              ncol=panel.get("legend_cols", 1), fontsize=6.5)
                else:
                    ax.legend(loc=panel.get("legend_loc", "best"), frameon=False, ncol=panel.get("legend_cols", 1))
        fig.tight_layout()
        return _png(fig)


def training_curves(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """Training loss, validation NLL and validation accuracy per optimizer step, one line per combination.

    ``curves[name]`` has 'step' (the x values), 'train_loss', 'val_nll', 'val_accuracy' (means
    over seeds) and their '_lo' / '_hi' bands.
    """
    panels = []
    for key, title, logy in (("train_loss", "training loss (each its own objective)", True),
                             ("val_nll", "validation NLL (smoothed)", True),
                             ("val_accuracy", "validation accuracy", False)):
        series = []
        for i, (name, c) in enumerate(curves.items()):
            ys = c[key]
            series.append((name, list(c["step"][:len(ys)]), ys, c[key + "_lo"], c[key + "_hi"], color(i)))
        panels.append({"title": title, "xlabel": "optimizer step", "ylabel": key.replace("_", " "), "logy": logy,
                       "series": series, "legend": key == "val_accuracy", "legend_outside": True})
    return line_panels(panels, width=4.2, height=3.4)


def gradient_norms(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> bytes:
    """Output-layer gradient norm per optimizer step (mean over the steps since the previous point and over seeds)."""
    series = [(name, list(c["step"][:len(c["grad_norm"])]), c["grad_norm"], c["grad_norm_lo"], c["grad_norm_hi"],
               color(i)) for i, (name, c) in enumerate(curves.items())]
    return line_panels([{"title": "output-layer gradient norm ‖∂L/∂(W, b)‖", "xlabel": "optimizer step",
                         "ylabel": "gradient norm", "logy": True, "series": series,
                         "legend_outside": True}], width=7.0, height=3.6)


def confusion_matrices(matrices: Mapping[str, Sequence[Sequence[int]]]) -> bytes:
    """Confusion matrices (rows: true class, columns: predicted), counts summed over seeds, side by side."""
    plt, style = _pyplot()
    with plt.rc_context(style):
        names = list(matrices)
        fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            m = matrices[name]
            ax.imshow(m, cmap="Blues")
            size = len(m)
            if size <= 12:
                top = max(max(row) for row in m) or 1
                for i in range(size):
                    for j in range(size):
                        if m[i][j]:
                            ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=6,
                                    color="white" if m[i][j] > top / 2 else "black")
            ax.set_title(name, fontsize=7)
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
            ax.grid(False)
        fig.tight_layout()
        return _png(fig)


def small_multiples(xs: Sequence[float], curves: Mapping[str, Sequence[float]], *,
                    reference: Sequence[float] | None = None, reference_label: str = "", columns: int = 7,
                    logy: bool = True, xlabel: str = "", ylabel: str = "") -> bytes:
    """One small panel per curve (shared axes), each with an optional reference curve in gray."""
    plt, style = _pyplot()
    with plt.rc_context(style):
        names = list(curves)
        rows = max(1, math.ceil(len(names) / columns))
        fig, axes = plt.subplots(rows, columns, figsize=(1.55 * columns, 1.35 * rows + 0.4), squeeze=False,
                                 sharex=True, sharey=True)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        for i, (ax, name) in enumerate(zip(axes.flat, names)):
            if reference is not None:
                ax.plot(_finite(xs), _finite(reference), color="gray", linewidth=0.9, linestyle="--")
            ax.plot(_finite(xs), _finite(curves[name]), color=color(i), linewidth=1.2)
            ax.set_title(name if len(name) <= 30 else name[:28] + "…", fontsize=5.5)
            if logy:
                ax.set_yscale("log")
                _plain_log_ticks(ax.yaxis)
            ax.tick_params(labelsize=5.5)
        x = _finite(xs)
        axes[0, 0].set_xticks([x[0], (x[0] + x[-1]) / 2, x[-1]])  # few tick objects (shared by every panel)
        if logy:
            low = min(v for c in curves.values() for v in _finite(c) if v > 0)
            high = max(v for c in curves.values() for v in _finite(c))
            axes[0, 0].set_yticks([10.0 ** e for e in range(math.floor(math.log10(low)),
                                                            math.ceil(math.log10(high)) + 1, 4)])
        fig.text(0.5, 0.0, xlabel + (f"; dashed: {reference_label}" if reference_label else ""), ha="center",
                 fontsize=7)
        fig.text(0.0, 0.5, ylabel, rotation=90, va="center", fontsize=7)
        # fixed: tight_layout would draw every panel once more
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.35 / (1.35 * rows + 0.4),
                            top=1 - 0.25 / (1.35 * rows + 0.4), wspace=0.08, hspace=0.45)
        return _png(fig)
