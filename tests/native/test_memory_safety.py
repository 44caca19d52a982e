"""validate=False skips passes over values, never a bounds check: a class index outside the
classes must raise, not read or write outside the logits (each case in a subprocess, so that a
crash fails the test instead of killing the suite)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = {
    "cross_entropy": "logitlab.cross_entropy(x, t, validate=False)",
    "cross_entropy_inplace": "logitlab.cross_entropy(x.clone().requires_grad_(), t, validate=False, "
                             "inplace_backward=True)",
    "cross_entropy_weight": "logitlab.cross_entropy(x, t, weight=torch.rand(5), validate=False)",
    "cross_entropy_composite": "logitlab.cross_entropy(x, t, validate=False, impl='composite')",
    "cross_entropy_bf16": "logitlab.cross_entropy(x.bfloat16(), t, validate=False)",
    "nll_loss": "logitlab.nll_loss(torch.log_softmax(x, -1), t, validate=False)",
    "focal_loss": "logitlab.focal_loss(x, t, validate=False)",
    "poly1": "logitlab.poly1_cross_entropy(x, t, validate=False)",
    "sparsemax_loss": "logitlab.sparsemax_loss(x, t, validate=False)",
    "fenchel_young_loss": "logitlab.fenchel_young_loss(x, t, validate=False)",
    "linear_cross_entropy_chunked": "logitlab.linear_cross_entropy(h, w, t, validate=False, impl='native')",
    "linear_cross_entropy_naive": "logitlab.linear_cross_entropy(h, w, t, validate=False, impl='composite')",
    "linear_cross_entropy_class_weight": "logitlab.linear_cross_entropy(h, w, t, class_weight=torch.rand(5), "
                                         "validate=False)",
    "vocab_parallel": "logitlab.distributed.vocab_parallel_cross_entropy(x, t, validate=False)",
    "accuracy": "logitlab.metrics.accuracy(torch.softmax(x, -1), t, validate=False)",
}

SCRIPT = """
import sys, torch, logitlab, logitlab.distributed, logitlab.metrics
x, h, w = torch.randn(4, 5), torch.randn(4, 3), torch.randn(5, 3)
cases = {cases!r}
for name, call in sorted(cases.items()):
    for bad in (5, -7, -1, 10**12, -(2**62)):
        t = torch.tensor([0, 1, 2, bad])
        print(name, bad, flush=True)  # the last line names the case if the process crashes
        try:
            eval(call)
        except (IndexError, ValueError) as error:
            if "target" not in str(error):
                raise SystemExit(f"{{name}}: unclear error for index {{bad}}: {{error}}")
            continue
        raise SystemExit(f"{{name}}: no error for index {{bad}}")
print("ok")
"""


def test_out_of_range_index_raises_even_without_validation():
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(cases=CASES)], capture_output=True, text=True,
                          timeout=300)
    last = done.stdout.strip().splitlines()[-1:] or [""]
    assert done.returncode == 0 and last == ["ok"], (done.returncode, last, done.stderr[-2000:])


def test_native_kernel_checks_indices_itself():
    """The C kernel's own check (the Python layers are bypassed here): error code kind 3."""
    import torch

    from logitlab._native import xent

    rows = torch.randn(3, 40)
    if not xent.supports(rows):
        pytest.skip("the native xent kernel cannot be built here (it is tested where it can)")
    keep = torch.ones(3, dtype=torch.bool)
    for bad in (40, -1, 1 << 40):
        target = torch.tensor([0, bad, 1])
        _, _, row, kind = xent.xent_rows(rows.clone(), target, None, keep, torch.ones(3), index_target=True,
                                         label_smoothing=0.0, z_loss=0.0, temperature=1.0, validate=False,
                                         want_grad=True, in_place=True)
        assert (row, kind) == (1, 3)
    # An excluded row's target is never read: any value is fine there.
    keep[1] = False
    _, _, row, kind = xent.xent_rows(rows, torch.tensor([0, -100, 1]), None, keep, torch.ones(3), index_target=True,
                                     label_smoothing=0.0, z_loss=0.0, temperature=1.0, validate=False, want_grad=False)
    assert row == -1
