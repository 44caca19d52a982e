"""Hugging Face causal LMs with :func:`logitlab.linear_cross_entropy` as their loss.

Two ways in, for ``transformers`` 5.x (an optional dependency: ``pip install logitlab[hf]``):

* :func:`causal_lm_loss`, unpatched: the loss of a causal LM from its last hidden states and
  its ``lm_head``, for a training step written by hand;
* :func:`apply` (and :func:`unapply`, or the context manager :func:`patched`): afterwards a
  loaded model's ``forward(..., labels=...)`` returns that loss and ``logits=None``, and the
  (N, V) logits are never made. Nothing of the family's forward is copied: the patch wraps the
  model's ``forward`` on the instance, asks the stock forward for the logits of no position
  (``logits_to_keep``, an empty index, so ``lm_head`` runs on a (B, 0, D) slice), reads the
  last hidden states from a forward hook on the decoder, and computes the loss from them.

Both reproduce ``ForCausalLMLoss`` of transformers: the labels shifted left by one (position t
predicts ``labels[t + 1]``; or ``shift_labels`` used as given), ``ignore_index=-100``, the mean
over the counted tokens, or their sum divided by ``num_items_in_batch`` when that is given (as
the Trainer does under gradient accumulation), and the family's logit transform read from its
config: Gemma 2/3's ``final_logit_softcapping``, Cohere's ``logit_scale`` (logits · s) and
Granite's ``logits_scaling`` (logits / s).
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import Tensor, nn

from logitlab import _validation as v
from logitlab.fused.cross_entropy import linear_cross_entropy

__all__ = ["causal_lm_loss", "apply", "unapply", "patched", "is_patched", "SUPPORTED_MODEL_TYPES"]

# config.model_type of the *ForCausalLM families whose forward is the stock pattern: decoder →
# last_hidden_state → slice_logits_to_keep → lm_head (→ the logit transform of logit_transform)
# → loss_function, with no other term in the loss (MoE families add a router loss: not here).
# Each is checked against the stock model in tests/integrations/test_transformers.py.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                         "phi3", "olmo2", "cohere", "granite")

_PATCH = "_logitlab_patch"


def logit_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) of a config: its logits are softcap·tanh(scale·z / softcap), z = lm_head(h).

    Reads ``logit_scale`` (Cohere: z · s), ``logits_scaling`` (Granite: z / s) and
    ``final_logit_softcapping`` (Gemma 2/3); absent or None means no transform.

    Example:
        >>> from types import SimpleNamespace
        >>> logit_transform(SimpleNamespace(final_logit_softcapping=30.0, logits_scaling=4.0))
        (0.25, 30.0)
    """
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return scale, None if softcap is None else float(softcap)


def _check_head(fn: str, name: str, lm_head: object) -> None:
    if type(lm_head) is not nn.Linear:
        v.fail(fn, name, "a torch.nn.Linear head (the model's lm_head)",
               f"<{type(lm_head).__name__}>", kind=TypeError,
               detail="subclasses and wrappers (quantized or adapter layers) compute something else "
                      "than weight @ h; use the stock loss for such a head")
    weight = lm_head.weight
    if type(weight).__name__ == "DTensor" or type(weight.data).__name__ == "DTensor":
        v.fail(fn, name, "a head whose weight is a plain tensor", "<lm_head.weight is a DTensor>",
               detail="a tensor-parallel or FSDP2-sharded head needs the vocab-parallel loss; "
                      "apply the patch before sharding, or use the stock loss")
    if not weight.is_floating_point() or weight.is_meta:
        v.fail(fn, name, "a head with a floating, materialized weight",
               f"<lm_head.weight of dtype {weight.dtype} on {weight.device}>")


def causal_lm_loss(hidden_states: Tensor, lm_head: nn.Linear, labels: Tensor | None = None, *,
                   config=None, shift_labels: Tensor | None = None,
                   num_items_in_batch: Tensor | int | None = None, ignore_index: int = -100,
                   impl: str = "auto", chunk_size: int | None = None,
                   accum_dtype: torch.dtype = torch.float32) -> Tensor:
    r"""The loss of a causal LM from its last hidden states, without its (N, V) logits.

    Equal to ``model.loss_function(logits, labels, vocab_size, num_items_in_batch=...)`` of
    transformers with ``logits = lm_head(hidden_states)`` after the config's transform (see
    :func:`logit_transform`): position t is scored against ``labels[..., t + 1]`` (the last
    position against nothing) with :func:`logitlab.linear_cross_entropy` and ``shift=1``, and

        loss = Σ_kept CE_t / (num_items_in_batch if given, else the number of kept t).

    Args:
        hidden_states: (B, T, D) the decoder's ``last_hidden_state`` (after its final norm),
            e.g. ``model.model(input_ids).last_hidden_state``.
        lm_head: the model's ``torch.nn.Linear`` head (``model.get_output_embeddings()``),
            tied to the input embeddings or not.
        labels: (B, T) token ids or ``ignore_index``, unshifted (as given to the model).
        config: the model's config, for the logit transform; None for none.
        shift_labels: (B, T) labels already shifted (position t's own target); instead of labels.
        num_items_in_batch: the denominator of a sum over several micro-batches, or None for the mean.
        ignore_index: label of positions that do not count.
        impl, chunk_size, accum_dtype: as :func:`logitlab.linear_cross_entropy`.

    Returns:
        A scalar: float32 for float32 and half-precision hidden states, float64 for float64
        ones (the stock loss rounds float64 logits to float32). With half-precision hidden
        states the value is that of ``linear_cross_entropy``, which computes in float32 but
        returns the input's dtype: it is rounded to bfloat16/float16 (e.g. 4.531 for the stock
        4.519 of a bf16 model) before it becomes float32; the gradients are not affected.

    Raises:
        TypeError/ValueError: a head that is not a plain ``nn.Linear`` with a floating weight, no
        labels, sequences of length 1 (nothing to predict), or the checks of
        ``linear_cross_entropy``.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> head, hidden = torch.nn.Linear(8, 20, bias=False), torch.randn(2, 5, 8)
        >>> labels = torch.tensor([[1, 2, 3, 4, 5], [6, 7, -100, -100, -100]])
        >>> loss = causal_lm_loss(hidden, head, labels)
        >>> naive = torch.nn.functional.cross_entropy(head(hidden)[:, :-1].reshape(-1, 20),
        ...                                           labels[:, 1:].reshape(-1))
        >>> bool(torch.allclose(loss, naive))
        True
    """
    fn = "causal_lm_loss"
    _check_head(fn, "lm_head", lm_head)
    if (labels is None) == (shift_labels is None):
        v.fail(fn, "labels", "exactly one of labels and shift_labels",
               "<both>" if labels is not None else "<neither>")
    target, shift = (labels, 1) if shift_labels is None else (shift_labels, 0)
    v.check_tensor(fn, "labels" if shift else "shift_labels", target)
    target = target.to(hidden_states.device)
    scale, softcap = logit_transform(config) if config is not None else (1.0, None)
    bias = lm_head.bias
    if scale != 1.0:
        hidden_states = hidden_states * scale  # (h·s) Wᵀ + b·s: the head itself is not copied
        bias = None if bias is None else bias * scale
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = linear_cross_entropy(hidden_states, lm_head.weight, target, bias=bias, ignore_index=ignore_index,
                                reduction=reduction, softcap=softcap, shift=shift, impl=impl,
                                chunk_size=chunk_size, accum_dtype=accum_dtype)
    if loss.dtype in (torch.float16, torch.bfloat16):
        loss = loss.float()  # as the stock loss, computed from float32 logits
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, Tensor):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def _refuse(model: object, expected: str, received: str, detail: str = "") -> None:
    v.fail("apply", "model", expected, received, detail=detail)


def _check_model(model: object) -> tuple[nn.Module, nn.Module, inspect.Signature]:
    """The model's decoder, its head and its forward's signature, or a clear refusal."""
    try:
        from transformers import PreTrainedModel
        from transformers.loss.loss_utils import LOSS_MAPPING
    except ImportError as error:  # pragma: no cover - the module is only useful with transformers
        raise ImportError("logitlab.integrations.transformers needs transformers: pip install logitlab[hf]") from error
    if not isinstance(model, PreTrainedModel):
        _refuse(model, "a transformers PreTrainedModel (a *ForCausalLM)", f"<{type(model).__name__}>")
    if getattr(model, _PATCH, None) is not None:
        _refuse(model, "a model that is not patched yet", "<a model already patched>",
                "call unapply(model) first")
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        _refuse(model, f"a causal LM of a supported family {SUPPORTED_MODEL_TYPES}",
                f"<{type(model).__name__} with model_type {model_type!r}>",
                "its forward may compute its logits or loss differently; use causal_lm_loss in a "
                "training step of your own, after checking it against the model's loss")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(model, "lm_head", None) is not head:
        _refuse(model, "a model with an lm_head (its output embeddings)",
                f"<{type(model).__name__} without lm_head>",
                "a base model or an encoder has no language-model head to fuse")
    _check_head("apply", "model.lm_head", head)
    decoder = getattr(model, model.base_model_prefix, None)
    if not isinstance(decoder, nn.Module) or decoder is model:
        _refuse(model, f"a model whose decoder is model.{model.base_model_prefix}", f"<{type(model).__name__}>")
    sig = inspect.signature(model.forward)
    if "labels" not in sig.parameters or "logits_to_keep" not in sig.parameters:
        _refuse(model, "a forward that takes labels and logits_to_keep", f"<forward{sig}>")
    if model.loss_function is not LOSS_MAPPING["ForCausalLM"]:
        _refuse(model, "a model whose loss_function is transformers' ForCausalLMLoss",
                f"<loss_function {getattr(model.loss_function, '__name__', model.loss_function)!r}>",
                "a custom loss cannot be fused by this patch")
    return decoder, head, sig


def apply(model, *, impl: str = "auto", chunk_size: int | None = None,
          accum_dtype: torch.dtype = torch.float32):
    r"""Patch a loaded causal LM so that ``forward(..., labels=...)`` never makes its logits.

    After ``apply(model)``, a call with ``labels`` returns the output of the stock forward with
    ``loss`` = :func:`causal_lm_loss` (the same value and gradients as the stock loss, within
    float rounding) and ``logits=None``; a call without labels (generation, evaluation of
    logits) is the stock forward. The patch lives on the instance (``model.forward``), so other
    models of the class are untouched; :func:`unapply` removes it. Keyword arguments of the
    stock loss are honoured: ``num_items_in_batch``, ``shift_labels``, ``ignore_index``.

    Supported: the families in ``SUPPORTED_MODEL_TYPES`` (Llama, Mistral, Qwen2, Qwen3, Gemma,
    Gemma 2, Gemma 3 text, Phi-3, OLMo 2, Cohere, Granite), with a plain ``nn.Linear`` head,
    tied to the input embeddings or not. Refused: other families (their forwards may add terms,
    e.g. the router loss of MoE models), models without an ``lm_head``, quantized or wrapped
    heads, heads sharded as DTensors, custom ``loss_function``\s. With labels, ``logits_to_keep``
    must be left at 0 and a Trainer's evaluation that needs logits must run unpatched
    (``prediction_loss_only=True`` is fine).

    Args:
        model: a transformers ``*ForCausalLM``.
        impl, chunk_size, accum_dtype: as :func:`logitlab.linear_cross_entropy`.

    Returns:
        ``model`` itself, patched.

    Raises:
        ValueError/TypeError: naming what the model lacks (see Supported) and what to do.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                      num_attention_heads=2, num_key_value_heads=2)
        >>> model = apply(LlamaForCausalLM(config))
        >>> out = model(input_ids=torch.randint(0, 64, (2, 6)), labels=torch.randint(0, 64, (2, 6)))
        >>> out.loss.shape, out.logits
        (torch.Size([]), None)
        >>> is_patched(unapply(model))
        False
    """
    decoder, head, sig = _check_model(model)
    original = model.forward
    var_kw = next((p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    options = {"impl": impl, "chunk_size": chunk_size, "accum_dtype": accum_dtype}

    @functools.wraps(original)
    def forward(*args, **kwargs):
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:
            return original(*args, **kwargs)  # the stock forward's own error
        arguments = bound.arguments
        labels = arguments.get("labels")
        if labels is None:
            return original(*args, **kwargs)
        keep = arguments.get("logits_to_keep", 0)
        if not (isinstance(keep, int) and keep == 0):
            v.fail("forward", "logits_to_keep", "0 (all positions) with labels on a model patched by logitlab",
                   keep, detail="the fused loss covers every position; unapply(model) for a loss on a slice")
        extra = dict(arguments.get(var_kw, {})) if var_kw else {}
        return_dict = extra.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(model.config, "return_dict", True)
        extra["return_dict"] = True
        if var_kw:
            arguments[var_kw] = extra
        arguments["labels"] = None
        # An empty index of positions: lm_head runs on a (B, 0, D) slice, the logits are (B, 0, V).
        arguments["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=head.weight.device)
        captured = []
        handle = decoder.register_forward_hook(
            lambda module, inputs, output: captured.append(output[0] if isinstance(output, tuple)
                                                           else output.last_hidden_state))
        try:
            out = original(*bound.args, **bound.kwargs)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"logitlab patch of {type(model).__name__}: the decoder ran {len(captured)} times "
                               "in one forward (expected once); unapply(model) and use the stock loss")
        _check_head("forward", "model.lm_head", head)
        loss = causal_lm_loss(captured[0], head, None if "shift_labels" in extra else labels, config=model.config,
                              shift_labels=extra.get("shift_labels"),
                              num_items_in_batch=extra.get("num_items_in_batch"),
                              ignore_index=extra.get("ignore_index", -100), **options)
        fields = {key: value for key, value in out.items() if key not in ("loss", "logits")}
        out = type(out)(loss=loss, logits=None, **fields)
        return out if return_dict else out.to_tuple()

    setattr(model, _PATCH, original)
    model.forward = forward
    return model


def unapply(model):
    """Undo :func:`apply`: the model's forward is the stock one again. Returns ``model``.

    Raises:
        ValueError: the model is not patched.
    """
    if getattr(model, _PATCH, None) is None:
        v.fail("unapply", "model", "a model patched by logitlab.integrations.transformers.apply",
               f"<{type(model).__name__}, not patched>")
    del model.forward  # the instance attribute: the class's forward shows through again
    delattr(model, _PATCH)
    return model


def is_patched(model) -> bool:
    """Whether :func:`apply` patched ``model`` (and :func:`unapply` did not undo it)."""
    return getattr(model, _PATCH, None) is not None


@contextlib.contextmanager
def patched(model, **options):
    """``with patched(model): ...``: :func:`apply` on entry, :func:`unapply` on exit.

    Example:
        >>> from transformers import Qwen3Config, Qwen3ForCausalLM
        >>> config = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                      num_attention_heads=2, num_key_value_heads=2, head_dim=8)
        >>> model = Qwen3ForCausalLM(config)
        >>> with patched(model):
        ...     is_patched(model)
        True
        >>> is_patched(model)
        False
    """
    apply(model, **options)
    try:
        yield model
    finally:
        unapply(model)
