"""The study's data: classification datasets bundled with scikit-learn, split and standardized.

Each seed gives its own fixed stratified split into train / validation / test; features are
standardized with the training split's mean and standard deviation (a constant feature is left
at 0). scikit-learn is imported here only, when a dataset is loaded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from logitlab.experiments.spec import DATASETS, SpecError

__all__ = ["Split", "load_split", "DATASETS"]

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


def load_split(dataset: str, seed: int, *, val_fraction: float = 0.2, test_fraction: float = 0.2) -> Split:
    """Load ``dataset`` and return the stratified split of ``seed``, standardized on its train part."""
    if dataset not in _LOADERS:
        raise SpecError(f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS)}")
    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = getattr(datasets, _LOADERS[dataset])()
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
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
