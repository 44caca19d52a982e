"""The registry: one record per normalizer, per loss and per public op, and the valid pairs.

A :class:`Normalizer` is the object a loss needs: its map, its log-space form where it has one,
its Fenchel–Young regularizer Ω, its domain and flags, the parameters it takes and its float64
reference. A :class:`LossSpec` is a loss D(target ‖ model) and the normalizers it is defined for.
:data:`OPS` lists every public function of :mod:`logitlab.functional` (and the vocab-parallel
losses) with its ``logitlab.nn`` Module (or why it is not a layer), its reference and the inputs
its contract tests build.

The rows hold the functions themselves; everything a loss asks of a normalizer (which keywords
it takes, whether it takes ``validate``) is computed once, when the row is built, so nothing is
imported or inspected inside a call (nor inside code that ``torch.compile`` traces).

These rows generate the public surface: ``logitlab.functional``, ``logitlab.__all__``,
``logitlab list``, and the tables of the contract tests. Adding a map is its module, its row
here, its reference and its tests.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor

from logitlab import reference as R
from logitlab.normalizers.entmax import entmax, entmax15, entmax_with_info, tsallis15_regularizer, tsallis_regularizer
from logitlab.normalizers.sigmoid import binary_negentropy, log_sigmoid, sigmoid
from logitlab.normalizers.softmax import log_softmax, shannon_negentropy, softmax
from logitlab.normalizers.sparsemax import gini_regularizer, sparsemax
from logitlab.normalizers.spherical import spherical_softmax, taylor_softmax
from logitlab.normalizers.standard import standard_normalize

__all__ = [
    "Normalizer",
    "NormalizerSpec",
    "LossSpec",
    "Op",
    "NORMALIZERS",
    "LOSSES",
    "OPS",
    "PUBLIC_TYPES",
    "get_normalizer",
    "get_loss",
    "as_normalizer",
    "valid_pairs",
    "make_objective",
    "resolve",
]

DOMAINS = ("real", "nonnegative")


def _keywords(fn: Callable[..., Any] | None) -> tuple[frozenset[str], bool]:
    """The keyword names ``fn(x, *, dim, ...)`` takes besides its tensor and ``dim``, and whether
    it takes ``**kwargs``. Read once, when a row is built."""
    if fn is None:
        return frozenset(), False
    names, var = set(), False
    for index, (pname, param) in enumerate(inspect.signature(fn).parameters.items()):
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var = True
        elif index > 0 and pname != "dim" and param.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(pname)
    return frozenset(names), var


@dataclass(frozen=True)
class Normalizer:
    """A map from logits to a distribution, with everything a loss needs from it.

    Attributes:
        name: registry key.
        fn: the map, ``fn(logits, *, dim=-1, **params)``.
        module: the name of its ``logitlab.nn`` Module.
        params: default keyword parameters (e.g. ``{"alpha": 1.5}``).
        reference: its float64 reference in :mod:`logitlab.reference`, called as
            ``reference(logits, dim=..., **params)``.
        simplex: outputs lie on the probability simplex along ``dim`` (sigmoid's do not: it
            maps each score to its own Bernoulli probability).
        shift_invariant: adding a constant to a row leaves the output unchanged.
        sparse: can output exact zeros for finite logits.
        domain: 'real' (any logits) or 'nonnegative' (scores >= 0 unless a parameter such as
            ``positivity=`` maps them there).
        real_params: parameters that make a 'nonnegative' map defined on any real logits (the
            contract tests and the study pass them), e.g. ``{"positivity": "softplus"}``.
        closed_form_grad: the backward is a formula of the output (no differentiation through a
            solver's iterations).
        regularizer: Ω(p) for the Fenchel–Young loss, ``Ω(probs, *, dim=-1, ...)``, or None.
        log_fn: a stable log-space form ``log_fn(logits, *, dim=-1, ...)``, or None.
        log_module, log_reference: the ``logitlab.nn`` Module and the reference of ``log_fn``.
        regularizer_reference: the reference of Ω.
        doc: one line for ``logitlab list``.

    Derived when the row is built: ``takes`` (the keyword names ``fn`` accepts besides ``dim``),
    ``takes_any`` (it accepts ``**kwargs``), ``regularizer_takes`` and ``log_takes``.

    Calling the record applies the map with its default parameters:

    Example:
        >>> import torch
        >>> NORMALIZERS["entmax"](torch.tensor([1.0, 0.5, -1.0]), alpha=2.0)
        tensor([0.7500, 0.2500, 0.0000])
        >>> sorted(NORMALIZERS["entmax"].takes)
        ['alpha', 'impl', 'max_iter', 'tol', 'validate']
    """

    name: str
    fn: Callable[..., Tensor]
    module: str
    reference: Callable[..., Tensor]
    params: Mapping[str, Any] = field(default_factory=dict)
    simplex: bool = True
    shift_invariant: bool = True
    sparse: bool = False
    domain: str = "real"
    real_params: Mapping[str, Any] = field(default_factory=dict)
    closed_form_grad: bool = True
    regularizer: Callable[..., Tensor] | None = None
    regularizer_reference: Callable[..., Tensor] | None = None
    log_fn: Callable[..., Tensor] | None = None
    log_module: str | None = None
    log_reference: Callable[..., Tensor] | None = None
    doc: str = ""
    takes: frozenset[str] = field(init=False, repr=False, compare=False)
    takes_any: bool = field(init=False, repr=False, compare=False)
    regularizer_takes: frozenset[str] = field(init=False, repr=False, compare=False)
    log_takes: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"Normalizer(): argument 'domain' expected one of {DOMAINS}, got {self.domain!r}")
        if (self.regularizer is None) != (self.regularizer_reference is None):
            raise ValueError(f"Normalizer({self.name!r}): a regularizer and its reference come together")
        if (self.log_fn is None) != (self.log_module is None) or (self.log_fn is None) != (self.log_reference is None):
            raise ValueError(f"Normalizer({self.name!r}): a log_fn, its module and its reference come together")
        takes, takes_any = _keywords(self.fn)
        object.__setattr__(self, "takes", takes)
        object.__setattr__(self, "takes_any", takes_any)
        object.__setattr__(self, "regularizer_takes", _keywords(self.regularizer)[0])
        object.__setattr__(self, "log_takes", _keywords(self.log_fn)[0])

    def __call__(self, logits: Tensor, *, dim: int = -1, **params: Any) -> Tensor:
        """``fn(logits, dim=dim, **{**self.params, **params})``."""
        return self.fn(logits, dim=dim, **{**self.params, **params})


NormalizerSpec = Normalizer  # the name the tables had before the rows held their functions


@dataclass(frozen=True)
class LossSpec:
    """A loss D(target ‖ model).

    Attributes:
        name: registry key.
        fn: the loss, called as ``fn(logits, target, **params)`` and, when ``takes_normalizer``,
            with ``normalizer=<name or Normalizer>`` as well.
        module: the name of its ``logitlab.nn`` Module.
        target: 'index' (class indices), 'probs' (a distribution per row) or 'both'.
        normalizers: the normalizers this loss is defined for.
        reference: its reference in :mod:`logitlab.reference`.
        takes_normalizer: the function takes a ``normalizer=`` keyword.
        divergence: a divergence or a Fenchel–Young loss: non-negative and 0 exactly when the
            target is the model's distribution (the contract tests check it).
        index_objective: the loss is a sensible training objective for class-index targets
            (given as one-hot rows when ``target == 'probs'``).
        params: default keyword parameters.
        doc: one line for ``logitlab list``.
    """

    name: str
    fn: Callable[..., Tensor]
    module: str
    target: str
    normalizers: tuple[str, ...]
    reference: Callable[..., Tensor]
    takes_normalizer: bool = False
    divergence: bool = False
    index_objective: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


def _ref(fn: Callable[..., Tensor], **bound: Any) -> Callable[..., Tensor]:
    return functools.partial(fn, **bound) if bound else fn


NORMALIZERS: dict[str, Normalizer] = {n.name: n for n in [
    Normalizer(
        "softmax", softmax, "Softmax", R.softmax,
        regularizer=shannon_negentropy, regularizer_reference=R.shannon_negentropy,
        log_fn=log_softmax, log_module="LogSoftmax", log_reference=R.log_softmax,
        doc="exp(z / T) / Σ exp(z / T): the Gibbs distribution"),
    Normalizer(
        "sigmoid", sigmoid, "Sigmoid", R.sigmoid, simplex=False, shift_invariant=False,
        regularizer=binary_negentropy, regularizer_reference=_ref(R.regularizer, kind="binary"),
        log_fn=log_sigmoid, log_module="LogSigmoid", log_reference=R.log_sigmoid,
        doc="1 / (1 + exp(-z)) per score: one-vs-all Bernoulli"),
    Normalizer(
        "standard", standard_normalize, "StandardNormalize", R.standard_normalize,
        shift_invariant=False, domain="nonnegative", real_params={"positivity": "softplus"},
        doc="z / Σ z for non-negative scores"),
    Normalizer(
        "sparsemax", sparsemax, "Sparsemax", R.sparsemax, sparse=True,
        regularizer=gini_regularizer, regularizer_reference=R.gini_regularizer,
        doc="Euclidean projection onto the simplex"),
    Normalizer(
        "entmax15", entmax15, "Entmax15", R.entmax15, sparse=True,
        regularizer=tsallis15_regularizer, regularizer_reference=_ref(R.tsallis_regularizer, alpha=1.5),
        doc="1.5-entmax (Tsallis α = 1.5), exact"),
    Normalizer(
        "entmax", entmax, "Entmax", R.entmax_any_alpha, params={"alpha": 1.5}, sparse=True,
        regularizer=tsallis_regularizer, regularizer_reference=R.tsallis_regularizer,
        doc="α-entmax for any α > 0 (softmax at 1, dense below), by safeguarded Newton"),
    Normalizer(
        "entmax_dense", entmax, "Entmax", R.entmax_any_alpha, params={"alpha": 0.5},
        regularizer=tsallis_regularizer, regularizer_reference=R.tsallis_regularizer,
        doc="α-entmax below 1 (α = 0.5): dense, power-law tails; the same op as 'entmax'"),
    Normalizer(
        "spherical_softmax", spherical_softmax, "SphericalSoftmax", R.spherical_softmax,
        shift_invariant=False, doc="(z² + ε) / Σ (z² + ε)"),
    Normalizer(
        "taylor_softmax", taylor_softmax, "TaylorSoftmax", R.taylor_softmax, params={"order": 2},
        shift_invariant=False, doc="normalized Taylor expansion of exp, even order"),
]}

# The loss modules read NORMALIZERS when called (never at import), so they are imported after it.
from logitlab import information as _information  # noqa: E402
from logitlab import structured as _structured  # noqa: E402
from logitlab.distributed import vocab_parallel as _vocab_parallel  # noqa: E402
from logitlab.fused import cross_entropy as _fused_ce  # noqa: E402
from logitlab.fused import divergence as _fused_div  # noqa: E402
from logitlab.losses import cross_entropy as _ce  # noqa: E402
from logitlab.losses import divergences as _div  # noqa: E402
from logitlab.losses import fenchel_young as _fy  # noqa: E402
from logitlab.losses import focal as _focal  # noqa: E402
from logitlab.losses import margin as _margin  # noqa: E402

_SIMPLEX = tuple(name for name, spec in NORMALIZERS.items() if spec.simplex)
_FY = tuple(name for name, spec in NORMALIZERS.items() if spec.regularizer is not None)
# KL(target ‖ model) and Rényi are +inf wherever a sparse model puts 0 on a target class (always
# so for a one-hot target outside the support): listed for the dense normalizers only. The
# functions accept every simplex normalizer.
_DENSE = tuple(name for name in _SIMPLEX if not NORMALIZERS[name].sparse)

LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in [
    LossSpec(
        "cross_entropy", _ce.cross_entropy, "CrossEntropyLoss", "both", ("softmax",), R.cross_entropy,
        doc="H(target, softmax(z)) with weights, smoothing, ignore_index, z-loss"),
    LossSpec(
        "binary_cross_entropy", _ce.binary_cross_entropy_with_logits, "BCEWithLogitsLoss", "probs", ("sigmoid",),
        R.binary_cross_entropy_with_logits, doc="Σ_k BCE(target_k, sigmoid(z_k)): one-vs-all"),
    LossSpec(
        "kl", _div.kl_divergence, "KLDivergenceLoss", "probs", _DENSE, R.kl_divergence, takes_normalizer=True,
        divergence=True, doc="KL(target ‖ model); with one-hot targets, the cross-entropy of any normalizer"),
    LossSpec(
        "reverse_kl", _div.reverse_kl_divergence, "ReverseKLDivergenceLoss", "probs", _SIMPLEX,
        R.reverse_kl_divergence, takes_normalizer=True, divergence=True, index_objective=False,
        doc="KL(model ‖ target)"),
    LossSpec(
        "js", _div.js_divergence, "JSDivergenceLoss", "probs", _SIMPLEX, R.js_divergence, takes_normalizer=True,
        divergence=True, params={"beta": 0.5}, doc="generalized Jensen–Shannon JS_β(target ‖ model)"),
    LossSpec(
        "alpha", _div.alpha_divergence, "AlphaDivergenceLoss", "probs", _SIMPLEX, R.alpha_divergence,
        takes_normalizer=True, divergence=True, index_objective=False, params={"amari_alpha": 0.5},
        doc="Amari α-divergence"),
    LossSpec(
        "renyi", _div.renyi_divergence, "RenyiDivergenceLoss", "probs", _DENSE, R.renyi_divergence,
        takes_normalizer=True, divergence=True, params={"renyi_alpha": 0.5}, doc="Rényi divergence of order α"),
    LossSpec(
        "tv", _div.total_variation, "TotalVariationLoss", "probs", _SIMPLEX, R.total_variation,
        takes_normalizer=True, divergence=True, doc="½ Σ |target − model|"),
    LossSpec(
        "hellinger", _div.hellinger_distance, "HellingerLoss", "probs", _SIMPLEX, R.hellinger_distance,
        takes_normalizer=True, divergence=True, doc="squared Hellinger distance"),
    LossSpec(
        "brier", _div.brier_loss, "BrierLoss", "probs", _SIMPLEX, R.brier_loss, takes_normalizer=True,
        divergence=True, doc="Σ (target − model)²: squared error on probabilities"),
    LossSpec(
        "focal", _focal.focal_loss, "FocalLoss", "index", ("softmax",), R.focal_loss, params={"gamma": 2.0},
        doc="-(1 − p_y)^γ log p_y"),
    LossSpec(
        "poly1", _focal.poly1_cross_entropy, "Poly1CrossEntropyLoss", "index", ("softmax",), R.poly1_cross_entropy,
        params={"epsilon": 1.0}, doc="CE + ε (1 − p_y)"),
    # Margin losses act on the raw scores and model no probabilities; the study reads its predicted
    # distribution from softmax(z), the map they are listed with.
    LossSpec(
        "multiclass_hinge", _margin.multiclass_hinge_loss, "MulticlassHingeLoss", "index", ("softmax",),
        R.multiclass_hinge_loss, params={"margin": 1.0},
        doc="max(0, max_{k≠y} (m + z_k) − z_y): Crammer–Singer hinge on the scores"),
    LossSpec(
        "perceptron", _margin.perceptron_loss, "PerceptronLoss", "index", ("softmax",), R.perceptron_loss,
        doc="max_k z_k − z_y: the Fenchel–Young loss of argmax"),
    LossSpec(
        "fenchel_young", _fy.fenchel_young_loss, "FenchelYoungLoss", "both", _FY, R.fenchel_young_loss,
        takes_normalizer=True, divergence=True, doc="Ω*(z) + Ω(target) − ⟨z, target⟩"),
    LossSpec(
        "sparsemax_loss", _fy.sparsemax_loss, "SparsemaxLoss", "both", ("sparsemax",),
        _ref(R.fenchel_young_loss, kind="sparsemax"), divergence=True, doc="the Fenchel–Young loss of sparsemax"),
    LossSpec(
        "entmax_loss", _fy.entmax_loss, "EntmaxLoss", "both", ("entmax15", "entmax"), R.fenchel_young_loss,
        takes_normalizer=True, divergence=True, doc="the Fenchel–Young loss of α-entmax"),
]}


@dataclass(frozen=True)
class Op:
    """A public function and what the contract tests need to know about it.

    Attributes:
        name: its public name (``logitlab.<name>``, ``logitlab.functional.<name>``).
        fn: the function.
        module: the name of the ``logitlab.nn`` Module that wraps it, or None with ``not_a_layer``.
        not_a_layer: why it has no Module (a regularizer, a measurement, a factory, ...).
        reference: the reference in :mod:`logitlab.reference` it is tested against, or None with
            ``reference_note``.
        reference_note: where its reference lives when it is not one function (e.g. a dispatcher
            over the references of its choices).
        inputs: the calling convention the contract tests build inputs for (the keys of
            ``tests/test_compile.py``'s input builders: 'logits', 'nonnegative_logits', 'probs',
            'logits+index', 'logits+probs', 'log_probs+index', 'hidden+weight+index', ...), or None
            with ``no_inputs``.
        no_inputs: why the contract tests build no inputs for it (e.g. it needs a process group).
    """

    name: str
    fn: Callable[..., Any]
    module: str | None = None
    not_a_layer: str | None = None
    reference: Callable[..., Any] | None = None
    reference_note: str | None = None
    inputs: str | None = None
    no_inputs: str | None = None

    def __post_init__(self) -> None:
        for have, why, what in [(self.module, self.not_a_layer, "module/not_a_layer"),
                                (self.reference, self.reference_note, "reference/reference_note"),
                                (self.inputs, self.no_inputs, "inputs/no_inputs")]:
            if (have is None) == (why is None):
                raise ValueError(f"Op({self.name!r}): exactly one of {what}")


_REGULARIZER = "a regularizer Ω(p) of a normalizer: FenchelYoungLoss uses it"
_CRF = "LinearChainCRF"
_HMM = "HiddenMarkovModel"
_INPUTS = {"index": "logits+index", "probs": "logits+probs", "both": "logits+index"}


def _ops() -> dict[str, Op]:
    rows: list[Op] = []
    seen: set[Callable[..., Any]] = set()
    for spec in NORMALIZERS.values():
        inputs = "nonnegative_logits" if spec.domain == "nonnegative" else "logits"
        candidates = [Op(spec.fn.__name__, spec.fn, module=spec.module, reference=spec.reference, inputs=inputs)]
        if spec.log_fn is not None:
            candidates.append(Op(spec.log_fn.__name__, spec.log_fn, module=spec.log_module,
                                 reference=spec.log_reference, inputs=inputs))
        if spec.regularizer is not None:
            candidates.append(Op(spec.regularizer.__name__, spec.regularizer, not_a_layer=_REGULARIZER,
                                 reference=spec.regularizer_reference, inputs="probs"))
        for op in candidates:
            if op.fn not in seen:  # 'entmax' and 'entmax_dense' share their functions
                seen.add(op.fn)
                rows.append(op)
    for spec in LOSSES.values():
        rows.append(Op(spec.fn.__name__, spec.fn, module=spec.module, reference=spec.reference,
                       inputs=_INPUTS[spec.target]))
    rows += [
        Op("nll_loss", _ce.nll_loss, module="NLLLoss", reference=R.nll_loss, inputs="log_probs+index"),
        Op("log_likelihood", _ce.log_likelihood, module="LogLikelihood",
           reference_note="Σ_i logitlab.reference.log_softmax(logits)[i, y_i]", inputs="logits+index"),
        Op("divergence_loss", _div.divergence_loss, module="DivergenceLoss",
           reference_note="the reference of the divergence it is asked for (logitlab.reference.kl_divergence, ...)",
           inputs="logits+probs"),
        Op("entmax15_loss", _fy.entmax15_loss, module="Entmax15Loss",
           reference=_ref(R.fenchel_young_loss, kind="entmax15"), inputs="logits+index"),
        Op("make_fenchel_young_loss", _fy.make_fenchel_young_loss,
           not_a_layer="a factory: it returns a loss function (the op), built from a user's Ω",
           reference=R.fenchel_young_loss, no_inputs="a factory: the loss it returns is a function of a user's Ω"),
        Op("entmax_with_info", entmax_with_info,
           not_a_layer="the solve report of entmax (Module Entmax): a diagnostic, not a layer",
           reference=R.entmax_any_alpha, no_inputs="returns the solver's report, a NamedTuple with Python fields"),
        Op("entropy", _information.entropy,
           not_a_layer="a measurement of given distributions (analysis), not a function of logits",
           reference=R.entropy, inputs="probs"),
        Op("cross_entropy_between", _information.cross_entropy_between,
           not_a_layer="a measurement of given distributions (analysis); CrossEntropyLoss is the layer",
           reference=R.cross_entropy_between, inputs="probs+probs"),
        Op("kl_between", _information.kl_between,
           not_a_layer="a measurement of given distributions (analysis); KLDivergenceLoss is the layer",
           reference=R.kl_divergence, inputs="probs+probs"),
        Op("decompose", _information.decompose,
           not_a_layer="a measurement returning three parts (analysis), not a loss",
           reference_note="its parts' references: entropy, cross_entropy_between, kl_divergence",
           inputs="logits+probs"),
        # The CRF layer holds the transition scores; its forward, decode and marginals call these.
        Op("linear_chain_crf_nll", _structured.linear_chain_crf_nll, module=_CRF,
           reference=R.linear_chain_crf_brute_force, inputs="emissions+transitions+tags"),
        Op("crf_log_partition", _structured.crf_log_partition, module=_CRF,
           reference=R.linear_chain_crf_brute_force, inputs="emissions+transitions"),
        Op("crf_marginals", _structured.crf_marginals, module=_CRF,
           reference=R.linear_chain_crf_brute_force, inputs="emissions+transitions"),
        Op("viterbi_decode", _structured.viterbi_decode, module=_CRF,
           reference=R.linear_chain_crf_brute_force, no_inputs="returns integer paths: nothing to differentiate"),
        Op("chain_forward", _structured.chain_forward,
           not_a_layer="the generic dynamic program over a semiring; LinearChainCRF's methods are its uses",
           reference_note="the brute force over paths of each semiring it is used with (linear_chain_crf_brute_force)",
           no_inputs="generic over a semiring object; its uses (crf_*) are compiled"),
        Op("crf_entropy", _structured.crf_entropy, module=_CRF,
           reference=R.linear_chain_crf_brute_force, inputs="emissions+transitions"),
        Op("crf_kbest_scores", _structured.crf_kbest_scores, module=_CRF,
           reference=R.linear_chain_crf_brute_force, inputs="emissions+transitions"),
        Op("hmm_log_likelihood", _structured.hmm_log_likelihood, module=_HMM, reference=R.hmm_brute_force,
           inputs="hmm"),
        Op("hmm_posteriors", _structured.hmm_posteriors, module=_HMM, reference=R.hmm_brute_force, inputs="hmm"),
        Op("hmm_viterbi", _structured.hmm_viterbi, module=_HMM, reference=R.hmm_brute_force,
           no_inputs="returns integer paths: nothing to differentiate"),
        Op("hmm_entropy", _structured.hmm_entropy, module=_HMM, reference=R.hmm_brute_force, inputs="hmm"),
        Op("linear_cross_entropy", _fused_ce.linear_cross_entropy, module="LinearCrossEntropy",
           reference=R.linear_cross_entropy, inputs="hidden+weight+index"),
        Op("linear_cross_entropy_with_lse", _fused_ce.linear_cross_entropy_with_lse,
           not_a_layer="linear_cross_entropy plus statistics in a NamedTuple: LinearCrossEntropy is the layer, "
                       "the statistics are logging",
           reference=R.linear_cross_entropy, inputs="hidden+weight+index"),
        Op("linear_divergence_loss", _fused_div.linear_divergence_loss, module="LinearDivergenceLoss",
           reference=R.linear_divergence_loss, inputs="hidden+weight+teacher"),
    ]
    return {op.name: op for op in rows}


OPS: dict[str, Op] = _ops()
# The vocab-parallel losses: public in logitlab.distributed (not in functional), with their Modules.
DISTRIBUTED_OPS: dict[str, Op] = {op.name: op for op in [
    Op("vocab_parallel_cross_entropy", _vocab_parallel.vocab_parallel_cross_entropy,
       module="VocabParallelCrossEntropy", reference=R.cross_entropy,
       no_inputs="needs a process group (tests/distributed/test_vocab_parallel.py runs it on gloo ranks)"),
    Op("vocab_parallel_kl_divergence", _vocab_parallel.vocab_parallel_kl_divergence,
       module="VocabParallelKLDivergence", reference=R.kl_divergence,
       no_inputs="needs a process group (tests/distributed/test_vocab_parallel.py runs it on gloo ranks)"),
]}
# Public types the functions return or raise, exported beside them.
PUBLIC_TYPES: dict[str, type] = {
    "Decomposition": _information.Decomposition,
    "LinearCrossEntropyResult": _fused_ce.LinearCrossEntropyResult,
}


def resolve(path: str | Callable[..., Any]) -> Callable[..., Any]:
    """The function a row names: rows hold their functions, returned as they are; a
    ``"module:function"`` string (the tables' former form) is imported.

    Example:
        >>> resolve(NORMALIZERS["softmax"].fn) is NORMALIZERS["softmax"].fn
        True
    """
    if callable(path):
        return path
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _lookup(table: Mapping[str, Any], kind: str, name: object, fn: str, arg: str) -> Any:
    """``table[name]``, or a ValueError naming the caller ``fn``, its argument ``arg`` and the choices."""
    if not isinstance(name, str) or name not in table:
        raise ValueError(
            f"{fn}(): argument '{arg}' expected a registered {kind}, got {name!r} "
            f"(unknown {kind} {name!r}; expected one of: " + ", ".join(sorted(table)) + ")")
    return table[name]


def as_normalizer(normalizer: str | Normalizer, *, fn: str = "as_normalizer",
                  arg: str = "normalizer") -> Normalizer:
    """The :class:`Normalizer` record of a registry name; a record is returned as it is.

    Losses call this once, at their public boundary; a loss may also be given a record that is
    not registered (a user's own map with its Ω).

    Example:
        >>> as_normalizer("sparsemax").sparse
        True
    """
    if isinstance(normalizer, Normalizer):
        return normalizer
    return _lookup(NORMALIZERS, "normalizer", normalizer, fn, arg)


def get_normalizer(name: str) -> Callable[..., Tensor]:
    """The functional normalizer registered as ``name``, with its default parameters bound.

    Example:
        >>> import torch
        >>> get_normalizer("softmax")(torch.zeros(2))
        tensor([0.5000, 0.5000])
    """
    spec = _lookup(NORMALIZERS, "normalizer", name, "get_normalizer", "name")
    if not spec.params:
        return spec.fn
    fn, defaults = spec.fn, dict(spec.params)

    def bound(logits: Tensor, **kwargs: Any) -> Tensor:
        return fn(logits, **{**defaults, **kwargs})

    bound.__name__ = name
    bound.__doc__ = fn.__doc__
    return bound


def get_loss(name: str) -> Callable[..., Tensor]:
    """The functional loss registered as ``name``."""
    return _lookup(LOSSES, "loss", name, "get_loss", "name").fn


def valid_pairs(*, index_targets: bool = False) -> list[tuple[str, str]]:
    """Every (normalizer, loss) pair that is defined, in table order.

    With ``index_targets=True``, only the pairs that make a training objective for class-index
    targets (the pairs the study may run).
    """
    pairs = []
    for loss, spec in LOSSES.items():
        if index_targets and not spec.index_objective:
            continue
        for normalizer in NORMALIZERS:
            if normalizer in spec.normalizers:
                pairs.append((normalizer, loss))
    return pairs


def make_objective(normalizer: str, loss: str, **params: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """A training objective ``objective(logits, target) -> scalar`` for class-index targets.

    ``logits`` is (N, C), ``target`` is (N,) integer classes; the loss is averaged over rows.
    Losses that take probability targets receive the one-hot rows. ``params`` go to the loss
    (and, for losses that take a normalizer, the normalizer's own parameters such as ``alpha``).

    Example:
        >>> import torch
        >>> objective = make_objective("softmax", "cross_entropy", label_smoothing=0.1)
        >>> float(objective(torch.zeros(3, 4), torch.tensor([0, 1, 2])))  # log 4
        1.386...
    """
    nspec = _lookup(NORMALIZERS, "normalizer", normalizer, "make_objective", "normalizer")
    lspec = _lookup(LOSSES, "loss", loss, "make_objective", "loss")
    if normalizer not in lspec.normalizers:
        raise ValueError(
            f"make_objective(): argument 'normalizer' expected one of {', '.join(map(repr, lspec.normalizers))} "
            f"for loss {loss!r}, got {normalizer!r} (loss {loss!r} is not defined for normalizer {normalizer!r})")
    fn = lspec.fn
    kwargs = {**lspec.params, **params}
    if lspec.takes_normalizer:
        kwargs = {**nspec.params, **kwargs, "normalizer": normalizer}

    def objective(logits: Tensor, target: Tensor) -> Tensor:
        if lspec.target == "probs":
            import torch.nn.functional as F

            target = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
        return fn(logits, target, **kwargs)

    objective.__name__ = f"{normalizer}+{loss}"
    return objective
