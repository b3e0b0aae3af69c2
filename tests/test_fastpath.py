"""The single-record paths answer exactly as the pipeline does, on a real held-out week."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from fleet import fastpath, serving
from fleet.catalog import get_model
from tests.test_gate import HOLDOUT, _fit, _rows


def request_checked(spec, record: dict) -> dict:
    """A record as a model service sees it: validated by its request model."""
    return serving.request_model(spec)(**record).model_dump()


def _served_records(spec, rows) -> list[dict]:
    return [request_checked(spec, r) for r in serving.json_records(spec, rows)]


@pytest.mark.parametrize("model", ["flight_delay", "arrival_delay"])
def test_numpy_and_treelite_answer_as_the_pipeline(flights_q1, model: str) -> None:
    spec = get_model(model)
    fitted = _fit(spec, flights_q1, date(2013, 1, 1), date(2013, 2, 18))
    records = _served_records(spec, _rows(flights_q1, spec, *HOLDOUT))
    assert len(records) > 5000
    # nulls the booster reads as missing, in every nullable reading at once
    nullable = [c.name for c in spec.feature_columns if c.null_share > 0]
    assert nullable
    records.append(request_checked(spec, {**records[0], **dict.fromkeys(nullable)}))

    reference = fastpath.PipelinePredictor(spec, fitted)
    expected = reference.predict_records(records)
    for path in ("numpy", "treelite"):
        fast = fastpath.build(spec, fitted, path)
        got = fast.predict_records(records)
        key = "value" if spec.task == "regression" else "probability"
        gap = np.abs(np.array([g[key] for g in got]) - [e[key] for e in expected]).max()
        assert gap <= fastpath.TOLERANCE, (path, gap)
        assert [g.get("label") for g in got] == [e.get("label") for e in expected]
        # one record at a time, as served, is the same answer
        assert fast.predict_records(records[:1]) == got[:1]
    chosen = fastpath.predictor(spec, fitted, check=records[:200])
    assert chosen.path == "treelite"
    assert fastpath.for_setting(spec, fitted, "pipeline", None).path == "pipeline"
    assert fastpath.for_setting(spec, fitted, "numpy", None).path == "numpy"


def test_a_path_that_answers_otherwise_is_not_used(flights_q1, monkeypatch) -> None:
    """The check refuses a fast path off by more than the tolerance: the next one serves."""
    spec = get_model("flight_delay")
    fitted = _fit(spec, flights_q1, date(2013, 2, 4), date(2013, 2, 18))
    records = _served_records(spec, _rows(flights_q1, spec, *HOLDOUT).head(50))
    honest = fastpath.TreelitePredictor.scores
    monkeypatch.setattr(
        fastpath.TreelitePredictor, "scores", lambda self, X: honest(self, X) + 1e-6
    )
    assert fastpath.predictor(spec, fitted, check=records).path == "numpy"
    assert fastpath.predictor(spec, fitted, check=records, prefer=("treelite",)).path == (
        "pipeline"
    )


def test_the_text_model_answers_through_its_pipeline(reviews_table) -> None:
    from fleet import training

    spec = get_model("review_sentiment")
    X, y = training.training_frame(spec, reviews_table.head(800))
    fitted = training.fit(spec, X, y)
    assert fastpath.predictor(spec, fitted, check=X.head(20)).path == "pipeline"
    with pytest.raises(ValueError, match="encoder \\+ booster"):
        fastpath.build(spec, fitted, "treelite")
