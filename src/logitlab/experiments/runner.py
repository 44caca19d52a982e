"""Train every combination of a study with the same budget and seeds, and append a record for each.

For one (combination, seed): the seed fixes the data split, the model's initialization and the
batch order, so all combinations of a seed start from the same weights and see the same
batches; different seeds draw different splits. The budget is a number of optimizer steps
(the batches cycle through the training split, reshuffled every pass). The registry objective
``make_objective(normalizer, loss, **params)`` trains the model's scores. The predicted
distribution for the metrics is the normalizer's output (with the combination's parameters
that the normalizer takes, e.g. x / Σx's ``positivity``); sigmoid's one-vs-all probabilities do
not sum to 1 and are divided by their row sum for the metrics (the argmax is unchanged); the
margin losses (hinge, perceptron) are listed with softmax, which gives their distribution.

After training, a temperature T is fitted on the validation split by NLL (:func:`fit_temperature`)
and the test metrics are measured again on the scores divided by T. A record also holds the
curves at ``eval_points`` evenly spaced steps, the share of the loss decrease made in the last
quarter of the steps (:func:`loss_drop_share`, the convergence check) and the test predictions.
"""

from __future__ import annotations

import ctypes
import inspect
import math
import multiprocessing
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from logitlab import metrics
from logitlab.experiments import records as rec
from logitlab.experiments import theory
from logitlab.experiments.data import Split, load_split
from logitlab.experiments.models import build_model, output_layer
from logitlab.experiments.report import run_warnings, write_report
from logitlab.experiments.spec import Combination, SpecError, StudySpec
from logitlab.fused.cross_entropy import linear_cross_entropy
from logitlab.registry import NORMALIZERS, get_normalizer, make_objective, resolve

__all__ = ["train_one", "run_study", "check_combinations", "predict_probs", "fit_temperature", "loss_drop_share",
           "RunExists", "print_progress"]

Progress = Callable[[str, bool], None]


def _normalizer_params(combo: Combination) -> dict[str, Any]:
    """The registry defaults of the normalizer, updated by the combination's parameters it accepts."""
    spec = NORMALIZERS[combo.normalizer]
    accepted = inspect.signature(resolve(spec.fn)).parameters
    return {**spec.params, **{k: v for k, v in combo.params if k in accepted and k != "dim"}}


def predict_probs(combo: Combination, logits: Tensor) -> Tensor:
    """The combination's predicted distribution (float64 rows on the simplex) for raw model scores."""
    probs = get_normalizer(combo.normalizer)(logits, **_normalizer_params(combo)).to(torch.float64)
    if combo.normalizer == "sigmoid":
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
    return probs


def _metrics(probs: Tensor, target: Tensor, spec: StudySpec) -> tuple[dict[str, Any], dict[str, Any]]:
    kw = {"validate": False}
    top = min(5, probs.shape[-1])
    values = {
        "accuracy": metrics.accuracy(probs, target, **kw),
        "top5_accuracy": (probs.topk(top, -1).indices == target.unsqueeze(-1)).any(-1).to(torch.float64).mean(),
        "nll": metrics.nll(probs, target, **kw),
        "nll_smoothed": metrics.nll(probs, target, smoothing=spec.nll_smoothing, **kw),
        "zero_prob_fraction": metrics.zero_probability_fraction(probs, target, **kw),
        "perplexity": torch.exp(metrics.nll(probs, target, smoothing=spec.nll_smoothing, **kw)),
        "brier": metrics.brier_score(probs, target, **kw),
        "ece_width": metrics.expected_calibration_error(probs, target, n_bins=spec.n_bins, **kw),
        "ece_mass": metrics.expected_calibration_error(probs, target, n_bins=spec.n_bins, binning="mass", **kw),
        "mce": metrics.maximum_calibration_error(probs, target, n_bins=spec.n_bins, **kw),
    }
    reliability = {b: metrics.reliability_diagram(probs, target, n_bins=spec.n_bins, binning=b, **kw)._asdict()
                   for b in metrics.BINNINGS}
    return {k: float(v) for k, v in values.items()}, rec.to_json(reliability)


def split_of(spec: StudySpec, seed: int) -> Split:
    """The data split of ``seed`` for ``spec`` (its dataset and every option that shapes the data)."""
    return load_split(spec.dataset, seed, val_fraction=spec.val_fraction, test_fraction=spec.test_fraction,
                      label=spec.label, vocab=spec.vocab, context=spec.context, text_mb=spec.text_mb,
                      max_rows=spec.max_rows)


# The training-loss curve and the temperature fit use at most this many rows (next-token data has
# tens of thousands; the vocabulary makes every row as wide as the number of classes).
CURVE_ROWS = 8192
FIT_ROWS = 2048  # the validation rows a temperature is fitted on (all of them for the tabular datasets)


def check_combinations(spec: StudySpec) -> None:
    """Build each combination's objective and run it once on a small batch (forward and backward).

    This checks the combinations' parameters before any training (and loads their code, so
    the first combination's wall time does not include imports).

    Raises:
        SpecError: a combination whose objective or normalizer rejects its parameters.
    """
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
              on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``combo`` on ``data`` with ``seed`` and return its record (metrics, curves, wall time).

    Runs on one CPU thread, so the same (spec, combination, seed) gives the same record whatever
    the caller's thread setting (reductions split over threads round differently).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_one(spec, combo, seed, data, on_step)
    finally:
        torch.set_num_threads(threads)


def loss_drop_share(train_loss: list[float]) -> float:
    """The share of the run's total decrease in training loss made in its last quarter of points.

    ``train_loss`` is the curve at evenly spaced points (the objective on the whole training split).
    Returns 0 when the loss did not decrease overall (nothing to converge), NaN for < 4 points.

    Example:
        >>> loss_drop_share([1.0, 0.5, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2])
        0.0
        >>> round(loss_drop_share([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]), 3)
        0.286
    """
    values = [v for v in train_loss if v is not None and math.isfinite(v)]
    if len(values) < 4 or len(values) != len(train_loss):
        return math.nan
    first, last = values[0], values[-1]
    quarter = values[len(values) - 1 - len(values) // 4]
    total = first - last
    if total <= 0:
        return 0.0
    return max(0.0, quarter - last) / total


def fit_temperature(logits: Tensor, target: Tensor, combo: Combination, *, smoothing: float) -> float:
    """The temperature T > 0 that minimizes the smoothed NLL of ``predict_probs(combo, logits / T)``.

    A one-dimensional search over log T in [log 0.05, log 20]: a grid of 25 points, then golden
    sections around the best of them. The NLL is smoothed (as in the metrics) so that a sparse
    map's zeros do not make it infinite.
    """
    def nll(log_t: float) -> float:
        probs = predict_probs(combo, logits / math.exp(log_t))
        value = float(metrics.nll(probs, target, smoothing=smoothing, validate=False))
        return value if math.isfinite(value) else math.inf  # NaN probabilities give a NaN NLL

    lo, hi = math.log(0.05), math.log(20.0)
    grid = [lo + (hi - lo) * i / 24 for i in range(25)]
    values = [nll(g) for g in grid]
    best = min(range(len(grid)), key=lambda i: (values[i], abs(grid[i])))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(20):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    log_t = (a + b) / 2
    if nll(log_t) > values[best]:
        log_t = grid[best]
    return math.exp(log_t)


# The combinations whose training loss is computed by the fused head + loss on the next-token
# model (logitlab.linear_cross_entropy: its impl="auto" materializes small logits and chunks large
# ones), with the options it takes; the others score the model's logits.
_FUSED_OPTIONS = frozenset({"label_smoothing", "z_loss"})


def _fused_objective(spec: StudySpec, combo: Combination, model):
    """``loss(x, y)`` through linear_cross_entropy for softmax + cross-entropy on the lm model, or None."""
    if not (spec.model == "lm" and combo.normalizer == "softmax" and combo.loss == "cross_entropy"
            and {name for name, _ in combo.params} <= _FUSED_OPTIONS):
        return None
    head, options = model.head, dict(combo.params)

    def loss(x, y):
        return linear_cross_entropy(model.features(x), head.weight, y, bias=head.bias, validate=False, **options)

    return loss


def _peak_step_mib(step: Callable[[], None]) -> float | None:
    """Run one training ``step`` and return the resident memory it added at its peak (MiB): glibc
    returns its free memory to the system first (``malloc_trim``, so that the step's buffers are
    counted rather than reused unseen) and the kernel's high-water mark is reset
    (/proc/self/clear_refs), then read. None where Linux's /proc does not allow it."""
    def field(name: str) -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(name + ":"))

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        before = field("VmRSS")
    except (OSError, StopIteration, ValueError):
        step()
        return None
    step()
    try:
        return max(0.0, (field("VmHWM") - before) / 1024)
    except (OSError, StopIteration, ValueError):
        return None


def _train_one(spec: StudySpec, combo: Combination, seed: int, data: Split,
               on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_model(spec.model, data.x_train.shape[1], data.num_classes, hidden=spec.hidden)
    head = output_layer(model)
    if spec.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay)
    # validate=False: the study's own data are checked once, when loaded (finite features, valid
    # classes); a non-finite loss is still caught below (the run is marked diverged).
    objective = make_objective(combo.normalizer, combo.loss, **{"validate": False, **dict(combo.params)})
    fused = _fused_objective(spec, combo, model)
    step_peak_mib = None
    batches = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    points = min(spec.eval_points, spec.steps)
    marks = {round(spec.steps * (i + 1) / points) for i in range(points)}
    curves: dict[str, list[float]] = {"step": [], "train_loss": [], "val_accuracy": [], "val_nll": [],
                                      "grad_norm": []}
    diverged = False
    step = 0
    grad_sum = 0.0
    since = 0
    order = torch.empty(0, dtype=torch.int64)
    position = 0
    train_seconds = 0.0
    while step < spec.steps:
        tick = time.perf_counter()
        if position >= order.numel():
            order, position = torch.randperm(n, generator=batches), 0
        index = order[position:position + spec.batch_size]
        position += spec.batch_size
        model.train()
        optimizer.zero_grad(set_to_none=True)
        x, y = data.x_train[index], data.y_train[index]
        loss_of = (lambda: fused(x, y)) if fused is not None else (lambda: objective(model(x), y))
        if step == 2:  # after two warm-up steps: the memory one training step adds at its peak
            def forward_backward():
                nonlocal loss
                loss = loss_of()
                if torch.isfinite(loss):
                    loss.backward()
            step_peak_mib = _peak_step_mib(forward_backward)
        else:
            loss = loss_of()
            if torch.isfinite(loss):
                loss.backward()
        if not torch.isfinite(loss):
            diverged = True
            break
        grad_sum += float(torch.sqrt(head.weight.grad.pow(2).sum() + head.bias.grad.pow(2).sum()))
        optimizer.step()
        since += 1
        step += 1
        train_seconds += time.perf_counter() - tick
        if step in marks:
            model.eval()
            with torch.no_grad():
                val_probs = predict_probs(combo, model(data.x_val))
                train_loss = float(objective(model(data.x_train[:CURVE_ROWS]), data.y_train[:CURVE_ROWS]))
            finite = bool(torch.isfinite(val_probs).all())
            curves["step"].append(step)
            curves["train_loss"].append(train_loss)
            curves["val_accuracy"].append(float(metrics.accuracy(val_probs, data.y_val, validate=False))
                                          if finite else math.nan)
            curves["val_nll"].append(float(metrics.nll(val_probs, data.y_val, smoothing=spec.nll_smoothing,
                                                       validate=False)) if finite else math.nan)
            curves["grad_norm"].append(grad_sum / since)
            if on_step is not None:
                on_step(step, train_loss)
            grad_sum = 0.0
            since = 0
    model.eval()
    with torch.no_grad():
        test_logits = model(data.x_test)
        val_logits = model(data.x_val)
        test_probs = predict_probs(combo, test_logits)
    finite = bool(torch.isfinite(test_probs).all())
    values, reliability, scaled, temperature, predictions = {}, {}, {}, None, {}
    if finite and not diverged:
        values, reliability = _metrics(test_probs, data.y_test, spec)
        predictions = {"target": data.y_test.tolist(), "predicted": test_probs.argmax(-1).tolist()}
        if spec.temperature_scaling:
            temperature = fit_temperature(val_logits[:FIT_ROWS], data.y_val[:FIT_ROWS], combo,
                                          smoothing=spec.nll_smoothing)
            scaled_probs = predict_probs(combo, test_logits / temperature)
            if bool(torch.isfinite(scaled_probs).all()):
                scaled, _ = _metrics(scaled_probs, data.y_test, spec)
    return {
        "kind": "result",
        "combination": combo.key,
        **combo.to_json(),
        "seed": seed,
        "steps_run": step,
        "epochs_run": step * spec.batch_size / n,
        "diverged": diverged or not finite,
        "loss_drop_share": loss_drop_share(curves["train_loss"]),
        "metrics": values,
        "temperature": temperature,
        "metrics_scaled": scaled,
        "reliability": reliability,
        "curves": curves,
        "predictions": predictions,
        "examples_per_s": step * spec.batch_size / train_seconds if train_seconds > 0 else None,
        "step_peak_mib": step_peak_mib,
        "output_path": "linear_cross_entropy" if fused is not None else "logits",
        "n_train": n,
        "n_val": int(data.y_val.shape[0]),
        "n_test": int(data.y_test.shape[0]),
        "num_classes": data.num_classes,
        "wall_time_s": time.perf_counter() - start,
    }


def print_progress(line: str, final: bool) -> None:
    """Progress on stdout: one rewritten line on a terminal, the final lines only otherwise."""
    stream = sys.stdout
    if stream.isatty():
        stream.write("\r\033[K" + line + ("\n" if final else ""))
        stream.flush()
    elif final:
        print(line, flush=True)


class RunExists(RuntimeError):
    """``out_dir`` holds a run already and neither ``resume`` nor ``force`` was given."""


def _warn(progress: Progress, text: str) -> None:
    progress(f"warning: {text}", True)


def run_study(spec: StudySpec, out_dir: Path, *, resume: bool = False, force: bool = False,
              progress: Progress = print_progress, announce: bool = False, workers: int = 1) -> Path:
    """Run (or, with ``resume``, complete) the study in ``out_dir``; return the report's path.

    A run already in ``out_dir`` (a spec.json or records.jsonl) is kept: ``resume`` completes
    it (the stored spec must equal ``spec``; the (combination, seed) pairs already recorded are
    skipped), ``force`` replaces it, and neither raises :class:`RunExists`. The directory is
    locked while the study runs (:func:`records.lock_run`), so two processes never write it
    at once. Damaged or duplicate lines of records.jsonl are skipped and reported. ``workers``
    processes train the (combination, seed) jobs in parallel (the records do not depend on it).

    Raises:
        RunExists: a run is in ``out_dir`` and neither ``resume`` nor ``force`` was given.
        records.RunLocked: another process is writing ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path = out_dir / rec.RECORDS
    with rec.lock_run(out_dir):
        existing = [name for name in (rec.SPEC, rec.RECORDS) if (out_dir / name).exists()]
        if existing and not resume and not force:
            raise RunExists(f"{out_dir} holds a run already ({', '.join(existing)}); complete it with "
                            f"`logitlab study --out {out_dir} --resume` or replace it with --force")
        if not resume:
            for name in (rec.RECORDS, rec.THEORY, rec.REPORT):
                (out_dir / name).unlink(missing_ok=True)
        rec.write_json(out_dir / rec.SPEC, spec.to_json())
        scan = rec.scan_records(records_path)
        if scan.skipped:
            _warn(progress, rec.describe_skipped(records_path, scan.skipped) + "; their runs are redone "
                  "where no usable record exists")
        done = rec.done_keys(scan.records)
        jobs = [(combo, seed) for seed in range(spec.seeds) for combo in spec.pairs]
        if announce:
            progress(f"study: {spec.dataset}, {spec.model} model, {len(spec.pairs)} combinations x {spec.seeds} "
                     f"seeds, {spec.steps} steps of {spec.batch_size} -> {out_dir}", True)
        # The models are tiny: one thread is fastest, and it avoids OpenMP spin-waits stalling on a busy machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            theory_path = out_dir / rec.THEORY
            _run_jobs(spec, jobs, done, records_path, progress, workers,
                      theory_path=None if theory_path.exists() else theory_path)
            if not (out_dir / rec.THEORY).exists():
                progress("theory: computing the data of the theory section", True)
                rec.write_json(out_dir / rec.THEORY, theory.collect(spec.pairs))
        finally:
            torch.set_num_threads(threads)
        for warning in _warnings(spec, rec.read_records(records_path)):
            _warn(progress, warning)
        return write_report(out_dir, progress=progress)


def _warnings(spec: StudySpec, records: list[dict[str, Any]]) -> list[str]:
    return [text for text, _ in run_warnings(spec.to_json(), records)]


def _summary_line(head: str, record: dict[str, Any]) -> str:
    m = record["metrics"]
    losses = record["curves"]["train_loss"]
    final = f"loss {losses[-1]:.4f}, " if losses else ""
    summary = (f"{final}test acc {m['accuracy']:.3f}, ECE {m['ece_width']:.3f}" if m else "diverged")
    if record["temperature"] is not None and record["metrics_scaled"]:
        summary += f" (T = {record['temperature']:.2f}: {record['metrics_scaled']['ece_width']:.3f})"
    return f"{head}: {record['steps_run']} steps, {summary}, {record['wall_time_s']:.1f} s"


def _bar(done: int, total: int, elapsed: float) -> str:
    """``[####------] 12/40, 9 s, about 21 s left``: the study's own progress bar (no dependency)."""
    width = 20
    filled = width * done // max(total, 1)
    left = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}, {elapsed:.0f} s{left}"


_WORKER_SPLITS: dict[tuple[str, int], Split] = {}


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo before the first job's clock


def _worker_job(task: tuple[dict[str, Any], int, int]) -> tuple[int, dict[str, Any]]:
    spec_json, index, seed = task
    spec = StudySpec.from_json(spec_json)
    key = (spec.dataset, seed)
    if key not in _WORKER_SPLITS:
        _WORKER_SPLITS[key] = split_of(spec, seed)
    return index, rec.to_json(train_one(spec, spec.pairs[index], seed, _WORKER_SPLITS[key]))


def _theory_job(spec_json: dict[str, Any]) -> dict[str, Any]:
    return theory.collect(StudySpec.from_json(spec_json).pairs)


def _run_jobs(spec: StudySpec, jobs: list[tuple[Combination, int]], done: set[tuple[str, int]],
              records_path: Path, progress: Progress, workers: int = 1, theory_path: Path | None = None) -> None:
    """Train the jobs not yet ``done`` and append their records in job order.

    With ``workers`` > 1 the jobs run in that many processes (each on one thread; the same
    record as in this process); records are still appended in job order, each as soon as every
    job before it has finished; the theory data (when ``theory_path`` is given) is computed in
    the pool beside them and written there.
    """
    total = len(jobs)
    todo = [(number, combo, seed) for number, (combo, seed) in enumerate(jobs, 1) if (combo.key, seed) not in done]
    for number, (combo, seed) in enumerate(jobs, 1):
        if (combo.key, seed) in done:
            progress(f"[{number}/{total}] {combo.key} seed {seed}: already recorded, skipped", True)
    start = time.perf_counter()
    with rec.RecordWriter(records_path) as writer:
        if workers <= 1 or len(todo) <= 1:
            splits: dict[int, Split] = {}
            for finished, (number, combo, seed) in enumerate(todo):
                head = f"[{number}/{total}] {combo.key} seed {seed}"
                if seed not in splits:
                    splits[seed] = split_of(spec, seed)

                def on_step(step: int, loss: float, head: str = head, finished: int = finished) -> None:
                    bar = _bar(finished, len(todo), time.perf_counter() - start)
                    progress(f"{bar} {head}: step {step}/{spec.steps} loss {loss:.4f}", False)

                record = train_one(spec, combo, seed, splits[seed], on_step)
                writer.append(record)
                progress(_summary_line(head, record), True)
            return
        index = {c.key: i for i, c in enumerate(spec.pairs)}
        tasks = [(spec.to_json(), index[combo.key], seed) for _, combo, seed in todo]
        heads = [f"[{number}/{total}] {combo.key} seed {seed}" for number, combo, seed in todo]
        position = {(index[combo.key], seed): i for i, (_, combo, seed) in enumerate(todo)}
        pool = multiprocessing.get_context("spawn").Pool(min(workers, len(todo)), initializer=_worker_init)
        try:
            ready: dict[int, dict[str, Any]] = {}
            next_out = 0
            progress(f"{_bar(0, len(todo), 0.0)} starting {min(workers, len(todo))} worker processes", False)
            theory_job = pool.apply_async(_theory_job, (spec.to_json(),)) if theory_path is not None else None
            for finished, (i, record) in enumerate(pool.imap_unordered(_worker_job, tasks), 1):
                ready[position[i, record["seed"]]] = record
                while next_out in ready:
                    record = ready.pop(next_out)
                    writer.append(record)
                    progress(_summary_line(heads[next_out], record), True)
                    next_out += 1
                progress(_bar(finished, len(todo), time.perf_counter() - start), False)
            if theory_job is not None:
                progress("theory: computed beside the training jobs", True)
                rec.write_json(theory_path, theory_job.get())
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
