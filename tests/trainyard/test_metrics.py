"""Metric directions and ranking: numeric, direction-aware, text values never ranked."""

from __future__ import annotations

import pytest

from trainyard.metrics import MetricError, default_direction, default_metric, parse_spec, rank


def _m(mid, **metrics):
    return {"model_id": mid, "metrics": metrics}


def test_directions_default_by_name_and_can_be_overridden():
    assert default_direction("accuracy_test") == "max"
    assert default_direction("val_loss") == "min"
    assert default_direction("rmse") == "min"
    assert parse_spec("accuracy_test") == ("accuracy_test", "max")
    assert parse_spec("loss") == ("loss", "min")
    assert parse_spec("loss:max") == ("loss", "max")
    with pytest.raises(MetricError, match="NAME:max / NAME:min"):
        parse_spec("loss:lowest")


def test_ranking_is_numeric_not_string_sorted():
    # as strings "9.5" > "10.25" > "100.0"; as numbers 100 > 10.25 > 9.5
    models = [_m("a", score=9.5), _m("b", score=100.0), _m("c", score=10.25)]
    ranked, unranked, name, direction = rank(models, "score")
    assert [m["model_id"] for m in ranked] == ["b", "c", "a"] and not unranked
    ranked, *_ = rank(models, "score:min")
    assert [m["model_id"] for m in ranked] == ["a", "c", "b"]


def test_text_metrics_are_never_ranked_and_unknown_names_list_the_available_ones():
    models = [_m("a", loss=0.3, report="precision 0.9"), _m("b", loss=0.1), _m("c", report="n/a")]
    ranked, unranked, _, _ = rank(models, "loss")
    assert [m["model_id"] for m in ranked] == ["b", "a"]
    assert [m["model_id"] for m in unranked] == ["c"]
    with pytest.raises(MetricError, match=r"unknown metric 'report'; available: loss"):
        rank(models, "report")
    with pytest.raises(MetricError, match=r"unknown metric 'accuracy'; available: loss"):
        rank(models, "accuracy")


def test_default_metric_prefers_a_test_then_a_validation_score():
    assert default_metric({"accuracy_training": 1, "accuracy_test": 0.9, "accuracy_validation": 0.8}) == "accuracy_test"
    assert default_metric({"loss": 0.2, "val_loss": 0.3}) == "val_loss"
    assert default_metric({"report": "text"}) is None


def test_default_metric_skips_counts_and_timings():
    metrics = {"val_images": 58, "train_seconds": 4.1, "exact_match": 0.95, "bleu": 0.98, "val_loss": 0.2}
    assert default_metric(metrics) == "val_loss"
    assert default_metric({"val_images": 58, "exact_match": 0.95, "bleu": 0.98}) == "bleu"
