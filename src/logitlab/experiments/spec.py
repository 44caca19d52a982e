"""What a study runs: the dataset, the model, the training budget and the output-layer × loss grid.

A :class:`StudySpec` is plain data (it round-trips through JSON). ``--set key=value`` overrides
are parsed and type-checked here by :func:`apply_overrides`; every error is a :class:`SpecError`
whose message lists the valid choices (the CLI turns it into exit status 2).

A combination is written ``normalizer+loss`` with optional parameters in brackets, e.g.
``softmax+cross_entropy[label_smoothing=0.1]`` or ``entmax+entmax_loss[alpha=1.3]``; the
parameters go to ``registry.make_objective`` (the loss, and the normalizer's own parameters for
losses that take a normalizer). x / Σx ("standard") is defined for non-negative scores only,
so the study gives it ``positivity=softplus`` unless another is written: the model's scores z
become softplus(z) = log(1 + e^z) > 0 before x / Σx (``standard_normalize``'s own option;
``relu``, ``abs`` and ``none`` are the others).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from logitlab.registry import valid_pairs

__all__ = [
    "SpecError",
    "Combination",
    "StudySpec",
    "DEFAULT_GRID",
    "BASELINE",
    "PRESETS",
    "LM_GRID",
    "DATASETS",
    "MODELS",
    "parse_combination",
    "parse_combinations",
    "apply_overrides",
]

DATASETS = ("digits", "wine", "breast_cancer", "iris", "stdlib-text")
# A user's own data: a path ending in one of these (see logitlab.experiments.data).
DATA_SUFFIXES = (".csv", ".npz")
MODELS = ("linear", "mlp", "lm")
OPTIMIZERS = ("adam", "sgd")
# Parameters the study adds when a combination does not set them: x / Σx needs positive scores.
_DEFAULT_PARAMS = {"standard": {"positivity": "softplus"}}


class SpecError(ValueError):
    """A bad study specification (unknown key, bad value, unknown dataset or pair)."""


@dataclass(frozen=True)
class Combination:
    """One output layer × loss: a registry normalizer, a registry loss and their parameters."""

    normalizer: str
    loss: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """The canonical text form, e.g. ``softmax+cross_entropy[label_smoothing=0.1]``."""
        items = [f"{k}={_format(v)}" for k, v in self.params]
        suffix = f"[{','.join(items)}]" if items else ""
        return f"{self.normalizer}+{self.loss}{suffix}"

    def to_json(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer, "loss": self.loss, "params": dict(self.params)}


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _valid_pairs() -> list[tuple[str, str]]:
    return valid_pairs(index_targets=True)


def parse_combination(text: str) -> Combination:
    """Parse ``normalizer+loss[key=value,...]`` and check the pair against the registry.

    Example:
        >>> parse_combination("softmax+cross_entropy[label_smoothing=0.1]").params
        (('label_smoothing', 0.1),)
        >>> parse_combination("standard+kl").key
        'standard+kl[positivity=softplus]'
    """
    body, params_text = text.strip(), ""
    if "[" in body:
        if not body.endswith("]"):
            raise SpecError(f"combination {text!r}: expected normalizer+loss[key=value,...]")
        body, params_text = body[:-1].split("[", 1)
    normalizer, plus, loss = body.partition("+")
    pairs = _valid_pairs()
    if not plus or (normalizer, loss) not in pairs:
        listed = ", ".join(f"{n}+{loss}" for n, loss in pairs)
        raise SpecError(f"unknown or invalid pair {body!r}; valid pairs for class-index training: {listed}")
    params: dict[str, Any] = dict(_DEFAULT_PARAMS.get(normalizer, {}))
    for item in _split_top(params_text):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SpecError(f"combination {text!r}: parameter {item!r} is not key=value")
        params[key.strip()] = _parse_value(value)
    return Combination(normalizer, loss, tuple(sorted(params.items())))


def parse_combinations(text: str) -> tuple[Combination, ...]:
    """A comma-separated list of combinations, or ``all`` (every registry pair for class targets)."""
    if text.strip() == "all":
        return tuple(parse_combination(f"{n}+{loss}") for n, loss in _valid_pairs())
    combos = tuple(parse_combination(part) for part in _split_top(text))
    if not combos:
        raise SpecError("pairs: expected at least one normalizer+loss")
    keys = [c.key for c in combos]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise SpecError(f"pairs: duplicate combination(s): {', '.join(duplicates)}")
    return combos


DEFAULT_GRID = (
    "softmax+cross_entropy",
    "softmax+cross_entropy[label_smoothing=0.1]",
    "softmax+brier",
    "softmax+focal",
    "softmax+js",
    "softmax+tv",
    "softmax+hellinger",
    "softmax+multiclass_hinge",
    "softmax+perceptron",
    "sigmoid+binary_cross_entropy",
    "standard+kl",
    "spherical_softmax+kl",
    "taylor_softmax+kl",
    "sparsemax+sparsemax_loss",
    "entmax15+entmax_loss",
)
# Next-token prediction on the standard library's source: every output layer that scales to the vocabulary.
LM_GRID = (
    "softmax+cross_entropy",
    "softmax+cross_entropy[label_smoothing=0.1]",
    "softmax+cross_entropy[z_loss=0.0001]",
    "softmax+brier",
    "softmax+focal",
    "sigmoid+binary_cross_entropy",
    "spherical_softmax+kl",
    "taylor_softmax+kl",
    "sparsemax+sparsemax_loss",
    "entmax15+entmax_loss",
)
# --preset NAME: overrides applied before the command line's own. 'lm' is sized for a small CPU
# machine; 'lm-large' is for a bigger one (more text, vocabulary, rows, steps and seeds).
PRESETS = {
    "lm": {"dataset": "stdlib-text", "model": "lm", "seeds": "3", "steps": "600", "batch_size": "256",
           "lr": "0.003", "hidden": "128", "vocab": "2048", "context": "4", "text_mb": "1.0",
           "max_rows": "30000", "eval_points": "10", "pairs": ",".join(LM_GRID)},
    "lm-large": {"dataset": "stdlib-text", "model": "lm", "seeds": "5", "steps": "3000", "batch_size": "512",
                 "lr": "0.002", "hidden": "256", "vocab": "8192", "context": "8", "text_mb": "8.0",
                 "max_rows": "200000", "eval_points": "20", "pairs": ",".join(LM_GRID)},
}
# The combination every other is compared with (paired per seed).
BASELINE = "softmax+cross_entropy"


@dataclass(frozen=True)
class StudySpec:
    """The whole study; every field can be set with ``--set key=value``.

    Attributes:
        dataset: a classification dataset bundled with scikit-learn, or the path of a ``.csv``
            (a header row, numeric features) or ``.npz`` (arrays ``x`` and ``y``) file.
        label: the label column of a ``.csv`` dataset (any values; each distinct one a class).
        model: 'linear' (softmax regression: one linear layer) or 'mlp' (one hidden ReLU layer).
        seeds: number of seeds (0 .. seeds-1); each seed draws its own stratified split, its own
            initialization and batch order, identically for every combination.
        steps, batch_size, lr, weight_decay, optimizer: the training budget in optimizer steps
            (the same for every dataset and combination; small datasets see more epochs).
        eval_points: how many evenly spaced points of the run record the curves (the objective
            on the whole training split, validation accuracy and NLL, output-layer gradient norm).
        hidden: hidden width of the MLP.
        val_fraction, test_fraction: the stratified split (the rest is training data).
        n_bins: calibration bins (ECE, MCE, reliability diagrams).
        nll_smoothing: ε of the smoothed NLL, (1 − ε) p + ε / C, applied to every combination.
        temperature_scaling: also fit a temperature on the validation split (by NLL) and measure
            the test metrics at it.
        vocab, context, text_mb: the 'stdlib-text' dataset: vocabulary size (the classes), the
            number of previous tokens a row holds, and how much source text is read (MB).
        max_rows: at most this many rows, drawn by the seed before the split (0: all rows).
        pairs: the output layer × loss grid.
    """

    dataset: str = "digits"
    label: str = "label"
    model: str = "linear"
    seeds: int = 8
    steps: int = 500
    eval_points: int = 20
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 0.0
    optimizer: str = "adam"
    hidden: int = 64
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    n_bins: int = 15
    nll_smoothing: float = 1e-4
    temperature_scaling: bool = True
    vocab: int = 2048
    context: int = 4
    text_mb: float = 1.0
    max_rows: int = 0
    pairs: tuple[Combination, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.pairs:
            object.__setattr__(self, "pairs", tuple(parse_combination(t) for t in DEFAULT_GRID))
        _check_spec(self)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "pairs"}
        out["pairs"] = [c.key for c in self.pairs]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StudySpec":
        data = dict(data)
        pairs = parse_combinations(",".join(data.pop("pairs", [])) or ",".join(DEFAULT_GRID))
        return apply_overrides(cls(pairs=pairs), {k: str(v) for k, v in data.items()})


# key -> (type, check description, predicate or choices)
_CHOICES = {"model": MODELS, "optimizer": OPTIMIZERS}
_NUMERIC = {
    "seeds": (int, "an int >= 1", lambda v: v >= 1),
    "steps": (int, "an int >= 1", lambda v: v >= 1),
    "eval_points": (int, "an int >= 2", lambda v: v >= 2),
    "batch_size": (int, "an int >= 1", lambda v: v >= 1),
    "hidden": (int, "an int >= 1", lambda v: v >= 1),
    "n_bins": (int, "an int >= 1", lambda v: v >= 1),
    "lr": (float, "a finite number > 0", lambda v: 0 < v < math.inf),
    "weight_decay": (float, "a finite number >= 0", lambda v: 0 <= v < math.inf),
    "val_fraction": (float, "a number in (0, 0.5)", lambda v: 0 < v < 0.5),
    "test_fraction": (float, "a number in (0, 0.5)", lambda v: 0 < v < 0.5),
    "nll_smoothing": (float, "a number in [0, 1)", lambda v: 0 <= v < 1),
    "vocab": (int, "an int >= 2", lambda v: v >= 2),
    "context": (int, "an int >= 1", lambda v: v >= 1),
    "text_mb": (float, "a number in (0, 1000]", lambda v: 0 < v <= 1000),
    "max_rows": (int, "an int >= 0 (0: all rows)", lambda v: v >= 0),
}


def _check_dataset(value: Any) -> None:
    if not isinstance(value, str) or not (value in DATASETS or value.lower().endswith(DATA_SUFFIXES)):
        raise SpecError(f"unknown dataset {value!r}; valid choices: {', '.join(DATASETS)}, "
                        f"or the path of a {' or '.join(DATA_SUFFIXES)} file")


def _check_spec(spec: StudySpec) -> None:
    _check_dataset(spec.dataset)
    if not isinstance(spec.label, str) or not spec.label:
        raise SpecError(f"label: expected a column name, got {spec.label!r}")
    if (spec.model == "lm") != (spec.dataset == "stdlib-text"):
        raise SpecError(f"model {spec.model!r} with dataset {spec.dataset!r}: the 'lm' model (token embeddings) "
                        "goes with the 'stdlib-text' dataset (token ids), and only with it; try --preset lm")
    if not isinstance(spec.temperature_scaling, bool):
        raise SpecError(f"temperature_scaling: expected true or false, got {spec.temperature_scaling!r}")
    for key, choices in _CHOICES.items():
        value = getattr(spec, key)
        if value not in choices:
            raise SpecError(f"unknown {key} {value!r}; valid choices: {', '.join(choices)}")
    for key, (kind, what, ok) in _NUMERIC.items():
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (kind is int and not isinstance(value, int)) or not ok(value):
            raise SpecError(f"{key}: expected {what}, got {value!r}")


def valid_keys() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(StudySpec))


def apply_overrides(spec: StudySpec, overrides: Mapping[str, str]) -> StudySpec:
    """Return ``spec`` with ``key=value`` text overrides applied, each checked against the spec.

    Example:
        >>> apply_overrides(StudySpec(), {"steps": "50", "pairs": "softmax+cross_entropy"}).steps
        50
        >>> apply_overrides(StudySpec(), {"step": "5"})
        Traceback (most recent call last):
        ...
        logitlab.experiments.spec.SpecError: unknown key 'step'; valid keys: dataset, label, model, ...
    """
    changes: dict[str, Any] = {}
    for key, text in overrides.items():
        if key not in valid_keys():
            raise SpecError(f"unknown key {key!r}; valid keys: {', '.join(valid_keys())}")
        if key == "pairs":
            changes[key] = parse_combinations(text)
        elif key in ("dataset", "label"):
            changes[key] = text
        elif key == "temperature_scaling":
            if text.strip().lower() not in ("true", "false"):
                raise SpecError(f"temperature_scaling: expected true or false, got {text!r}")
            changes[key] = text.strip().lower() == "true"
        elif key in _CHOICES:
            if text not in _CHOICES[key]:
                raise SpecError(f"unknown {key} {text!r}; valid choices: {', '.join(_CHOICES[key])}")
            changes[key] = text
        else:
            kind, what, _ = _NUMERIC[key]
            try:
                changes[key] = kind(text)
            except ValueError:
                raise SpecError(f"{key}: expected {what}, got {text!r}") from None
    return dataclasses.replace(spec, **changes)
