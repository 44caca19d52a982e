import torch

import logitlab
from logitlab._memory import _MIN_BYTES, empty_like_huge


def test_large_buffers_are_ordinary_tensors():
    x = torch.empty(_MIN_BYTES // 4 + 1024)  # above the huge-page threshold
    out = empty_like_huge(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    out.fill_(2.0)
    assert float(out.sum()) == 2.0 * x.numel()


def test_cross_entropy_with_a_huge_page_gradient_equals_torch():
    torch.manual_seed(0)
    logits = torch.randn(2048, 8193, requires_grad=True)  # gradient > 64 MiB
    target = torch.randint(0, 8193, (2048,))
    ours = logitlab.cross_entropy(logits, target)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = torch.nn.functional.cross_entropy(logits, target)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
