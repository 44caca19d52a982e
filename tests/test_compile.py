"""``torch.compile(fullgraph=True)`` over every public op of the registry, on CPU (issue 22, item 4).

Each row of ``registry.OPS`` names its calling convention (``Op.inputs``); :data:`INPUTS` builds
small float64 inputs for each convention, so a new op with a known convention is compiled here
with nothing to edit. Every op is compiled with ``fullgraph=True`` (a graph break fails), with
``validate=True`` and ``validate=False`` where it takes ``validate``, and its values and
gradients are compared with the eager call; the ops with several implementations
(``backend.OPS``) are compiled once more with each of ``impl="native"`` and ``impl="torch"``
(the fused heads' chunk loop then runs inside the custom ops of ``logitlab/fused/_ops.py``).

Under torch.compile the data checks (NaN, ``-inf`` rows, probabilities summing to 1, index
ranges) are skipped, as with ``validate=False``: they need a host branch on the values. The
structural checks (dtype, shape, ``dim``, options) still raise while tracing.

The backend is ``aot_eager``: Dynamo traces the whole call (a graph break is a Dynamo error,
whatever the backend) and AOTAutograd traces its backward, without Inductor's C++ build for
each of the ~100 graphs; one test runs Inductor end to end on a small model.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import logitlab
from logitlab import backend, registry

F64 = torch.float64
BACKEND = "aot_eager"

# Cases that still break, each with its reason; strict, so a mark that is no longer needed fails.
# None today: the fused heads' chunk loop runs inside custom ops under torch.compile
# (logitlab/fused/_ops.py), and crf_marginals / hmm_posteriors compute their marginals by an
# explicit forward-backward recursion instead of torch.autograd.grad.
KNOWN_BREAKS: dict[str, str] = {}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(g, shape=(4, 6)):
    return torch.randn(shape, generator=g, dtype=F64)


def _probs(g, shape=(4, 6)):
    return torch.softmax(torch.randn(shape, generator=g, dtype=F64), -1)


def _index(g, n=6, rows=4):
    return torch.randint(0, n, (rows,), generator=g)


def _hmm(g):
    states, symbols, steps = 3, 4, 5
    return ((torch.randint(0, symbols, (2, steps), generator=g),
             torch.log_softmax(torch.randn(states, generator=g, dtype=F64), -1),
             torch.log_softmax(torch.randn(states, states, generator=g, dtype=F64), -1),
             torch.log_softmax(torch.randn(states, symbols, generator=g, dtype=F64), -1)), {})


# convention -> builder(generator) -> (positional args, keyword args); floating args get gradients
INPUTS = {
    "logits": lambda g: ((_logits(g),), {}),
    "nonnegative_logits": lambda g: ((_logits(g).abs() + 0.1,), {}),
    "probs": lambda g: ((_probs(g),), {}),
    "probs+probs": lambda g: ((_probs(g), _probs(g)), {}),
    "logits+index": lambda g: ((_logits(g), _index(g)), {}),
    "logits+probs": lambda g: ((_logits(g), _probs(g)), {}),
    "log_probs+index": lambda g: ((torch.log_softmax(_logits(g), -1), _index(g)), {}),
    "emissions+transitions": lambda g: ((_logits(g, (2, 5, 3)), _logits(g, (3, 3))), {}),
    "emissions+transitions+tags": lambda g: ((_logits(g, (2, 5, 3)), _logits(g, (3, 3)),
                                              torch.randint(0, 3, (2, 5), generator=g)), {}),
    "hmm": _hmm,
    "hidden+weight+index": lambda g: ((_logits(g, (5, 4)), _logits(g, (7, 4)), _index(g, 7, 5)), {}),
    "hidden+weight+teacher": lambda g: ((_logits(g, (5, 4)), _logits(g, (7, 4))),
                                        {"teacher_hidden": _logits(g, (5, 4)), "teacher_weight": _logits(g, (7, 4))}),
}
# Required options of a few ops (keyword-only arguments without a default).
OPTIONS = {"crf_kbest_scores": {"k": 2}}


def _cases():
    for name, op in registry.OPS.items():
        if op.inputs is None:
            continue
        takes_validate = "validate" in inspect.signature(op.fn).parameters
        for validate in ((True, False) if takes_validate else (None,)):
            marks = [pytest.mark.xfail(reason=KNOWN_BREAKS[name], strict=True)] if name in KNOWN_BREAKS else []
            label = "no-validate-option" if validate is None else f"validate={validate}"
            yield pytest.param(name, validate, id=f"{name}-{label}", marks=marks)


def _float_tensors(tree):
    leaves = tree if isinstance(tree, (tuple, list)) else (tree,)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _run(fn, args, kwargs):
    """The op's outputs and the gradients of a fixed random projection of them w.r.t. the floating inputs."""
    leaves = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    out = fn(*args, **kwargs)
    outs = _float_tensors(out)
    total = sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).reshape(o.shape)).sum()
                for o in outs if o.requires_grad)
    grads = torch.autograd.grad(total, leaves, allow_unused=True) if isinstance(total, torch.Tensor) else ()
    return out, [g for g in grads if g is not None]


def test_every_op_has_inputs_or_says_why():
    for name, op in list(registry.OPS.items()) + list(registry.DISTRIBUTED_OPS.items()):
        assert (op.inputs in INPUTS) if op.inputs is not None else bool(op.no_inputs), name
    assert set(KNOWN_BREAKS) <= set(registry.OPS), "stale xfail marks"
    assert {name for name, _ in NATIVE_XFAIL} <= set(backend.OPS), "stale xfail marks"


@pytest.mark.parametrize("name,validate", list(_cases()))
def test_compiles_without_graph_breaks_and_equals_eager(name, validate):
    op = registry.OPS[name]
    args, kwargs = INPUTS[op.inputs](_gen())
    kwargs = {**kwargs, **OPTIONS.get(name, {})}
    if validate is not None:
        kwargs["validate"] = validate

    def fresh():
        copy = [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) and a.is_floating_point()
                else a for a in args]
        kw = {k: (v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) and v.is_floating_point()
                  else v) for k, v in kwargs.items()}
        return copy, kw

    torch._dynamo.reset()
    eager_out, eager_grads = _run(op.fn, *fresh())
    compiled = torch.compile(op.fn, fullgraph=True, backend=BACKEND)
    out, grads = _run(compiled, *fresh())
    for got, want in zip(_float_tensors(out), _float_tensors(eager_out), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert len(grads) == len(eager_grads)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# Ops with more than one implementation, compiled with each of "native" (float32: the kernels'
# dtypes) and "torch" (float64), values and gradients; strict xfails with their reasons, as
# KNOWN_BREAKS, keyed (op, impl).
_XENT_TORCH = ("impl='torch' of the one-pass cross-entropy reads `bool(excluded.any())` on the host "
               "(losses/_xent_kernel.py fused_forward), a data-dependent branch Dynamo cannot trace")
NATIVE_XFAIL: dict[tuple[str, str], str] = {("cross_entropy", "torch"): _XENT_TORCH,
                                            ("poly1_cross_entropy", "torch"): _XENT_TORCH}
_NATIVE_OFF = pytest.mark.skipif(not backend.native_enabled(), reason="LOGITLAB_NATIVE=0 switches the native "
                                                                      "kernels off")


def _impl_cases():
    for impl in ("native", "torch"):
        for name, impls in backend.OPS.items():
            # the vocab-parallel losses need a process group: tests/distributed compiles them
            if impl not in impls or name not in registry.OPS or registry.OPS[name].inputs is None:
                continue
            marks = [_NATIVE_OFF] if impl == "native" else []
            if (name, impl) in NATIVE_XFAIL:
                marks.append(pytest.mark.xfail(reason=NATIVE_XFAIL[name, impl], strict=True))
            yield pytest.param(name, impl, id=f"{name}-{impl}", marks=marks)


@pytest.mark.parametrize("name,impl", list(_impl_cases()))
def test_each_impl_compiles_without_graph_breaks(name, impl):
    op = registry.OPS[name]
    args, kwargs = INPUTS[op.inputs](_gen(4))
    dtype = torch.float32 if impl == "native" else F64

    def fresh():
        def leaf(a):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                return a.detach().to(dtype).requires_grad_(True)
            return a
        return [leaf(a) for a in args], {**{k: leaf(v) for k, v in kwargs.items()}, **OPTIONS.get(name, {}),
                                         "impl": impl, "validate": False}

    eager_out, eager_grads = _run(op.fn, *fresh())
    torch._dynamo.reset()
    out, grads = _run(torch.compile(op.fn, fullgraph=True, backend=BACKEND), *fresh())
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for got, want in zip(_float_tensors(out), _float_tensors(eager_out), strict=True):
        torch.testing.assert_close(got, want, **tol)
    assert len(grads) == len(eager_grads)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("normalizer", [n for n, s in registry.NORMALIZERS.items() if s.regularizer is not None])
def test_fenchel_young_loss_of_each_regularized_map_compiles(normalizer):
    # by name and by record: the record is resolved at the boundary, nothing is imported in the graph
    spec = registry.NORMALIZERS[normalizer]
    g = _gen(1)
    logits, target = _logits(g), _index(g)
    for given in (normalizer, spec):
        torch._dynamo.reset()
        compiled = torch.compile(logitlab.fenchel_young_loss, fullgraph=True, backend=BACKEND)
        want = logitlab.fenchel_young_loss(logits, target, normalizer=normalizer, validate=False)
        torch.testing.assert_close(compiled(logits, target, normalizer=given, validate=False), want)


@pytest.mark.parametrize("module", ["Softmax", "Sparsemax", "Entmax15", "KLDivergenceLoss", "FenchelYoungLoss",
                                    "CrossEntropyLoss"])
@pytest.mark.parametrize("validate", [True, False])
def test_modules_compile_fullgraph(module, validate):
    layer = getattr(logitlab.nn, module)(validate=validate)
    g = _gen(2)
    logits = _logits(g)
    args = (logits,) if module in ("Softmax", "Sparsemax", "Entmax15") else (
        (logits, _probs(g)) if module == "KLDivergenceLoss" else (logits, _index(g)))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=BACKEND)
    torch.testing.assert_close(compiled(*args), layer(*args))


def test_compiled_data_checks_are_skipped_structural_checks_stay():
    # NaN passes through a compiled call (as with validate=False) instead of raising ...
    bad = torch.tensor([[0.0, math.nan, 1.0]], dtype=F64)
    torch._dynamo.reset()
    out = torch.compile(logitlab.softmax, fullgraph=True, backend=BACKEND)(bad)
    assert torch.isnan(out).all()
    with pytest.raises(ValueError, match=r"softmax\(\): argument 'logits'"):
        logitlab.softmax(bad)
    # ... while a bad dim still raises while tracing, with the same message as eager
    # (fullgraph=True reports the exception it met while tracing as Dynamo's error, with the message)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"softmax\(\): argument 'dim' expected an int in \[-2, 1\]"):
        torch.compile(logitlab.softmax, fullgraph=True, backend=BACKEND)(bad, dim=2)
    torch._dynamo.reset()
    with pytest.raises(IndexError, match=r"softmax\(\): argument 'dim' expected an int in \[-2, 1\]"):
        torch.compile(logitlab.softmax, backend=BACKEND)(bad, dim=2)


def test_inductor_end_to_end_on_a_small_model():
    # The real backend once: softmax-then-KL and the sparsemax loss in one graph, values and grads.
    g = _gen(3)
    weight = torch.randn(6, 5, generator=g, dtype=torch.float32, requires_grad=True)
    x = torch.randn(8, 5, generator=g)
    teacher = torch.softmax(torch.randn(8, 6, generator=g), -1)
    labels = torch.randint(0, 6, (8,), generator=g)

    def step(weight):
        logits = x @ weight.T
        return (logitlab.kl_divergence(logits, teacher, validate=False)
                + logitlab.sparsemax_loss(logits, labels, validate=False))

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    got = compiled(weight)
    (got_grad,) = torch.autograd.grad(got, weight)
    want = step(weight)
    (want_grad,) = torch.autograd.grad(want, weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,call", [("sparsemax", lambda z: logitlab.sparsemax(z, validate=False)),
                                       ("entmax", lambda z: logitlab.entmax(z, alpha=1.3, validate=False))])
def test_a_compiled_double_backward_raises_naming_the_function(name, call):
    """AOTAutograd differentiates a compiled graph once: with create_graph=True it would return a
    first derivative cut from the logits (a later grad of it: 'not used in the graph', or None with
    allow_unused=True). The custom ops' backward formulas raise there instead, naming the function
    (logitlab/_compiled_backward.py recognises torch's wrapper by its frame: if a torch release
    renames it, this test fails). A plain backward of the same compiled call is unaffected."""
    g = _gen(5)
    z = _logits(g, (3, 5)).requires_grad_()
    w = torch.randn(3, 5, generator=g, dtype=F64)
    torch._dynamo.reset()
    compiled = torch.compile(call, fullgraph=True, backend=BACKEND)
    with pytest.raises(RuntimeError, match=rf"{name}\(\): no double backward \(create_graph=True\) through a "
                                           r"torch.compile'd call"):
        torch.autograd.grad((compiled(z) * w).sum(), z, create_graph=True)
    (got,) = torch.autograd.grad((compiled(z) * w).sum(), z)
    (want,) = torch.autograd.grad((call(z) * w).sum(), z)
    torch.testing.assert_close(got, want)
    # Eagerly the same maps have a true second derivative (tests/test_double_backward.py).
    (first,) = torch.autograd.grad((call(z) * w).sum(), z, create_graph=True)
    assert first.requires_grad


def test_the_double_backward_guard_is_a_copy_outside_that_wrapper():
    from logitlab._compiled_backward import in_compiled_double_backward, no_double_backward

    grad, carry = torch.randn(4, dtype=F64), torch.randn(4, 1, dtype=F64).expand(4, 3)
    out = no_double_backward(grad, "f", "a hint", carry=carry)
    assert not in_compiled_double_backward()
    assert torch.equal(out, carry) and out.data_ptr() != carry.data_ptr()
    assert torch.equal(no_double_backward(grad, "f", "a hint"), grad)
