"""``logitlab <verb>``: the command line.

Verbs: ``study`` (train every output layer × loss on bundled data and write a report),
``report`` (re-render a run's report from its stored records), ``list`` (the registry), ``env``
(versions, for bug reports), ``demo`` (what each normalizer does to a few inputs), ``explore``
(write the offline explorer page: move the logits, watch every map, loss and gradient).
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


# What a loss computes where its registry line does not say it exactly (checked in tests/test_cli.py).
_LOSS_COMPUTES = {
    "binary_cross_entropy": "(1/C) Σ_k BCE(target_k, sigmoid(z_k)): one-vs-all, averaged over the C classes "
                            "(torch's 'mean' is over all N·C elements)",
}


def _flags(spec) -> str:
    flags = [word for word, on in [("simplex", spec.simplex), ("shift-invariant", spec.shift_invariant),
                                   ("sparse", spec.sparse), ("scores >= 0", spec.domain == "nonnegative"),
                                   ("log form", spec.log_fn is not None), ("Ω", spec.regularizer is not None)] if on]
    params = ", ".join(f"{k}={v!r}" for k, v in spec.params.items())
    return f"[{', '.join(flags)}]" + (f" ({params})" if params else "")


def _cmd_list(args: argparse.Namespace) -> int:
    from logitlab.registry import LOSSES, NORMALIZERS, OPS, valid_pairs

    print("normalizers:")
    for name, spec in NORMALIZERS.items():
        print(f"  {name:<18} {spec.doc} {_flags(spec)}")
    print("losses (the value of one example; a batch is averaged over its rows):")
    for name, spec in LOSSES.items():
        print(f"  {name:<22} {_LOSS_COMPUTES.get(name, spec.doc)}")
    print("valid pairs (normalizer + loss):")
    for normalizer, loss in valid_pairs():
        print(f"  {normalizer} + {loss}")
    print("public ops (logitlab.<op>) and their logitlab.nn Modules:")
    for name, op in OPS.items():
        print(f"  {name:<30} {('nn.' + op.module) if op.module else '(not a layer)'}")
    return 0


CPU_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_bf16", "amx_tile",
                       "asimd", "sve"})


def _cmd_env(args: argparse.Namespace) -> int:
    import torch

    import logitlab

    print(f"logitlab {logitlab.__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"torch {torch.__version__} (threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()})")
    print(f"platform {platform.platform()} {platform.machine()}")
    for name in ("numpy", "sklearn", "matplotlib", "entmax"):
        try:
            module = __import__(name)
            print(f"{name} {getattr(module, '__version__', '?')}")
        except ImportError:
            print(f"{name} not installed")
    from logitlab import _native

    print(f"cpu flags that matter: {' '.join(sorted(_native.cpu_flags() & CPU_FLAGS)) or 'none'}")
    print(f"native builds this CPU executes: {', '.join(_native.supported_builds())}")
    for kernel in sorted(path.stem for path in _native.source_dir().glob("*.c")):
        _native.load(kernel)
        info = _native.status().get(kernel, {})
        if not info:
            print(f"native kernel {kernel}: off (LOGITLAB_NATIVE=0)")
        elif "error" in info:
            print(f"native kernel {kernel}: unavailable, eager fallback ({info['error']})")
        else:
            how = f"compiled now in {info['compile_s']:.1f} s" if info["compiled"] else "cached"
            print(f"native kernel {kernel}: build {info['build']} ({info['why']}), {info['path']} "
                  f"({how}, {info['compiler']})")
    from logitlab import _memory, backend

    pool = _memory.cache_info()
    state = ("on" if pool["enabled"] else "off (LOGITLAB_BUFFER_CACHE=0)" if _memory.LINUX
             else "off (Linux only)")
    print(f"reuse of large CPU output buffers: {state}, up to {_memory.SLOTS} buffers of >= "
          f"{_memory.MIN_BYTES >> 20} MiB; {pool['buffers']} pooled now")
    print("impl='auto' on CPU tensors here (logitlab.backend; CUDA tensors take 'triton' where an op has it, "
          "else 'torch'):")
    for op, row in backend.auto_choices().items():
        print(f"  {op:<30} " + "  ".join(f"{dtype} -> {impl}" for dtype, impl in row.items()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from logitlab.registry import NORMALIZERS, get_normalizer

    torch.set_printoptions(precision=4, sci_mode=False)
    inputs = {
        "z = [1, 2]": torch.tensor([1.0, 2.0]),
        "10 z = [10, 20]": torch.tensor([10.0, 20.0]),
        "z = [3, 1, 0.2, -inf]": torch.tensor([3.0, 1.0, 0.2, float("-inf")]),
    }
    for title, logits in inputs.items():
        print(title)
        for name in NORMALIZERS:
            try:
                out = get_normalizer(name)(logits)
                print(f"  {name:<18} {out}")
            except (ValueError, ImportError, AttributeError) as error:
                print(f"  {name:<18} -> {type(error).__name__}: {error}")
    return 0


def _study_overrides(args: argparse.Namespace) -> dict[str, str]:
    from logitlab.experiments.spec import PRESETS

    overrides: dict[str, str] = {}
    if args.preset is not None:
        if args.preset not in PRESETS:
            raise _UsageError(f"--preset: unknown preset {args.preset!r}; valid choices: {', '.join(PRESETS)}")
        overrides.update(PRESETS[args.preset])
    for flag in ("dataset", "model", "seeds", "steps"):
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = str(value)
    for item in args.set or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise _UsageError(f"--set {item!r}: expected key=value")
        overrides[key.strip().replace("-", "_")] = value.strip()
    return overrides


class _UsageError(Exception):
    """A bad command line: reported through argparse (exit status 2)."""


_STUDY_MODULES = (("numpy", "numpy"), ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"))


def _check_study_extra(args: argparse.Namespace) -> None:
    """Exit 2 naming the extra when the study's packages are not installed."""
    import importlib.util

    missing = [name for module, name in _STUDY_MODULES if importlib.util.find_spec(module) is None]
    if missing:
        args.parser.error(f"the study needs {', '.join(missing)} (not installed): "
                          "pip install 'logitlab[study]'")


def _stored_spec(path, what: str):
    """The StudySpec stored at ``path``; a damaged file raises _UsageError naming it and why."""
    from logitlab.experiments import records
    from logitlab.experiments.spec import SpecError, StudySpec, valid_keys

    try:  # a damaged spec.json would otherwise surface as a JSONDecodeError or KeyError traceback
        data = records.read_json(path)
        if not isinstance(data, dict):
            raise SpecError(f"expected a JSON object, got {type(data).__name__}")
        missing = [key for key in valid_keys() if key not in data]
        if missing:
            raise SpecError(f"missing keys: {', '.join(missing)}")
        return StudySpec.from_json(data)
    except (ValueError, UnicodeDecodeError) as error:  # SpecError and json.JSONDecodeError are ValueErrors
        raise _UsageError(f"{what}{path} is not a stored study spec ({error})") from None


def _jobs(text: str | None) -> int:
    import os

    if text is None:
        return max(1, min(4, os.cpu_count() or 1))
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise _UsageError(f"--jobs: expected an int >= 1, got {text!r}")
    return value


def _cmd_study(args: argparse.Namespace) -> int:
    from pathlib import Path

    _check_study_extra(args)
    from logitlab.experiments import records
    from logitlab.experiments.runner import RunExists, check_combinations, run_study
    from logitlab.experiments.spec import SpecError, StudySpec, apply_overrides

    try:
        overrides = _study_overrides(args)
        base = StudySpec()
        out = Path(args.out) if args.out else None
        if args.resume and args.force:
            raise _UsageError("--resume and --force exclude each other (complete the run, or start it again)")
        if args.resume:
            if out is None:
                probe = apply_overrides(base, overrides)
                out = Path("runs") / f"{probe.dataset}-{probe.model}"
            stored = out / records.SPEC
            if not stored.exists():
                raise _UsageError(f"--resume: no run to resume in {out} (no {records.SPEC})")
            base = _stored_spec(stored, "--resume: ")
            spec = apply_overrides(base, overrides)
            if spec != base:
                changed = [k for k, v in spec.to_json().items() if base.to_json()[k] != v]
                raise _UsageError(f"--resume: the options differ from the stored run in {out} "
                                   f"({', '.join(changed)}); drop them or start a new --out")
        else:
            spec = apply_overrides(base, overrides)
            out = out or Path("runs") / f"{spec.dataset}-{spec.model}"
        jobs = _jobs(args.jobs)
        if out.exists() and not out.is_dir():
            raise _UsageError(f"--out {out}: is a file, not a directory; name a directory for the run")
        check_combinations(spec)
    except (SpecError, _UsageError) as error:
        args.parser.error(str(error))
    resume_hint = f"logitlab study --out {out} --resume"
    try:
        report = run_study(spec, out, resume=args.resume, force=args.force, announce=True, workers=jobs)
    except RunExists as error:
        args.parser.error(str(error))
    except records.RunLocked as error:
        args.parser.error(str(error))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished combinations are in {out / records.RECORDS}; complete the run with "
              f"`{resume_hint}`", file=sys.stderr, flush=True)
        return 130
    print(report, flush=True)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    _check_study_extra(args)
    from logitlab.experiments import records
    from logitlab.experiments.report import write_report

    run_dir = Path(args.run_dir)
    stored = run_dir / records.SPEC
    if not stored.exists():
        args.parser.error(f"{run_dir} is not a run directory (no {records.SPEC})")
    try:
        _stored_spec(stored, "")
    except _UsageError as error:
        args.parser.error(str(error))
    try:
        path = write_report(run_dir, Path(args.output) if args.output else None, progress=_render_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: nothing written; render again with `logitlab report {run_dir}`",
              file=sys.stderr, flush=True)
        return 130
    print(path, flush=True)
    return 0


def _cmd_explore(args: argparse.Namespace) -> int:
    from logitlab.explorer import DEFAULT_OUT, write_explorer

    try:
        path = write_explorer(args.out or DEFAULT_OUT)
    except OSError as error:
        args.parser.error(f"--out {args.out or DEFAULT_OUT}: cannot write the page ({error})")
    if args.open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"explore: no browser found; open {path} yourself", file=sys.stderr)
    print(path, flush=True)
    return 0


def _render_progress(line: str, final: bool) -> None:
    from logitlab.experiments.runner import print_progress

    print_progress(line, final)


_STUDY_EPILOG = """\
--set keys (type-checked): dataset, label, model, seeds, steps, eval_points, batch_size, lr,
weight_decay, optimizer (adam|sgd), hidden, val_fraction, test_fraction, n_bins, nll_smoothing,
temperature_scaling (true|false), vocab, context, text_mb, max_rows (stdlib-text), pairs.
pairs is a comma-separated list of normalizer+loss[key=value,...] (see `logitlab list`) or
`all`, e.g. --set pairs='softmax+cross_entropy,softmax+focal[gamma=1.0],standard+kl[positivity=softplus]'.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="<verb>")
    sub.required = True
    p = sub.add_parser("list", help="registered normalizers, losses and valid pairs")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("env", help="versions and machine, for bug reports")
    p.set_defaults(func=_cmd_env)
    p = sub.add_parser("demo", help="what each normalizer does to a few inputs")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("study", help="train every output layer x loss on bundled data; write records and a report",
                       description="Train every output layer x loss with the same model, optimizer, budget and "
                       "seeds; append one record per (combination, seed) to OUT/records.jsonl and write "
                       "OUT/report.html. The last line printed is the report's path.",
                       epilog=_STUDY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="digits (default), wine, breast_cancer, iris, stdlib-text (next-token rows of "
                   "the standard library's source; with --model lm), or your own data: a .csv "
                   "file with a header and a label column (--set label=COLUMN, default 'label') or an .npz "
                   "file with arrays x and y")
    p.add_argument("--model", help="linear (default: softmax regression), mlp (one hidden layer) or lm (token "
                   "embeddings, one GELU layer, an LM head; for stdlib-text)")
    p.add_argument("--seeds", help="number of seeds, each its own split and initialization (default 8)")
    p.add_argument("--steps", help="training budget in optimizer steps (default 500)")
    p.add_argument("--preset", metavar="NAME", help="a named set of options, applied before the others: lm (next-token "
                   "prediction on the standard library's source, every output layer that scales to a 2048-token "
                   "vocabulary; sized for a small CPU machine) or lm-large (8192 tokens, for a bigger machine)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a spec field (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/<dataset>-<model>); a run already "
                   "there is kept: complete it with --resume or replace it with --force")
    p.add_argument("--resume", action="store_true", help="complete an interrupted run in --out without redoing "
                   "finished combinations")
    p.add_argument("--force", action="store_true", help="replace a run already in --out")
    p.add_argument("--jobs", metavar="N", help="train in N processes (default: the CPU count, at most 4); "
                   "the records do not depend on it")
    p.set_defaults(func=_cmd_study, parser=p)
    p = sub.add_parser("report", help="re-render a run's report from its stored records",
                       description="Render RUN_DIR/report.html (or FILE) from spec.json, records.jsonl and "
                       "theory.json alone; the same records give the same bytes.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `logitlab study`")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write the HTML (default RUN_DIR/report.html)")
    p.set_defaults(func=_cmd_report, parser=p)
    p = sub.add_parser("explore", help="write the explorer page: move the logits, watch every map and loss",
                       description="Write one self-contained HTML page (no network) where K logits, a "
                       "temperature, entmax's alpha and a target can be moved and every normalizer, loss and "
                       "gradient follows. The last line printed is the page's path.")
    p.add_argument("--out", metavar="FILE", help="where to write the page (default explorer.html)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=_cmd_explore, parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C outside the verbs' own handlers (imports, set-up): no traceback
        print(f"\ninterrupted: logitlab {args.command} stopped", file=sys.stderr, flush=True)
        return 130
