"""The report's theory section: data from logitlab.analysis, logitlab.maxent and logitlab.information.

:func:`collect` calls the theory functions once, when a study finishes, and returns plain data
that the run directory stores as ``theory.json``; :func:`render` turns that data into figures
and paragraphs, so re-rendering a report needs the stored file only. A part whose function is
missing or fails is stored with the reason and shown as a note, never silently dropped.
"""

from __future__ import annotations

import html
from typing import Any, Callable

from logitlab.experiments import plots

__all__ = ["collect", "render", "SECTIONS"]

NUM_CLASSES = 10
MARGINS = [-12.0 + 0.5 * i for i in range(49)]          # -12 .. 12
SCALES = [10 ** (-1 + 0.05 * i) for i in range(41)]      # 0.1 .. 10


def _array(value: Any) -> Any:
    """Tensors / arrays to nested lists; NamedTuples, dataclasses and dicts to dicts of the same."""
    if hasattr(value, "_asdict"):
        return {k: _array(v) for k, v in value._asdict().items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: _array(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _array(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_array(v) for v in value]
    return value


def _field(data: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in data:
            return data[name]
    raise KeyError(f"none of the fields {', '.join(names)} in result with fields {', '.join(data)}")


def _gradient_sweep() -> dict[str, Any]:
    import torch

    from logitlab.analysis import gradient_sweep
    from logitlab.registry import valid_pairs

    margins = torch.tensor(MARGINS, dtype=torch.float64)
    curves, failed = {}, {}
    for normalizer, loss in valid_pairs(index_targets=True):
        key = f"{normalizer}+{loss}"
        try:
            result = _array(gradient_sweep(normalizer, loss, margins=margins, num_classes=NUM_CLASSES))
            norms = _field(result, "grad_norm", "gradient_norm", "norm", "grad_norms") if isinstance(result, dict) else result
            curves[key] = [float(x) for x in norms]
        except Exception as error:  # noqa: BLE001 - shown in the report
            failed[key] = f"{type(error).__name__}: {error}"
    if not curves:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in failed.items()) or "no valid pairs")
    return {"margins": MARGINS, "num_classes": NUM_CLASSES, "curves": curves, "failed": failed}


def _scale_response() -> dict[str, Any]:
    import torch

    from logitlab.analysis import scale_response

    logits = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    scales = torch.tensor(SCALES, dtype=torch.float64)
    out = {"logits": logits.tolist(), "scales": SCALES, "probs": {}}
    for name in ("softmax", "standard"):
        result = _array(scale_response(name, logits, scales))
        probs = _field(result, "probs", "probabilities") if isinstance(result, dict) else result
        out["probs"][name] = probs
    return out


def _decomposition() -> dict[str, Any]:
    import torch

    from logitlab.information import decompose

    target_probs = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    direction = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    temps = [0.25 * i for i in range(17)]  # logits t * direction, t = 0 .. 4
    rows = []
    for t in temps:
        result = _array(decompose(t * direction, target_probs))
        rows.append({"cross_entropy": float(_field(result, "cross_entropy", "ce")),
                     "entropy": float(_field(result, "entropy", "target_entropy")),
                     "kl": float(_field(result, "kl", "kl_divergence"))})
    return {"target_probs": target_probs.tolist(), "direction": direction.tolist(), "t": temps, "rows": rows}


def _underflow() -> dict[str, Any]:
    from logitlab.analysis import likelihood_underflow

    return {"result": _array(likelihood_underflow())}


def _maxent() -> dict[str, Any]:
    import torch

    from logitlab.maxent import MaxEntProblem, solve_maxent

    scores = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64)
    out = {"scores": scores.tolist(), "targets": [], "solved": [], "softmax": []}
    for mean in [0.9 + 0.1 * i for i in range(18)]:
        result = _array(solve_maxent(MaxEntProblem(scores=scores, mean=mean)))
        out["targets"].append(mean)
        out["solved"].append(_field(result, "probs", "solution", "p"))
    return out


SECTIONS: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "gradient_sweep": ("logitlab.analysis.gradient_sweep", _gradient_sweep),
    "scale_response": ("logitlab.analysis.scale_response", _scale_response),
    "maxent": ("logitlab.maxent.solve_maxent", _maxent),
    "decomposition": ("logitlab.information.decompose", _decomposition),
    "underflow": ("logitlab.analysis.likelihood_underflow", _underflow),
}


def collect() -> dict[str, Any]:
    """Run every theory part; each is ``{"available": True, "data": ...}`` or ``{"available": False, "reason": ...}``."""
    out = {}
    for name, (source, fn) in SECTIONS.items():
        try:
            out[name] = {"available": True, "source": source, "data": fn()}
        except Exception as error:  # noqa: BLE001 - the reason is stored and shown
            out[name] = {"available": False, "source": source, "reason": f"{type(error).__name__}: {error}"}
    return out


# ---------------------------------------------------------------- rendering


def _note(title: str, part: dict[str, Any] | None) -> str:
    if part is None:
        reason, source = "this run has no theory data (theory.json missing)", ""
    else:
        reason, source = part.get("reason", ""), part.get("source", "")
    return (f'<p class="note">{html.escape(title)}: not available in this run; <code>{html.escape(source)}</code> '
            f"could not be used ({html.escape(reason)}).</p>")


def _render_gradient_sweep(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    margins, curves = data["margins"], data["curves"]
    series = [(k, margins, [max(v, 1e-30) for v in ys]) for k, ys in curves.items()]
    png = plots.line_panels([{"title": f"gradient norm w.r.t. the logits vs margin ({data['num_classes']} classes)",
                              "xlabel": "margin of the true class", "ylabel": "‖∂loss/∂z‖", "logy": True,
                              "series": series, "legend_cols": 2}], width=7.5, height=4.0)
    low = [(ys[0], k) for k, ys in curves.items()]
    text = "; ".join(f"{html.escape(k)} {v:.3g}" for v, k in sorted(low, reverse=True))
    failed = data.get("failed") or {}
    extra = f" Not computed: {html.escape(', '.join(failed))}." if failed else ""
    return figure(png, "gradient sweep", [
        "Claim: with softmax + cross-entropy the gradient on a confidently wrong example stays at a constant, "
        "non-zero size (p − y tends to a fixed vector), so the model keeps learning from its worst mistakes; "
        "squared error on probabilities (Brier) and other saturating losses give a gradient that vanishes there.",
        f"Measured at margin {margins[0]:g} (most confidently wrong), gradient norm per pair, largest first: {text}.{extra}"])


def _render_scale_response(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    scales = data["scales"]
    series = []
    for name, probs in data["probs"].items():
        top = [max(row) if isinstance(row, list) else row for row in probs]
        series.append((f"{name}: largest probability", scales, top))
    png = plots.line_panels([{"title": f"scores {data['logits']} × scale", "xlabel": "scale", "ylabel": "largest probability",
                              "logx": True, "series": series}], width=6, height=3.4)
    parts = [f"{html.escape(s[0].split(':')[0])} from {s[2][0]:.3f} to {s[2][-1]:.3f}" for s in series]
    return figure(png, "scale response", [
        "Claim: softmax reads the scale of the scores as confidence (multiplying them sharpens the distribution, "
        "the inverse temperature), while x / Σx ignores the scale entirely: it cannot express confidence "
        "through the size of the scores.",
        f"Measured over scales {scales[0]:g} to {scales[-1]:g}: " + "; ".join(parts) + "."])


def _render_decomposition(data: dict[str, Any]) -> str:
    from logitlab.experiments.report import figure

    t = data["t"]
    rows = data["rows"]
    series = [(name, t, [r[name] for r in rows]) for name in ("cross_entropy", "entropy", "kl")]
    png = plots.line_panels([{"title": f"H(target, model) = H(target) + KL(target ‖ model), target {data['target_probs']}",
                              "xlabel": "t (logits = t · direction)", "ylabel": "nats", "series": series}],
                            width=6, height=3.4)
    gap = max(abs(r["cross_entropy"] - r["entropy"] - r["kl"]) for r in rows)
    best = min(range(len(rows)), key=lambda i: rows[i]["kl"])
    return figure(png, "cross-entropy decomposition", [
        "Claim: the cross-entropy of the model against the target is the target's own entropy (fixed, "
        "the irreducible part) plus KL(target ‖ model); minimizing cross-entropy is minimizing the KL.",
        f"Measured: the largest |H − (entropy + KL)| over the sweep is {gap:.2g}; the cross-entropy is "
        f"smallest at t = {t[best]:g}, where KL = {rows[best]['kl']:.3g} nats."])


def _render_generic(title: str, data: dict[str, Any]) -> str:
    text = html.escape(str(data))
    if len(text) > 600:
        text = text[:600] + " …"
    return (f'<p class="note">{html.escape(title)}: the data is stored, but this report version cannot plot '
            f"its format yet: <code>{text}</code></p>")


_RENDERERS: dict[str, tuple[str, Callable[[dict[str, Any]], str] | None]] = {
    "gradient_sweep": ("Gradient sweep per pair", _render_gradient_sweep),
    "scale_response": ("Scale response: softmax vs x / Σx", _render_scale_response),
    "maxent": ("Maximum entropy gives softmax and sigmoid", None),
    "decomposition": ("Cross-entropy = entropy + KL", _render_decomposition),
    "underflow": ("Products of likelihoods underflow", None),
}


def render(theory: dict[str, Any] | None) -> str:
    """HTML of the theory section (one subsection per part) from stored theory data."""
    parts = []
    for name, (title, renderer) in _RENDERERS.items():
        part = None if theory is None else theory.get(name)
        parts.append(f'<h3 id="theory-{name}">{html.escape(title)}</h3>')
        if part is None or not part.get("available"):
            parts.append(_note(title, part))
        elif renderer is None:
            parts.append(_render_generic(title, part["data"]))
        else:
            try:
                parts.append(renderer(part["data"]))
            except (KeyError, TypeError, ValueError, IndexError) as error:
                parts.append(_note(title, {"source": part.get("source", ""),
                                           "reason": f"stored data has an unexpected form: {type(error).__name__}: {error}"}))
    return "\n".join(parts)

