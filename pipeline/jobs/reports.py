"""Presentation of metrics for people: reliability diagrams, their comparison across runs, and text tables.

matplotlib is imported only when a figure is made, so importing this module
(e.g. by the CLI just to format a table) stays cheap.
"""
from __future__ import annotations

import math
import numbers
import os
import uuid
from pathlib import Path

import numpy as np

from ...stages.metrics import CalibrationBins

PERFECT = "perfect calibration"  # the diagonal's legend label


def _figure(size: tuple[float, float]):
    """A Figure on an explicit Agg canvas: no pyplot global state, the caller's backend left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> None:
    """Write `fig` as a PNG at `path` through a temporary sibling, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique hidden sibling (same filesystem, so os.replace is atomic); opened with
    # "xb" rather than mkstemp so the final file gets normal umask permissions.
    tmp_name = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp_name, "xb") as fh:
            fig.savefig(fh, format="png", bbox_inches="tight")
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave the temporary behind, whatever went wrong.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def reliability_figure(bins: CalibrationBins, title: str):
    """A reliability diagram.

    Top panel: per-bin accuracy bars against the diagonal, with the gap to the
    bin's mean confidence shaded; ECE in the legend.  Bottom panel: the share
    of samples per bin, so sparsely populated bins can be discounted by eye.
    """
    edges = np.asarray(bins.edges, dtype=np.float64)
    counts = np.asarray(bins.counts)
    left = edges[:-1]
    width = np.diff(edges)
    filled = counts > 0
    total = int(counts.sum())

    fig = _figure((5.0, 6.0))
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    ax_n = fig.add_subplot(gs[1], sharex=ax)

    acc = np.where(filled, bins.accuracy, 0.0)
    conf = np.where(filled, bins.confidence, 0.0)
    ax.bar(left, acc, width=width, align="edge", color="#4C72B0", edgecolor="white",
           linewidth=0.8, label="accuracy")
    # Gap between accuracy and confidence, drawn only where the bin has samples;
    # hatch without fill so it stays readable where it overlaps the accuracy bar.
    lo = np.minimum(acc, conf)
    gap = np.abs(conf - acc)
    ax.bar(left[filled], gap[filled], bottom=lo[filled], width=width[filled], align="edge",
           facecolor="none", edgecolor="#C44E52", hatch="///", linewidth=1.0, zorder=3,
           label=f"gap (ECE = {bins.ece():.4f})")
    _calibration_axes(ax, title)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.tick_params(labelbottom=False)

    share = counts / total if total else np.zeros_like(counts, dtype=np.float64)
    ax_n.bar(left, share, width=width, align="edge", color="0.55", edgecolor="white", linewidth=0.8)
    ax_n.set_xlabel("confidence (max probability)")
    ax_n.set_ylabel("share of samples")
    ax_n.set_ylim(0.0, max(float(share.max(initial=0.0)) * 1.15, 0.05))
    ax_n.text(0.01, 0.95, f"N = {total}", transform=ax_n.transAxes, ha="left", va="top", fontsize=8)
    ax_n.grid(alpha=0.25, linewidth=0.5)
    return fig


def _calibration_axes(ax, title: str) -> None:
    """The unit square with the diagonal of perfect calibration."""
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="0.3", linewidth=1.0, label=PERFECT)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.25, linewidth=0.5)


def plot_reliability(bins: CalibrationBins, path: Path, title: str) -> None:
    """Save one run's reliability diagram as a PNG at `path`."""
    save_png(reliability_figure(bins, title), path)


def reliability_curve(bins: CalibrationBins) -> tuple[np.ndarray, np.ndarray]:
    """(mean confidence, accuracy) of the bins that hold samples: the points a run's calibration curve joins."""
    filled = np.asarray(bins.counts) > 0
    return np.asarray(bins.confidence)[filled], np.asarray(bins.accuracy)[filled]


# Each run's points: a hollow marker of its own shape, a size larger than the run's before, so runs whose points
# coincide stay visible (a circle inside a square inside a triangle); each line its own dash pattern, so identical
# curves show every colour.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
LINE_STYLES = ("-", (0, (5, 3)), (0, (1, 2)), (0, (6, 2, 1, 2)))


def comparison_figure(curves: list[tuple[str, CalibrationBins]], title: str):
    """Every run's calibration curve on one diagonal, one coloured line per run (legend: name and ECE).

    A point's area grows with its bin's share of the run's samples, so sparse bins read as such.
    """
    from matplotlib.legend_handler import HandlerTuple

    fig = _figure((6.0, 5.6))
    ax = fig.add_subplot(1, 1, 1)
    _calibration_axes(ax, title)
    ax.set_xlabel("confidence (max probability)")
    handles = []
    for i, (name, bins) in enumerate(curves):
        x, y = reliability_curve(bins)
        # tab10's ten colours, four dash patterns and ten markers: no two of the first 20 runs look alike
        (line,) = ax.plot(x, y, color=f"C{i % 10}", linestyle=LINE_STYLES[i % 4], linewidth=1.4,
                          label=f"{name} (ECE {bins.ece():.4f})", clip_on=False)
        counts = np.asarray(bins.counts)
        share = counts[counts > 0] / max(int(counts.sum()), 1)
        # Unclipped: a confident run's points sit on the frame (confidence or accuracy 1.0).
        size = (14 + 160 * share) * (1 + 0.7 * (i % len(MARKERS)))  # each run's marker round the one before
        points = ax.scatter(x, y, s=size, marker=MARKERS[i % len(MARKERS)], facecolors="none",
                            edgecolors=line.get_color(), linewidths=1.2, zorder=3, clip_on=False)
        handles.append((line, points))
    ax.legend(handles, [line.get_label() for line, _ in handles], handler_map={tuple: HandlerTuple(ndivide=None)},
              loc="upper left", fontsize=8, frameon=False)
    return fig


def plot_comparison(curves: list[tuple[str, CalibrationBins]], path: Path, title: str) -> None:
    """Save the runs' calibration curves, drawn together, as a PNG at `path`."""
    save_png(comparison_figure(curves, title), path)


MISSING = "-"


def _float_spec(x: float) -> str:
    """Format spec for one float: 2 decimals from 1 up, 4 below, scientific when tiny."""
    a = abs(x)
    if a == 0.0 or a >= 1.0:
        return ".2f"
    if a >= 1e-3:
        return ".4f"
    return ".2e"


def _is_mean_std(v) -> bool:
    return isinstance(v, dict) and "mean" in v and "std" in v


def _format_cell(v) -> str:
    if v is None:
        return MISSING
    if _is_mean_std(v):
        mean, std = float(v["mean"]), float(v["std"])
        if not math.isfinite(mean):
            return f"{_format_cell(mean)} ± {_format_cell(std)}"
        # Same precision for both, chosen from the mean, so "69.17 ± 0.05" reads naturally.
        spec = _float_spec(mean)
        return f"{mean:{spec}} ± {std:{spec}}"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        x = float(v)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:{_float_spec(x)}}"
    return str(v)


def _is_numeric(v) -> bool:
    return _is_mean_std(v) or (isinstance(v, numbers.Real) and not isinstance(v, bool))


def format_table(rows: list[dict], columns: list[tuple[str, str]], width: int | None = None) -> str:
    """Render rows as an aligned plain-text table.

    columns is [(key, header)].  Numeric columns (numbers or {"mean","std"}
    dicts) are right-aligned so decimal places line up; others are left-aligned.
    Missing keys and None render as "-".  Every line has the same width.
    `width`: a wider table wraps its text columns, the widest first, onto more lines per row until it fits
    (or they are all down to WRAP_FLOOR characters).
    """
    if not columns:
        raise ValueError("format_table needs at least one column")
    cells = [[_format_cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max([len(headers[j])] + [len(r[j]) for r in cells]) for j in range(len(columns))]
    right = []
    for key, _ in columns:
        present = [row[key] for row in rows if row.get(key) is not None]
        right.append(bool(present) and all(_is_numeric(v) for v in present))
    if width is not None:
        widths = _fit_widths(widths, headers, right, width)

    def line(parts: list[str]) -> str:
        return "  ".join(p.rjust(w) if r else p.ljust(w) for p, w, r in zip(parts, widths, right))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    for row in cells:
        wrapped = [[p] if r or len(p) <= w else _wrap(p, w) for p, w, r in zip(row, widths, right)]
        out.extend(line([c[k] if k < len(c) else "" for c in wrapped]) for k in range(max(map(len, wrapped))))
    return "\n".join(out)


WRAP_FLOOR = 12  # the narrowest a wrapped text column gets


def _fit_widths(widths: list[int], headers: list[str], right: list[bool], width: int) -> list[int]:
    """Column widths whose table fits `width`: the widest text column loses a character at a time."""
    widths = list(widths)
    floors = [max(WRAP_FLOOR, len(h)) for h in headers]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        narrowable = [j for j, w in enumerate(widths) if not right[j] and w > floors[j]]
        if not narrowable:
            break
        widest = max(narrowable, key=lambda j: widths[j])
        widths[widest] -= 1
    return widths


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most `width` characters, broken after commas and spaces where it can be."""
    import textwrap

    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def format_methods(rows: list[dict], width: int) -> str:
    """`labelopt methods` in `width` columns: a table of each method's signals, source, mixes and --compile (its
    text columns wrapped to fit), then each method's defaults and loss as wrapped lines."""
    import textwrap

    value = lambda x: f"{x:g}" if isinstance(x, float) else str(x).lower()  # ints stay 16384, bools true/false
    text = lambda v: (", ".join(f"{k}={value(x)}" for k, x in v.items()) if isinstance(v, dict)
                      else ", ".join(v)) or "-"
    flat = [{k: text(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in rows]
    table = format_table(flat, [("method", "method"), ("teacher_signals", "teacher signals"), ("source", "served by"),
                                ("mix", "mixed images"), ("compile", "--compile")], width=width)
    name_width = max(len(r["method"]) for r in flat) + 2
    body = max(width - name_width, 30)
    details = ["", "defaults and loss of each method:"]
    for r in flat:
        for k, (label, what) in enumerate((("defaults", r["defaults"]), ("loss", r["summary"]))):
            lines = textwrap.wrap(f"{label}: {what}", body, subsequent_indent=" " * (len(label) + 2),
                                  break_on_hyphens=False)
            first = r["method"] if k == 0 else ""
            details.extend(f"{first if i == 0 else '':<{name_width}}{line}" for i, line in enumerate(lines))
    return "\n".join([table, *details])
