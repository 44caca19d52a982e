"""``logitlab <verb>``: the command line.

Verbs: ``list`` (the registry), ``env`` (versions, for bug reports), ``demo`` (what each
normalizer does to a few inputs).
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Sequence

__all__ = ["main", "build_parser"]


def _cmd_list(args: argparse.Namespace) -> int:
    from logitlab.registry import LOSSES, NORMALIZERS, valid_pairs

    print("normalizers:")
    for name, spec in NORMALIZERS.items():
        print(f"  {name:<18} {spec.doc}")
    print("losses:")
    for name, spec in LOSSES.items():
        print(f"  {name:<22} {spec.doc}")
    print("valid pairs (normalizer + loss):")
    for normalizer, loss in valid_pairs():
        print(f"  {normalizer} + {loss}")
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
