"""The serving benchmark harness, run for real at smoke size, and the load generator's rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.load import LoadSpec, check_answer, percentile
from fleet import serving, training
from fleet.catalog import get_model
from tests.serving_fixtures import ServingState


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) == 0.0


def test_an_answer_without_a_prediction_is_an_error() -> None:
    need = ["prediction.probability"]
    assert check_answer(200, '{"prediction": {"label": "1", "probability": 0.0}}', need) is None
    assert "without 'prediction.probability'" in check_answer(200, '{"error": "boom"}', need)
    assert "not JSON" in check_answer(200, "<html>", need)
    assert check_answer(503, '{"prediction": {"probability": 0.4}}', need).startswith("HTTP 503")
    assert check_answer(200, '{"predictions": [0]}', ["predictions.0"]) is None
    assert check_answer(200, '{"predictions": []}', ["predictions.0"]) is not None
    gateway = '{"results": {}, "errors": {"flight_delay": "timed out"}}'
    assert check_answer(200, gateway, ["results.flight_delay.prediction.probability"])


def test_load_spec_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="bodies"):
        LoadSpec(url="http://127.0.0.1:1/", bodies=[])
    with pytest.raises(ValueError, match="levels"):
        LoadSpec(url="http://127.0.0.1:1/", bodies=[{}], levels=[0])


@pytest.mark.integration
def test_serve_bench_smoke(serving_state: ServingState, tmp_path: Path) -> None:
    """Real model service, gateway and mlflow serve; load from a separate process."""
    from bench.serve import FASTAPI, GATEWAY, MLFLOW, SERVICE, in_process, run_serve_bench

    bench = run_serve_bench(
        serving_state.settings,
        requests=20,
        warmup=5,
        levels=(1, 8),
        time_bound_s=60,
        out_dir=tmp_path,
        say=lambda _: None,
    )
    data = json.loads((tmp_path / "serve.json").read_text())
    assert data["model"] == "flight_delay"
    assert data["bento_tag"] == serving_state.tags["flight_delay"]
    assert data["records"] > 20  # distinct real records, not one repeated example
    names = [t["name"] for t in data["targets"]]
    paths = [in_process(p) for p in ("pipeline", "numpy", "treelite")]
    assert names == [*paths, SERVICE, GATEWAY, FASTAPI, MLFLOW]
    assert data["served_path"] == "treelite"  # it answered as the pipeline on the example
    for target in data["targets"]:
        expected_levels = [1] if target["name"] in paths else [1, 8]
        assert [lv["concurrency"] for lv in target["levels"]] == expected_levels
        for lv in target["levels"]:
            assert lv["errors"] == 0, (target["name"], lv["error_samples"])
            assert lv["requests"] == lv["ok"] == 20
            assert not lv["truncated"]
            assert lv["req_per_s"] > 0 and lv["wall_s"] > 0
            assert 0 < lv["p50_ms"] <= lv["p95_ms"] <= lv["p99_ms"] <= lv["max_ms"]
    assert set(data["ratios_vs_mlflow"]) == {*paths, SERVICE, GATEWAY, FASTAPI, MLFLOW}
    if shutil.which("wrk"):  # the external load generator, on the same HTTP targets
        assert [t["name"] for t in data["wrk"]] == [SERVICE, GATEWAY, FASTAPI, MLFLOW]
        for target in data["wrk"]:
            for lv in target["levels"]:
                assert lv["requests"] > 0 and lv["errors"] == 0, (target["name"], lv)
                assert 0 < lv["p50_ms"] <= lv["p99_ms"] <= lv["max_ms"]
        assert set(data["wrk_ratios_vs_mlflow"]) == {SERVICE, GATEWAY, FASTAPI, MLFLOW}
    else:
        assert data["wrk"] == [] and "wrk was not run" in (tmp_path / "serve.md").read_text()
    p50 = {c["target"]: c for c in data["checks"] if "p50" in c["target"]}
    served = p50["in-process (treelite): p50 <= 1 ms at concurrency 1"]
    assert served["value"] == data["targets"][2]["levels"][0]["p50_ms"]
    assert served["met"] is (served["value"] <= 1.0)
    checks = {c["target"]: c for c in data["checks"]}
    ratio = next(c for name, c in checks.items() if name.startswith("model service req/s"))
    # the verdict follows from the measured figures (rounded as stored)
    service_rps = next(t for t in data["targets"] if t["name"] == SERVICE)["levels"][1]["req_per_s"]
    mlflow_rps = next(t for t in data["targets"] if t["name"] == MLFLOW)["levels"][1]["req_per_s"]
    assert ratio["value"] == pytest.approx(service_rps / mlflow_rps, abs=0.01)
    assert ratio["met"] is (service_rps / mlflow_rps >= ratio["limit"])
    under_wrk = [name for name in checks if name.endswith("(wrk)")]
    assert len(under_wrk) == (1 if data["wrk"] else 0)
    # concurrency 32 was not run at smoke size: said so, not guessed
    assert [c["met"] for c in data["checks"] if "concurrency 32" in c["target"]] == [None, None]
    markdown = (tmp_path / "serve.md").read_text()
    assert "| model service | 8 |" in markdown and "mlflow serve" in markdown
    assert bench.markdown_path == tmp_path / "serve.md"
    # everything the bench started is stopped and unrecorded
    from bench.serve import scratch_settings
    from fleet import processes

    assert processes.read_pid_files(scratch_settings(serving_state.settings)) == []


def test_to_frame_is_the_training_feature_frame(flights_q1: pd.DataFrame) -> None:
    """The fast frame of serving equals ``training.feature_frame`` of the same records."""
    spec = get_model("flight_delay")
    rows = flights_q1.sample(n=3000, random_state=3)
    records = serving.json_records(spec, rows)
    assert any(None in r.values() for r in records)  # nulls in numeric and string columns
    raw = pd.DataFrame.from_records(records, columns=list(spec.features))
    want = training.feature_frame(spec, raw)
    pd.testing.assert_frame_equal(serving.to_frame(spec, records), want, check_exact=True)
    for i in range(0, 3000, 97):  # single records, as the services see them
        pd.testing.assert_frame_equal(
            serving.to_frame(spec, [records[i]]),
            training.feature_frame(spec, raw.iloc[[i]]),
            check_exact=True,
        )
    assert serving.to_frame(spec, []).dtypes.equals(want.dtypes)
    with pytest.raises(ValueError):  # a value that fits no dtype still fails loudly
        serving.to_frame(spec, [{**records[0], "distance": "far"}])
