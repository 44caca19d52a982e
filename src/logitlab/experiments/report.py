"""The study's report: one self-contained HTML file rendered from a run directory's stored files alone.

Inline CSS, images as base64 PNG, nothing fetched. The same stored files give the same bytes
(no timestamps; records ordered by the spec, not by the order they were written in).
Every figure carries a paragraph: the claim, then what this run's numbers show.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from logitlab.experiments import plots
from logitlab.experiments import records as rec

__all__ = ["write_report", "render_report", "aggregate", "COLUMNS"]

# (metric key, column title, better: +1 higher / -1 lower, format)
COLUMNS = [
    ("accuracy", "test accuracy", +1, "{:.3f}"),
    ("nll_smoothed", "NLL (smoothed)", -1, "{:.3f}"),
    ("zero_prob_fraction", "p(true)=0", -1, "{:.3f}"),
    ("brier", "Brier", -1, "{:.3f}"),
    ("ece_width", "ECE (15 equal-width)", -1, "{:.3f}"),
    ("ece_mass", "ECE (equal-mass)", -1, "{:.3f}"),
    ("mce", "MCE", -1, "{:.3f}"),
    ("wall_time_s", "wall time (s)", -1, "{:.2f}"),
]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1280px;margin:2em auto;
padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em}table{border-collapse:collapse;font-size:.78em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.25em .45em;text-align:right}td{white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left;font-family:ui-monospace,monospace;white-space:normal;
max-width:16em;overflow-wrap:anywhere}div.scroll{overflow-x:auto}
td.best{background:#e3f4e3;font-weight:bold}td.best::after{content:" \\2605";color:#2a7a2a}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
p.claim{margin:.3em 0}p.note{background:#fff6e0;border-left:4px solid #e0a800;padding:.4em .7em}
.meta{color:#555;font-size:.9em}code{background:#f5f5f5;padding:0 .2em}
"""


def _mean_spread(values: Sequence[float | None]) -> tuple[float, float, int]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), spread, len(finite)


def aggregate(spec: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group result records by combination, in the spec's order, seeds sorted.

    Returns one dict per combination with its records and, per column, (mean, spread over seeds
    as the sample standard deviation, number of finite values).
    """
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "result":
            by_key.setdefault(r["combination"], []).append(r)
    order = [k for k in spec["pairs"] if k in by_key] + sorted(k for k in by_key if k not in spec["pairs"])
    rows = []
    for key in order:
        runs = sorted(by_key[key], key=lambda r: r["seed"])
        stats = {}
        for metric, *_ in COLUMNS:
            values = [r["wall_time_s"] if metric == "wall_time_s" else r["metrics"].get(metric) for r in runs]
            stats[metric] = _mean_spread(values)
        rows.append({"key": key, "runs": runs, "stats": stats,
                     "diverged": sum(bool(r["diverged"]) for r in runs)})
    return rows


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def figure(png: bytes, alt: str, paragraphs: Sequence[str]) -> str:
    text = "".join(f'<p class="claim">{p}</p>' for p in paragraphs)
    return f"<figure>{_img(png, alt)}<figcaption>{text}</figcaption></figure>"


def _fmt(value: float, pattern: str) -> str:
    return "n/a" if not math.isfinite(value) else pattern.format(value)


def _best(rows: list[dict[str, Any]], metric: str, sign: int) -> set[str]:
    means = [(r["stats"][metric][0], r["key"]) for r in rows if math.isfinite(r["stats"][metric][0])]
    if not means:
        return set()
    target = max(m for m, _ in means) if sign > 0 else min(m for m, _ in means)
    return {k for m, k in means if m == target}


def _summary(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _, _ in COLUMNS)
    best = {metric: _best(rows, metric, sign) for metric, _, sign, _ in COLUMNS}
    body = []
    for r in rows:
        cells = [f"<td>{html.escape(r['key'])}</td>", f"<td>{len(r['runs'])}</td>"]
        for metric, _, _, pattern in COLUMNS:
            mean, spread, n = r["stats"][metric]
            cls = ' class="best"' if r["key"] in best[metric] else ""
            text = "n/a" if n == 0 else f"{_fmt(mean, pattern)} ± {_fmt(spread, pattern)}"
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table id="summary-table"><tr><th>combination</th><th>seeds</th>{head}</tr>'
            + "".join(body) + "</table></div>")


def _name_of(rows: list[dict[str, Any]], metric: str, sign: int) -> tuple[str, float]:
    finite = [r for r in rows if math.isfinite(r["stats"][metric][0])]
    pick = max if sign > 0 else min
    r = pick(finite, key=lambda r: r["stats"][metric][0])
    return r["key"], r["stats"][metric][0]


def _rank(rows: list[dict[str, Any]], key: str, metric: str, sign: int) -> int | None:
    finite = sorted((r for r in rows if math.isfinite(r["stats"][metric][0])),
                    key=lambda r: -sign * r["stats"][metric][0])
    keys = [r["key"] for r in finite]
    return keys.index(key) + 1 if key in keys else None


def _summary_text(rows: list[dict[str, Any]]) -> list[str]:
    ce = "softmax+cross_entropy"
    out = ["Claim: softmax + cross-entropy is maximum likelihood, so it should predict well and give "
           "probabilities that are honest (low NLL, Brier and calibration error) without extra tuning."]
    parts = []
    for metric, title, sign, pattern in COLUMNS[:-1]:
        if all(not math.isfinite(r["stats"][metric][0]) for r in rows):
            continue
        name, value = _name_of(rows, metric, sign)
        rank = _rank(rows, ce, metric, sign)
        mine = f"; {ce} ranks {rank} of {len(rows)}" if rank is not None and name != ce else ""
        parts.append(f"best {title}: {html.escape(name)} ({_fmt(value, pattern)}{mine})")
    out.append("Measured on this run: " + "; ".join(parts) + ".")
    diverged = [f"{html.escape(r['key'])} ({r['diverged']} of {len(r['runs'])})" for r in rows if r["diverged"]]
    if diverged:
        out.append("Diverged (non-finite loss or probabilities; excluded from the means): " + ", ".join(diverged) + ".")
    return out


def _pooled_diagram(runs: list[dict[str, Any]], binning: str) -> dict[str, list[float]]:
    diagrams = [r["reliability"][binning] for r in runs if r.get("reliability")]
    if not diagrams:
        return {"lower": [], "upper": [], "count": [], "confidence": [], "accuracy": []}
    n = len(diagrams[0]["count"])
    count = [sum(d["count"][b] for d in diagrams) for b in range(n)]
    conf = [sum(d["count"][b] * d["confidence"][b] for d in diagrams) / count[b] if count[b] else 0.0 for b in range(n)]
    acc = [sum(d["count"][b] * d["accuracy"][b] for d in diagrams) / count[b] if count[b] else 0.0 for b in range(n)]
    return {"lower": diagrams[0]["lower"], "upper": diagrams[0]["upper"], "count": count,
            "confidence": conf, "accuracy": acc}


def _calibration(rows: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    diagrams = {r["key"]: _pooled_diagram(r["runs"], "width") for r in rows}
    name, value = _name_of(rows, "ece_width", -1)
    worst, worst_value = _name_of(rows, "ece_width", +1)
    gaps = []
    for r in rows:
        d = diagrams[r["key"]]
        total = sum(d["count"])
        if total:
            gap = sum(c * (conf - acc) for c, conf, acc in zip(d["count"], d["confidence"], d["accuracy"])) / total
            gaps.append((gap, r["key"]))
    gaps.sort(reverse=True)
    over = ", ".join(f"{html.escape(k)} ({g:+.3f})" for g, k in gaps if g > 0.005) or "none"
    under = ", ".join(f"{html.escape(k)} ({g:+.3f})" for g, k in reversed(gaps) if g < -0.005) or "none"
    grid = figure(plots.reliability_grid(diagrams), "reliability diagrams", [
        f"Claim: a calibrated model is right with probability p on the inputs where it says p; its bars "
        f"(accuracy per confidence bin, {spec['n_bins']} equal-width bins, test points of all seeds pooled) "
        f"sit on the diagonal. Bars below the diagonal mean over-confidence.",
        f"Measured, mean confidence − accuracy over all test points: over-confident (> +0.005): {over}; "
        f"under-confident (< −0.005): {under}. "
        f"Lowest equal-width ECE: {html.escape(name)} ({value:.3f}); highest: {html.escape(worst)} ({worst_value:.3f})."])
    labels = [r["key"] for r in rows]
    panels = {}
    for metric, title in (("ece_width", "ECE, equal-width bins"), ("ece_mass", "ECE, equal-mass bins"), ("mce", "MCE")):
        panels[title] = ([r["stats"][metric][0] for r in rows], [r["stats"][metric][1] for r in rows])
    agree = _rank_agreement(rows, "ece_width", "ece_mass")
    bars = figure(plots.calibration_bars(labels, panels), "calibration errors", [
        "Claim: the expected calibration error depends on the binning; a conclusion that holds for "
        "equal-width and equal-mass bins alike is robust. MCE (the worst bin) is noisy with few test points.",
        f"Measured: mean ± spread over seeds. The rankings by the two ECEs agree on {agree}."])
    return grid + bars


def _rank_agreement(rows: list[dict[str, Any]], a: str, b: str) -> str:
    def order(metric: str) -> list[str]:
        return [r["key"] for r in sorted(rows, key=lambda r: (r["stats"][metric][0], r["key"]))
                if math.isfinite(r["stats"][metric][0])]

    first, second = order(a), order(b)
    top = min(3, len(first))
    same = len(set(first[:top]) & set(second[:top]))
    return f"{same} of the {top} best combinations (best by equal-width: {html.escape(first[0]) if first else 'n/a'}; " \
           f"by equal-mass: {html.escape(second[0]) if second else 'n/a'})"


def _curve_stats(runs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    series = [r["curves"][key] for r in runs if r["curves"][key]]
    if not series:
        return [], [], []
    length = min(len(s) for s in series)
    mean, lo, hi = [], [], []
    for e in range(length):
        values = [s[e] for s in series if s[e] is not None]
        m = statistics.fmean(values) if values else math.nan
        mean.append(m)
        lo.append(min(values) if values else math.nan)
        hi.append(max(values) if values else math.nan)
    return mean, lo, hi


def _training(rows: list[dict[str, Any]]) -> str:
    curves = {}
    for r in rows:
        c = {}
        for key in ("train_loss", "val_accuracy", "grad_norm"):
            c[key], c[key + "_lo"], c[key + "_hi"] = _curve_stats(r["runs"], key)
        curves[r["key"]] = c
    finals = sorted(((c["val_accuracy"][-1], k) for k, c in curves.items() if c["val_accuracy"]), reverse=True)
    half = []
    for k, c in curves.items():
        v = c["val_accuracy"]
        if v and math.isfinite(v[-1]):
            epoch = next((i + 1 for i, x in enumerate(v) if x >= 0.95 * v[-1]), len(v))
            half.append((epoch, k))
    fastest = ", ".join(f"{html.escape(k)} (epoch {e})" for e, k in sorted(half)[:3])
    train = figure(plots.training_curves(curves), "training curves", [
        "Claim: with the same optimizer, budget and initialization, the output layer and loss alone decide how "
        "fast and how far training goes. Each loss is on its own scale, so compare the shapes, not the levels. "
        "Lines are means over seeds, bands span the seeds.",
        f"Measured: final validation accuracy is highest for {html.escape(finals[0][1])} ({finals[0][0]:.3f}) "
        f"and lowest for {html.escape(finals[-1][1])} ({finals[-1][0]:.3f}); the first to reach 95% of their "
        f"final validation accuracy: {fastest}." if finals else "Measured: no finished curves."])
    ratios = []
    for k, c in curves.items():
        g = c["grad_norm"]
        if len(g) >= 2 and g[0] and math.isfinite(g[0]) and math.isfinite(g[-1]):
            ratios.append((g[-1] / g[0], k))
    ratios.sort()
    text = "; ".join(f"{html.escape(k)} {x:.2g}×" for x, k in ratios)
    grad = figure(plots.gradient_norms(curves), "output-layer gradient norms", [
        "Claim: the gradient reaching the output layer is the training signal. With softmax + cross-entropy it "
        "is p − y per example: it stays large on the examples still wrong and shrinks only as they are fitted; "
        "losses whose gradient saturates (squared error on probabilities, focal) give a weaker signal.",
        f"Measured: last-epoch / first-epoch gradient norm, from smallest to largest: {text}."])
    return train + grad


def render_report(run_dir: Path) -> str:
    """The report's HTML for a run directory (spec.json, records.jsonl, theory.json)."""
    from logitlab.experiments import theory

    run_dir = Path(run_dir)
    spec = rec.read_json(run_dir / rec.SPEC)
    records = rec.read_records(run_dir / rec.RECORDS)
    theory_data = rec.read_json(run_dir / rec.THEORY) if (run_dir / rec.THEORY).exists() else None
    rows = aggregate(spec, records)
    expected = len(spec["pairs"]) * spec["seeds"]
    done = sum(len(r["runs"]) for r in rows)
    total_time = sum(r["wall_time_s"] for row in rows for r in row["runs"])
    setting = ", ".join(f"{k}={html.escape(str(v))}" for k, v in spec.items() if k != "pairs")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>logitlab study: {html.escape(spec['dataset'])}, {html.escape(spec['model'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>logitlab study: {html.escape(spec['dataset'])}, {html.escape(spec['model'])} model</h1>",
        '<section id="setup"><h2>Set-up</h2>',
        "<p>Why softmax + cross-entropy (maximum log-likelihood) rather than anything else? Every output layer "
        "× loss below trains the same model with the same optimizer, budget, data split and initialization "
        "per seed; only the map from scores to probabilities and the loss change. Metrics are on the held-out "
        "test split.</p>",
        f'<p class="meta">{setting}. Records: {done} of {expected} (combination, seed) runs; '
        f"training time {total_time:.1f} s.</p>",
    ]
    if done < expected:
        parts.append(f'<p class="note">This run is incomplete ({done} of {expected} runs recorded); '
                     "complete it with <code>logitlab study --resume --out RUN_DIR</code>.</p>")
    parts.append("</section>")
    parts.append('<section id="summary"><h2>Summary</h2>')
    if rows:
        parts.append(_summary(rows))
        parts.append("<p>Mean ± spread (sample standard deviation over seeds); ★ marks the best mean per column. "
                     f"NLL is smoothed towards uniform with ε = {spec['nll_smoothing']:g} for every combination, "
                     "because sparse maps give some test points probability exactly 0 (column p(true)=0). "
                     "Sigmoid one-vs-all probabilities are divided by their row sum for the metrics.</p>")
        parts += [f"<p>{p}</p>" for p in _summary_text(rows)]
    else:
        parts.append('<p class="note">No records yet.</p>')
    parts.append("</section>")
    if rows:
        parts.append('<section id="calibration"><h2>Calibration</h2>' + _calibration(rows, spec) + "</section>")
        parts.append('<section id="training"><h2>Training curves and gradient norms</h2>' + _training(rows) + "</section>")
    parts.append('<section id="theory"><h2>Theory</h2>' + theory.render(theory_data) + "</section>")
    parts.append('<section id="records"><h2>Records</h2><p>Rendered from <code>spec.json</code>, '
                 "<code>records.jsonl</code> and <code>theory.json</code> alone: "
                 "<code>logitlab report RUN_DIR</code> gives this file byte for byte.</p></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Render the report of ``run_dir`` to ``output`` (default ``run_dir/report.html``); return the path."""
    run_dir = Path(run_dir)
    output = Path(output) if output is not None else run_dir / rec.REPORT
    output.write_text(render_report(run_dir), encoding="utf-8")
    return output
