"""Train every combination of a study with the same budget and seeds, and append a record for each.

For one (combination, seed): the seed fixes the data split, the model's initialization and the
batch order, so all combinations of a seed start from the same weights and see the same
batches. The registry objective ``make_objective(normalizer, loss, **params)`` trains the
model's scores. The predicted distribution for the metrics is the normalizer's output (with
the combination's parameters that the normalizer takes, e.g. x / Σx's ``positivity``);
sigmoid's one-vs-all probabilities do not sum to 1 and are divided by their row sum for the
metrics (the argmax is unchanged).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from logitlab import metrics
from logitlab.experiments import records as rec
from logitlab.experiments.data import Split, load_split
from logitlab.experiments.models import build_model, output_layer
from logitlab.experiments.spec import Combination, StudySpec

__all__ = ["train_one", "run_study", "check_combinations", "predict_probs"]

Progress = Callable[[str, bool], None]


def _normalizer_params(combo: Combination) -> dict[str, Any]:
    """The registry defaults of the normalizer, updated by the combination's parameters it accepts."""
    import inspect

    from logitlab.registry import NORMALIZERS, resolve

    spec = NORMALIZERS[combo.normalizer]
    accepted = inspect.signature(resolve(spec.fn)).parameters
    return {**spec.params, **{k: v for k, v in combo.params if k in accepted and k != "dim"}}


def predict_probs(combo: Combination, logits: Tensor) -> Tensor:
    """The combination's predicted distribution (float64 rows on the simplex) for raw model scores."""
    from logitlab.registry import get_normalizer

    probs = get_normalizer(combo.normalizer)(logits, **_normalizer_params(combo)).to(torch.float64)
    if combo.normalizer == "sigmoid":
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
    return probs


def _metrics(probs: Tensor, target: Tensor, spec: StudySpec) -> tuple[dict[str, Any], dict[str, Any]]:
    kw = {"validate": False}
    values = {
        "accuracy": metrics.accuracy(probs, target, **kw),
        "nll": metrics.nll(probs, target, **kw),
        "nll_smoothed": metrics.nll(probs, target, smoothing=spec.nll_smoothing, **kw),
        "zero_prob_fraction": metrics.zero_probability_fraction(probs, target, **kw),
        "brier": metrics.brier_score(probs, target, **kw),
        "ece_width": metrics.expected_calibration_error(probs, target, n_bins=spec.n_bins, **kw),
        "ece_mass": metrics.expected_calibration_error(probs, target, n_bins=spec.n_bins, binning="mass", **kw),
        "mce": metrics.maximum_calibration_error(probs, target, n_bins=spec.n_bins, **kw),
    }
    reliability = {b: metrics.reliability_diagram(probs, target, n_bins=spec.n_bins, binning=b, **kw)._asdict()
                   for b in metrics.BINNINGS}
    return {k: float(v) for k, v in values.items()}, rec.to_json(reliability)


def check_combinations(spec: StudySpec) -> None:
    """Build each combination's objective and run it once on a small batch (forward and backward).

    This checks the combinations' parameters before any training (and loads their code, so
    the first combination's wall time does not include imports).

    Raises:
        SpecError: a combination whose objective or normalizer rejects its parameters.
    """
    from logitlab.registry import make_objective

    from logitlab.experiments.spec import SpecError

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo (seconds)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=generator)
    target = torch.tensor([0, 1, 2, 0])
    for combo in spec.pairs:
        try:
            scores = logits.clone().requires_grad_(True)
            loss = make_objective(combo.normalizer, combo.loss, **dict(combo.params))(scores, target)
            loss.backward()
            with torch.no_grad():
                predict_probs(combo, logits)
        except (TypeError, ValueError, ImportError, AttributeError, RuntimeError) as error:
            raise SpecError(f"combination {combo.key} cannot run: {type(error).__name__}: {error}") from None


def train_one(spec: StudySpec, combo: Combination, seed: int, data: Split,
              on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``combo`` on ``data`` with ``seed`` and return its record (metrics, curves, wall time).

    Runs on one CPU thread, so the same (spec, combination, seed) gives the same record whatever
    the caller's thread setting (reductions split over threads round differently).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_one(spec, combo, seed, data, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train_one(spec: StudySpec, combo: Combination, seed: int, data: Split,
               on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    from logitlab.registry import make_objective

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(spec.model, data.x_train.shape[1], data.num_classes, hidden=spec.hidden)
    head = output_layer(model)
    if spec.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay)
    objective = make_objective(combo.normalizer, combo.loss, **dict(combo.params))
    batches = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    curves: dict[str, list[float]] = {"train_loss": [], "val_accuracy": [], "grad_norm": []}
    diverged = False
    for epoch in range(spec.epochs):
        model.train()
        order = torch.randperm(n, generator=batches)
        loss_sum = grad_sum = 0.0
        steps = 0
        for index in torch.split(order, spec.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = objective(model(data.x_train[index]), data.y_train[index])
            if not torch.isfinite(loss):
                diverged = True
                break
            loss.backward()
            grad_sum += float(torch.sqrt(head.weight.grad.pow(2).sum() + head.bias.grad.pow(2).sum()))
            optimizer.step()
            loss_sum += loss.item()
            steps += 1
        if diverged:
            break
        model.eval()
        with torch.no_grad():
            val_probs = predict_probs(combo, model(data.x_val))
        val_acc = float(metrics.accuracy(val_probs, data.y_val, validate=False)) \
            if bool(torch.isfinite(val_probs).all()) else math.nan
        curves["train_loss"].append(loss_sum / steps)
        curves["val_accuracy"].append(val_acc)
        curves["grad_norm"].append(grad_sum / steps)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_sum / steps)
    model.eval()
    with torch.no_grad():
        test_probs = predict_probs(combo, model(data.x_test))
    finite = bool(torch.isfinite(test_probs).all())
    if finite:
        values, reliability = _metrics(test_probs, data.y_test, spec)
    else:
        values, reliability = {}, {}
    return {
        "kind": "result",
        "combination": combo.key,
        **combo.to_json(),
        "seed": seed,
        "epochs_run": len(curves["train_loss"]),
        "diverged": diverged or not finite,
        "metrics": values,
        "reliability": reliability,
        "curves": curves,
        "n_test": int(data.y_test.shape[0]),
        "wall_time_s": time.perf_counter() - start,
    }


def _print_progress(line: str, final: bool) -> None:
    import sys

    stream = sys.stdout
    if stream.isatty():
        stream.write("\r\033[K" + line + ("\n" if final else ""))
        stream.flush()
    elif final:
        print(line, flush=True)


def run_study(spec: StudySpec, out_dir: Path, *, resume: bool = False,
              progress: Progress = _print_progress) -> Path:
    """Run (or, with ``resume``, complete) the study in ``out_dir``; return the report's path.

    Without ``resume`` an existing run in ``out_dir`` is replaced. With ``resume`` the stored
    spec must equal ``spec``, and the (combination, seed) pairs already recorded are skipped.
    """
    from logitlab.experiments import theory
    from logitlab.experiments.report import write_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / rec.RECORDS
    if not resume:
        for name in (rec.RECORDS, rec.THEORY, rec.REPORT):
            (out_dir / name).unlink(missing_ok=True)
    rec.write_json(out_dir / rec.SPEC, spec.to_json())
    done = rec.done_keys(rec.read_records(records_path))
    jobs = [(combo, seed) for seed in range(spec.seeds) for combo in spec.pairs]
    # The models are tiny: one thread is fastest, and it avoids OpenMP spin-waits stalling on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_jobs(spec, jobs, done, records_path, progress)
        if not (out_dir / rec.THEORY).exists():
            progress("theory: computing the data of the theory section", True)
            rec.write_json(out_dir / rec.THEORY, theory.collect(spec.pairs))
    finally:
        torch.set_num_threads(threads)
    progress("report: rendering", True)
    return write_report(out_dir)


def _run_jobs(spec: StudySpec, jobs: list[tuple[Combination, int]], done: set[tuple[str, int]],
              records_path: Path, progress: Progress) -> None:
    total = len(jobs)
    with rec.RecordWriter(records_path) as writer:
        splits: dict[int, Split] = {}
        for number, (combo, seed) in enumerate(jobs, 1):
            head = f"[{number}/{total}] {combo.key} seed {seed}"
            if (combo.key, seed) in done:
                progress(f"{head}: already recorded, skipped", True)
                continue
            if seed not in splits:
                splits[seed] = load_split(spec.dataset, seed, val_fraction=spec.val_fraction,
                                          test_fraction=spec.test_fraction)

            def on_epoch(epoch: int, loss: float, head: str = head) -> None:
                progress(f"{head}: epoch {epoch}/{spec.epochs} loss {loss:.4f}", False)

            record = train_one(spec, combo, seed, splits[seed], on_epoch)
            writer.append(record)
            m = record["metrics"]
            losses = record["curves"]["train_loss"]
            final = f"loss {losses[-1]:.4f}, " if losses else ""
            summary = (f"{final}test acc {m['accuracy']:.3f}, ECE {m['ece_width']:.3f}" if m else "diverged")
            progress(f"{head}: {record['epochs_run']} epochs, {summary}, {record['wall_time_s']:.1f} s", True)
