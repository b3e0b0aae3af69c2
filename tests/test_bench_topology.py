"""The topology benchmark: traffic mixes, the calibration fit, the document, and a smoke run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import topology as bt
from fleet import routing
from fleet import simulation as sim
from fleet.catalog import model_names
from tests.serving_fixtures import ServingState

FLIGHT = {"month": 1}  # content does not matter for the shape checks below
RECORDS = {"flight": [dict(FLIGHT, i=i) for i in range(7)], "review": [{"review": "good"}]}


def test_profiles_have_the_promised_shares() -> None:
    mixes = bt.profiles("review_sentiment")
    assert set(mixes) == {"uniform", "skewed", "heavy"}
    for mix in mixes.values():
        assert sum(mix.values()) == pytest.approx(1.0)
        assert set(mix) <= set(bt.request_classes())
    assert mixes["skewed"]["flight_delay"] == pytest.approx(0.9)
    assert mixes["heavy"]["review_sentiment"] == pytest.approx(0.8)
    # uniform: every model is called equally often
    calls = Counter()
    for kind, share in mixes["uniform"].items():
        for model in bt.request_classes()[kind].models:
            calls[model] += share
    assert len(set(calls.values())) == 1


def test_mixed_bodies_follow_the_mix_and_name_their_models() -> None:
    bodies = bt.mixed_bodies({"flight": 0.5, "flight_delay": 0.3, "review_sentiment": 0.2}, RECORDS)
    assert len(bodies) == 200
    kinds = Counter(
        "review" if "review" in b else ("flight" if "models" not in b else b["models"][0])
        for b in bodies
    )
    assert kinds == {"flight": 100, "flight_delay": 60, "review": 40}
    # a full flight request lets the gateway call every flight model; the others name theirs
    assert routing.plan({"flight": {}}, None) == {
        "flight_delay": "flight",
        "arrival_delay": "flight",
    }
    assert bodies != sorted(bodies, key=lambda b: "review" in b)  # shuffled, not in blocks
    assert {b["flight"]["i"] for b in bodies if "flight" in b} == set(range(7))  # records cycle


def test_fit_recovers_the_costs_that_produced_the_observations() -> None:
    truth = sim.Calibration(
        # one cost per catalog model, all different
        predict_s={m: 0.001 * (i + 1) for i, m in enumerate(model_names())},
        server_s=0.002,
        call_s=0.0007,
        gateway_s={"micro": 0.0025, "mono": 0.0015},
        client_s=0.0006,
        hop_s=0.0003,
        wait_s={"micro": 0.001, "mono": 0.0},
        sigma=0.25,
        local_s=0.0004,
    )
    classes = bt.request_classes()
    p99 = 2.0  # latency spread p99 / p50 at one client

    def seen(cpu: float, latency: float, p99_s: float) -> bt.Observation:
        # no wake-up cost in this truth: one client costs what a busy level does
        return bt.Observation(cpu, truth.client_s, cpu, truth.client_s, latency, p99_s)

    direct = {}
    for m, pred in truth.predict_s.items():
        cpu = truth.server_s + pred
        lat = truth.client_s + cpu + 2 * truth.hop_s
        direct[m] = seen(cpu, lat, lat * p99)
    micro, mono = {}, {}
    for kind, cls in classes.items():
        n = len(cls.models)
        gw = truth.gateway_s["micro"] + n * truth.call_s
        slowest = max(2 * truth.hop_s + truth.server_s + truth.predict_s[m] for m in cls.models)
        lat = truth.client_s + 2 * truth.hop_s + gw + slowest
        micro[kind] = seen(gw, lat + truth.wait_s["micro"], lat)
        work = truth.gateway_s["mono"] + sum(truth.local_cpu(m) for m in cls.models)
        mono[kind] = seen(work, truth.client_s + 2 * truth.hop_s + work, 0)
    fitted = bt.fit_calibration(truth.predict_s, direct, micro, mono, classes)
    for name in ("server_s", "call_s", "client_s", "hop_s", "local_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), abs=1e-9), name
    assert fitted.gateway_s == pytest.approx(truth.gateway_s)
    assert fitted.wait_s == pytest.approx(truth.wait_s, abs=1e-9)
    assert fitted.sigma == pytest.approx(0.298, abs=0.001)  # ln(2) / 2.326


def test_the_wake_up_fit_recovers_its_cost_and_ramp() -> None:
    base, wake, ramp = 0.0024, 0.0026, 0.02
    pauses = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
    curve = [(p, base + wake * min(1.0, p / ramp)) for p in pauses]
    assert bt.fit_wake(curve) == pytest.approx((wake, ramp))
    assert bt.fit_wake([(0.0, 0.003), (0.1, 0.0029)]) == (0.0, 0.02)  # no dearer after a pause


def test_validation_error_is_relative() -> None:
    assert bt.relative_error(110, 100) == pytest.approx(0.1)
    assert bt.relative_error(90, 100) == pytest.approx(0.1)


def _point(topology: str, clients: int, rps: float, p50: float, p99: float) -> bt.Point:
    from bench.load import LevelResult

    level = LevelResult(clients, 100, 100, 0, [], 100 / rps, rps, p50, p50, p99, p99, False)
    return bt.Point(topology, "uniform", "gateway", level, 110, {}, 0.0)


def test_repeatability_compares_each_point_with_its_second_measurement() -> None:
    first = [_point("micro", 1, 100, 10, 20), _point("mono", 8, 200, 5, 40)]
    second = [_point("mono", 8, 180, 5.5, 30), _point("micro", 1, 110, 9, 20)]
    rep = bt.repeatability(first, second)
    assert [r["difference"] for r in rep["points"]] == [
        {"req_per_s": 0.1, "p50_ms": 0.1, "p99_ms": 0.0},
        {"req_per_s": 0.1, "p50_ms": 0.1, "p99_ms": 0.25},
    ]
    assert rep["difference"] == pytest.approx(0.1)  # mean over throughput and p50
    assert rep["p99_difference"] == pytest.approx(0.125)
    assert bt.repeatability(first, []) == {}  # no second pass, nothing to say


def test_the_generated_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    doc = tmp_path / "topology.md"
    doc.write_text(f"# Study\n\nwritten by hand\n\n{bt.BEGIN}\nold numbers\n{bt.END}\n\nafter\n")
    bt.write_docs_section(doc, "new numbers")
    bt.write_docs_section(doc, "newer numbers")
    text = doc.read_text()
    assert "written by hand" in text and text.rstrip().endswith("after")
    assert "newer numbers" in text
    assert "old numbers" not in text and "new numbers\n" not in text
    assert text.count(bt.BEGIN) == 1


@pytest.mark.integration
def test_topology_bench_smoke(serving_state: ServingState, tmp_path: Path) -> None:
    """Both topologies for real at smoke size: measured, calibrated, validated, simulated."""
    docs = tmp_path / "docs"
    bt.run_topology_bench(
        serving_state.settings,
        requests=12,
        levels=(2,),
        calibration_requests=8,
        machines=(1, 2),
        sim_requests=150,
        advice_machines=(1,),
        out_dir=tmp_path,
        docs_dir=docs,
        say=lambda _: None,
        only_profiles=("uniform",),
        calibration_level=None,
    )
    data = json.loads((tmp_path / "topology.json").read_text())
    for topology in ("micro", "mono"):
        (level,) = data["measured"]["uniform"][topology]
        assert level["requests"] == 12
        assert level["errors"] == 0, level["error_samples"]
        assert level["req_per_s"] > 0 and level["p99_ms"] >= level["p50_ms"] > 0
        assert level["cores_used"] > 0
    # same total workers, and mono really runs them: supervisor + that many workers
    assert data["workers"]["mono"]["total"] == data["workers"]["micro"]["total"]
    assert data["memory"]["mono"]["gateway"]["processes"] == data["workers"]["mono"]["total"] + 1
    assert set(data["memory"]["micro"]) == {"gateway", *serving_state.tags}
    val = data["simulation"]["validation"]
    assert data["simulation"]["validation_error"] == val["validation_error"] >= 0
    assert len(val["points"]) == 2
    # every point measured twice: the second pass is kept and compared with the first
    rep = data["simulation"]["repeat"]
    assert len(rep["points"]) == 2 and rep["p99_difference"] >= 0
    assert {t: len(v) for t, v in data["repeated"]["uniform"].items()} == {"micro": 1, "mono": 1}
    cal = data["calibration"]
    assert all(v > 0 for v in cal["predict_s"].values())
    assert cal["client_s"] > 0
    assert {r["machines"] for r in data["simulation"]["scaling"]} == {1, 2}
    ranked = data["simulation"]["advice"]["uniform"]["1"]
    assert len(ranked) == 2 ** len(model_names())  # every subset of models in the gateway
    text = (docs / "topology.md").read_text()
    assert bt.BEGIN in text and "Validation error" in text and "measured a second time" in text
    assert (docs / "topology" / "measured.png").stat().st_size > 1000
    assert (docs / "topology" / "validation.png").exists()


def test_a_gateway_answer_with_any_model_error_is_an_error() -> None:
    from bench.load import check_answer

    ok = '{"results": {"flight_delay": {"prediction": {}}}, "errors": {}}'
    partial = '{"results": {"flight_delay": {}}, "errors": {"arrival_delay": "timed out"}}'
    assert check_answer(200, ok, ["results"], ["errors"]) is None
    assert "with 'errors'" in check_answer(200, partial, ["results"], ["errors"])
    assert check_answer(200, partial, ["results"]) is None  # without forbid: as before


def test_requests_per_core_decide_the_hybrid_target() -> None:
    def level(c: int, rps: float, cores: float) -> dict:
        return {"concurrency": c, "req_per_s": rps, "cores_used": cores}

    measured = {
        "micro": [level(1, 40, 1.0), level(8, 90, 2.0)],
        "mono": [level(1, 60, 1.0), level(8, 100, 2.0)],
        "hybrid": [level(1, 70, 1.0), level(8, 96, 2.0)],
    }
    out = bt.per_core(measured)
    assert [r["hybrid_met"] for r in out["rows"]] == [True, False]  # 48 < 50 at 8 clients
    assert out["rows"][1] == {"concurrency": 8, "micro": 45.0, "mono": 50.0, "hybrid": 48.0,
                              "hybrid_met": False}  # fmt: skip
    assert out["met"] is False
    assert bt.per_core({k: v for k, v in measured.items() if k != "hybrid"})["met"] is None


def test_the_hybrid_row_is_autos_plan_or_else_the_busiest_model_dedicated() -> None:
    from tests.test_placement import COSTS as costs

    skewed = bt.profiles("flight_delay")["skewed"]
    chosen, plan = bt.hybrid_plan(costs, skewed, rate=100.0, cores=2, total_workers=6)
    # with the measured costs one process wins: measured instead is the design's plan
    assert chosen.topology == "mono" and chosen.source == "auto, 100 req/s"
    assert plan.topology == "hybrid" and plan.dedicated == {"flight_delay": 2}
    assert plan.gateway_workers == 4  # the same six workers in all
