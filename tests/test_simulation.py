"""The topology simulator against queueing theory and against its own promises."""

from __future__ import annotations

import math

import pytest

from fleet import simulation as sim

ONE = {"only": sim.RequestClass("only", ("m",))}
FLEET = {
    "flight": sim.RequestClass("flight", ("a", "b")),
    "a": sim.RequestClass("a", ("a",)),
    "b": sim.RequestClass("b", ("b",)),
    "r": sim.RequestClass("r", ("r",)),
}
UNIFORM = {"flight": 0.5, "r": 0.5}


def bare(predict: dict[str, float], sigma: float = 0.0, **costs: object) -> sim.Calibration:
    """Only predict times unless a cost is given: the queueing part on its own."""
    base: dict[str, object] = {
        "predict_s": predict,
        "server_s": 0.0,
        "call_s": 0.0,
        "gateway_s": {"micro": 0.0, "mono": 0.0},
        "client_s": 0.0,
        "hop_s": 0.0,
        "sigma": sigma,
    }
    return sim.Calibration(**(base | costs))  # type: ignore[arg-type]


def single_server(workers: int = 1, cores: int = 1) -> sim.Deployment:
    proc = sim.Proc("gateway", 0, workers, frozenset({"m"}), gateway=True)
    return sim.Deployment((cores,), (proc,))


def test_mg1_mean_latency_matches_pollaczek_khinchine() -> None:
    d, sigma, rate = 0.01, 0.5, 50.0  # utilisation 0.5
    res = sim.simulate_open(
        single_server(), bare({"m": d}, sigma), ONE, {"only": 1}, rate, requests=8000, seed=3
    )
    second_moment = d**2 * math.exp(sigma**2)  # lognormal with mean d
    rho = rate * d
    expected = d + rate * second_moment / (2 * (1 - rho))
    assert res.mean_ms / 1000 == pytest.approx(expected, rel=0.12)
    assert res.cores_used == pytest.approx(rho, rel=0.05)  # utilisation = arrival rate x demand
    assert res.utilization["gateway"] == pytest.approx(rho, rel=0.05)
    assert res.throughput == pytest.approx(rate, rel=0.05)


def test_closed_loop_obeys_littles_law_and_the_bottleneck_bound() -> None:
    dep = sim.measured_deployment("micro", {"a": 2, "b": 1, "r": 1}, 1, cores=2)
    cal = bare(
        {"a": 0.004, "b": 0.003, "r": 0.001},
        sigma=0.3,
        server_s=0.001,
        call_s=0.0005,
        gateway_s={"micro": 0.002, "mono": 0.002},
        client_s=0.0005,
        hop_s=0.0001,
    )
    bound = sim.capacity(dep, cal, FLEET, UNIFORM)
    for clients in (1, 8):
        res = sim.simulate_closed(dep, cal, FLEET, UNIFORM, clients, requests=1500)
        # N = X R with no think time
        assert res.throughput * res.mean_ms / 1000 == pytest.approx(clients, rel=0.05)
        assert res.throughput <= bound * 1.02
    saturated = sim.simulate_closed(dep, cal, FLEET, UNIFORM, 32, requests=2000)
    # short of the bound by the time the one-worker gateway, holding its worker, waits
    # for a core: 207 of 229 req/s even with no spread at all, 200 with this one
    assert bound * 0.85 <= saturated.throughput <= bound


def test_more_machines_carry_more_load() -> None:
    cal = bare(
        {"a": 0.004, "b": 0.004, "r": 0.002},
        sigma=0.2,
        server_s=0.001,
        call_s=0.001,
        gateway_s={"micro": 0.002, "mono": 0.002},
    )
    rate = 2000.0  # far above what one 2-core machine can do
    out = {}
    for n in (1, 4):
        for local in ((), ("a", "b", "r")):
            dep = sim.scaled_deployment(n, 2, cal, FLEET, UNIFORM, local)
            assert dep.total_workers == max(2 * n, 4 if not local else 1)
            out[n, bool(local)] = sim.simulate_open(dep, cal, FLEET, UNIFORM, rate, 1500).throughput
    for mono in (False, True):
        assert out[4, mono] > 3 * out[1, mono]


def test_without_hop_costs_micro_and_mono_carry_the_same_uniform_load() -> None:
    """Same workers, same cores, no price for a hop: the layouts must not differ."""
    cal = bare({"a": 0.003, "b": 0.003, "r": 0.003}, sigma=0.2)
    micro = sim.measured_deployment(
        "micro", {"a": 2, "b": 2, "r": 2}, 2, cores=4, with_client=False
    )
    mono = sim.measured_deployment("mono", {"a": 2, "b": 2, "r": 2}, 8, cores=4, with_client=False)
    assert micro.total_workers == mono.total_workers
    mix = {"a": 1, "b": 1, "r": 1}
    x_micro = sim.simulate_closed(micro, cal, FLEET, mix, 32, 2000).throughput
    x_mono = sim.simulate_closed(mono, cal, FLEET, mix, 32, 2000).throughput
    assert x_micro == pytest.approx(x_mono, rel=0.08)
    assert x_mono == pytest.approx(4 / 0.003, rel=0.1)  # the four cores are the bottleneck


def test_a_pooled_process_beats_a_fixed_split_under_skew() -> None:
    cal = bare({"a": 0.003, "b": 0.003, "r": 0.003}, sigma=0.2)
    workers = {"a": 1, "b": 1, "r": 1}
    micro = sim.measured_deployment("micro", workers, 1, cores=3, with_client=False)
    mono = sim.measured_deployment("mono", workers, 3, cores=3, with_client=False)
    skew = {"r": 0.9, "a": 0.05, "b": 0.05}  # r has one worker of three in micro
    x_micro = sim.simulate_closed(micro, cal, FLEET, skew, 24, 1500).throughput
    x_mono = sim.simulate_closed(mono, cal, FLEET, skew, 24, 1500).throughput
    assert x_mono > 2 * x_micro


def test_fan_out_runs_in_parallel_only_across_processes() -> None:
    """One client, no overheads: micro answers a flight in max(a, b), mono in a + b."""
    cal = bare({"a": 0.010, "b": 0.008, "r": 0.001})
    workers = {"a": 1, "b": 1, "r": 1}
    micro = sim.measured_deployment("micro", workers, 1, cores=4, with_client=False)
    mono = sim.measured_deployment("mono", workers, 3, cores=4, with_client=False)
    flight = {"flight": 1}
    assert sim.simulate_closed(micro, cal, FLEET, flight, 1, 200).p50_ms == pytest.approx(10, 0.01)
    assert sim.simulate_closed(mono, cal, FLEET, flight, 1, 200).p50_ms == pytest.approx(18, 0.01)


def test_hops_cost_latency_and_cpu() -> None:
    cal = bare(
        {"a": 0.002, "b": 0.002, "r": 0.002},
        server_s=0.001,
        call_s=0.001,
        hop_s=0.0005,
        gateway_s={"micro": 0.001, "mono": 0.001},
    )
    workers = {"a": 1, "b": 1, "r": 1}
    micro = sim.measured_deployment("micro", workers, 1, cores=4, with_client=False)
    mono = sim.measured_deployment("mono", workers, 4, cores=4, with_client=False)
    r = {"r": 1}
    lat_micro = sim.simulate_closed(micro, cal, FLEET, r, 1, 200).p50_ms
    lat_mono = sim.simulate_closed(mono, cal, FLEET, r, 1, 200).p50_ms
    # micro: gateway 1 + call 1 + 2 hops + server 1 + predict 2; mono: gateway 1 + predict 2
    assert lat_micro == pytest.approx(1 + 1 + 1 + 1 + 1 + 2, rel=0.01)
    assert lat_mono == pytest.approx(1 + 1 + 2, rel=0.01)
    demand_micro = sum(sim.component_demand(cal, FLEET, r, frozenset()).values())
    demand_mono = sum(sim.component_demand(cal, FLEET, r, frozenset({"a", "b", "r"})).values())
    assert demand_micro == pytest.approx(0.005)
    assert demand_mono == pytest.approx(0.003)


def test_allocate_splits_workers_by_demand() -> None:
    split = sim.allocate({"gateway": 1.0, "a": 3.0, "b": 0.01}, 10)
    assert sum(split.values()) == 10
    assert split["b"] == 1  # everyone gets a worker
    assert split["a"] > split["gateway"] >= 1
    assert sum(sim.allocate({"x": 1.0, "y": 1.0, "z": 1.0}, 2).values()) == 3  # raised to 1 each


def test_layouts_run_from_micro_to_mono() -> None:
    names = ["a", "b", "r"]
    found = [sim.layout_name(local, names) for local in sim.layouts(names)]
    assert found[0] == "micro"
    assert found[-1] == "mono"
    assert len(found) == 8
    assert "gateway+a+b" in found


def test_best_layout_follows_the_price_of_a_hop() -> None:
    """Cheap models and costly hops: consolidate everything into the gateway."""
    costly_hop = bare(
        {"a": 0.0005, "b": 0.0005, "r": 0.0005},
        sigma=0.2,
        server_s=0.003,
        call_s=0.002,
        gateway_s={"micro": 0.001, "mono": 0.001},
    )
    ranked = sim.best_layouts(
        costly_hop, FLEET, UNIFORM, 1, 2, p99_budget_ms=100, requests=300, steps=4
    )
    assert ranked[0].layout == "mono"
    assert ranked[-1].capacity < ranked[0].capacity
    with pytest.raises(ValueError, match="mix"):
        sim.normalise({"a": 0})


def test_a_service_called_rarely_pays_its_wake_up_on_every_call() -> None:
    dep = sim.measured_deployment("micro", {"a": 1, "b": 1, "r": 1}, 1, cores=2, with_client=False)
    cal = bare({"a": 0.001, "b": 0.001, "r": 0.001}, server_s=0.001, wake_s=0.002,
               wake_ramp_s=0.02)  # fmt: skip
    mix = {"a": 0.96, "b": 0.02, "r": 0.02}
    res = sim.simulate_open(dep, cal, FLEET, mix, rate=100.0, requests=6000, seed=2)
    busy = {name: res.utilization[name] * res.duration_s for name in ("a", "b")}
    calls = {"a": 0.96 * 6000, "b": 0.02 * 6000}
    per_call = {name: busy[name] / calls[name] for name in busy}
    # a: a call every ~10 ms, half the ramp: about half the wake-up; b: ~0.5 s apart, all
    assert per_call["b"] == pytest.approx(0.002 + 0.002, rel=0.08)
    assert 0.0025 < per_call["a"] < 0.0035
    # the gateway is not charged: its costs are calibrated at its operating point
    assert res.utilization["gateway"] == pytest.approx(0.0, abs=1e-9)


def test_measured_connections_pin_closed_loop_clients_to_workers() -> None:
    dep = single_server(workers=4, cores=4)
    cal = bare({"m": 0.004}, sigma=0.2)
    even = sim.simulate_closed(dep, cal, ONE, {"only": 1}, clients=4, requests=2000, seed=4)
    piled = sim.simulate_closed(dep, cal, ONE, {"only": 1}, clients=4, requests=2000, seed=4,
                                spread={"gateway": [3, 1]})  # fmt: skip
    # balanced: each client has a worker of its own; 3 on one worker queue behind each other
    assert even.throughput == pytest.approx(4 / 0.004, rel=0.05)
    assert piled.throughput == pytest.approx(2 / 0.004, rel=0.05)  # both workers saturated
    assert piled.per_class_p99_ms["only"] > 1.6 * even.per_class_p99_ms["only"]


def test_the_sustained_rate_is_the_load_kept_within_the_p99_budget() -> None:
    """One worker, 10 ms per request: the bound is 100 req/s; a p99 budget keeps the
    sustained load below it, a tighter budget lower still, and one under the service time
    itself allows none."""
    dep, cal = single_server(), bare({"m": 0.01}, sigma=0.3)
    assert sim.capacity(dep, cal, ONE, {"only": 1}) == pytest.approx(100.0)
    rate = {
        budget: sim.sustained_rate(dep, cal, ONE, {"only": 1}, budget, requests=1500, seed=4)
        for budget in (8.0, 40.0, 200.0)
    }
    assert rate[8.0] == 0.0
    assert 5.0 < rate[40.0] < rate[200.0] < 100.0
    # a keep-up check at that rate, with p99 within the budget
    res = sim.simulate_open(dep, cal, ONE, {"only": 1}, rate[40.0], requests=1500, seed=4)
    assert res.p99_ms <= 40.0 and res.keeps_up()


def test_an_open_run_keeps_up_with_what_arrived_not_with_the_nominal_rate() -> None:
    """At a fortieth of its capacity a server keeps up in every run, though in some the
    Poisson arrivals themselves fall more than 3 % short of the nominal rate; past its
    capacity it does not."""
    dep, cal = single_server(workers=4, cores=4), bare({"m": 0.001})
    runs = [
        sim.simulate_open(dep, cal, ONE, {"only": 1}, 100.0, 1500, seed) for seed in range(1, 41)
    ]
    assert all(r.keeps_up() for r in runs)
    assert any(r.throughput < sim.KEEP_UP * 100.0 for r in runs)  # the old check failed these
    over = sim.simulate_open(dep, cal, ONE, {"only": 1}, 1.3 * 4 / 0.001, 1500, seed=1)
    assert over.arrived == pytest.approx(1.3 * 4 / 0.001, rel=0.1) and not over.keeps_up()
    closed = sim.simulate_closed(dep, cal, ONE, {"only": 1}, clients=2, requests=100)
    with pytest.raises(ValueError, match="open-loop"):
        closed.keeps_up()


def test_a_requests_spread_is_drawn_once_for_all_its_parts() -> None:
    """At one client, a request of many bursts (gateway, two models, gateway) spreads as
    widely as one burst of the same sigma: a slow request is slow in every part."""
    sigma = 0.4
    dep = sim.measured_deployment("mono", {"a": 1, "b": 1, "r": 1}, 1, cores=1, with_client=False)
    cal = bare({"a": 0.002, "b": 0.002, "r": 0.002}, sigma=sigma,
               gateway_s={"micro": 0.002, "mono": 0.002})  # fmt: skip
    res = sim.simulate_closed(dep, cal, FLEET, {"flight": 1}, 1, requests=4000, seed=5)
    lognormal_p99_over_p50 = math.exp(2.326 * sigma)  # 2.54
    assert res.p99_ms / res.p50_ms == pytest.approx(lognormal_p99_over_p50, rel=0.1)
    assert res.mean_ms == pytest.approx(6.0, rel=0.03)  # the mean is kept
