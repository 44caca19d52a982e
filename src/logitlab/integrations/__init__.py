"""Adapters to training stacks that logitlab does not depend on.

Each submodule imports its stack when it is imported itself (``import logitlab`` imports none):

* :mod:`logitlab.integrations.transformers`: Hugging Face causal LMs whose loss goes through
  :func:`logitlab.linear_cross_entropy`, without the (N, V) logits (``pip install logitlab[hf]``).
"""
