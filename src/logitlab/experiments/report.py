"""The study's report: one self-contained HTML file rendered from a run directory's stored files alone.

Inline CSS, images as base64 PNG, nothing fetched. The same stored files give the same bytes
(no timestamps; records ordered by the spec, not by the order they were written in).
Every figure carries a paragraph: the claim, then what this run's numbers show.
"""

from __future__ import annotations

import base64
import html
import math
import os
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from logitlab.experiments import plots, stats
from logitlab.experiments import records as rec
from logitlab.experiments.stats import STILL_FALLING_SHARE

__all__ = ["write_report", "render_report", "render_theory", "aggregate", "compare", "verdict", "run_warnings",
           "COLUMNS", "BASELINE"]

BASELINE = "softmax+cross_entropy"
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
    ("examples_per_s", "train examples/s", +1, "{:.0f}"),
]
# Shown for many classes (next-token prediction): there they say more than the accuracy does.
MANY_CLASS_COLUMNS = [
    ("perplexity", "perplexity (smoothed)", -1, "{:.1f}"),
    ("top5_accuracy", "top-5 accuracy", +1, "{:.3f}"),
    ("step_peak_mib", "memory per step (MiB)", -1, "{:.1f}"),
]
_RUN_FIELDS = ("wall_time_s", "examples_per_s", "step_peak_mib")
# The metrics of the paired comparison and the verdict.
VERDICT_METRICS = [("accuracy", "accuracy", +1), ("nll_smoothed", "NLL", -1), ("brier", "Brier score", -1),
                   ("ece_width", "ECE", -1)]
SCALED_METRICS = [("accuracy", "accuracy", +1), ("nll_smoothed", "NLL", -1), ("brier", "Brier", -1),
                  ("ece_width", "ECE", -1)]
# A test split smaller than this gets a warning: one test point then moves accuracy by > 0.5%.
SMALL_TEST = 200
# Fewer seeds than this cannot give a sign-flip p below 0.05 (the smallest is 2 / 2^n).
MIN_SEEDS = 6

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1280px;margin:2em auto;
padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em}table{border-collapse:collapse;font-size:.78em;margin:.8em 0}
th,td{border:1px solid #ddd;padding:.25em .45em;text-align:right}td{white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left;font-family:ui-monospace,monospace;white-space:normal;
max-width:16em;overflow-wrap:anywhere}div.scroll{overflow-x:auto}
td.better{background:#e3f4e3;font-weight:bold}td.better::after{content:" \\25B2";color:#2a7a2a}
td.worse{background:#fbe4e4}td.worse::after{content:" \\25BC";color:#a02a2a}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
p.claim{margin:.3em 0}p.note{background:#fff6e0;border-left:4px solid #e0a800;padding:.4em .7em}
p.verdict{background:#eef4fb;border-left:4px solid #2a62a0;padding:.5em .8em}
.meta{color:#555;font-size:.9em}code{background:#f5f5f5;padding:0 .2em}nav ol{columns:2}
"""


def _value(record: dict[str, Any], metric: str, scaled: bool = False) -> float | None:
    if metric in _RUN_FIELDS:
        return record.get(metric)
    source = record.get("metrics_scaled") if scaled else record.get("metrics")
    return (source or {}).get(metric)


def aggregate(spec: dict[str, Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group result records by combination, in the spec's order, seeds sorted.

    Returns one dict per combination with its records, per column the mean over seeds with its
    95% interval (:class:`stats.Interval`), the same for the temperature-scaled metrics
    (``scaled``) and for the fitted temperature, and the number of diverged runs.
    """
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("kind") == "result":
            by_key.setdefault(r["combination"], []).append(r)
    order = [k for k in spec["pairs"] if k in by_key] + sorted(k for k in by_key if k not in spec["pairs"])
    rows = []
    for key in order:
        runs = sorted(by_key[key], key=lambda r: r["seed"])
        ok = [r for r in runs if not r["diverged"]]
        stats_ = {metric: stats.mean_interval([_value(r, metric) for r in ok])
                  for metric, *_ in COLUMNS + MANY_CLASS_COLUMNS}
        scaled = {metric: stats.mean_interval([_value(r, metric, True) for r in ok]) for metric, *_ in SCALED_METRICS}
        rows.append({"key": key, "runs": runs, "stats": stats_, "scaled": scaled,
                     "temperature": stats.mean_interval([r.get("temperature") for r in ok]),
                     "diverged": sum(bool(r["diverged"]) for r in runs)})
    return rows


def compare(rows: list[dict[str, Any]], metric: str, *, scaled: bool = False,
            baseline: str = BASELINE) -> dict[str, stats.Paired]:
    """Paired per-seed differences (combination − baseline) of ``metric`` for every other row."""
    cache = rows[0].setdefault("_compare", {}) if rows else {}  # the report asks for each one several times
    if (metric, scaled, baseline) not in cache:
        cache[metric, scaled, baseline] = _compare(rows, metric, scaled, baseline)
    return cache[metric, scaled, baseline]


def _compare(rows: list[dict[str, Any]], metric: str, scaled: bool, baseline: str) -> dict[str, stats.Paired]:
    base = next((r for r in rows if r["key"] == baseline), None)
    if base is None:
        return {}
    ref = {r["seed"]: _value(r, metric, scaled) for r in base["runs"] if not r["diverged"]}
    out = {}
    for row in rows:
        if row["key"] != baseline:
            mine = {r["seed"]: _value(r, metric, scaled) for r in row["runs"] if not r["diverged"]}
            out[row["key"]] = stats.paired(mine, ref)
    return out


def _judge(p: stats.Paired, sign: int) -> str:
    """'better', 'worse' or 'same' (the interval of the difference contains 0)."""
    if not p.excludes_zero:
        return "same"
    return "better" if p.mean * sign > 0 else "worse"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def figure(png: bytes, alt: str, paragraphs: Sequence[str]) -> str:
    text = "".join(f'<p class="claim">{p}</p>' for p in paragraphs)
    return f"<figure>{_img(png, alt)}<figcaption>{text}</figcaption></figure>"


def _fmt(value: float, pattern: str) -> str:
    return "n/a" if not math.isfinite(value) else pattern.format(value)


def _interval_text(interval: stats.Interval, pattern: str) -> str:
    if interval.n == 0:
        return "n/a"
    if interval.n < 2:
        return f"{_fmt(interval.mean, pattern)} ± —"
    return f"{_fmt(interval.mean, pattern)} ± {_fmt(interval.half_width, pattern)}"


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    many = any(run.get("num_classes", 0) > 10 for r in rows for run in r["runs"])
    return COLUMNS[:1] + MANY_CLASS_COLUMNS + COLUMNS[1:] if many else COLUMNS


def _summary(rows: list[dict[str, Any]]) -> str:
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _, _ in columns)
    judged = {metric: compare(rows, metric) for metric, *_ in columns}
    body = []
    for r in rows:
        cells = [f"<td>{html.escape(r['key'])}</td>", f"<td>{len(r['runs'])}</td>"]
        for metric, _, sign, pattern in columns:
            p = judged[metric].get(r["key"])
            verdict = _judge(p, sign) if p is not None and metric not in _RUN_FIELDS else "same"
            cls = f' class="{verdict}"' if verdict != "same" else ""
            cells.append(f"<td{cls}>{_interval_text(r['stats'][metric], pattern)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table id="summary-table"><tr><th>combination</th><th>seeds</th>{head}</tr>'
            + "".join(body) + "</table></div>")


def _paired_table(rows: list[dict[str, Any]], table_id: str, metrics: Sequence[tuple[str, str, int]], *,
                  scaled: bool = False) -> str:
    head = "".join(f"<th>Δ {html.escape(title)}</th>" for _, title, _ in metrics)
    judged = {metric: compare(rows, metric, scaled=scaled) for metric, _, _ in metrics}
    body = []
    for r in rows:
        if r["key"] == BASELINE:
            continue
        cells = [f"<td>{html.escape(r['key'])}</td>"]
        for metric, _, sign in metrics:
            p = judged[metric].get(r["key"])
            if p is None or p.n == 0:
                cells.append("<td>n/a</td>")
                continue
            verdict = _judge(p, sign)
            cls = f' class="{verdict}"' if verdict != "same" else ""
            interval = "—" if p.n < 2 else f"[{p.lo:+.3f}, {p.hi:+.3f}]"
            cells.append(f"<td{cls}>{p.mean:+.3f} {interval}, p = {p.p:.3g}, {p.positive}+/{p.negative}−</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table id="{table_id}"><tr><th>combination − {BASELINE}</th>{head}</tr>'
            + "".join(body) + "</table></div>")


def _names(items: Sequence[str]) -> str:
    return ", ".join(html.escape(k) for k in items) or "none"


def verdict(rows: list[dict[str, Any]], spec: dict[str, Any]) -> list[str]:
    """The verdict paragraphs, generated from the paired comparisons with softmax + cross-entropy."""
    base = next((r for r in rows if r["key"] == BASELINE), None)
    if base is None:
        return [f"No verdict: this run has no {BASELINE} records to compare with."]
    seeds = min((p.n for p in compare(rows, "accuracy").values()), default=0)
    if seeds < 2:
        return [f"No verdict: a paired comparison needs at least 2 seeds (this run has {seeds}); "
                "every interval is shown as —."]
    others = [r["key"] for r in rows if r["key"] != BASELINE]
    kind = "random" if spec["dataset"] == "stdlib-text" else "stratified"
    text = [f"Verdict over {seeds} seeds (each its own {kind} split and initialization) on "
            f"{html.escape(str(spec['dataset']))}, {html.escape(str(spec['model']))} model: a combination is called "
            f"better or worse than {BASELINE} only where the 95% interval of its paired per-seed difference "
            "excludes 0."]
    judged_all = {metric: compare(rows, metric) for metric, _, _ in VERDICT_METRICS}
    beats = {k: [title for metric, title, sign in VERDICT_METRICS
                 if k in judged_all[metric] and _judge(judged_all[metric][k], sign) == "better"] for k in others}
    loses = {k: [title for metric, title, sign in VERDICT_METRICS
                 if k in judged_all[metric] and _judge(judged_all[metric][k], sign) == "worse"] for k in others}
    never_worse = [k for k in others if not loses[k]]
    winners = "; ".join(f"{html.escape(k)} ({', '.join(v)})" for k, v in beats.items() if v)
    text.append(f"<b>In short</b>: of {len(others)} alternatives, {sum(not v for v in beats.values())} are better than "
                f"softmax + CE on none of accuracy, NLL, Brier score and ECE"
                + (f"; better on some: {winners}" if winners else "")
                + f". Never worse on any of the four: {_names(never_worse)}.")
    for metric, title, sign in VERDICT_METRICS:
        judged = judged_all[metric]
        groups = {v: [k for k in others if k in judged and _judge(judged[k], sign) == v]
                  for v in ("better", "same", "worse")}
        worst = sorted(groups["worse"], key=lambda k: -abs(judged[k].mean))
        detail = "; ".join(f"{html.escape(k)} {judged[k].mean:+.3f}" for k in worst[:4])
        text.append(f"<b>{title}</b> (softmax + CE {_interval_text(base['stats'][metric], '{:.3f}')}): "
                    f"worse: {_names(worst)}"
                    f"{' (' + detail + (', …' if len(worst) > 4 else '') + ')' if worst else ''}; "
                    f"indistinguishable: {_names(groups['same'])}; better: {_names(groups['better'])}.")
    if any(r["temperature"].n for r in rows):
        before = compare(rows, "ece_width")
        after = compare(rows, "ece_width", scaled=True)
        nll_after = compare(rows, "nll_smoothed", scaled=True)
        worse_before = [k for k in others if k in before and _judge(before[k], -1) == "worse"]
        worse_after = [k for k in others if k in after and _judge(after[k], -1) == "worse"]
        kept = [k for k in worse_before if k in worse_after]
        nll_worse = [k for k in others if k in nll_after and _judge(nll_after[k], -1) == "worse"]
        t = base["temperature"]
        lost = [k for k in worse_before if k not in worse_after]
        survive = ("survives recalibration against " + _names(kept)) if kept else (
            "does not survive recalibration: no combination that was worse stays worse")
        if kept and lost:
            survive += "; it is gone against " + _names(lost)
        text.append(
            f"<b>After temperature scaling</b> (one T per run, fitted on the validation split by NLL; "
            f"softmax + CE's T = {_interval_text(t, '{:.2f}')}, "
            f"ECE {_interval_text(base['stats']['ece_width'], '{:.3f}')} → "
            f"{_interval_text(base['scaled']['ece_width'], '{:.3f}')}): worse than softmax + CE in ECE before: "
            f"{_names(worse_before)}; after: {_names(worse_after)}. Softmax + CE's calibration advantage {survive}. "
            f"Worse in NLL after scaling: {_names(nll_worse)}.")
    return text


def run_warnings(spec: dict[str, Any], records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What limits the conclusions of a run: (plain text for the console, HTML for the report).

    Training still falling at the end (more than ``STILL_FALLING_SHARE`` of the loss decrease in
    the last quarter of the steps), a small test split, too few seeds for a significant
    sign-flip test, and diverged runs.
    """
    out: list[tuple[str, str]] = []
    results = [r for r in records if r.get("kind") == "result"]
    falling: dict[str, list[float]] = {}
    for r in results:
        share = r.get("loss_drop_share")
        if share is not None and math.isfinite(share) and share > STILL_FALLING_SHARE and not r["diverged"]:
            falling.setdefault(r["combination"], []).append(share)
    if falling:
        listed = ", ".join(f"{k} ({len(v)} seeds, up to {max(v):.0%})" for k, v in falling.items())
        text = (f"training loss still falling at the end of {spec['steps']} steps for {listed} (share of the "
                f"loss decrease in the last quarter of the steps > {STILL_FALLING_SHARE:.0%}); these runs are "
                "not converged: raise --steps")
        out.append((text, html.escape(text)))
    sizes = sorted({int(r["n_test"]) for r in results})
    if sizes and sizes[0] < SMALL_TEST:
        text = (f"the test split has {sizes[0]} points: one point moves accuracy by {1 / sizes[0]:.3f}, so "
                f"differences of a few points between combinations cannot be separated; prefer a dataset "
                f"with >= {SMALL_TEST / (spec['test_fraction'] or 1):.0f} rows or more seeds")
        out.append((text, html.escape(text)))
    if results and spec["seeds"] < MIN_SEEDS:
        text = (f"{spec['seeds']} seed(s): the sign-flip test cannot reach p < 0.05 with fewer than {MIN_SEEDS} "
                "seeds and the t intervals are wide; use --seeds 8 or more for a verdict")
        out.append((text, html.escape(text)))
    diverged = sorted({r["combination"] for r in results if r["diverged"]})
    if diverged:
        text = f"diverged runs (non-finite loss or probabilities; left out of the means): {', '.join(diverged)}"
        out.append((text, html.escape(text)))
    return out


def _temperature_section(rows: list[dict[str, Any]]) -> str:
    if not any(r["temperature"].n for r in rows):
        return '<p class="note">Temperature scaling is off in this run (temperature_scaling=false).</p>'
    head = "".join(f"<th>{html.escape(t)} before</th><th>{html.escape(t)} after</th>" for _, t, _ in SCALED_METRICS)
    body = []
    for r in rows:
        cells = [f"<td>{html.escape(r['key'])}</td>", f"<td>{_interval_text(r['temperature'], '{:.2f}')}</td>"]
        for metric, _, _ in SCALED_METRICS:
            cells.append(f"<td>{_interval_text(r['stats'][metric], '{:.3f}')}</td>")
            cells.append(f"<td>{_interval_text(r['scaled'][metric], '{:.3f}')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = (f'<div class="scroll"><table id="temperature-table"><tr><th>combination</th><th>T</th>{head}</tr>'
             + "".join(body) + "</table></div>")
    return ("<p>Post-hoc temperature scaling (Guo et al., 2017): the trained model's scores z are divided by "
            "one T > 0, fitted on the validation split by minimizing the (smoothed) NLL, before the "
            "combination's own map (T is searched in [0.05, 20]; a mean at an end means the fit hit the "
            "boundary); the argmax is unchanged for softmax, sigmoid and the sparse maps. "
            "Mean ± 95% interval over seeds.</p>" + table +
            "<p>Paired differences from softmax + CE after temperature scaling (both scaled):</p>" +
            _paired_table(rows, "scaled-paired-table", SCALED_METRICS, scaled=True))


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


def _name_of(rows: list[dict[str, Any]], metric: str, sign: int) -> tuple[str, float]:
    finite = [r for r in rows if math.isfinite(r["stats"][metric].mean)]
    if not finite:
        return "n/a", math.nan
    pick = max if sign > 0 else min
    r = pick(finite, key=lambda r: r["stats"][metric].mean)
    return r["key"], r["stats"][metric].mean


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
        f"sit on the diagonal. Bars below the diagonal mean over-confidence. The narrow gray bars are the "
        f"confidence histogram: each bin's share of the test points (bins with few points are noisy).",
        f"Measured, mean confidence − accuracy over all test points: over-confident (> +0.005): {over}; "
        f"under-confident (< −0.005): {under}. "
        f"Lowest equal-width ECE: {html.escape(name)} ({value:.3f}); "
        f"highest: {html.escape(worst)} ({worst_value:.3f})."])
    labels = [r["key"] for r in rows]
    panels = {}
    for metric, title in (("ece_width", "ECE, equal-width bins"), ("ece_mass", "ECE, equal-mass bins"), ("mce", "MCE")):
        panels[title] = ([r["stats"][metric].mean for r in rows], [r["stats"][metric].half_width for r in rows])
    agree = _rank_agreement(rows, "ece_width", "ece_mass")
    bars = figure(plots.calibration_bars(labels, panels), "calibration errors", [
        "Claim: the expected calibration error depends on the binning; a conclusion that holds for "
        "equal-width and equal-mass bins alike is robust. MCE (the worst bin) is noisy with few test points.",
        f"Measured: mean and 95% interval over seeds. The rankings by the two ECEs agree on {agree}."])
    return grid + bars


def _rank_agreement(rows: list[dict[str, Any]], a: str, b: str) -> str:
    def order(metric: str) -> list[str]:
        return [r["key"] for r in sorted(rows, key=lambda r: (r["stats"][metric][0], r["key"]))
                if math.isfinite(r["stats"][metric][0])]

    first, second = order(a), order(b)
    top = min(3, len(first))
    same = len(set(first[:top]) & set(second[:top]))
    return f"{same} of the {top} best combinations " \
           f"(best by equal-width: {html.escape(first[0]) if first else 'n/a'}; " \
           f"by equal-mass: {html.escape(second[0]) if second else 'n/a'})"


def _curve_stats(runs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    series = [r["curves"].get(key) for r in runs if r["curves"].get(key)]
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
        c: dict[str, Any] = {}
        for key in ("train_loss", "val_accuracy", "val_nll", "grad_norm"):
            c[key], c[key + "_lo"], c[key + "_hi"] = _curve_stats(r["runs"], key)
        c["step"] = max((run["curves"].get("step", []) for run in r["runs"]), key=len)
        curves[r["key"]] = c
    finals = sorted(((c["val_accuracy"][-1], k) for k, c in curves.items() if c["val_accuracy"]), reverse=True)
    reach = []
    for k, c in curves.items():
        v = c["val_accuracy"]
        if v and math.isfinite(v[-1]):
            i = next((i for i, x in enumerate(v) if x >= 0.95 * v[-1]), len(v) - 1)
            reach.append((c["step"][i], k))
    fastest = ", ".join(f"{html.escape(k)} (step {e})" for e, k in sorted(reach)[:3])
    shares = sorted(((stats.mean_interval([run.get("loss_drop_share") for run in r["runs"]]).mean, r["key"])
                     for r in rows), reverse=True)
    share_text = "; ".join(f"{html.escape(k)} {v:.1%}" for v, k in shares[:3] if math.isfinite(v))
    train = figure(plots.training_curves(curves), "training curves", [
        "Claim: with the same optimizer, budget and initialization, the output layer and loss alone decide how "
        "fast and how far training goes. Each loss is on its own scale, so compare the shapes, not the levels; "
        "the validation NLL (smoothed) is on one scale for all. Lines are means over seeds, bands span the seeds.",
        (f"Measured: final validation accuracy is highest for {html.escape(finals[0][1])} ({finals[0][0]:.3f}) "
         f"and lowest for {html.escape(finals[-1][1])} ({finals[-1][0]:.3f}); the first to reach 95% of their "
         f"final validation accuracy: {fastest}. Convergence check, share of the loss decrease made in the last "
         f"quarter of the steps (largest first): {share_text}.") if finals else "Measured: no finished curves."])
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
        f"Measured: last / first recorded gradient norm, from smallest to largest: {text}."])
    return train + grad


def _confusion(rows: list[dict[str, Any]], best_other: str | None) -> str:
    keys = [k for k in (BASELINE, best_other) if k]
    matrices = {}
    for r in rows:
        if r["key"] not in keys:
            continue
        size = max((run.get("num_classes", 0) for run in r["runs"]), default=0)
        m = [[0] * size for _ in range(size)]
        for run in r["runs"]:
            p = run.get("predictions") or {}
            for t, y in zip(p.get("target", []), p.get("predicted", [])):
                if t < size and y < size:
                    m[t][y] += 1
        if size and any(any(row) for row in m):
            matrices[r["key"]] = m
    if not matrices:
        return ""
    ordered = {k: matrices[k] for k in keys if k in matrices}
    return figure(plots.confusion_matrices(ordered), "confusion matrices", [
        "Per-class view from the stored test predictions (counts summed over seeds; rows: true class): "
        f"{BASELINE} and the alternative with the best mean test accuracy."])


# ---------------------------------------------------------------- the theory section
# Each part draws the stored data of one part of logitlab.experiments.theory.collect.


def _theory_note(title: str, part: dict[str, Any] | None) -> str:
    if part is None:
        reason, source = "this run has no theory data (theory.json missing)", ""
    else:
        reason, source = part.get("reason", ""), part.get("source", "")
    return (f'<p class="note">{html.escape(title)}: not available in this run; <code>{html.escape(source)}</code> '
            f"could not be used ({html.escape(reason)}).</p>")


def _render_gradient_sweep(data: dict[str, Any]) -> str:
    margins, curves = data["margins"], data["curves"]
    floor = 1e-12
    pngs = []
    series = [(k, margins, [max(v, floor) for v in c["grad_norm"]]) for k, c in curves.items() if c["group"] == "study"]
    if series:
        pngs.append(plots.line_panels([{
            "title": "‖∂loss/∂z‖ of one example, this study's combinations",
            "xlabel": "margin of the wrong favourite over the true class",
            "ylabel": f"gradient norm (log; 0 drawn at {floor:g})", "logy": True, "series": series,
            "legend_outside": True, "legend_cols": 1 if len(series) <= 16 else 2}],
            width=9.0 if len(series) <= 16 else 11.0, height=4.2 if len(series) <= 16 else 5.5))
    other = {k: [max(v, floor) for v in c["grad_norm"]] for k, c in curves.items() if c["group"] == "other"}
    if other:
        ce_curve = curves.get("softmax+cross_entropy")
        pngs.append(plots.small_multiples(
            margins, other, reference=[max(v, floor) for v in ce_curve["grad_norm"]] if ce_curve else None,
            reference_label="softmax + cross-entropy", xlabel="margin of the wrong favourite over the true class",
            ylabel=f"‖∂loss/∂z‖ (log; 0 drawn at {floor:g})"))
    last = margins[-1]
    study = sorted(((c["grad_norm"][-1], k) for k, c in curves.items() if c["group"] == "study"), reverse=True)
    measured = f"Measured at margin {last:g} ({data['num_classes']} classes), " \
        "this study's combinations, largest first: " + \
        "; ".join(f"{html.escape(k)} {v:.3g}" for v, k in study) + "."
    ce = curves.get("softmax+cross_entropy")
    brier = curves.get("softmax+brier")
    if ce and brier:
        measured += (f" softmax + cross-entropy goes from {ce['grad_norm'][0]:.3g} at margin 0 "
                     f"to {ce['grad_norm'][-1]:.3g}; "
                     f"softmax + Brier from {brier['grad_norm'][0]:.3g} to {brier['grad_norm'][-1]:.3g}.")
    others = [(c["grad_norm"][-1], k) for k, c in curves.items() if c["group"] == "other"]
    if others:
        keep = sorted(k for v, k in others if v >= 0.1)
        vanish = sorted(k for v, k in others if v < 1e-6)
        measured += (f" Of the {len(others)} other valid pairs, {len(keep)} keep a gradient norm ≥ 0.1 "
                     f"at margin {last:g} "
                     f"({html.escape(', '.join(keep)) or 'none'}) and {len(vanish)} fall below 1e-6 "
                     f"({html.escape(', '.join(vanish)) or 'none'}).")
    failed = data.get("failed") or {}
    if failed:
        measured += (" Not computed: " + "; ".join(f"{html.escape(k)} ({html.escape(v)})" for k, v in failed.items())
                     + ".")
    png = pngs[0]
    return figure(png, "gradient sweep", [
        "Claim: with softmax + cross-entropy the gradient on a confidently wrong example tends to a constant, "
        "non-zero size (p − y tends to a fixed vector, norm √2), so the model keeps learning from its worst "
        "mistakes; with squared error on probabilities (Brier) it vanishes exponentially: a confidently wrong "
        "model stops learning. One example, class 0 true, class 1 ahead by the margin, all other logits 0; "
        "from <code>logitlab.analysis.gradient_sweep</code>. One convention for every loss: the loss of one "
        "example summed over its classes (binary cross-entropy, which torch averages over the classes, is "
        f"multiplied by C = {data['num_classes']}).", measured]) + \
        "".join(figure(extra, "gradient sweep, other pairs", [
            "Every other valid pair of the registry, one small panel each (same axes), softmax + cross-entropy "
            "dashed in each for reference."]) for extra in pngs[1:])


def _render_scale_response(data: dict[str, Any]) -> str:
    scales = data["scales"]
    names = list(data["max_prob"])
    panels = [{"title": f"largest probability of normalizer(s · {data['logits']})", "xlabel": "scale s",
               "ylabel": "largest probability", "logx": True,
               "series": [(n, scales, data["max_prob"][n]) for n in names]},
              {"title": "entropy (nats)", "xlabel": "scale s", "ylabel": "entropy", "logx": True,
               "series": [(n, scales, data["entropy"][n]) for n in names]}]
    png = plots.line_panels(panels, width=4.6, height=3.3)
    def f3(value: float) -> str:
        return f"{round(value, 3) + 0.0:.3f}"  # no "-0.000"

    text = "; ".join(f"{html.escape(n)}: largest probability "
                     f"{f3(data['max_prob'][n][0])} → {f3(data['max_prob'][n][-1])}, "
                     f"entropy {f3(data['entropy'][n][0])} → {f3(data['entropy'][n][-1])} nats" for n in names)
    return figure(png, "scale response", [
        "Claim: softmax reads the size of the scores as confidence (multiplying them by s is dividing the "
        "temperature by s: from uniform to one-hot), while x / Σx is scale invariant and cannot express "
        "confidence through the size of its scores; sparsemax reaches a one-hot at a finite scale. "
        "From <code>logitlab.analysis.scale_response</code> (x / Σx on the raw positive scores).",
        f"Measured from s = {scales[0]:g} to {scales[-1]:g}: {text}."])


def _render_maxent(data: dict[str, Any]) -> str:
    soft, sig = data["softmax"], data["sigmoid"]
    scores = soft["scores"]
    series = []
    for k, score in enumerate(scores):
        series.append((f"p(z = {score:g}) solved", soft["mean"], [p[k] for p in soft["probs"]], None, None,
                       plots.color(k)))
        series.append((f"softmax(θ·z)[{k}]", soft["mean"], [p[k] for p in soft["gibbs"]], None, None, "black"))
    styles = {f"softmax(θ·z)[{k}]": ":" for k in range(len(scores))}
    panels = [{"title": f"max entropy with E[z] = μ, z = {scores}", "xlabel": "target mean score μ",
               "ylabel": "probability", "series": series, "styles": styles, "legend_cols": 2,
               "legend_loc": "upper center", "ylim": (0, 1)},
              {"title": "two points {0, 1} with P(1) = μ", "xlabel": "natural parameter θ", "ylabel": "P(1)",
               "series": [("solved P(1)", sig["theta"], sig["p1"], None, None, plots.color(0)),
                          ("sigmoid(θ)", sig["theta"], sig["sigmoid"], None, None, "black")],
               "styles": {"sigmoid(θ)": ":"}}]
    png = plots.line_panels(panels, width=5.0, height=3.6)
    gap_soft = max(abs(a - b) for p, g in zip(soft["probs"], soft["gibbs"]) for a, b in zip(p, g))
    gap_sig = max(abs(a - b) for a, b in zip(sig["p1"], sig["sigmoid"]))
    return figure(png, "maximum entropy", [
        "Claim: among all distributions over the classes whose expected score is fixed, the one with the most "
        "entropy (the one that assumes nothing else) is the Gibbs distribution p ∝ exp(θ z): softmax of the "
        "scaled scores; on two outcomes it is the sigmoid of θ. Softmax is not a design choice but what "
        "maximum entropy gives. Solved numerically by <code>logitlab.maxent.solve_maxent</code> (Newton on the "
        "dual), then compared with softmax(θ z) and sigmoid(θ) at the θ it found.",
        f"Measured: over {len(soft['mean'])} target means the largest |solved − softmax(θ z)| is {gap_soft:.2g}; "
        f"over {len(sig['mean'])} two-point problems the largest |solved P(1) − sigmoid(θ)| is {gap_sig:.2g} "
        f"(θ from {sig['theta'][0]:.2f} to {sig['theta'][-1]:.2f})."])


def _render_decomposition(data: dict[str, Any]) -> str:
    t = data["t"]
    rows = data["rows"]
    series = [(name, t, [r[name] for r in rows]) for name in ("cross_entropy", "entropy", "kl")]
    png = plots.line_panels([{"title": "H(target, model) = H(target) + KL(target ‖ model), "
                                       f"target {data['target_probs']}",
                              "xlabel": f"t (logits = t · {data['direction']})", "ylabel": "nats", "series": series}],
                            width=6, height=3.4)
    gap = max(abs(r["cross_entropy"] - r["entropy"] - r["kl"]) for r in rows)
    best = min(range(len(rows)), key=lambda i: rows[i]["cross_entropy"])
    return figure(png, "cross-entropy decomposition", [
        "Claim: the cross-entropy of the model against the target is the target's own entropy (fixed: the "
        "irreducible part) plus KL(target ‖ model); minimizing cross-entropy is minimizing the KL, and the "
        "loss cannot go below the entropy. From <code>logitlab.information.decompose</code>.",
        f"Measured: the largest |H − (entropy + KL)| over the sweep is {gap:.2g}; the cross-entropy is smallest "
        f"at t = {t[best]:g} ({rows[best]['cross_entropy']:.4f} nats), where KL = {rows[best]['kl']:.3g} and the "
        f"entropy is {rows[best]['entropy']:.4f}."])


def _render_underflow(data: dict[str, Any]) -> str:
    n = data["batch_size"]
    dtypes = list(data["product"])
    product_series = [(f"Π p in {d}", n, [v if v and v > 0 else float("nan") for v in data["product"][d]])
                      for d in dtypes]
    vlines = [(at, f"{d}: Π p = 0 from n = {at}") for d, at in data["underflow_at"].items() if at is not None]
    styles = {s[0]: ("-" if i == 0 else "--") for i, s in enumerate(product_series)}
    panels = [{"title": f"likelihood Π p of n examples, each p = {data['prob']:g}", "xlabel": "n",
               "ylabel": "product (log)",
               "logy": True, "series": product_series, "vlines": vlines, "styles": styles},
              {"title": "log-likelihood Σ log p", "xlabel": "n", "ylabel": "nats",
               "series": [("Σ log p (float64)", n, data["log_likelihood"])]}]
    png = plots.line_panels(panels, width=4.6, height=3.3)
    parts = []
    for d in dtypes:
        at = data["underflow_at"].get(d)
        if at is None:
            parts.append(f"in {d} the product stays above 0 up to n = {n[-1]}")
        else:
            parts.append(f"in {d} the product is exactly 0 from n = {at} "
                         f"(subnormal from n = {data['subnormal_at'].get(d)}), "
                         f"where the log-likelihood is still {data['log_likelihood_at_underflow'].get(d):.2f}")
    return figure(png, "likelihood underflow", [
        "Claim: the likelihood of a batch is a product of probabilities and underflows to exactly 0 after a "
        "few hundred examples, after which no two models can be compared; its log, the sum Σ log p, stays a "
        "moderate finite number. This is why training minimizes −Σ log p (the cross-entropy). From "
        "<code>logitlab.analysis.likelihood_underflow</code>.",
        "Measured: " + "; ".join(parts) + "."])


_THEORY_RENDERERS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "gradient_sweep": ("Gradient sweep per pair", _render_gradient_sweep),
    "scale_response": ("Scale response: softmax vs x / Σx", _render_scale_response),
    "maxent": ("Maximum entropy gives softmax and sigmoid", _render_maxent),
    "decomposition": ("Cross-entropy = entropy + KL", _render_decomposition),
    "underflow": ("Products of likelihoods underflow", _render_underflow),
}


def render_theory(theory: dict[str, Any] | None) -> str:
    """HTML of the theory section (one subsection per part) from the stored data of :func:`theory.collect`."""
    parts = []
    for name, (title, renderer) in _THEORY_RENDERERS.items():
        part = None if theory is None else theory.get(name)
        parts.append(f'<h3 id="theory-{name}">{html.escape(title)}</h3>')
        if part is None or not part.get("available"):
            parts.append(_theory_note(title, part))
        else:
            try:
                parts.append(renderer(part["data"]))
            except (KeyError, TypeError, ValueError, IndexError) as error:
                parts.append(_theory_note(title, {"source": part.get("source", ""),
                                           "reason": "stored data has an unexpected form: "
                                                     f"{type(error).__name__}: {error}"}))
    return "\n".join(parts)


_SECTIONS = [("verdict", "Verdict"), ("warnings", "Warnings"), ("setup", "Set-up"), ("summary", "Summary"),
             ("paired", "Paired differences from softmax + cross-entropy"),
             ("temperature", "Temperature scaling"), ("calibration", "Calibration"),
             ("training", "Training curves and gradient norms"), ("classes", "Per-class view"),
             ("theory", "Theory"), ("records", "Records")]


def render_report(run_dir: Path, *, progress: Any = None) -> str:
    """The report's HTML for a run directory (spec.json, records.jsonl, theory.json).

    ``progress(line, final)``, when given, is told which part is being rendered.
    """
    def step(name: str) -> None:
        if progress is not None:
            progress(f"report: rendering {name}", False)

    run_dir = Path(run_dir)
    spec = rec.read_json(run_dir / rec.SPEC)
    scan = rec.scan_records(run_dir / rec.RECORDS)
    records = scan.records
    theory_data = rec.read_json(run_dir / rec.THEORY) if (run_dir / rec.THEORY).exists() else None
    rows = aggregate(spec, records)
    expected = len(spec["pairs"]) * spec["seeds"]
    done = sum(len(r["runs"]) for r in rows)
    total_time = sum(r["wall_time_s"] for row in rows for r in row["runs"])
    setting = ", ".join(f"{k}={html.escape(str(v))}" for k, v in spec.items() if k != "pairs")
    warnings = run_warnings(spec, records)
    present = {"verdict", "setup", "summary", "theory", "records"}
    if warnings or scan.skipped or done < expected:
        present.add("warnings")
    if rows:
        present |= {"paired", "temperature", "calibration", "training", "classes"}
    toc = "".join(f'<li><a href="#{k}">{html.escape(t)}</a></li>' for k, t in _SECTIONS if k in present)
    title = f"logitlab study: {html.escape(str(spec['dataset']))}, {html.escape(spec['model'])} model"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        '<section id="verdict"><h2>Verdict</h2>',
        "".join(f'<p class="verdict">{p}</p>' for p in (verdict(rows, spec) if rows else ["No records yet."])),
        "</section>",
        f'<nav id="contents"><h2>Contents</h2><ol>{toc}</ol></nav>',
    ]
    if "warnings" in present:
        notes = [w for _, w in warnings]
        if scan.skipped:
            notes.append(html.escape(rec.describe_skipped(run_dir / rec.RECORDS, scan.skipped)))
        if done < expected:
            notes.append(f"This run is incomplete ({done} of {expected} runs recorded); complete it with "
                         "<code>logitlab study --resume --out RUN_DIR</code>.")
        parts.append('<section id="warnings"><h2>Warnings</h2>' +
                     "".join(f'<p class="note">{n}</p>' for n in notes) + "</section>")
    parts += [
        '<section id="setup"><h2>Set-up</h2>',
        "<p>Why softmax + cross-entropy (maximum log-likelihood) rather than anything else? Every output layer "
        "× loss below trains the same model with the same optimizer and budget in optimizer steps; each seed "
        "draws its own train / validation / test split (stratified by class; at random for next-token rows) "
        "and its own initialization, the same for every combination, so the seeds are independent repeats "
        "and the comparisons are paired by seed. "
        "Only the map from scores to probabilities and the loss change. Metrics are on the held-out test split.</p>",
        f'<p class="meta">{setting}. Records: {done} of {expected} (combination, seed) runs; '
        f"training time {total_time:.1f} s.</p>",
        "</section>",
    ]
    parts.append('<section id="summary"><h2>Summary</h2>')
    if rows:
        step("the summary")
        parts.append(_summary(rows))
        parts.append("<p>Mean ± half-width of the 95% Student-t interval over seeds (— with one seed). A cell is "
                     f"marked better (▲, green) or worse (▼, red) than {BASELINE} only where the 95% interval of "
                     "the paired per-seed difference excludes 0 (next section). "
                     f"NLL is smoothed towards uniform with ε = {spec['nll_smoothing']:g} for every combination, "
                     "because sparse maps give some test points probability exactly 0 (column p(true)=0). "
                     "Sigmoid one-vs-all probabilities are divided by their row sum for the metrics.</p>")
    else:
        parts.append('<p class="note">No records yet.</p>')
    parts.append("</section>")
    if rows:
        parts.append('<section id="paired"><h2>Paired differences from softmax + cross-entropy</h2>'
                     "<p>Per seed, the combination's metric minus softmax + CE's on the same split and "
                     "initialization; mean, 95% t interval, two-sided sign-flip permutation p-value (exact over "
                     "all 2<sup>n</sup> sign patterns) and the number of seeds with a positive / negative "
                     "difference. Marked where the interval excludes 0.</p>"
                     + _paired_table(rows, "paired-table", VERDICT_METRICS) + "</section>")
        step("temperature scaling")
        parts.append('<section id="temperature"><h2>Temperature scaling</h2>' + _temperature_section(rows)
                     + "</section>")
        step("calibration")
        parts.append('<section id="calibration"><h2>Calibration</h2>' + _calibration(rows, spec) + "</section>")
        step("training curves")
        parts.append('<section id="training"><h2>Training curves and gradient norms</h2>' + _training(rows)
                     + "</section>")
        others = [r for r in rows if r["key"] != BASELINE and math.isfinite(r["stats"]["accuracy"].mean)]
        best = max(others, key=lambda r: r["stats"]["accuracy"].mean)["key"] if others else None
        step("the per-class view")
        parts.append('<section id="classes"><h2>Per-class view</h2>' + _confusion(rows, best) + "</section>")
    step("theory")
    parts.append('<section id="theory"><h2>Theory</h2>' + render_theory(theory_data) + "</section>")
    parts.append('<section id="records"><h2>Records</h2><p>Rendered from <code>spec.json</code>, '
                 "<code>records.jsonl</code> and <code>theory.json</code> alone: "
                 "<code>logitlab report RUN_DIR</code> gives this file byte for byte.</p></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run_dir: Path, output: Path | None = None, *, progress: Any = None) -> Path:
    """Render the report of ``run_dir`` to ``output`` (default ``run_dir/report.html``); return the path.

    The file is written whole (temporary file, then rename), so an interrupted rendering leaves
    the previous report, if any, in place.
    """
    run_dir = Path(run_dir)
    output = Path(output) if output is not None else run_dir / rec.REPORT
    text = render_report(run_dir, progress=progress)
    tmp = Path(str(output) + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output)
    if progress is not None:
        progress(f"report: written ({len(text) // 1024} KiB)", True)
    return output
