"""Naive, obviously correct implementations: the truth that tests and benchmarks share.

Everything here is written for clarity, not speed: float64, explicit loops where they make the
definition plain, no tricks for stability beyond what the definition needs. This module imports
only torch and the standard library, never the rest of logitlab, so that a bug in the package
cannot leak into its own expected values.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

F64 = torch.float64


def _rows(x: Tensor, dim: int) -> tuple[Tensor, tuple[int, ...]]:
    moved = x.to(F64).movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1]), tuple(moved.shape)


def _unrows(rows: Tensor, shape: tuple[int, ...], dim: int) -> Tensor:
    return rows.reshape(shape).movedim(-1, dim)


# ---------------------------------------------------------------------------------------------
# Normalizers
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Losses and divergences
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Fused linear + loss
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Structures (linear-chain CRF by enumeration) and maximum entropy
# ---------------------------------------------------------------------------------------------
