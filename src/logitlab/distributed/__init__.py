"""Vocabulary-parallel losses over torch.distributed (gloo on CPU, NCCL on GPU).

Each rank holds a contiguous slice of the vocabulary (slices may be uneven, in rank order); only
per-row statistics (maxima, sums of exponentials, target logits, partial sums) cross the
group, never logits or weights, and every rank gets the loss of the full vocabulary.

* ``vocab_parallel_cross_entropy`` / ``vocab_parallel_kl_divergence``: on logits sharded by
  vocabulary columns.
* ``linear_cross_entropy(..., process_group=group)`` (from :mod:`logitlab.fused`): the fused
  form for a head whose weight (and bias, class weights) is sharded by vocabulary rows.
* ``linear_divergence_loss(..., process_group=group)`` (from :mod:`logitlab.fused`):
  distillation (KL, reverse KL, JS_β, temperature, hard-label term) between a student and a
  teacher head both sharded by vocabulary rows.
* ``run_ranks(fn, world_size)``: run a function on local gloo processes (tests, examples).

With a sharded head, grad_hidden comes out the same on every rank (summed over the ranks) and
each rank's weight gradient is its rows of the full one.

Each of the three also takes DTensors sharded on the vocabulary instead of local shards and a
group (``Shard(-1)`` logits, a ``Shard(0)`` head): the mesh gives the group and the offsets,
the loss comes back as a replicated DTensor, gradients keep their placements, and with
``validate=False`` nothing is read back to the host, so ``torch.compile`` traces the call.
``logitlab.nn.LinearCrossEntropyHead`` owns its head's weight, for FSDP2's ``fully_shard``.
"""

from logitlab.distributed.launch import free_port, run_ranks
from logitlab.distributed.vocab_parallel import vocab_parallel_cross_entropy, vocab_parallel_kl_divergence
from logitlab.fused import linear_cross_entropy, linear_divergence_loss

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_kl_divergence", "linear_cross_entropy",
           "linear_divergence_loss", "run_ranks", "free_port"]
