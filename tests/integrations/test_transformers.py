"""logitlab.integrations.transformers on tiny randomly initialised models (built from configs,
nothing downloaded): the patched loss and every parameter's gradient equal the stock model's,
the (N, V) logits are never allocated, the Trainer runs, and unsupported models are refused."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: models are built from configs
transformers = pytest.importorskip("transformers")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from logitlab.integrations import transformers as lt  # noqa: E402

VOCAB, B, T = 97, 3, 9
COMMON = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# (config class, model class, config options): every family of SUPPORTED_MODEL_TYPES, with the
# logit transforms made strong enough to matter at this scale.
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),  # tied head
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 0.5}),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 0.5}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.5}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
}


def build(family: str, dtype=torch.float64, **options):
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**COMMON, **extra, **options})
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).to(dtype)
    with torch.no_grad():  # random non-zero biases/norms so that every parameter matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    labels = ids.clone()
    labels[0, :2] = -100          # a prompt that does not count
    labels[2, 6:] = -100          # right padding
    mask = torch.ones(B, T, dtype=torch.long)
    mask[2, 6:] = 0
    return ids, mask, labels


def loss_and_grads(model, **inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_families_cover_the_supported_list():
    assert set(FAMILIES) == set(lt.SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patched_loss_and_every_gradient_equal_the_stock_model(family):
    stock = build(family)
    fused = lt.apply(copy.deepcopy(stock), chunk_size=5)
    ids, mask, labels = batch()
    for extra in ({}, {"num_items_in_batch": torch.tensor(31)}):
        ref, ref_grads = loss_and_grads(stock, input_ids=ids, attention_mask=mask, labels=labels, **extra)
        out, grads = loss_and_grads(fused, input_ids=ids, attention_mask=mask, labels=labels, **extra)
        # The stock loss rounds float64 logits to float32 (ForCausalLMLoss calls logits.float()),
        # so it is exact to float32 precision only; ours stays in float64.
        torch.testing.assert_close(out.loss, ref.loss.double(), rtol=1e-6, atol=1e-7)
        assert out.logits is None and out.loss.dtype == torch.float64
        assert set(grads) == set(ref_grads) and len(grads) == len(list(stock.parameters()))
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=f"{family}: {name}")


def test_tied_heads_are_fused_with_their_embedding_gradient():
    model = build("gemma")
    assert model.lm_head.weight is model.get_input_embeddings().weight
    stock = copy.deepcopy(model)
    lt.apply(model)
    ids, mask, labels = batch()
    _, ref = loss_and_grads(stock, input_ids=ids, labels=labels)
    _, ours = loss_and_grads(model, input_ids=ids, labels=labels)
    torch.testing.assert_close(ours["model.embed_tokens.weight"], ref["model.embed_tokens.weight"],
                               rtol=1e-5, atol=1e-7)


def test_float32_model_within_float_tolerance_and_shift_labels():
    stock = build("llama", torch.float32)
    fused = lt.apply(copy.deepcopy(stock), chunk_size=4)
    ids, mask, labels = batch()
    shifted = torch.cat([labels[:, 1:], torch.full((B, 1), -100)], dim=1)
    ref, ref_grads = loss_and_grads(stock, input_ids=ids, labels=labels, shift_labels=shifted)
    out, grads = loss_and_grads(fused, input_ids=ids, labels=labels, shift_labels=shifted)
    torch.testing.assert_close(out.loss, ref.loss)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)


def test_without_labels_the_forward_is_the_stock_one():
    stock = build("qwen3")
    fused = lt.apply(copy.deepcopy(stock))
    ids, mask, _ = batch()
    torch.testing.assert_close(fused(input_ids=ids).logits, stock(input_ids=ids).logits)


def test_return_dict_false_gives_the_loss_first():
    model = lt.apply(build("llama"))
    ids, _, labels = batch()
    out = model(input_ids=ids, labels=labels, return_dict=False, use_cache=False)
    assert isinstance(out, tuple) and out[0].ndim == 0 and len(out) == 1


def test_helper_equals_the_stock_loss_in_a_hand_written_step():
    model = build("gemma2")
    ids, mask, labels = batch()
    ref = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    loss = lt.causal_lm_loss(hidden, model.lm_head, labels, config=model.config)
    torch.testing.assert_close(loss, ref.double(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"causal_lm_loss\(\): argument 'labels' expected exactly one of labels"):
        lt.causal_lm_loss(hidden, model.lm_head, labels, shift_labels=labels)


class _LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _largest_tensor_of_a_step(model, ids, labels):
    with _LargestTensor() as probe:
        out = model(input_ids=ids, labels=labels, use_cache=False)
        out.loss.backward()
    return probe.largest, out


def test_no_tensor_of_the_size_of_the_logits_is_allocated():
    vocab = 2048  # the logits (B·T, V) dwarf everything else of the model
    model = build("llama", torch.float32, vocab_size=vocab)
    ids = torch.randint(3, vocab, (B, 64))
    logits_numel = B * 64 * vocab
    stock_largest, _ = _largest_tensor_of_a_step(model, ids, ids)
    assert stock_largest >= logits_numel  # the probe sees the stock model's logits
    lt.apply(model, chunk_size=4)
    largest, out = _largest_tensor_of_a_step(model, ids, ids)
    assert out.logits is None
    # The head and its gradient (V, D) and the chunk blocks (4, V) remain.
    assert largest <= max(vocab * 16, 4 * vocab) < logits_numel // 4


def test_default_options_on_a_large_vocabulary_do_not_allocate_the_logits():
    vocab = 8192  # impl="auto" chunks when the logits exceed 2^20 elements
    model = lt.apply(build("qwen2", torch.float32, vocab_size=vocab))
    ids = torch.randint(3, vocab, (8, 24))
    largest, _ = _largest_tensor_of_a_step(model, ids, ids)
    assert largest < 8 * 24 * vocab // 2


def _trainer_losses(model, tmp_path, rows):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                                          gradient_accumulation_steps=2, max_steps=4, learning_rate=1e-2,
                                          logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                                          disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    result = trainer.train()
    assert result.global_step == 4
    return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_runs_a_few_steps_with_the_patch_and_the_stock_losses(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (16, T), generator=g)
    labels = ids.clone()
    labels[::3, 5:] = -100  # uneven padding: num_items_in_batch differs from micro-batch to micro-batch
    rows = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels)]
    stock = build("llama", torch.float32)
    fused = lt.apply(copy.deepcopy(stock))
    _, ref = _trainer_losses(stock, tmp_path / "stock", rows)
    trainer, losses = _trainer_losses(fused, tmp_path / "fused", rows)
    assert trainer.model_accepts_loss_kwargs  # so the Trainer passes num_items_in_batch through
    assert len(losses) == 4 and lt.is_patched(fused)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref), rtol=1e-5, atol=1e-6)


def test_patched_context_manager_restores_the_model():
    model = build("mistral")
    ids, _, labels = batch()
    with lt.patched(model):
        assert model(input_ids=ids, labels=labels).logits is None
    assert model(input_ids=ids, labels=labels).logits.shape == (B, T, VOCAB)
    assert not lt.is_patched(model)


# --- refusals ---------------------------------------------------------------------------------

def test_refuses_an_unsupported_family():
    config = transformers.MixtralConfig(**COMMON, num_local_experts=2, num_experts_per_tok=1)
    model = transformers.MixtralForCausalLM(config)
    with pytest.raises(ValueError, match=r"apply\(\): argument 'model' expected a causal LM of a supported family"
                                         r".*model_type 'mixtral'.*use causal_lm_loss"):
        lt.apply(model)


def test_refuses_a_model_without_lm_head():
    model = transformers.LlamaModel(transformers.LlamaConfig(**COMMON))
    with pytest.raises(ValueError,
                       match=r"argument 'model' expected a model with an lm_head.*LlamaModel without lm_head"):
        lt.apply(model)


def test_refuses_a_head_it_cannot_handle():
    model = build("llama")

    class Adapter(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    head = Adapter(16, VOCAB, bias=False)
    model.lm_head = head
    with pytest.raises(TypeError, match=r"argument 'model.lm_head' expected a torch.nn.Linear head.*<Adapter>"):
        lt.apply(model)


def test_refuses_twice_and_unapply_of_an_unpatched_model():
    model = lt.apply(build("llama"))
    with pytest.raises(ValueError, match=r"already patched.*unapply\(model\) first"):
        lt.apply(model)
    lt.unapply(model)
    with pytest.raises(ValueError, match=r"unapply\(\): argument 'model' expected a model patched"):
        lt.unapply(model)


def test_refuses_logits_to_keep_with_labels():
    model = lt.apply(build("llama"))
    ids, _, labels = batch()
    with pytest.raises(ValueError, match=r"forward\(\): argument 'logits_to_keep' expected 0"):
        model(input_ids=ids, labels=labels, logits_to_keep=1)


def test_sequence_of_length_one_is_a_clear_error():
    model = lt.apply(build("llama"))
    ids = torch.randint(3, VOCAB, (2, 1))
    with pytest.raises(ValueError, match=r"argument 'shift' expected a shift smaller than the sequence length"):
        model(input_ids=ids, labels=ids)


def test_importing_logitlab_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, logitlab, logitlab.integrations; print('transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
