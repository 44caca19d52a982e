"""The seed claims about output layers, each checked against its closed form."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from logitlab import registry
from logitlab.analysis import gradient_sweep, likelihood_underflow, scale_response

F64 = torch.float64
MARGINS = [0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0]
C = 5


def _available(normalizer: str) -> bool:
    module = registry.NORMALIZERS[normalizer].fn.__module__
    return importlib.util.find_spec(module) is not None


def _logits(margin: float, offset: float = 0.0) -> torch.Tensor:
    z = torch.full((C,), offset, dtype=F64)
    z[1] += margin
    return z


# --- gradient sweeps --------------------------------------------------------------------------


def test_softmax_cross_entropy_gradient_tends_to_a_nonzero_constant():
    sweep = gradient_sweep("softmax", "cross_entropy", margins=MARGINS, num_classes=C)
    probs = torch.stack([torch.softmax(_logits(m), 0) for m in MARGINS])
    torch.testing.assert_close(sweep.grad_true, probs[:, 0] - 1)  # ∂L/∂z = softmax(z) − e_y
    torch.testing.assert_close(sweep.grad_wrong, probs[:, 1])
    torch.testing.assert_close(sweep.prob_true, probs[:, 0])
    assert abs(float(sweep.grad_norm[-1]) - math.sqrt(2)) < 1e-12
    assert abs(float(sweep.grad_true[-1]) + 1) < 1e-12
    assert (sweep.grad_norm[3:].diff() > 0).all()  # grows towards √2, never decays
    # L = log Σ exp z − z_y ≈ margin: the loss becomes linear in the logit.
    assert abs(float(sweep.loss_value[-1] - sweep.margins[-1])) < 1e-12


@pytest.mark.parametrize("loss", ["kl", "fenchel_young"])
def test_other_names_of_the_softmax_cross_entropy_sweep_identically(loss):
    ce = gradient_sweep("softmax", "cross_entropy", margins=MARGINS, num_classes=C)
    other = gradient_sweep("softmax", loss, margins=MARGINS, num_classes=C)
    torch.testing.assert_close(other.loss_value, ce.loss_value)
    torch.testing.assert_close(other.grad_norm, ce.grad_norm)


@pytest.mark.parametrize("loss", ["focal", "poly1"])
def test_focal_and_poly1_keep_the_cross_entropy_limit(loss):
    sweep = gradient_sweep("softmax", loss, margins=MARGINS, num_classes=C)
    assert abs(float(sweep.grad_norm[-1]) - math.sqrt(2)) < 1e-9
    assert abs(float(sweep.grad_true[-1]) + 1) < 1e-9


def test_softmax_squared_error_gradient_vanishes():
    sweep = gradient_sweep("softmax", "brier", margins=MARGINS, num_classes=C)
    # Closed form: L = Σ (p − y)², ∂L/∂z = J(p)ᵀ 2(p − y), J = diag(p) − p pᵀ.
    for m, norm in zip(MARGINS, sweep.grad_norm.tolist()):
        p = torch.softmax(_logits(m), 0)
        y = torch.nn.functional.one_hot(torch.tensor(0), C).to(F64)
        grad = (torch.diag(p) - torch.outer(p, p)) @ (2 * (p - y))
        assert math.isclose(norm, float(grad.norm()), rel_tol=1e-6, abs_tol=1e-15)
    assert float(sweep.grad_norm[-1]) < 1e-15
    ratio = float(sweep.grad_norm[-2] / sweep.grad_norm[-3])  # margins 10 → 20
    assert ratio < math.exp(-9)  # exponential decay, e^{-margin}
    assert abs(float(sweep.loss_value[-1]) - 2) < 1e-12  # saturates at its maximum


@pytest.mark.parametrize("loss", ["js", "tv", "hellinger"])
def test_bounded_divergences_with_softmax_also_vanish(loss):
    sweep = gradient_sweep("softmax", loss, margins=MARGINS, num_classes=C)
    assert float(sweep.grad_norm[-1]) < 1e-8 * float(sweep.grad_norm[0])
    # Exponential decay: e^{-margin} (JS, TV), e^{-margin/2} (Hellinger, through √p).
    assert float(sweep.grad_norm[-1] / sweep.grad_norm[-2]) < math.exp(-9)


def test_x_over_sum_x_with_softplus_keeps_a_constant_true_class_gradient():
    sweep = gradient_sweep("standard", "kl", margins=MARGINS, num_classes=C, positivity="softplus")
    f = torch.nn.functional.softplus
    for i, m in enumerate(MARGINS):
        z = _logits(m)
        total = float(f(z).sum())
        sig = torch.sigmoid(z)
        assert math.isclose(float(sweep.grad_true[i]), -float(sig[0] / f(z[0])) + float(sig[0]) / total, rel_tol=1e-9)
        assert math.isclose(float(sweep.grad_wrong[i]), float(sig[1]) / total, rel_tol=1e-9)
        assert math.isclose(float(sweep.loss_value[i]), math.log(total / float(f(z[0]))), rel_tol=1e-9)
        assert math.isclose(float(sweep.prob_true[i]), float(f(z[0])) / total, rel_tol=1e-9)
    # The limit: −σ(0)/softplus(0) = −1/(2 log 2); the wrong class's push decays like 1/margin.
    assert abs(float(sweep.grad_true[-1]) + 1 / (2 * math.log(2))) < 0.015
    assert float(sweep.grad_wrong[-1]) < 1.1 / 40
    # Logarithmic, not linear, growth: doubling the margin adds about log 2.
    assert abs(float(sweep.loss_value[-1] - sweep.loss_value[-2]) - math.log(2)) < 0.1


def test_x_over_sum_x_of_positive_scores():
    sweep = gradient_sweep("standard", "kl", margins=MARGINS, num_classes=C, offset=1.0)
    margins = torch.tensor(MARGINS, dtype=F64)
    total = C + margins  # scores: 1 for every class, 1 + margin for the favourite
    torch.testing.assert_close(sweep.grad_true, -1 + 1 / total)  # ∂(−log x_0 + log Σx)/∂x_0
    torch.testing.assert_close(sweep.grad_wrong, 1 / total)
    torch.testing.assert_close(sweep.loss_value, total.log())


def test_sigmoid_bce_true_class_pull_does_not_depend_on_the_margin():
    sweep = gradient_sweep("sigmoid", "binary_cross_entropy", margins=MARGINS, num_classes=C, offset=-1.0)
    # Mean over the C classes: ∂L/∂z_0 = (σ(z_0) − 1)/C, whatever the favourite does.
    expected = (torch.sigmoid(torch.tensor(-1.0, dtype=F64)) - 1) / C
    torch.testing.assert_close(sweep.grad_true, expected.expand(len(MARGINS)))
    torch.testing.assert_close(sweep.grad_wrong, torch.sigmoid(torch.tensor(MARGINS, dtype=F64) - 1) / C)


def test_spherical_and_taylor_decay_polynomially():
    from logitlab.normalizers.spherical import SPHERICAL_EPS

    sph = gradient_sweep("spherical_softmax", "kl", margins=MARGINS, num_classes=C)
    margins = torch.tensor(MARGINS, dtype=F64)
    total = margins**2 + C * SPHERICAL_EPS
    torch.testing.assert_close(sph.grad_true, torch.zeros_like(margins))  # ∂(z²+ε)/∂z = 0 at z_y = 0
    torch.testing.assert_close(sph.grad_wrong, 2 * margins / total)  # ≈ 2/margin
    tay = gradient_sweep("taylor_softmax", "kl", margins=MARGINS, num_classes=C)
    f = 1 + margins + margins**2 / 2
    total = f + (C - 1)
    torch.testing.assert_close(tay.grad_true, -1 + 1 / total)
    torch.testing.assert_close(tay.grad_wrong, (1 + margins) / total)


@pytest.mark.skipif(not _available("sparsemax"), reason="the sparse normalizers have not landed on main")
def test_sparsemax_loss_is_linear_with_a_constant_gradient_past_margin_one():
    sweep = gradient_sweep("sparsemax", "sparsemax_loss", margins=MARGINS, num_classes=C)
    past = torch.tensor(MARGINS) >= 1
    torch.testing.assert_close(sweep.loss_value[past], sweep.margins[past], rtol=0, atol=1e-12)
    torch.testing.assert_close(sweep.grad_norm[past], torch.full((int(past.sum()),), math.sqrt(2), dtype=F64))
    assert (sweep.prob_true[past] == 0).all()
    # Through a one-hot output the Jacobian of sparsemax is exactly 0: every divergence on its
    # probabilities stops learning (gradient exactly 0, not just small) once margin >= 1.
    for loss in ("brier", "js", "tv", "hellinger"):
        other = gradient_sweep("sparsemax", loss, margins=MARGINS, num_classes=C)
        assert (other.grad_norm[past] == 0).all() and float(other.grad_norm[0]) > 0, loss


@pytest.mark.skipif(not _available("entmax15"), reason="the sparse normalizers have not landed on main")
def test_entmax15_loss_is_linear_with_a_constant_gradient_past_margin_two():
    sweep = gradient_sweep("entmax15", "entmax_loss", margins=MARGINS, num_classes=C)
    past = torch.tensor(MARGINS) >= 2
    torch.testing.assert_close(sweep.loss_value[past], sweep.margins[past], rtol=0, atol=1e-9)
    torch.testing.assert_close(sweep.grad_norm[past], torch.full((int(past.sum()),), math.sqrt(2), dtype=F64),
                               rtol=0, atol=1e-9)
    beyond = torch.tensor(MARGINS) > 2
    brier = gradient_sweep("entmax15", "brier", margins=MARGINS, num_classes=C)
    assert (brier.grad_norm[beyond] == 0).all() and float(brier.grad_norm[0]) > 0


def test_every_pair_sweeps_to_finite_values():
    from logitlab.analysis import sweep_pairs

    pairs = registry.valid_pairs(index_targets=True)
    sweeps = sweep_pairs(margins=[0.0, 3.0, 30.0], num_classes=4)
    assert [(s.normalizer, s.loss) for s in sweeps] == pairs
    for sweep in sweeps:
        normalizer, loss = sweep.normalizer, sweep.loss
        assert sweep.params == ({"positivity": "softplus"} if normalizer == "standard" else {})
        for name in ("loss_value", "grad_norm", "grad_true", "grad_wrong", "prob_true"):
            values = getattr(sweep, name)
            assert values.shape == (3,) and values.dtype == F64 and torch.isfinite(values).all(), (normalizer, loss)


def test_gradient_sweep_bad_input():
    with pytest.raises(ValueError, match="not defined for normalizer"):
        gradient_sweep("sigmoid", "cross_entropy", margins=[1.0])
    with pytest.raises(ValueError, match=r"gradient_sweep\(\): argument 'margins' expected finite values >= 0"):
        gradient_sweep("softmax", "cross_entropy", margins=[-1.0])
    with pytest.raises(ValueError, match=r"argument 'margins' expected a non-empty 1-D sequence"):
        gradient_sweep("softmax", "cross_entropy", margins=[])
    with pytest.raises(ValueError, match=r"argument 'num_classes' expected an int >= 2, got 1"):
        gradient_sweep("softmax", "cross_entropy", margins=[1.0], num_classes=1)


# --- scale response ---------------------------------------------------------------------------


def test_softmax_sharpens_towards_one_hot_and_standard_does_not_move():
    z = torch.tensor([1.0, 2.0, 0.5])
    scales = [0.01, 0.1, 1.0, 10.0, 100.0]
    soft = scale_response("softmax", z, scales)
    assert (soft.max_prob.diff() > 0).all() and (soft.entropy.diff() < 0).all()
    assert float(soft.entropy[0]) > math.log(3) - 1e-3 and float(soft.max_prob[-1]) >= 1 - 1e-15
    torch.testing.assert_close(soft.probs[2], torch.softmax(z.double(), 0))
    std = scale_response("standard", z, scales)
    torch.testing.assert_close(std.probs, (z.double() / z.double().sum()).expand(5, 3), rtol=1e-15, atol=0)
    assert (std.support == 3).all()


def test_spherical_and_taylor_tend_to_squares_not_one_hot():
    z = torch.tensor([1.0, 2.0, -0.5])
    squares = (z**2 / (z**2).sum()).double()
    for name in ("spherical_softmax", "taylor_softmax"):
        response = scale_response(name, z, [1.0, 1e4])
        torch.testing.assert_close(response.probs[-1], squares, rtol=0, atol=1e-3)


@pytest.mark.skipif(not _available("sparsemax"), reason="the sparse normalizers have not landed on main")
def test_sparsemax_is_one_hot_at_a_finite_scale():
    z = torch.tensor([1.0, 2.0, 0.5])  # gap 1 between the two largest: one-hot from scale 1 on
    response = scale_response("sparsemax", z, [0.1, 0.5, 1.0, 3.0])
    assert response.support.tolist()[-2:] == [1, 1] and (response.probs[-2:, 1] == 1).all()
    assert int(response.support[0]) == 3


def test_scale_response_bad_input():
    with pytest.raises(ValueError, match=r"scale_response\(\): argument 'logits' expected a non-empty 1-D tensor"):
        scale_response("softmax", torch.zeros(2, 2), [1.0])
    with pytest.raises(ValueError, match=r"argument 'scales' expected a non-empty 1-D sequence of finite"):
        scale_response("softmax", torch.zeros(2), [math.inf])
    with pytest.raises(ValueError, match="unknown normalizer 'softmaxx'"):
        scale_response("softmaxx", torch.zeros(2), [1.0])


# --- likelihood underflow ---------------------------------------------------------------------


def test_product_of_halves_underflows_at_the_subnormal_limit():
    report = likelihood_underflow(0.5, batch_size=1100)
    # 2^-149 is float32's smallest subnormal, 2^-1074 float64's; one more halving rounds to 0.
    assert report.underflow_at == {"float32": 150, "float64": 1075}
    assert report.subnormal_at == {"float32": 127, "float64": 1023}  # below 2^-126, 2^-1022
    for name, n in report.underflow_at.items():
        assert math.isclose(report.log_likelihood_at_underflow[name], n * math.log(0.5), rel_tol=1e-6)
        assert torch.isfinite(report.log_likelihood_in[name]).all()
    torch.testing.assert_close(report.log_likelihood, report.batch_size.double() * math.log(0.5))


def test_underflow_of_a_model_batch_and_no_underflow_for_short_batches():
    probs = torch.rand(5000, dtype=F64) * 0.8 + 0.1
    report = likelihood_underflow(probs, dtypes=(torch.float32,))
    n = report.underflow_at["float32"]
    assert n is not None and report.product["float32"][n - 1] == 0 and report.product["float32"][n - 2] > 0
    assert float(report.log_likelihood[n - 1]) < math.log(2.0**-149)  # the true product is below 2^-149
    short = likelihood_underflow(0.5, batch_size=100)
    assert short.underflow_at == {"float32": None, "float64": None}


def test_likelihood_underflow_bad_input():
    with pytest.raises(ValueError,
                       match=r"likelihood_underflow\(\): argument 'probs' expected probabilities in \(0, 1\]"):
        likelihood_underflow(torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match=r"argument 'batch_size' expected an int >= 1"):
        likelihood_underflow(0.5, batch_size=0)
    with pytest.raises(ValueError, match=r"argument 'dtypes' expected floating torch dtypes"):
        likelihood_underflow(0.5, dtypes=(torch.int32,))


def test_unknown_names_are_errors_that_name_the_function_and_argument():
    # Was: the registry's "unknown loss 'nope'; expected one of ..." without the caller or argument.
    with pytest.raises(ValueError, match=r"gradient_sweep\(\): argument 'loss' expected one of .*'cross_entropy'"
                                         r".*, got 'nope' \(unknown loss 'nope'\)"):
        gradient_sweep("softmax", "nope", margins=[1.0])
    with pytest.raises(ValueError, match=r"gradient_sweep\(\): argument 'normalizer' expected one of .*'softmax'"
                                         r".*, got 'softmaxx' \(unknown normalizer 'softmaxx'\)"):
        gradient_sweep("softmaxx", "cross_entropy", margins=[1.0])
    with pytest.raises(ValueError, match=r"gradient_sweep\(\): argument 'loss' expected a loss defined for "
                                         r"normalizer 'sigmoid', got 'cross_entropy' \(not defined for normalizer"):
        gradient_sweep("sigmoid", "cross_entropy", margins=[1.0])
    with pytest.raises(ValueError, match=r"scale_response\(\): argument 'normalizer' expected one of .*, got "
                                         r"'softmaxx' \(unknown normalizer 'softmaxx'\)"):
        scale_response("softmaxx", torch.zeros(2), [1.0])
