"""DTensor arguments of the vocab-parallel losses, torch.compile over them, and FSDP2's fully_shard
on the head module: 2 and 3 gloo ranks on loopback against the single-process computation.

Spawning ranks is slow, so each spawn runs every check of its world size and returns a record:
``errors`` (max |got − expected| per case, float64 inputs), ``facts`` (what must hold: output and
gradient placements, error messages, no host read) and ``info`` (what the test reports).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

from logitlab import reference
from logitlab.distributed import run_ranks, vocab_parallel_cross_entropy, vocab_parallel_kl_divergence
from logitlab.fused import linear_cross_entropy, linear_cross_entropy_with_lse

F64 = torch.float64
VOCAB, DIM, BATCH = 13, 5, (2, 3)  # 13 classes: uneven shards on 2 ranks (7, 6) and 3 ranks (5, 5, 3)


class NoHostRead(TorchFunctionMode):
    """Fails any read of a tensor's value on the host (a device synchronisation on an accelerator)."""

    READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
             torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            raise AssertionError(f"host read: Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*BATCH, VOCAB, dtype=F64, generator=gen) * 3
    teacher = torch.randn(*BATCH, VOCAB, dtype=F64, generator=gen) * 2
    target = torch.randint(0, VOCAB, BATCH, generator=gen)
    target[0, 1] = target[1, 2] = -100
    hidden = torch.randn(*BATCH, DIM, dtype=F64, generator=gen)
    weight = torch.randn(VOCAB, DIM, dtype=F64, generator=gen)
    bias = torch.randn(VOCAB, dtype=F64, generator=gen)
    class_weight = torch.rand(VOCAB, dtype=F64, generator=gen) + 0.5
    return logits, teacher, target, hidden, weight, bias, class_weight


def _err(a, b):
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def _replicated(x):
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor) and all(p.is_replicate() for p in x.placements)


def _backward(got, expected):
    """Backpropagate a seeded sum of the loss (``backward()`` on the DTensor itself for a scalar)."""
    if expected.ndim == 0:
        expected.backward()
        got.backward()
        return
    seed = torch.linspace(0.5, 1.5, expected.numel(), dtype=F64).reshape(expected.shape)
    (expected * seed).sum().backward()
    (got.to_local() * seed).sum().backward()


def _distribute(x, mesh, placement):
    """``x`` (the same on every rank) as a DTensor with one placement, built from this rank's
    chunk without a collective (``distribute_tensor`` scatters from rank 0)."""
    from torch.distributed.tensor import DTensor

    local = x
    if placement.is_shard():
        chunks = torch.chunk(x, mesh.size(), placement.dim % x.ndim)
        rank = mesh.get_local_rank()
        local = chunks[rank] if rank < len(chunks) else x.narrow(placement.dim % x.ndim, 0, 0)
    return DTensor.from_local(local.clone(), mesh, [placement], run_check=False, shape=x.shape, stride=x.stride())


def _message(call):
    try:
        call()
    except (TypeError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


CE_CASES = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(label_smoothing=0.2, z_loss=1e-2),
            dict(reduction="sum", label_smoothing=0.1, validate=False), dict(validate=False)]
LINEAR_CASES = [dict(impl="auto"), dict(reduction="sum", validate=False), dict(reduction="none"),
                dict(label_smoothing=0.1, z_loss=1e-3, class_weight=True, validate=False),
                dict(impl="composite", bias=True), dict(impl="torch", reduction="sum", bias=True, hidden="dtensor")]


def _checks(rank, world, compile_and_fsdp):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    mesh = init_device_mesh("cpu", (world,))
    logits, teacher, target, hidden, weight, bias, class_weight = _problem()
    errors, facts, info = {}, {}, {}

    def shard(x, dim, grad=True):
        out = _distribute(x, mesh, Shard(dim))
        return out.requires_grad_() if grad else out

    def replicate(x):
        return _distribute(x, mesh, Replicate())

    def no_host_read(call, name, validate=True):
        if validate:
            return call()
        with NoHostRead():
            try:
                return call()
            except AssertionError as error:
                facts[f"{name}_no_host_read"] = str(error)
                raise

    # vocab_parallel_cross_entropy on Shard(-1) logits, targets plain or replicated, every
    # reduction, rows with ignore_index; with validate=False, nothing read on the host.
    for i, opts in enumerate(CE_CASES):
        for kind in ("plain", "replicated", "all_ignored"):
            tgt = torch.full_like(target, -100) if kind == "all_ignored" else target
            ref_opts = {k: o for k, o in opts.items() if k != "validate"}
            full = logits.clone().requires_grad_()
            expected = reference.cross_entropy(full, tgt, **ref_opts)
            x = shard(logits, -1)
            t = replicate(tgt) if kind == "replicated" else tgt
            name = f"ce{i}_{kind}"

            def call(x=x, t=t, opts=opts):
                got = vocab_parallel_cross_entropy(x, t, **opts)
                _backward(got, expected)
                return got

            got = no_host_read(call, name, opts.get("validate", True))
            errors[f"{name}_value"] = _err(got.to_local(), expected)
            errors[f"{name}_grad"] = _err(x.grad.full_tensor(), full.grad)
            facts[f"{name}_loss_replicated"] = _replicated(got)
            facts[f"{name}_grad_placements"] = tuple(x.grad.placements) == tuple(x.placements)

    # The student's and teacher's logits both Shard(-1), or the teacher as a plain local slice.
    for i, (temperature, reduction) in enumerate([(1.0, "mean"), (2.0, "sum"), (0.7, "none")]):
        for kind in ("dtensor", "plain_teacher"):
            full = logits.clone().requires_grad_()
            p = torch.softmax(teacher / temperature, -1)
            rows = (p * (p.log() - torch.log_softmax(full / temperature, -1))).sum(-1)
            expected = rows.mean() if reduction == "mean" else rows.sum() if reduction == "sum" else rows
            x = shard(logits, -1)
            u = shard(teacher, -1, grad=False)
            u = u if kind == "dtensor" else u.to_local()
            got = no_host_read(lambda x=x, u=u: vocab_parallel_kl_divergence(
                x, u, temperature=temperature, reduction=reduction, validate=False), f"kl{i}", False)
            _backward(got, expected)
            errors[f"kl{i}_{kind}_value"] = _err(got.to_local(), expected)
            errors[f"kl{i}_{kind}_grad"] = _err(x.grad.full_tensor(), full.grad)
            facts[f"kl{i}_{kind}_loss_replicated"] = _replicated(got)
            facts[f"kl{i}_{kind}_grad_placements"] = tuple(x.grad.placements) == tuple(x.placements)

    # linear_cross_entropy with a Shard(0) head (and bias, class weights), hidden plain or replicated.
    for i, opts in enumerate(LINEAR_CASES):
        opts = dict(opts)
        use_cw, use_bias = opts.pop("class_weight", False), opts.pop("bias", False)
        hidden_kind = opts.pop("hidden", "plain")
        validate = opts.get("validate", True)
        ref_opts = {k: o for k, o in opts.items() if k not in ("validate", "impl")}
        h_full, w_full, b_full = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        expected = reference.linear_cross_entropy(h_full, w_full, target, bias=b_full if use_bias else None,
                                                  class_weight=class_weight if use_cw else None, **ref_opts)
        w = shard(weight, 0)
        b = shard(bias, 0) if use_bias else None
        cw = shard(class_weight, 0, grad=False) if use_cw else None
        h = (replicate(hidden) if hidden_kind == "dtensor" else hidden.clone()).requires_grad_()
        opts.setdefault("impl", "torch")

        def call(h=h, w=w, b=b, cw=cw, opts=opts):
            got = linear_cross_entropy(h, w, target, bias=b, class_weight=cw, chunk_size=4, **opts)
            _backward(got, expected)
            return got

        got = no_host_read(call, f"linear{i}", validate)
        name = f"linear{i}"
        errors[f"{name}_value"] = _err(got.to_local(), expected)
        grad_h = h.grad.full_tensor() if hidden_kind == "dtensor" else h.grad
        errors[f"{name}_grad_hidden"] = _err(grad_h, h_full.grad)
        errors[f"{name}_grad_weight"] = _err(w.grad.full_tensor(), w_full.grad)
        facts[f"{name}_loss_replicated"] = _replicated(got)
        facts[f"{name}_grad_weight_placements"] = tuple(w.grad.placements) == (Shard(0),)
        if hidden_kind == "dtensor":
            facts[f"{name}_grad_hidden_placements"] = tuple(h.grad.placements) == (Replicate(),)
        if use_bias:
            errors[f"{name}_grad_bias"] = _err(b.grad.full_tensor(), b_full.grad)
            facts[f"{name}_grad_bias_placements"] = tuple(b.grad.placements) == (Shard(0),)

    # The head module with its weight and bias made DTensors Shard(0) (tensor parallelism).
    from logitlab.nn import LinearCrossEntropyHead

    head = LinearCrossEntropyHead(DIM, VOCAB, bias=True, z_loss=1e-3, impl="torch", chunk_size=4, validate=False)
    head.weight = torch.nn.Parameter(_distribute(weight, mesh, Shard(0)))
    head.bias = torch.nn.Parameter(_distribute(bias, mesh, Shard(0)))
    w_full, b_full = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    expected = reference.linear_cross_entropy(hidden, w_full, target, bias=b_full, z_loss=1e-3)
    got = no_host_read(lambda: head(hidden, target), "head", False)
    _backward(got, expected)
    errors["head_value"] = _err(got.to_local(), expected)
    errors["head_grad_weight"] = _err(head.weight.grad.full_tensor(), w_full.grad)
    errors["head_grad_bias"] = _err(head.bias.grad.full_tensor(), b_full.grad)
    facts["head_grad_placements"] = tuple(head.weight.grad.placements) == (Shard(0),)

    # Replicated logits: every rank holds the whole vocabulary (no collective); and a 2-D mesh
    # (1, world) whose second dimension shards the vocabulary, as a (dp, tp) mesh does.
    from torch.distributed.tensor import DTensor

    x = replicate(logits).requires_grad_()
    full = logits.clone().requires_grad_()
    expected = reference.cross_entropy(full, target, label_smoothing=0.1)
    got = vocab_parallel_cross_entropy(x, target, label_smoothing=0.1, validate=False)
    _backward(got, expected)
    errors["replicated_value"], errors["replicated_grad"] = _err(got.to_local(), expected), _err(x.grad.to_local(),
                                                                                                   full.grad)
    facts["replicated_grad_placements"] = tuple(x.grad.placements) == (Replicate(),)
    mesh2 = init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))
    chunk = torch.chunk(torch.arange(VOCAB), world)[rank]
    x = DTensor.from_local(logits[..., chunk].clone(), mesh2, [Replicate(), Shard(2)], run_check=False,
                           shape=logits.shape, stride=logits.stride()).requires_grad_()
    w = DTensor.from_local(weight[chunk].clone(), mesh2, [Replicate(), Shard(0)], run_check=False,
                           shape=weight.shape, stride=weight.stride()).requires_grad_()
    for name, arg, call, ref in [
            ("mesh2d_ce", x, lambda: vocab_parallel_cross_entropy(x, target, reduction="sum", validate=False),
             lambda full: reference.cross_entropy(full, target, reduction="sum")),
            ("mesh2d_linear", w, lambda: linear_cross_entropy(hidden, w, target, impl="torch", validate=False),
             lambda full: reference.linear_cross_entropy(hidden, full, target))]:
        full = (logits if name == "mesh2d_ce" else weight).clone().requires_grad_()
        expected = ref(full)
        got = no_host_read(call, name, False)
        _backward(got, expected)
        errors[f"{name}_value"], errors[f"{name}_grad"] = _err(got.to_local(), expected), _err(arg.grad.full_tensor(),
                                                                                               full.grad)
        facts[f"{name}_loss_replicated"] = _replicated(got) and got.device_mesh == mesh2
        facts[f"{name}_grad_placements"] = tuple(arg.grad.placements) == tuple(arg.placements)

    # The detector itself: validation reads on the host (whether a value is NaN).
    try:
        with NoHostRead():
            vocab_parallel_cross_entropy(shard(logits, -1), target)
        facts["validation_reads_on_the_host"] = False
    except AssertionError:
        facts["validation_reads_on_the_host"] = True

    # The process group may be given when it agrees with the mesh; linear_cross_entropy_with_lse.
    w = shard(weight, 0)
    out = linear_cross_entropy_with_lse(hidden, w, target, process_group=dist.group.WORLD, impl="torch",
                                        chunk_size=4, shift=1)
    logits_full = hidden @ weight.T
    shifted = torch.cat([target[:, 1:], torch.full((BATCH[0], 1), -100)], 1)
    errors["with_lse_value"] = _err(out.loss.to_local(), reference.linear_cross_entropy(hidden, weight, shifted))
    keep = shifted != -100
    errors["with_lse_lse"] = _err(out.lse.to_local(), torch.where(keep, logits_full.logsumexp(-1), 0.0))
    hits = (logits_full.argmax(-1) == shifted) & keep
    errors["with_lse_accuracy"] = _err(out.accuracy.to_local(), hits.sum() / keep.sum())
    facts["with_lse_replicated"] = all(_replicated(x) for x in out)

    facts.update(_bad_inputs(rank, mesh, logits, teacher, target, hidden, weight, bias))
    record = dict(errors=errors, facts=facts, info=info)
    if compile_and_fsdp:
        info.update(_compiled(mesh, logits, target, hidden, weight, bias, class_weight, errors, facts))
        record["fsdp"] = _fsdp_step(rank, world)
    return record


def _bad_inputs(rank, mesh, logits, teacher, target, hidden, weight, bias):
    """The message of each bad call (no collective runs before these errors, so each rank raises
    on its own)."""
    from torch.distributed.tensor import Replicate, Shard

    def dt(x, placement):
        return _distribute(x, mesh, placement)

    other_group = dist.new_group(ranks=[0])  # every rank creates it; rank 0 is its only member
    ce, kl, lin = vocab_parallel_cross_entropy, vocab_parallel_kl_divergence, linear_cross_entropy
    rows = hidden.reshape(-1, DIM)
    calls = {
        "ce_batch_sharded": lambda: ce(dt(logits, Shard(0)), target),
        "ce_target_sharded": lambda: ce(dt(logits, Shard(2)), dt(target, Shard(0))),
        "ce_plain_logits_dtensor_target": lambda: ce(logits, dt(target, Replicate())),
        "ce_vocab_start": lambda: ce(dt(logits, Shard(2)), target, vocab_start=99),
        "kl_teacher_replicated": lambda: kl(dt(logits, Shard(2)), dt(teacher, Replicate())),
        "kl_plain_student": lambda: kl(logits, dt(teacher, Shard(2))),
        "linear_weight_sharded_on_dim": lambda: lin(hidden, dt(weight, Shard(1)), target),
        "linear_hidden_sharded": lambda: lin(dt(rows, Shard(0)), dt(weight, Shard(0)), target.reshape(-1)),
        "linear_plain_weight": lambda: lin(dt(hidden, Replicate()), weight, target),
        "linear_bias_replicated": lambda: lin(hidden, dt(weight, Shard(0)), target, bias=dt(bias, Replicate())),
    }
    if rank == 0:
        calls["ce_other_group"] = lambda: ce(dt(logits, Shard(2)), target, group=other_group)
        calls["linear_other_group"] = lambda: lin(hidden, dt(weight, Shard(0)), target, process_group=other_group)
    return {f"error_{name}": _message(call) for name, call in calls.items()}


EXPECTED_ERRORS = {
    "ce_batch_sharded": "ValueError: vocab_parallel_cross_entropy(): argument 'local_logits' expected a DTensor of "
                        "shape (*batch, V) sharded on its vocabulary dimension (Shard(-1) on one mesh dimension, "
                        "Replicate() on the others), got <DTensor with placements (Shard(dim=0))> (redistribute "
                        "it, e.g. "
                        "local_logits.redistribute(mesh, [Shard(-1)]), or pass local_logits.to_local() shards of "
                        "the vocabulary with group=)",
    "ce_target_sharded": "ValueError: vocab_parallel_cross_entropy(): argument 'target' expected a plain tensor "
                         "(the same on every rank) or a DTensor replicated on the mesh of local_logits, got <DTensor "
                         "with placements (Shard(dim=0))> (pass target.full_tensor() or target.redistribute(mesh, "
                         "[Replicate()]))",
    "ce_plain_logits_dtensor_target": "TypeError: vocab_parallel_cross_entropy(): argument 'target' expected a "
                                      "plain tensor, since local_logits is a plain (local) tensor, got <DTensor>",
    "ce_vocab_start": "ValueError: vocab_parallel_cross_entropy(): argument 'vocab_start' expected None or {start} "
                      "(this rank's offset in local_logits), got 99",
    "kl_teacher_replicated": "ValueError: vocab_parallel_kl_divergence(): argument 'local_teacher_logits' expected "
                             "a DTensor sharded like local_logits",
    "kl_plain_student": "TypeError: vocab_parallel_kl_divergence(): argument 'local_teacher_logits' expected a "
                        "plain tensor, since local_logits is a plain (local) tensor, got <DTensor>",
    "linear_weight_sharded_on_dim": "ValueError: linear_cross_entropy(): argument 'weight' expected a DTensor of "
                                    "shape (V, D) sharded on its vocabulary dimension (Shard(0) on one mesh "
                                    "dimension, Replicate() on the others), got <DTensor with placements "
                                    "(Shard(dim=1))>",
    "linear_hidden_sharded": "ValueError: linear_cross_entropy(): argument 'hidden' expected a plain tensor (the "
                             "same on every rank) or a DTensor replicated on the mesh of weight, got <DTensor with "
                             "placements (Shard(dim=0))>",
    "linear_plain_weight": "TypeError: linear_cross_entropy(): argument 'hidden' expected a plain tensor, since "
                           "weight is a plain (local) tensor, got <DTensor> (pass weight as a DTensor sharded on "
                           "the vocabulary too, or hidden.to_local() with process_group=)",
    "linear_bias_replicated": "ValueError: linear_cross_entropy(): argument 'bias' expected a DTensor sharded like "
                              "weight",
    "ce_other_group": "ValueError: vocab_parallel_cross_entropy(): argument 'group' expected None or the group of "
                      "mesh dimension 0 of local_logits (ranks [0, 1",
    "linear_other_group": "ValueError: linear_cross_entropy(): argument 'process_group' expected None or the group "
                          "of mesh dimension 0 of weight (ranks [0, 1",
}


def _compiled(mesh, logits, target, hidden, weight, bias, class_weight, errors, facts):
    """torch.compile(fullgraph=True) over the sharded calls (validate=False), against the same calls
    eagerly, loss and gradients: the vocab-parallel losses on DTensors and on plain slices with the
    default group (their functional collectives traced) and linear_cross_entropy on a DTensor head
    and on a plain shard with ``process_group`` (the chunk loop as the custom op carrying the
    group's name, whose all-reduces run inside it). ``aot_eager`` traces forward and backward as Inductor would,
    without generating C++ for them.
    """
    import torch._dynamo as dynamo
    from torch.distributed.tensor import DTensor, Shard

    rank, world = dist.get_rank(), dist.get_world_size()
    rows = torch.chunk(torch.arange(VOCAB), world)[rank]
    shift_target = torch.cat([target[:, 1:], torch.full((BATCH[0], 1), -100)], 1)

    def ce(x, t):
        return vocab_parallel_cross_entropy(x, t, reduction="sum", label_smoothing=0.1, validate=False)

    def kl(x, u):
        return vocab_parallel_kl_divergence(x, u, temperature=2.0, validate=False)

    def lin(h, w, t):
        return linear_cross_entropy(h, w, t, impl="torch", chunk_size=4, validate=False)

    def lin_none(h, w, b, t):  # per-row losses: the backward op runs the chunks again
        return linear_cross_entropy(h, w, t, bias=b, reduction="none", label_smoothing=0.1, chunk_size=4,
                                    validate=False)

    def lin_group(h, w, t):  # a plain shard and a group: the op finds its offset; the default chunk
        return linear_cross_entropy(h, w, t, class_weight=class_weight[rows], label_smoothing=0.1, z_loss=1e-3,
                                    process_group=dist.group.WORLD, shift=1, validate=False)

    def lin_group_sum(h, w, b, t):
        return linear_cross_entropy(h, w, t, bias=b, reduction="sum", impl="torch", chunk_size=2,
                                    process_group=dist.group.WORLD, validate=False)

    def ce_group(x, t):  # a plain slice: the offsets from a traced all-gather, on the device
        return vocab_parallel_cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3, validate=False)

    def kl_group(x, u):
        return vocab_parallel_kl_divergence(x, u, temperature=1.5, reduction="none", validate=False)

    teacher = logits.flip(-1)
    sharded = lambda x, dim: _distribute(x, mesh, Shard(dim)).requires_grad_()  # noqa: E731
    local = lambda x: x[rows].clone().requires_grad_()  # noqa: E731
    columns = lambda x: x[..., rows].clone().requires_grad_()  # noqa: E731
    cases = [("ce", ce, lambda: (sharded(logits, 2), target)),
             ("kl", kl, lambda: (sharded(logits, 2), _distribute(teacher, mesh, Shard(2)))),
             ("ce_group", ce_group, lambda: (columns(logits), target)),
             ("kl_group", kl_group, lambda: (columns(logits), teacher[..., rows])),
             ("linear", lin, lambda: (hidden.clone().requires_grad_(), sharded(weight, 0), target)),
             ("linear_none", lin_none, lambda: (hidden.clone().requires_grad_(), sharded(weight, 0),
                                                sharded(bias, 0), target)),
             ("linear_group", lin_group, lambda: (hidden.clone().requires_grad_(), local(weight), target)),
             ("linear_group_sum", lin_group_sum, lambda: (hidden.clone().requires_grad_(), local(weight),
                                                          local(bias), shift_target))]
    info = {}
    for name, call, make in cases:
        dynamo.utils.counters.clear()
        args, eager_args = make(), make()
        got = torch.compile(call, fullgraph=True, backend="aot_eager")(*args)
        info[f"{name}_graph_breaks"] = sum(dynamo.utils.counters["graph_break"].values())
        expected = call(*eager_args)
        for out in (got, expected):  # the same seeded sum of each (the DTensor itself for a scalar)
            if out.ndim == 0:
                out.backward()
            else:
                mine = out.to_local() if isinstance(out, DTensor) else out
                (mine * torch.linspace(0.5, 1.5, mine.numel(), dtype=F64).reshape(mine.shape)).sum().backward()
        is_dtensor = isinstance(expected, DTensor)
        errors[f"compiled_{name}_value"] = _err(got.to_local() if is_dtensor else got,
                                                expected.to_local() if is_dtensor else expected)
        for i, (x, x_eager) in enumerate(zip(args, eager_args)):
            if not (isinstance(x, torch.Tensor) and x.requires_grad):
                continue
            if isinstance(x, DTensor):
                errors[f"compiled_{name}_grad{i}"] = _err(x.grad.full_tensor(), x_eager.grad.full_tensor())
                facts[f"compiled_{name}_grad{i}_placements"] = tuple(x.grad.placements) == tuple(x.placements)
            else:
                errors[f"compiled_{name}_grad{i}"] = _err(x.grad, x_eager.grad)
        facts[f"compiled_{name}_loss_replicated"] = _replicated(got) if is_dtensor else not isinstance(got, DTensor)
    # The sharded chunk loop is the op in the graph (and not the eager Function after a break).
    seen = set()
    aot = dynamo.lookup_backend("aot_eager")

    def recording(gm, example_inputs):
        seen.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return aot(gm, example_inputs)

    dynamo.reset()
    torch.compile(lin_group, fullgraph=True, backend=recording)(hidden, local(weight), target).backward()
    facts["compiled_linear_group_runs_the_op"] = any("fused_linear_xent" in s for s in seen)
    return info


def _check_record(record, rank, world):
    bad = {k: e for k, e in record["errors"].items() if not e <= 1e-10}
    assert not bad, bad
    wrong = {k: f for k, f in record["facts"].items() if not k.startswith("error_") and f is not True}
    assert not wrong, wrong
    for name, expected in EXPECTED_ERRORS.items():
        key = f"error_{name}"
        if rank != 0 and name.endswith("other_group"):  # only rank 0 is in that group
            continue
        expected = expected.format(start=sum(len(c) for c in torch.arange(VOCAB).chunk(world)[:rank]))
        assert record["facts"][key].startswith(expected), (name, record["facts"][key])


@functools.cache
def _records(world):
    """Every rank's record of one spawn of ``world`` ranks (2 ranks: with compile and FSDP2)."""
    return run_ranks(_checks, world, args=(world == 2,), timeout=150)


@pytest.mark.parametrize("world", [2, 3])
def test_dtensor_arguments_match_the_single_process_loss(world):
    for rank, record in enumerate(_records(world)):
        _check_record(record, rank, world)


def test_compiled_calls_on_dtensors_equal_eager_ones():
    for rank, record in enumerate(_records(2)):
        names = ("ce", "kl", "ce_group", "kl_group", "linear", "linear_none", "linear_group", "linear_group_sum")
        assert {f"compiled_{n}_value" for n in names} <= set(record["errors"]), rank
        assert {"compiled_ce_grad0", "compiled_kl_grad0", "compiled_ce_group_grad0", "compiled_kl_group_grad0",
                "compiled_linear_grad1", "compiled_linear_none_grad2", "compiled_linear_group_grad1",
                "compiled_linear_group_sum_grad2"} <= set(record["errors"]), rank
        # fullgraph=True held (it raises on a break), so no break was counted either.
        assert all(record["info"][f"{n}_graph_breaks"] == 0 for n in names), record["info"]
        assert record["facts"]["compiled_linear_group_runs_the_op"], rank


class _Toy(torch.nn.Module):
    """Embedding, two residual layers, and the head module that owns the LM head's weight."""

    def __init__(self, vocab=VOCAB, dim=8):
        super().__init__()
        from logitlab.nn import LinearCrossEntropyHead

        self.embed = torch.nn.Embedding(vocab, dim)
        self.layers = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh())
                                          for _ in range(2))
        self.head = LinearCrossEntropyHead(dim, vocab, bias=True, label_smoothing=0.1, impl="torch",
                                           chunk_size=4, shift=1)

    def forward(self, tokens, labels):
        h = self.embed(tokens)
        for layer in self.layers:
            h = h + layer(h)
        return self.head(h, labels)


def _fsdp_step(rank, world):
    """One SGD step of the toy model under fully_shard (each rank its own batch) against the
    same step of the unsharded model on every rank's batch (FSDP averages the gradients)."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = _Toy().double()
    reference_model = copy.deepcopy(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model.head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, VOCAB, (2, 6), generator=gen), torch.randint(0, VOCAB, (2, 6), generator=gen))
               for _ in range(world)]
    for tokens, labels in batches:
        labels[0, -2:] = -100  # padding
    tokens, labels = batches[rank]
    loss = model(tokens, labels)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()

    losses = [reference_model(t, lab) for t, lab in batches]
    (sum(losses) / world).backward()
    torch.optim.SGD(reference_model.parameters(), lr=0.5).step()
    errors = {"loss": _err(loss, losses[rank])}
    sharded = dict(model.named_parameters())
    for name, param in reference_model.named_parameters():
        errors[name] = _err(sharded[name].full_tensor(), param)
    facts = {"head_weight_sharded": type(sharded["head.weight"]).__name__ == "DTensor",
             "parameters": sorted(sharded) == sorted(dict(reference_model.named_parameters()))}
    # The step moved every parameter (the comparison above is not of untouched copies).
    facts["every_parameter_moved"] = all(_err(p, initial[n]) > 1e-4 for n, p in reference_model.named_parameters())
    return dict(errors=errors, facts=facts)


def test_fully_shard_trains_the_head_module_like_the_unsharded_model():
    for rank, record in enumerate(r["fsdp"] for r in _records(2)):
        bad = {k: e for k, e in record["errors"].items() if not e <= 1e-12}
        assert not bad, (rank, bad)
        assert all(record["facts"].values()), (rank, record["facts"])
        assert "head.weight" in record["errors"] and "head.bias" in record["errors"]


def test_the_head_module_takes_the_options_of_linear_cross_entropy():
    import inspect

    from logitlab.nn import LinearCrossEntropyHead

    options = {n: p.default for n, p in inspect.signature(linear_cross_entropy).parameters.items()
               if p.kind is p.KEYWORD_ONLY and not n.startswith("_") and n != "bias"}
    init = {n: p.default for n, p in inspect.signature(LinearCrossEntropyHead.__init__).parameters.items()
            if p.kind is p.KEYWORD_ONLY}
    assert init == {"bias": False, **options, "device": None, "dtype": None}
    assert list(inspect.signature(LinearCrossEntropyHead.forward).parameters) == ["self", "hidden", "target"]
    head = LinearCrossEntropyHead(6, 11, bias=True, label_smoothing=0.2, z_loss=1e-2, shift=1, dtype=F64)
    hidden, target = torch.randn(2, 5, 6, dtype=F64), torch.randint(0, 11, (2, 5))
    expected = linear_cross_entropy(hidden, head.weight, target, bias=head.bias, label_smoothing=0.2, z_loss=1e-2,
                                    shift=1)
    torch.testing.assert_close(head(hidden, target), expected, rtol=0, atol=0)
    assert head.weight.shape == (11, 6) and head.weight.dtype == F64
    assert float(head.weight.detach().abs().max()) <= 6 ** -0.5
    assert "out_features=11" in repr(head) and "shift=1" in repr(head)
