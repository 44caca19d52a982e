"""DTensor arguments of the vocabulary-parallel losses: placements checked, local shards out.

A loss over a vocabulary split across ranks (``vocab_parallel_cross_entropy``,
``vocab_parallel_kl_divergence``, ``linear_cross_entropy(process_group=...)``) may take
``torch.distributed.tensor.DTensor`` arguments instead of local shards and a process group:

* the *sharded* argument (the logits, or the head's weight) is ``Shard(vocab_dim)`` on one
  dimension of its device mesh and ``Replicate()`` on the others (or ``Replicate()``
  everywhere: then each rank holds the whole vocabulary and no collective runs);
* the mesh dimension that shards the vocabulary gives the process group, and the shard's
  offset and the full vocabulary size come from the DTensor's metadata (``torch.chunk``'s
  layout: every rank but the last ones holds ⌈V / n⌉ classes), so no collective and no host
  read is needed to find them;
* arguments sharded like it (the teacher's logits, a bias, class weights) are DTensors with
  the same placement on the same mesh, or plain tensors holding this rank's slice;
* arguments that every rank holds whole (targets, hidden states) are replicated DTensors on
  the same mesh, or plain tensors (the same on every rank).

The native kernels never see a DTensor: only ``.to_local()`` shards go through the losses'
code, and the loss comes back as a DTensor replicated over the mesh (the result of
``F.cross_entropy`` under torch's ``loss_parallel``), whose ``backward()`` gives each DTensor
argument a gradient with that argument's placements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from logitlab import _validation as v

__all__ = ["is_dtensor", "any_dtensor", "VocabLayout", "vocab_layout", "replicated_local", "sharded_local",
           "refuse_plain_primary", "head_locals", "replicated_output"]


def _dtensor_type():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_dtensor(value: object) -> bool:
    """Whether ``value`` is a ``torch.distributed.tensor.DTensor``."""
    kind = _dtensor_type() if isinstance(value, Tensor) else None
    return kind is not None and isinstance(value, kind)


def any_dtensor(*values: object) -> bool:
    return any(is_dtensor(x) for x in values)


@dataclass(frozen=True)
class VocabLayout:
    """Where this rank's shard of the vocabulary lies, read from a DTensor's metadata."""

    mesh: object            # the DeviceMesh of the sharded argument
    mesh_dim: int | None    # the mesh dimension that shards the vocabulary (None: replicated)
    group: object           # its ProcessGroup (None when replicated: one rank's worth of work)
    start: int              # first class of this rank's shard
    total: int              # V, the full vocabulary


def _placements(x) -> str:
    return "(" + ", ".join(repr(p) for p in x.placements) + ")"


def vocab_layout(fn: str, name: str, x: Tensor, vocab_dim: int, *, group=None, group_name: str = "group",
                 vocab_start: int | None = None, shape: str) -> VocabLayout:
    """Check that DTensor ``x`` is sharded on ``vocab_dim`` only; its layout and process group.

    ``group`` (the caller's ``group_name`` argument), when given, must hold the same ranks as the
    mesh dimension's group; ``vocab_start``, when given, the shard's offset. ``shape`` names the
    argument's layout in messages, e.g. "(*batch, V)".
    """
    import torch.distributed as dist
    from torch.distributed.tensor import Shard

    if x.ndim < 1:
        v.fail(fn, name, f"a DTensor of shape {shape}", "<a 0-d DTensor>")
    dim = vocab_dim % x.ndim
    mesh = x.device_mesh
    shard_dims = []
    for mesh_dim, placement in enumerate(x.placements):
        if placement.is_replicate():
            continue
        if type(placement) is Shard and placement.dim == dim:
            shard_dims.append(mesh_dim)
            continue
        shard_dims = None
        break
    if shard_dims is None or len(shard_dims) > 1:
        wanted = "Shard(-1)" if vocab_dim == -1 else f"Shard({vocab_dim})"
        v.fail(fn, name, f"a DTensor of shape {shape} sharded on its vocabulary dimension ({wanted} on one "
               "mesh dimension, Replicate() on the others)", f"<DTensor with placements {_placements(x)}>",
               detail=f"redistribute it, e.g. {name}.redistribute(mesh, [{wanted}]), or pass "
                      f"{name}.to_local() shards of the vocabulary with {group_name}=")
    vocab = x.shape[dim]
    if not shard_dims:  # replicated: every rank holds the whole vocabulary
        if vocab_start not in (None, 0):
            v.fail(fn, "vocab_start", f"None or 0 ({name} is replicated: each rank holds the whole vocabulary)",
                   vocab_start)
        return VocabLayout(mesh, None, None, 0, vocab)
    mesh_dim = shard_dims[0]
    mesh_group = mesh.get_group(mesh_dim)
    if group is not None and dist.get_process_group_ranks(group) != dist.get_process_group_ranks(mesh_group):
        v.fail(fn, group_name, f"None or the group of mesh dimension {mesh_dim} of {name} (ranks "
               f"{dist.get_process_group_ranks(mesh_group)})",
               f"<a group of ranks {dist.get_process_group_ranks(group)}>",
               detail=f"omit {group_name}=: a DTensor's mesh gives the group")
    size, start = Shard.local_shard_size_and_offset(vocab, mesh.size(mesh_dim), mesh.get_local_rank(mesh_dim))
    local = x.to_local().shape[dim]
    if int(size) != local:
        v.fail(fn, name, f"a shard of {int(size)} classes on this rank (torch.chunk's layout of {vocab} classes "
               f"over {mesh.size(mesh_dim)} ranks)", f"<a local shard of {local} classes>",
               detail="build the DTensor with distribute_tensor, or DTensor.from_local of even chunks")
    if vocab_start is not None and int(vocab_start) != int(start):
        v.fail(fn, "vocab_start", f"None or {int(start)} (this rank's offset in {name})", vocab_start)
    return VocabLayout(mesh, mesh_dim, mesh_group, int(start), vocab)


def replicated_local(fn: str, name: str, x, layout: VocabLayout, sharded: str):
    """The local tensor of an argument every rank holds whole: a replicated DTensor on the
    layout's mesh, or a plain tensor (returned as is; None passes)."""
    if not is_dtensor(x):
        return x
    if x.device_mesh != layout.mesh or not all(p.is_replicate() for p in x.placements):
        v.fail(fn, name, f"a plain tensor (the same on every rank) or a DTensor replicated on the mesh of {sharded}",
               f"<DTensor with placements {_placements(x)}"
               + ("" if x.device_mesh == layout.mesh else " on another mesh") + ">",
               detail=f"pass {name}.full_tensor() or {name}.redistribute(mesh, [Replicate()])")
    return x.to_local()


def sharded_local(fn: str, name: str, x, layout: VocabLayout, like: Tensor, sharded: str, vocab_dim: int):
    """The local shard of an argument sharded like ``like`` (the DTensor ``sharded``): a DTensor
    with the same placements on the same mesh, or a plain tensor holding this rank's slice
    (returned as is; None passes)."""
    if not is_dtensor(x):
        return x
    dim = vocab_dim % max(x.ndim, 1)
    same = x.device_mesh == layout.mesh and all(
        p.is_replicate() if i != layout.mesh_dim else (p.is_shard() and p.dim == dim)
        for i, p in enumerate(x.placements))
    if not same:
        v.fail(fn, name, f"a DTensor sharded like {sharded} (placements {_placements(like)} on its mesh, "
               f"the vocabulary on dimension {vocab_dim}) or a plain tensor holding this rank's slice",
               f"<DTensor with placements {_placements(x)}" + ("" if x.device_mesh == layout.mesh
                                                             else " on another mesh") + ">",
               detail=f"redistribute {name} like {sharded}")
    return x.to_local()


def refuse_plain_primary(fn: str, name: str, primary: str, group_name: str) -> None:
    """A DTensor ``name`` beside a plain ``primary``: the layout would have to come from it."""
    v.fail(fn, name, f"a plain tensor, since {primary} is a plain (local) tensor", "<DTensor>", kind=TypeError,
           detail=f"pass {primary} as a DTensor sharded on the vocabulary too, or {name}.to_local() "
                  f"with {group_name}=")


def replicated_output(local: Tensor, layout: VocabLayout) -> Tensor:
    """``local`` (the same on every rank) as a DTensor replicated over the layout's mesh."""
    from torch.distributed.tensor import DTensor, Replicate

    return DTensor.from_local(local, layout.mesh, [Replicate()] * layout.mesh.ndim, run_check=False)


def head_locals(fn: str, hidden, weight, target, bias, class_weight, process_group):
    """The local tensors of a linear head's arguments when any is a DTensor, and the layout.

    ``weight`` (V, D) must be a DTensor ``Shard(0)`` (or replicated); ``bias`` and
    ``class_weight`` (V,) sharded like it or plain slices; ``hidden`` and ``target`` replicated
    DTensors on its mesh or plain tensors (the same on every rank). ``process_group``, when
    given, must agree with the mesh.
    """
    if not is_dtensor(weight):
        name = next(n for n, x in (("hidden", hidden), ("target", target), ("bias", bias),
                                   ("class_weight", class_weight)) if is_dtensor(x))
        refuse_plain_primary(fn, name, "weight", "process_group")
    if weight.ndim != 2:
        v.fail(fn, "weight", "a 2-D DTensor of shape (V, D)", f"<shape {tuple(weight.shape)}>")
    layout = vocab_layout(fn, "weight", weight, 0, group=process_group, group_name="process_group", shape="(V, D)")
    hidden = replicated_local(fn, "hidden", hidden, layout, "weight")
    target = replicated_local(fn, "target", target, layout, "weight")
    bias = sharded_local(fn, "bias", bias, layout, weight, "weight", 0)
    class_weight = sharded_local(fn, "class_weight", class_weight, layout, weight, "weight", 0)
    return hidden, weight.to_local(), target, bias, class_weight, layout
