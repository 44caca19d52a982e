"""Vocabulary-parallel losses over torch.distributed (gloo on CPU, NCCL on GPU).

``linear_cross_entropy(..., process_group=group)`` (from :mod:`logitlab.fused`) is the fused
form for a head whose weight is sharded by vocabulary rows.
"""

from logitlab.distributed.launch import free_port, run_ranks
from logitlab.distributed.vocab_parallel import vocab_parallel_cross_entropy, vocab_parallel_kl_divergence
from logitlab.fused import linear_cross_entropy

__all__ = ["vocab_parallel_cross_entropy", "vocab_parallel_kl_divergence", "linear_cross_entropy",
           "run_ranks", "free_port"]
