"""The topology study's result: its markdown, conclusions, plots and docs section."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.topology.config import (
    BEGIN,
    END,
    TARGET_P99_ERROR,
    TARGET_VALIDATION_ERROR,
    TOPOLOGIES,
)

# --- the result -------------------------------------------------------------------------


@dataclass
class TopologyBench:
    requests: int
    levels: list[int]
    workers: dict[str, Any]
    profiles: dict[str, dict[str, float]]
    machine: dict[str, str]
    predict_ms: dict[str, float] = field(default_factory=dict)
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeated: dict[str, dict[str, Any]] = field(default_factory=dict)  # the second pass
    calibration_runs: list[dict[str, Any]] = field(default_factory=list)
    wake_curve: dict[str, Any] = field(default_factory=dict)  # CPU per call after pauses
    memory: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    simulation: dict[str, Any] = field(default_factory=dict)
    hybrid: dict[str, Any] = field(default_factory=dict)  # the plan auto chose, skewed mix
    plots: list[str] = field(default_factory=list)
    json_path: Path | None = None
    markdown_path: Path | None = None

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("json_path")
        data.pop("markdown_path")
        return data


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    return [
        f"- {m}: {p['kind']}"
        + (f", {p['workers']} worker(s)" if p["kind"] == "dedicated" else "")
        + (f" ({p['reason']})" if p["reason"] else "")
        for m, p in plan["models"].items()
    ]


def _hybrid_lines(hybrid: dict[str, Any]) -> list[str]:
    """The plan `auto` chose for the skewed mix, the hybrid plan measured, and requests
    per core against the two extreme plans."""
    if not hybrid:
        return []
    chosen, plan = hybrid["auto"], hybrid["plan"]
    out = [
        "",
        "### The hybrid plan (skewed mix)",
        "",
        f"`fleet serve --placement auto` for the skewed mix at the rate mono carried at most "
        f"({chosen['source']}), from this run's calibration: **{chosen['topology']}**.",
        "",
        *_plan_lines(chosen),
        *(f"- note: {n}" for n in chosen["notes"]),
    ]
    if chosen["topology"] != "hybrid":
        out += [
            "",
            f"`auto` chose {chosen['topology']} itself. Measured instead, to test that "
            f"choice: {plan['source']}, gateway {plan['gateway_workers']} worker(s) (what "
            "the dedicated model leaves of the same total).",
            "",
            *_plan_lines(plan),
        ]
    rows = hybrid.get("per_core", {}).get("rows", [])
    if rows:
        out += [
            "",
            "Requests per busy core (services and load generator), skewed mix:",
            "",
            "| clients | micro | mono | hybrid | hybrid >= the better of the two |",
            "| ---: | ---: | ---: | ---: | --- |",
            *(
                f"| {r['concurrency']} | {r.get('micro', '-')} | {r.get('mono', '-')} | "
                f"{r.get('hybrid', '-')} | "
                + {True: "met", False: "**MISSED**", None: "-"}[r["hybrid_met"]]
                + " |"
                for r in rows
            ),
        ]
    return out


def _repeat_lines(rep: dict[str, Any]) -> list[str]:
    """The measurement's own noise, in the validation's terms."""
    if not rep:
        return []
    return [
        "",
        f"The same {len(rep['points'])} points measured a second time in this run, after the "
        f"first pass, differ from the first by **{rep['difference']:.1%}** on average "
        f"(throughput {rep['throughput_difference']:.1%}, p50 {rep['p50_difference']:.1%}) "
        f"and by **{rep['p99_difference']:.1%}** in p99. A simulator that knew each point's "
        "true mean would still miss a single measurement by about 1/sqrt(2) of that, so "
        "errors near these figures are the measurement's noise, not the model's.",
    ]


def markdown(bench: TopologyBench, plots_rel: str) -> str:
    """Tables and findings, all from this run."""
    w = bench.workers
    cal = bench.calibration
    val = bench.simulation.get("validation", {})
    lines = [
        "### Measured on one machine",
        "",
        f"Machine: {bench.machine.get('cpus')} CPUs ({bench.machine.get('cpu_model')}), load "
        f"average {bench.machine.get('loadavg_before')} before the run; run "
        f"{bench.machine.get('when')}.",
        "",
        f"Workers: micro = gateway {w['micro']['gateway']} + "
        + " + ".join(f"{m} {c}" for m, c in w["micro"]["models"].items())
        + f" = {w['micro']['total']}; mono = one process with {w['mono']['total']} workers, "
        "each holding every model. "
        f"{bench.requests} measured requests per point after a warm-up; load from a separate "
        "closed-loop process on the same machine; an answer with any per-model error is an error.",
        "",
        "Profiles (shares of requests by kind; `flight` = one flight record for both flight "
        "models, called together):",
        "",
        *(
            f"- {p}: " + ", ".join(f"{k} {v:.0%}" for k, v in mix.items())
            for p, mix in bench.profiles.items()
        ),
        "",
        "| profile | topology | clients | req/s | p50 ms | p95 ms | p99 ms | errors | cores used |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for profile, per_topo in bench.measured.items():
        for topo, levels in per_topo.items():
            for lv in levels:
                lines.append(
                    f"| {profile} | {topo} | {lv['concurrency']} | {lv['req_per_s']:.1f} | "
                    f"{lv['p50_ms']:.2f} | {lv['p95_ms']:.2f} | {lv['p99_ms']:.2f} | "
                    f"{lv['errors']} | {lv['cores_used']:.2f} |"
                    + (" truncated" if lv["truncated"] else "")
                )
    lines += [
        "",
        "Memory after the runs (process trees: the BentoML supervisor and its workers):",
        "",
        "| topology | component | processes | RSS MB | PSS MB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for topo, comps in bench.memory.items():
        for name, mem in comps.items():
            lines.append(
                f"| {topo} | {name} | {mem['processes']} | {mem['rss_mb']:.0f} | "
                f"{mem['pss_mb']:.0f} |"
            )
        total = {k: sum(c[k] for c in comps.values()) for k in ("rss_mb", "pss_mb")}
        lines.append(f"| {topo} | **all** | | {total['rss_mb']:.0f} | {total['pss_mb']:.0f} |")
    lines += _hybrid_lines(bench.hybrid)
    if cal:
        lines += [
            "",
            "### Calibration (CPU per request, ms)",
            "",
            "| cost | ms |",
            "| --- | ---: |",
            *(f"| predict in process: {m} | {_ms(v)} |" for m, v in cal["predict_s"].items()),
            f"| model service per call, on top of the predict | {_ms(cal['server_s'])} |",
            f"| gateway per remote call (HTTP client) | {_ms(cal['call_s'])} |",
            f"| gateway per in-process model call, on top of the predict | "
            f"{_ms(cal.get('local_s', 0.0))} |",
            f"| gateway per request, micro | {_ms(cal['gateway_s']['micro'])} |",
            f"| gateway per request, mono | {_ms(cal['gateway_s']['mono'])} |",
            f"| load generator per request | {_ms(cal['client_s'])} |",
            f"| one-way hop delay (not CPU) | {_ms(cal['hop_s'])} |",
            f"| other wait per request, micro / mono | {_ms(cal['wait_s']['micro'])} / "
            f"{_ms(cal['wait_s']['mono'])} |",
            f"| spread of a request's CPU, one draw per request (lognormal sigma) | "
            f"{cal['sigma']:.2f} |",
            f"| model service wake-up: extra CPU after a pause of "
            f"{cal.get('wake_ramp_s', 0.0) * 1000:g} ms or more | {_ms(cal.get('wake_s', 0.0))} |",
        ]
        curve = bench.wake_curve.get("pause_cpu_s")
        if curve:
            lines += [
                "",
                f"CPU per call of the {bench.wake_curve['model']} service, one client, after "
                "a pause before each call (ms): "
                + ", ".join(f"{pause * 1000:g} ms pause: {cpu * 1000:.2f}" for pause, cpu in curve)
                + ".",
            ]
    if val:
        rep = bench.simulation.get("repeat", {})
        again = {
            (r["profile"], r["topology"], r["concurrency"]): r["second"]
            for r in rep.get("points", [])
        }
        heads = "meas. / again / sim." if again else "meas. / sim."
        lines += [
            "",
            "### Simulator against the measurements",
            "",
            f"Validation error (mean relative error of throughput and p50 over "
            f"{len(val['points'])} points): **{val['validation_error']:.1%}** (target <= "
            f"{TARGET_VALIDATION_ERROR:.0%}: {'met' if val['met'] else '**MISSED**'}); "
            f"throughput {val['throughput_error']:.1%}, p50 {val['p50_error']:.1%}, worst "
            f"single figure {val['max_error']:.1%}. p99: mean error {val['p99_error']:.1%} "
            f"(target <= {TARGET_P99_ERROR:.0%}: "
            f"{'met' if val.get('p99_met') else '**MISSED**'}); the simulated p99 is the "
            f"lower one at {val.get('p99_below_measured', '-')} of {len(val['points'])} points.",
            *_repeat_lines(rep),
            "",
            f"| profile | topology | clients | req/s {heads} | p50 ms {heads} | p99 ms {heads} |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for r in val["points"]:
            second = again.get((r["profile"], r["topology"], r["concurrency"]), {})
            cells = [
                " / ".join(
                    f"{x:.{digits}f}"
                    for x in (r["measured"][m], second.get(m), r["simulated"][m])
                    if x is not None
                )
                for m, digits in (("req_per_s", 0), ("p50_ms", 1), ("p99_ms", 1))
            ]
            lines.append(
                f"| {r['profile']} | {r['topology']} | {r['concurrency']} | "
                + " | ".join(cells)
                + " |"
            )
    find = bench.simulation.get("findings", {})
    if find:
        budget = bench.simulation["p99_budget_ms"]
        cores = bench.simulation["cores_per_machine"]
        lines += [
            "",
            "### Simulated beyond one machine",
            "",
            f"Machines of {cores} cores, one worker per core in both topologies; micro "
            "gives each component workers in proportion to its CPU demand under the profile "
            f"(per-model scaling), mono a replica of the whole process per machine; "
            f"{bench.simulation['net_ms']:.2f} ms one way between machines; clients outside. "
            f"Capacity = highest offered load served in full with p99 <= {budget:.0f} ms "
            "(a six-step bisection between 5 % and 100 % of the topology's bottleneck "
            "bound).",
            "",
            "| profile | machines | capacity micro req/s | capacity mono req/s | mono / micro | "
            "cores used at the lowest load, micro / mono |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for profile, per_n in find.items():
            for n, f in per_n.items():
                ratio = f["capacity_ratio_mono_over_micro"]
                cu = f["cores_used_at_lowest_load"]
                lines.append(
                    f"| {profile} | {n} | {f['capacity']['micro']:.0f} | "
                    f"{f['capacity']['mono']:.0f} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                    f"{cu['micro']:.2f} / {cu['mono']:.2f} |"
                )
    adv = bench.simulation.get("advice", {})
    if adv:
        lines += [
            "",
            "### Which models to consolidate (into the gateway process)",
            "",
            "Every layout from micro (none in the gateway) to mono (all), simulated per "
            f"profile; best first by capacity with p99 <= {bench.simulation['p99_budget_ms']:.0f} "
            "ms, ties by p99 at a common reference load.",
            "",
            "| profile | machines | best layout | its capacity req/s | micro | mono |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for profile, per_n in adv.items():
            for n, ranked in per_n.items():
                by = {r["layout"]: r for r in ranked}
                lines.append(
                    f"| {profile} | {n} | {ranked[0]['layout']} | {ranked[0]['capacity']:.0f} | "
                    f"{by['micro']['capacity']:.0f} | {by['mono']['capacity']:.0f} |"
                )
    lines += ["", "### Findings (generated from the numbers above)", "", *conclusions(bench)]
    if bench.plots:
        lines += ["", "### Plots", ""]
        lines += [f"![{Path(p).stem}]({plots_rel}/{Path(p).name})" for p in bench.plots]
    return "\n".join(lines)


def conclusions(bench: TopologyBench) -> list[str]:
    """Plain sentences stating who won where, derived from the run's numbers only."""
    out = []
    for profile, per_topo in bench.measured.items():
        micro = {lv["concurrency"]: lv for lv in per_topo.get("micro", [])}
        mono = {lv["concurrency"]: lv for lv in per_topo.get("mono", [])}
        parts = []
        for c in sorted(set(micro) & set(mono)):
            a, b = micro[c], mono[c]
            faster = "mono" if b["p50_ms"] < a["p50_ms"] else "micro"
            more = "mono" if b["req_per_s"] > a["req_per_s"] else "micro"
            parts.append(
                f"{c} client(s): {more} served more ({max(a['req_per_s'], b['req_per_s']):.0f} vs "
                f"{min(a['req_per_s'], b['req_per_s']):.0f} req/s), {faster} answered faster "
                f"(p50 {min(a['p50_ms'], b['p50_ms']):.1f} vs "
                f"{max(a['p50_ms'], b['p50_ms']):.1f} ms)"
            )
        if parts:
            out.append(f"- Measured, {profile}: " + "; ".join(parts) + ".")
    mem = bench.memory
    if "micro" in mem and "mono" in mem:
        pm = {t: sum(c["pss_mb"] for c in mem[t].values()) for t in mem}
        out.append(
            f"- Memory: micro {pm['micro']:.0f} MB PSS in all, mono {pm['mono']:.0f} MB "
            f"({pm['micro'] / pm['mono']:.1f}x)."
            if pm["mono"]
            else "- Memory: not measured."
        )
    val = bench.simulation.get("validation")
    if val:
        out.append(
            f"- The simulator reproduces the measured points with a mean error of "
            f"{val['validation_error']:.1%} (throughput {val['throughput_error']:.1%}, p50 "
            f"{val['p50_error']:.1%}, p99 {val['p99_error']:.1%})"
            + (
                "."
                if val["met"]
                else f": above the {TARGET_VALIDATION_ERROR:.0%} target, so "
                "read its extrapolations as trends, not figures."
            )
        )
        rep = bench.simulation.get("repeat")
        if rep:
            out.append(
                f"- Measured twice, the same points differ by {rep['difference']:.1%} "
                f"(p99 {rep['p99_difference']:.1%}): the floor under those errors."
            )
    for profile, per_n in bench.simulation.get("findings", {}).items():
        span = f"{min(per_n, key=int)}..{max(per_n, key=int)} machines"
        ratios = {n: f["capacity_ratio_mono_over_micro"] for n, f in per_n.items()}
        known = {n: r for n, r in ratios.items() if r is not None}
        if known:
            lo, hi = min(known.values()), max(known.values())
            winner = "mono" if lo > 1 else "micro" if hi < 1 else "neither throughout"
            out.append(
                f"- Simulated, {profile}, {span}: capacity mono / micro {lo:.2f}..{hi:.2f}: "
                f"{winner} carries more on the same cores."
            )
        else:
            out.append(
                f"- Simulated, {profile}, {span}: micro kept p99 within the budget at no swept "
                "load, so no capacity ratio."
            )
        crossings = {
            n: f["micro_lower_p50_at_offered"]
            for n, f in per_n.items()
            if f["micro_lower_p50_at_offered"]
        }
        if crossings:
            out.append(
                f"  {profile}: micro's p50 is the lower one at "
                + "; ".join(
                    f"{n} machine(s), offered " + ", ".join(f"{x:.0f}" for x in loads) + " req/s"
                    for n, loads in crossings.items()
                )
                + "; at every other swept load mono's is."
            )
        else:
            out.append(f"  {profile}: mono has the lower p50 at every swept load and size.")
    for profile, per_n in bench.simulation.get("advice", {}).items():
        picks = {n: ranked[0]["layout"] for n, ranked in per_n.items()}
        out.append(
            f"- Consolidation, {profile}: "
            + "; ".join(f"{n} machine(s): {layout}" for n, layout in picks.items())
            + "."
        )
    return out


def write_docs_section(doc: Path, section: str) -> None:
    """Replace the generated part of ``doc`` (between the markers), keeping the rest."""
    note = "<!-- written by `fleet bench topology`; edits here are overwritten -->"
    block = f"{BEGIN}\n{note}\n\n{section}\n\n{END}"
    text = doc.read_text() if doc.exists() else f"# Topology study\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def plot(bench: TopologyBench, out: Path) -> list[Path]:
    """PNG figures of the measured points, the validation and the scaling sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    colours = {"micro": "tab:blue", "mono": "tab:orange", "hybrid": "tab:green"}
    if bench.measured:
        fig, axes = plt.subplots(
            2, len(bench.measured), figsize=(4 * len(bench.measured), 6), squeeze=False
        )
        for i, (profile, per_topo) in enumerate(bench.measured.items()):
            for topo, levels in per_topo.items():
                cs = [lv["concurrency"] for lv in levels]
                axes[0][i].plot(
                    cs, [lv["req_per_s"] for lv in levels], "o-", color=colours[topo], label=topo
                )
                axes[1][i].plot(
                    cs,
                    [lv["p99_ms"] for lv in levels],
                    "o-",
                    color=colours[topo],
                    label=f"{topo} p99",
                )
                axes[1][i].plot(
                    cs,
                    [lv["p50_ms"] for lv in levels],
                    "o--",
                    color=colours[topo],
                    label=f"{topo} p50",
                )
            axes[0][i].set_title(f"measured: {profile}")
            axes[0][i].set_ylabel("req/s")
            axes[1][i].set_ylabel("latency ms")
            axes[1][i].set_xlabel("concurrent clients")
            for ax in (axes[0][i], axes[1][i]):
                ax.set_xscale("log", base=2)
                ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "measured.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    val = bench.simulation.get("validation")
    if val:
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, key, label in ((axes[0], "req_per_s", "req/s"), (axes[1], "p50_ms", "p50 ms")):
            for r in val["points"]:
                ax.scatter(
                    r["measured"][key], r["simulated"][key], color=colours[r["topology"]], s=18
                )
            hi = max(max(r["measured"][key], r["simulated"][key]) for r in val["points"]) * 1.1
            ax.plot([0, hi], [0, hi], "k-", lw=0.8)
            band = TARGET_VALIDATION_ERROR
            ax.fill_between([0, hi], [0, hi * (1 - band)], [0, hi * (1 + band)], color="grey",
                            alpha=0.2)  # fmt: skip
            ax.set_xlabel(f"measured {label}")
            ax.set_ylabel(f"simulated {label}")
        axes[0].set_title(
            f"validation: mean error {val['validation_error']:.1%} "
            f"(band: {TARGET_VALIDATION_ERROR:.0%})"
        )
        fig.tight_layout()
        paths.append(out / "validation.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    scaling = bench.simulation.get("scaling")
    if scaling:
        profiles_ = list(dict.fromkeys(r["profile"] for r in scaling))
        shown = sorted({r["machines"] for r in scaling})
        shown = [shown[0], shown[len(shown) // 2], shown[-1]] if len(shown) > 2 else shown
        for profile in profiles_:
            fig, axes = plt.subplots(3, len(shown), figsize=(4 * len(shown), 9), squeeze=False)
            for j, n in enumerate(shown):
                for topo in TOPOLOGIES:
                    rows = [
                        r
                        for r in scaling
                        if r["profile"] == profile and r["machines"] == n and r["topology"] == topo
                    ]
                    x = [r["offered"] for r in rows]
                    axes[0][j].plot(
                        x, [r["throughput"] for r in rows], "o-", color=colours[topo], label=topo
                    )
                    axes[1][j].plot(
                        x,
                        [r["p99_ms"] for r in rows],
                        "o-",
                        color=colours[topo],
                        label=f"{topo} p99",
                    )
                    axes[1][j].plot(
                        x,
                        [r["p50_ms"] for r in rows],
                        "o--",
                        color=colours[topo],
                        label=f"{topo} p50",
                    )
                    axes[2][j].plot(
                        x, [r["cores_used"] for r in rows], "o-", color=colours[topo], label=topo
                    )
                axes[0][j].set_title(f"{profile}: {n} machine(s)")
                axes[0][j].set_ylabel("throughput req/s")
                axes[1][j].set_ylabel("latency ms")
                axes[1][j].set_yscale("symlog", linthresh=1.0)
                axes[2][j].set_ylabel("cores used")
                axes[2][j].set_xlabel("offered req/s")
                for i in range(3):
                    axes[i][j].legend(fontsize=7)
            fig.tight_layout()
            paths.append(out / f"scaling-{profile}.png")
            fig.savefig(paths[-1], dpi=80)
            plt.close(fig)
        find = bench.simulation.get("findings", {})
        fig, ax = plt.subplots(figsize=(6, 4))
        styles = dict(zip(find, ("-", "--", ":", "-."), strict=False))
        for profile, per_n in find.items():
            ns = [int(n) for n in per_n]
            for topo in TOPOLOGIES:
                ax.plot(
                    ns,
                    [per_n[str(n)]["capacity"][topo] for n in ns],
                    marker="o",
                    linestyle=styles[profile],
                    color=colours[topo],
                    label=f"{profile} {topo}",
                )
        ax.set_xscale("log", base=2)
        # zero capacity (nothing within the budget) has no place on a log axis
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("machines")
        ax.set_ylabel(f"capacity req/s (p99 <= {bench.simulation['p99_budget_ms']:.0f} ms)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "capacity.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths
