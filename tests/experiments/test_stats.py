"""The study's statistics against scipy, temperature scaling, the convergence check and user data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from logitlab.experiments import stats


@pytest.mark.parametrize("df", [1, 2, 5, 7, 29, 30, 31, 50, 200])
def test_t_quantile_matches_scipy(df):
    assert stats.t_quantile(df) == pytest.approx(scipy.stats.t.ppf(0.975, df), abs=2e-3)


def test_mean_interval_matches_scipy_t_interval():
    values = [0.91, 0.95, 0.93, 0.97, 0.92]
    interval = stats.mean_interval(values)
    lo, hi = scipy.stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy.stats.sem(values))
    assert (interval.lo, interval.hi) == pytest.approx((lo, hi), abs=1e-4)
    assert stats.mean_interval([0.9, None, float("nan")]).n == 1
    one = stats.mean_interval([0.9])
    assert one.mean == 0.9 and math.isnan(one.lo) and math.isnan(one.hi)


@pytest.mark.parametrize("d", [[0.1, -0.05, 0.2, 0.03, -0.01, 0.07], [1.0, 2.0, 3.0], [0.5, -0.5, 0.25, -0.25]])
def test_sign_flip_p_matches_a_brute_force_enumeration_and_scipy(d):
    observed = abs(sum(d))
    flips = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product((1, -1), repeat=len(d))]
    assert stats.sign_flip_p(d) == pytest.approx(sum(f >= observed - 1e-12 for f in flips) / len(flips))
    result = scipy.stats.permutation_test((np.array(d),), np.sum, permutation_type="samples", n_resamples=10_000)
    assert stats.sign_flip_p(d) == pytest.approx(result.pvalue, abs=1e-9)


def test_paired_differences_and_their_marks():
    better = stats.paired({s: 0.95 + 0.001 * s for s in range(6)}, {s: 0.90 + 0.002 * s for s in range(6)})
    assert better.excludes_zero and better.mean > 0 and better.p == pytest.approx(2 / 64)
    noise = stats.paired({0: 0.91, 1: 0.89, 2: 0.92}, {0: 0.90, 1: 0.91, 2: 0.90})
    assert not noise.excludes_zero
    single = stats.paired({0: 0.9}, {0: 0.8})
    assert single.n == 1 and not single.excludes_zero  # one seed: no interval, never marked
    assert stats.paired({0: 1.0, 1: 2.0}, {1: 1.0}).n == 1  # only the seeds both have


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    from logitlab.experiments.runner import fit_temperature
    from logitlab.experiments.spec import parse_combination

    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 5, generator=generator, dtype=torch.float64)
    target = torch.multinomial(torch.softmax(logits / 2.5, -1), 1, generator=generator).squeeze(1)
    combo = parse_combination("softmax+cross_entropy")
    t = fit_temperature(logits, target, combo, smoothing=0.0)
    assert t == pytest.approx(2.5, rel=0.08)
    # the fitted T minimizes the NLL: a brute-force grid around it finds nothing lower
    def nll(temp):
        return float(torch.nn.functional.cross_entropy(logits / temp, target))
    assert all(nll(t) <= nll(t * f) + 1e-9 for f in (0.9, 0.97, 1.03, 1.1))


def test_loss_drop_share_flags_a_run_still_falling():
    from logitlab.experiments.runner import loss_drop_share
    from logitlab.experiments.stats import STILL_FALLING_SHARE

    flat = [2.0 * math.exp(-i) + 0.1 for i in range(20)]
    falling = [2.0 - 0.09 * i for i in range(20)]
    assert loss_drop_share(flat) < 0.001 < STILL_FALLING_SHARE < loss_drop_share(falling)
    assert math.isnan(loss_drop_share([1.0, 0.5])) and loss_drop_share([1.0, 1.0, 1.2, 1.3]) == 0.0


def test_a_users_csv_and_npz_files_are_datasets(tmp_path):
    from logitlab.experiments.data import load_split
    from logitlab.experiments.spec import SpecError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    names = np.array(["cat", "dog", "eel"])[np.arange(60) % 3]
    csv = tmp_path / "mine.csv"
    csv.write_text("a,b,species,c\n" + "".join(f"{r[0]},{r[1]},{n},{r[2]}\n" for r, n in zip(x, names)))
    split = load_split(str(csv), 0, label="species")
    assert split.num_classes == 3 and split.x_train.shape[1] == 3
    assert len(split.y_train) + len(split.y_val) + len(split.y_test) == 60
    np.savez(tmp_path / "mine.npz", x=x, y=np.arange(60) % 3)
    assert load_split(str(tmp_path / "mine.npz"), 1).num_classes == 3
    with pytest.raises(SpecError, match="no label column 'label' .*--set label=COLUMN"):
        load_split(str(csv), 0)
    with pytest.raises(SpecError, match="cannot be read"):
        load_split(str(tmp_path / "missing.csv"), 0)


@pytest.mark.slow  # a study end to end
def test_a_csv_dataset_runs_through_the_cli(tmp_path, capsys):
    from logitlab import cli
    from logitlab.experiments import records as rec

    rng = np.random.default_rng(1)
    rows = "".join(f"{a:.4f},{b:.4f},{'yes' if a + b > 0 else 'no'}\n" for a, b in rng.normal(size=(80, 2)))
    (tmp_path / "mine.csv").write_text("a,b,target\n" + rows)
    out = tmp_path / "run"
    status = cli.main(["study", "--dataset", str(tmp_path / "mine.csv"), "--set", "label=target", "--jobs", "1",
                       "--seeds", "1", "--steps", "5", "--set", "pairs=softmax+cross_entropy", "--out", str(out)])
    assert status == 0
    (record,) = rec.read_records(out / rec.RECORDS)
    assert record["num_classes"] == 2 and record["n_test"] == 16
