"""The shared statistics: intervals, paired tests and the size arithmetic behind benchmark claims."""

from __future__ import annotations

import math

import pytest

from macro.stats import bootstrap_ci, mcnemar, min_detectable_difference, over_seeds, paired, pairs_needed


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < sum(values) / len(values) < hi
    assert bootstrap_ci(values, seed=3) == (lo, hi)
    assert bootstrap_ci([2.5] * 7) == (2.5, 2.5)
    assert bootstrap_ci([]) is None


def test_strata_keep_their_weight():
    """A stratum of zeros and one of ones: resampled within strata every mean is exactly one half."""
    values = [0.0] * 10 + [1.0] * 10
    assert bootstrap_ci(values, strata=[0] * 10 + [1] * 10) == (0.5, 0.5)
    lo, hi = bootstrap_ci(values)
    assert lo < 0.4 and hi > 0.6


def test_exact_mcnemar():
    a = [1] * 10 + [0] * 5
    b = [0] * 10 + [0] * 5
    assert mcnemar(a, b) == pytest.approx(2 * 0.5**10)  # ten discordant pairs, all one way
    assert mcnemar([1, 0, 1], [1, 0, 1]) == 1.0
    assert mcnemar([1, 0, 1, 0], [0, 1, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar([1, 0], [1])


def test_paired_difference_on_successes_and_on_scores():
    d = paired([1, 1, 0, 1], [0, 1, 0, 0])
    assert d["delta"] == 0.5 and d["n"] == 4 and d["discordant"] == 0.5
    assert d["ci"][0] <= 0.5 <= d["ci"][1] and d["p_mcnemar"] == 0.5
    scores = paired([0.9, 0.8, 0.7], [0.5, 0.6, 0.4])
    assert scores["delta"] == pytest.approx(0.3) and "p_mcnemar" not in scores
    with pytest.raises(ValueError, match="no pairs"):
        paired([], [])


def test_t_interval_over_seeds():
    s = over_seeds([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["seeds"] == 3
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2 df)
    assert s["ci"] == pytest.approx([2 - half, 2 + half], rel=1e-5)
    assert over_seeds([0.7])["ci"] is None


def test_detectable_difference_inverts_the_sample_size():
    n = pairs_needed(0.10, 0.20)
    assert 150 < n < 160  # Connor's formula at 80 % power, two-sided 5 %
    assert min_detectable_difference(math.ceil(n), 0.20) == pytest.approx(0.10, abs=1e-3)
    assert min_detectable_difference(63, 0.2) > min_detectable_difference(300, 0.2)
    assert min_detectable_difference(3, 0.2) == math.inf
    with pytest.raises(ValueError):
        pairs_needed(0.3, 0.2)


def test_seed_runs_combine_into_means_intervals_and_paired_differences():
    from macro.reports import combine_seeds, seed_table

    runs = [
        {"a": {"auc": 70.0, "name": "x"}, "b": {"auc": 60.0}, "n": 3},
        {"a": {"auc": 72.0, "name": "x"}, "b": {"auc": 61.0}, "n": 3},
        {"a": {"auc": 74.0, "name": "x"}, "b": {"auc": 65.0}, "n": 3},
    ]
    report = combine_seeds(runs, (0, 1, 2), {"a - b": ("a.auc", "b.auc")})
    assert report["a"] == {"auc": 72.0, "name": "x"} and report["b"]["auc"] == 62.0 and report["n"] == 3.0
    assert report["over_seeds"]["a.auc"]["per_seed"] == [70.0, 72.0, 74.0]
    lo, hi = report["over_seeds"]["a.auc"]["ci"]
    assert lo < 72 < hi
    diff = report["differences"]["a - b"]
    assert diff["per_seed"] == [10.0, 11.0, 9.0] and diff["mean"] == 10.0 and diff["seeds"] == 3
    assert report["provenance"]["seeds"] == [0, 1, 2] and report["provenance"]["torch_threads"] >= 1
    table = seed_table(report, ["a.auc"], "AUC")
    assert "| a.auc | 72.00 |" in table and "| a - b | 10.00 |" in table
    single = combine_seeds(runs[:1], (0,), {"a - b": ("a.auc", "b.auc")})
    assert "n/a (1 seed)" in seed_table(single, ["a.auc"], "AUC")


def test_fixed_threads_overrides_and_restores():
    import torch

    from macro.repro import fixed_threads

    before = torch.get_num_threads()
    with fixed_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_lists_of_figures_average_element_wise_and_records_stay_the_first_seeds():
    from macro.reports import combine_seeds

    runs = [
        {"auroc": [80.0, None], "stages": [[1.0, None], [3.0, 5.0]], "cases": [{"id": "a", "dice": 0.5}]},
        {"auroc": [90.0, 70.0], "stages": [[3.0, None], [5.0, 7.0]], "cases": [{"id": "b", "dice": 0.9}]},
    ]
    report = combine_seeds(runs, (0, 1), {})
    assert report["auroc"] == [85.0, 70.0] and report["stages"] == [[2.0, None], [4.0, 6.0]]
    assert report["cases"] == [{"id": "a", "dice": 0.5}]
    assert report["over_seeds"]["auroc.1"]["per_seed"] == [70.0]


def test_wilson_interval_of_a_share():
    from macro.stats import proportion_ci

    lo, hi = proportion_ci(58, 60)
    assert round(lo, 3) == 0.886 and round(hi, 3) == 0.991
    lo, hi = proportion_ci(60, 60)
    assert 0.93 < lo < 0.95 and hi == 1.0, "every item right still leaves room below 100 %"
    assert proportion_ci(0, 10)[0] == 0.0
    with pytest.raises(ValueError):
        proportion_ci(3, 2)
