"""The study's data: classification datasets bundled with scikit-learn or a user's own file, split and standardized.

Each seed draws its own stratified split into train / validation / test (scikit-learn's
``train_test_split`` with ``random_state=seed``), so the seeds vary the data as well as the
initialization; features are standardized with the training split's mean and standard
deviation (a constant feature is left at 0). scikit-learn is imported here only, when a dataset
is loaded.

A user's own data is a path: a ``.csv`` file with a header row, whose ``label`` column (any
values; each distinct value is a class, in sorted order) is the target and whose other columns
are numbers; or an ``.npz`` file with a 2-D array ``x`` (rows) and a 1-D array ``y``.
"""

from __future__ import annotations

import csv
from typing import NamedTuple

import torch
from torch import Tensor

from logitlab.experiments.spec import DATA_SUFFIXES, DATASETS, SpecError
from logitlab.experiments.text import next_token_rows

__all__ = ["Split", "load_split", "load_arrays", "DATASETS"]

_LOADERS = {"digits": "load_digits", "wine": "load_wine", "breast_cancer": "load_breast_cancer",
            "iris": "load_iris"}


class Split(NamedTuple):
    """Standardized float32 features (rows) and int64 classes for the three parts of a split."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


def _read_csv(path: str, label: str):
    import numpy as np

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise SpecError(f"dataset {path}: the file is empty")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if any(c.strip() for c in r)]
    if label not in header:
        raise SpecError(f"dataset {path}: no label column {label!r} (columns: {', '.join(header)}); "
                        "name it with --set label=COLUMN")
    where = header.index(label)
    features, labels = [], []
    for number, row in enumerate(body, 2):
        if len(row) != len(header):
            raise SpecError(f"dataset {path}:{number}: expected {len(header)} columns, got {len(row)}")
        try:
            features.append([float(v) for i, v in enumerate(row) if i != where])
        except ValueError as error:
            raise SpecError(f"dataset {path}:{number}: a feature is not a number ({error})") from None
        labels.append(row[where].strip())
    return np.asarray(features, dtype=np.float64).reshape(len(body), len(header) - 1), np.asarray(labels)


def _read_npz(path: str):
    import numpy as np

    with np.load(path, allow_pickle=False) as archive:
        if "x" not in archive or "y" not in archive:
            raise SpecError(f"dataset {path}: expected arrays 'x' (rows) and 'y' (labels), got {', '.join(archive)}")
        return np.asarray(archive["x"], dtype=np.float64), np.asarray(archive["y"])


def load_arrays(dataset: str, *, label: str = "label"):
    """The features (float64, rows) and class indices (int64, 0 .. C-1) of ``dataset``, unsplit.

    Raises:
        SpecError: an unknown name, a missing or malformed file, fewer than 2 classes, or a class
            with too few rows to appear in every split.
    """
    import numpy as np

    if dataset in _LOADERS:
        from sklearn import datasets

        bunch = getattr(datasets, _LOADERS[dataset])()
        return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    if not dataset.lower().endswith(DATA_SUFFIXES):
        raise SpecError(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}, "
                        f"or the path of a {' or '.join(DATA_SUFFIXES)} file")
    try:
        x, raw = _read_csv(dataset, label) if dataset.lower().endswith(".csv") else _read_npz(dataset)
    except OSError as error:
        raise SpecError(f"dataset {dataset}: cannot be read ({error.strerror or error})") from None
    if x.ndim != 2 or raw.ndim != 1 or x.shape[0] != raw.shape[0] or x.shape[1] == 0:
        raise SpecError(f"dataset {dataset}: expected features (rows, >= 1 columns) and one label per row, "
                        f"got {tuple(x.shape)} and {tuple(raw.shape)}")
    if not np.isfinite(x).all():
        raise SpecError(f"dataset {dataset}: the features hold NaN or infinite values")
    classes, y = np.unique(raw, return_inverse=True)
    counts = np.bincount(y)
    if len(classes) < 2 or counts.min() < 3:
        raise SpecError(f"dataset {dataset}: expected >= 2 classes with >= 3 rows each (one per split), got "
                        + ", ".join(f"{c}: {n}" for c, n in zip(classes.tolist(), counts.tolist())))
    return x, y.astype(np.int64)


_TEXT_CACHE: dict[tuple[int, int, float], tuple[Tensor, Tensor]] = {}


def _text_split(seed: int, val_fraction: float, test_fraction: float, vocab: int, context: int,
                text_mb: float, max_rows: int) -> Split:
    """Rows of the stdlib text drawn by ``seed``, split at random (many tokens are too rare to stratify)."""
    key = (vocab, context, text_mb)
    if key not in _TEXT_CACHE:
        try:
            _TEXT_CACHE[key] = next_token_rows(vocab=vocab, context=context, max_bytes=int(text_mb * 1e6))
        except ValueError as error:
            raise SpecError(f"dataset stdlib-text: {error}") from None
    x, y = _TEXT_CACHE[key]
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    if max_rows:
        order = order[:max_rows]
    n_test = max(1, round(test_fraction * order.numel()))
    n_val = max(1, round(val_fraction * order.numel()))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return Split(x[train], y[train], x[val], y[val], x[test], y[test], vocab)


def load_split(dataset: str, seed: int, *, val_fraction: float = 0.2, test_fraction: float = 0.2,
               label: str = "label", vocab: int = 2048, context: int = 4, text_mb: float = 1.0,
               max_rows: int = 0) -> Split:
    """Load ``dataset`` and return the split of ``seed``, standardized on its train part.

    Tabular data is split stratified by class; 'stdlib-text' (next-token rows, int64 token ids as
    features, ``vocab`` classes) at random. ``max_rows`` > 0 keeps that many rows, drawn by the seed.
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    if dataset == "stdlib-text":
        return _text_split(seed, val_fraction, test_fraction, vocab, context, text_mb, max_rows)
    x, y = load_arrays(dataset, label=label)
    if max_rows and x.shape[0] > max_rows:
        keep = np.sort(np.random.default_rng(seed).permutation(x.shape[0])[:max_rows])
        x, y = x[keep], y[keep]
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest, random_state=seed)
    mean = x_train.mean(0)
    std = x_train.std(0)
    std[std == 0] = 1.0

    def features(a):
        return torch.from_numpy((a - mean) / std).to(torch.float32)

    def labels(a):
        return torch.from_numpy(a).to(torch.int64)

    return Split(features(x_train), labels(y_train), features(x_val), labels(y_val),
                 features(x_test), labels(y_test), int(y.max()) + 1)
