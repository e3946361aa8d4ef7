"""bench/peers' pure parts: the grid, the tools' result lines, the accuracy comparison and the ratio figures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from peers_support.mnist_train import label
from peers_support.report import (
    GRID,
    Samples,
    check_results,
    combinations,
    compare,
    figure_lines,
    parse_marked,
    trainyard_results,
)


def test_the_grid_is_bench_sweeps_twelve_combinations_with_one_label_each():
    combos = combinations(GRID)
    assert len(combos) == 12
    assert len({label(c) for c in combos}) == 12
    assert label({"kernel": "poly", "gamma": 0.1, "degree": 3}) == "degree=3,gamma=0.1,kernel=poly"


def test_parse_marked_takes_the_last_marked_line_after_a_log_prefix():
    text = ('PEERS_RESULTS {"old": 1}\n'
            '2026-11-30 13:04:39.760 [1/end/6 (pid 9)] PEERS_RESULTS {"a": {"accuracy_test": 0.5}}\n'
            "Done!\nPEERS_CACHE_HITS 12\n")
    assert parse_marked(text) == {"a": {"accuracy_test": 0.5}}
    assert parse_marked(text, "PEERS_CACHE_HITS ") == 12
    with pytest.raises(ValueError, match="no PEERS_RESULTS line"):
        parse_marked("Done!\n")


def test_trainyard_results_are_keyed_by_the_same_labels_and_count_cache_hits():
    doc = {"models": [
        {"hyper": {"kernel": "linear", "degree": 3, "gamma": 10}, "metrics": {"accuracy_test": 0.96}, "cached": True},
        {"hyper": {"kernel": "poly", "degree": 5, "gamma": 0.01}, "metrics": {"accuracy_test": 0.09}, "cached": False},
    ]}
    results, cached = trainyard_results(doc)
    assert results == {"degree=3,gamma=10,kernel=linear": {"accuracy_test": 0.96},
                       "degree=5,gamma=0.01,kernel=poly": {"accuracy_test": 0.09}}
    assert cached == 1


def test_check_results_names_missing_extra_and_metricless_combinations():
    combos = [{"k": 1}, {"k": 2}, {"k": 3}]
    results = {"k=1": {"accuracy_test": 0.9}, "k=2": {}, "k=4": {"accuracy_test": 0.1}}
    assert check_results(results, combos) == ["no result for k=3", "unexpected result k=4", "k=2 has no accuracy_test"]
    assert check_results({"k=1": {"accuracy_test": 1}}, combos[:1]) == []


def test_compare_reports_only_real_differences():
    ref = {"k=1": {"accuracy_test": 0.9629629629629629, "accuracy_training": 1.0}}
    assert compare(ref, {"k=1": {"accuracy_test": 0.9629629629629629 + 1e-12, "accuracy_training": 1.0}}) == []
    assert compare(ref, {"k=1": {"accuracy_test": 0.97, "accuracy_training": 1.0}}) == [
        "k=1 accuracy_test: 0.97 vs 0.9629629629629629"]
    assert compare(ref, {"k=1": {"accuracy_training": 1.0}}) == ["k=1 accuracy_test: None vs 0.9629629629629629"]


def test_figure_lines_use_the_minimum_and_put_the_four_ratios_last():
    samples = {
        "trainyard": {"A": Samples([10.0, 8.0, 12.0]), "B": Samples([3.0]), "C": Samples([0.5, 0.4])},
        "metaflow": {"A": Samples([16.0, 20.0]), "B": Samples([5.0])},
        "kfp_local": {"A": Samples([18.0]), "B": Samples([2.0]), "C": Samples([0.8])},
        "floor_xargs_p2": {"A": Samples([4.0, 5.0])},
    }
    lines = figure_lines(samples, 0)
    assert lines[-4:] == ["peers_A_vs_metaflow: 0.50x (target: <= 0.9x)",
                          "A_vs_floor: 2.00x (target: <= 1.4x)",
                          "peers_B_vs_kfp: 1.50x (target: <= 1.0x)",
                          "peers_C_vs_kfp: 0.50x (target: <= 1.0x)"]
    assert "trainyard_A_min_seconds: 8.00 (target: n/a)" in lines
    assert "trainyard_A_median_seconds: 10.00 (target: n/a)" in lines
    assert "accuracy_mismatches: 0 (target: 0)" in lines


def test_a_contender_without_samples_gives_n_a_not_a_number():
    samples = {"trainyard": {"A": Samples([], ["round 1 A trainyard: exited 1"])},
               "metaflow": {"A": Samples([16.0])}}
    lines = figure_lines(samples, None)
    assert "trainyard_A_min_seconds: n/a (target: n/a)" in lines
    assert "accuracy_mismatches: n/a (target: 0)" in lines
    assert lines[-4] == "peers_A_vs_metaflow: n/a (target: <= 0.9x)"
