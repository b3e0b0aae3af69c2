"""The ``fleet`` command line: a thin shell over the flows and the core functions.

Heavy libraries (prefect, mlflow, great_expectations, sklearn) are imported inside
the commands so ``fleet --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleet.secrets import mask_url
from fleet.settings import Settings, get_settings, prepare_environment

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: measured figures and ratios, JSON + markdown.")
app.add_typer(bench_app, name="bench")
catalog_app = typer.Typer(
    help="The fleet's spec files: catalog/datasets/*.yaml, catalog/models/*.yaml."
)
app.add_typer(catalog_app, name="catalog")
# piped output (logs, CI) gets room for whole table cells instead of rich's 80 columns
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
# exit codes scripts can rely on (README, "Exit codes")
OK, REJECTED, USAGE = 0, 1, 2
STATUS_COLOURS = {"promoted": "green", "challenger": "cyan", "kept": "yellow", "skipped": "yellow"}
RETRAIN_MARKS = {
    "promoted": " ▲ promoted",
    "challenger": " retrained, shadowing",
    "kept": " retrained, kept",
}
SHADOW_MARKS = {"promote": " ▲ challenger promoted", "reject": " challenger rejected"}
_options_given = {"debug": False, "verbose": False}


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the traceback of an unexpected error")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Prefect's flow and task logs on the terminal")
    ] = False,
) -> None:
    """modelfleet: a fleet of small models, trained, validated and registered by Prefect flows.

    Exit codes: 0 success; 1 the data or a model was rejected, or a run failed; 2 bad
    usage or unreadable input.
    """
    _options_given.update(debug=debug, verbose=verbose)


DateOption = Annotated[
    str | None, typer.Option(help="ISO date, e.g. 2013-03-04", show_default=False)
]


def _date(value: str | None, flag: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        message = f"{value!r} is not an ISO date (YYYY-MM-DD)"
        raise typer.BadParameter(message, param_hint=flag) from None


def _setup() -> Settings:
    settings = get_settings()
    prepare_environment(settings)
    return settings


@contextlib.contextmanager
def _flows(settings: Settings, progress: str | None = None) -> Iterator[None]:
    """A Prefect API for the flow runs of this command: ``PREFECT_API_URL``, the running
    ``fleet up`` stack, else a temporary server that ends with the command.

    Prefect's per-task lines go to ``$FLEET_HOME/logs/flows.log`` unless ``-v``; with
    ``progress`` (a label), the flow's steps show as lines above a progress bar.
    """
    from fleet import processes
    from fleet import progress as shown
    from fleet.prefect_api import prefect_api

    with contextlib.ExitStack() as stack:
        if not _options_given["verbose"]:
            path = stack.enter_context(shown.quiet_prefect(settings))
            console.print(f"[dim]flow logs: {path} (-v shows them here)[/]", soft_wrap=True)
        try:
            stack.enter_context(
                prefect_api(settings, say=lambda line: console.print(f"[dim]{line}[/]"))
            )
        except processes.ProcessError as exc:
            _fail(str(exc))
        if progress and not _options_given["verbose"]:
            stack.enter_context(shown.console_progress(console, progress))
        yield


def _fail(message: str, code: int = REJECTED) -> None:
    errors.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def _integers(value: str, flag: str, example: str) -> tuple[int, ...]:
    """A comma-separated option as integers; exit 2 naming the option otherwise."""
    try:
        return tuple(int(part) for part in value.split(","))
    except ValueError:
        _fail(f"{flag} {value!r}: give integers like {example}", code=USAGE)
        raise  # unreachable: _fail exits


def _known_model(model: str) -> None:
    from fleet.catalog import get_model

    try:
        get_model(model)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=USAGE)


@app.command()
def etl(
    start: DateOption = None,
    end: DateOption = None,
    dataset: Annotated[
        list[str] | None, typer.Option(help="dataset(s) to build; default: all")
    ] = None,
    force: Annotated[bool, typer.Option(help="rebuild partitions that already exist")] = False,
) -> None:
    """Extract, transform, validate and load daily partitions (idempotent, incremental)."""
    settings = _setup()
    from fleet.validation import ValidationFailed
    from flows.etl import etl_flow

    first, last = _date(start, "--start"), _date(end, "--end")
    try:
        with _flows(settings):
            report = etl_flow(start=first, end=last, datasets=dataset, force=force)
    except ValidationFailed as exc:
        _fail(str(exc))
    console.print(report.summary())
    console.print(f"lake: {settings.lake_dir}")


@app.command()
def validate(
    dataset: Annotated[str, typer.Argument(help="dataset whose suite applies")],
    file: Annotated[Path, typer.Option("--file", help="incoming Parquet or CSV file")],
) -> None:
    """Validate an incoming file against the dataset's suite; quarantine it if it fails."""
    settings = _setup()
    from fleet.catalog import get_dataset
    from fleet.validation import (
        BatchFileError,
        load_batch_file,
        quarantine_batch,
        validate_batch,
    )

    try:
        spec = get_dataset(dataset)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=USAGE)
    try:
        frame = load_batch_file(file)
    except FileNotFoundError:
        _fail(f"no such file: {file}", code=USAGE)
    except BatchFileError as exc:
        _fail(str(exc), code=USAGE)
    outcome = validate_batch(settings, spec, frame, batch=f"file-{file.stem}")
    if outcome.success:
        console.print(f"[green]passed[/]: {file} ({len(frame)} rows) meets suite {dataset!r}")
        console.print(f"report: {outcome.page}", soft_wrap=True)
        console.print(f"Data Docs: {outcome.data_docs}")
        return
    where = quarantine_batch(settings, outcome, frame)
    console.print(f"[bold red]failed[/]: {file} does not meet suite {dataset!r}")
    for failure in outcome.failures:
        console.print(f"  - {failure}")
    console.print(f"quarantined to: {where}")
    console.print(f"report: {where / 'report.html'}", soft_wrap=True)
    console.print(f"Data Docs: {outcome.data_docs}")
    raise typer.Exit(1)


@app.command()
def train(
    model: Annotated[str | None, typer.Argument(help="model name from the catalog")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="train every model")] = False,
    until: DateOption = None,
) -> None:
    """ETL -> GX gate -> train -> evaluate -> register -> promote, per model."""
    if (model is None) == (not all_models):
        _fail("name one MODEL or pass --all", code=USAGE)
    from fleet.catalog import model_names

    names = model_names() if all_models else [model]
    for name in names:
        _known_model(name)  # before the heavy imports: a typo answers at once
    settings = _setup()
    from flows.runners import training_runner
    from flows.train import train_fleet_flow

    try:
        runner = training_runner(settings)  # FLEET_TASK_RUNNER: threads, dask or an address
    except ValueError as exc:
        _fail(str(exc), code=USAGE)
    flow = train_fleet_flow.with_options(task_runner=runner)
    last = _date(until, "--until")
    try:
        with _flows(settings):
            results = flow(models=names, until=last)
    except ValueError as exc:  # no data for the window: say what to run
        _fail(str(exc))
    table = Table(title="training")
    table.add_column("model", no_wrap=True)
    for column in ("status", "version", "metric", "candidate", "champion before", "after"):
        table.add_column(column)
    for r in results:
        colour = STATUS_COLOURS.get(r.status, "red")
        table.add_row(
            r.model,
            f"[{colour}]{r.status}[/]",
            r.version or "-",
            r.metric,
            _fmt(r.candidate_score),
            r.champion_before or "-",
            r.champion_after or "-",
        )
    console.print(table)
    for r in results:
        colour = "red" if r.status == "failed" else "bold"
        console.print(f"[{colour}]{r.model}[/]: {r.message}")
    console.print(f"MLflow store: {mask_url(settings.tracking_uri)}")
    console.print(f"Data Docs: {settings.data_docs_index}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


@app.command()
def retrain(
    model: Annotated[str, typer.Argument(help="model name from the catalog")],
    until: DateOption = None,
) -> None:
    """Retrain one model now: train -> gate -> promote, one retraining of it at a time."""
    _known_model(model)
    settings = _setup()
    last = _date(until, "--until")
    from flows.retrain import retrain_flow

    with _flows(settings):
        outcome = retrain_flow(model=model, until=last.isoformat() if last else None,
                               reason="by hand (fleet retrain)")  # fmt: skip
    colour = STATUS_COLOURS.get(outcome.status, "red")
    console.print(f"{model}: [{colour}]{outcome.status}[/] ({outcome.message})", soft_wrap=True)
    if outcome.status == "failed":
        raise typer.Exit(1)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def models() -> None:
    """The catalog with champion and challenger, metric, training window, last decision."""
    settings = _setup()
    from fleet.registry import fleet_table

    table = Table(title="fleet")
    table.add_column("model", no_wrap=True)
    columns = ("task", "champion", "metric", "window", "challenger", "versions", "last decision")
    for column in columns:
        table.add_column(column)
    for row in fleet_table(settings):
        if not row.registered:
            table.add_row(row.model, row.task, "-", row.metric, "-", "-", "0", row.note)
            continue
        challenger = "-"
        if row.challenger_version is not None:
            challenger = f"v{row.challenger_version}\n{row.challenger_note}"
        champion = "-" if row.champion_version is None else f"v{row.champion_version}"
        if row.champion_gain:
            champion += f"\n{row.champion_gain}"
        decision = f"v{row.last_version} {row.last_decision or '-'}"
        if row.last_gain and row.last_version != row.champion_version:
            decision += f"\ngain {row.last_gain}"
        table.add_row(
            row.model,
            row.task,
            champion,
            f"{row.metric} {_fmt(row.champion_score)}",
            row.window or "-",
            challenger,
            str(row.versions),
            f"{decision} {row.note}".strip(),
        )
    console.print(table)
    console.print(f"MLflow store: {mask_url(settings.tracking_uri)}")


@app.command()
def rollback(model: Annotated[str, typer.Argument(help="model name from the catalog")]) -> None:
    """Move @champion back to the previous champion."""
    settings = _setup()
    from fleet.catalog import get_model
    from fleet.registry import RegistryError
    from fleet.registry import rollback as do_rollback

    try:
        get_model(model)
        before, after = do_rollback(settings, model)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=USAGE)
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"{model}: @champion moved from version {before} back to version {after}")


def _challenger_command(model: str, promote: bool) -> None:
    """``fleet promote`` / ``fleet reject``: decide the @challenger by hand, then move a
    running fleet to what the registry now says."""
    settings = _setup()
    from fleet import registry
    from fleet.catalog import get_model
    from fleet.topology import follow_registry

    try:
        get_model(model)
        if promote:
            before, after = registry.promote_challenger(settings, model, "promoted by hand")
            console.print(f"{model}: @champion moved from version {before} to version {after}")
        else:
            version = registry.reject_challenger(settings, model, "rejected by hand")
            console.print(f"{model}: @challenger version {version} rejected")
    except KeyError as exc:
        _fail(str(exc.args[0]), code=USAGE)
    except registry.RegistryError as exc:
        _fail(f"{exc}; `fleet models` shows each model's challenger")
    console.print(f"serving: {follow_registry(settings, model)}")


@app.command()
def promote(model: Annotated[str, typer.Argument(help="model name from the catalog")]) -> None:
    """Make the @challenger the @champion now, without waiting for the shadow test."""
    _challenger_command(model, promote=True)


@app.command()
def reject(model: Annotated[str, typer.Argument(help="model name from the catalog")]) -> None:
    """Drop the @challenger: it stops shadowing the champion."""
    _challenger_command(model, promote=False)


WhenOption = Annotated[
    str | None,
    typer.Option(help="ISO date or datetime (UTC), e.g. 2013-03-04", show_default=False),
]


@app.command()
def monitor(
    model: Annotated[str, typer.Argument(help="model name from the catalog")],
    start: WhenOption = None,
    end: WhenOption = None,
) -> None:
    """Evidently drift job on the logged predictions, HTML report, trigger decision.

    The window is [start, end) of logged event time; default: the last 7 logged days.
    """
    settings = _setup()
    from fleet.catalog import get_model
    from monitoring.frames import MonitorError
    from monitoring.job import parse_when

    try:
        get_model(model)
        for value, flag in ((start, "--start"), (end, "--end")):
            if value is not None:
                parse_when(value, flag)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=USAGE)
    except ValueError as exc:
        _fail(str(exc), code=USAGE)
    from flows.monitor import EVENT, monitor_flow

    try:
        with _flows(settings):
            outcome = monitor_flow(model=model, start=start, end=end)
    except MonitorError as exc:
        _fail(str(exc))
    summary, decision = outcome.summary, outcome.decision
    console.print(summary.text(), soft_wrap=True)
    colour = "bold red" if decision.fire else "green"
    console.print(f"decision: [{colour}]{decision.label}[/] ({decision.reason})", soft_wrap=True)
    if outcome.event_emitted:
        console.print(f"event: {EVENT} for fleet.model.{model}")
    if outcome.retrain is not None:
        console.print(f"retrain: {outcome.retrain.status} ({outcome.retrain.message})")
    console.print(f"index: {settings.reports_dir / 'index.html'}", soft_wrap=True)


@app.command()
def replay(
    start: DateOption = None,
    end: DateOption = None,
    step: Annotated[str, typer.Option(help="week, day or a number of days such as 10d")] = "week",
    quick: Annotated[
        bool,
        typer.Option("--quick", help="March to May, 300 rows a week per dataset, served mono"),
    ] = False,
    topology: Annotated[
        str | None,
        typer.Option(help="micro or mono serving [default: micro; mono with --quick]"),
    ] = None,
    per_week: Annotated[
        int | None,
        typer.Option(help="rows sent per step and dataset (default: all; --quick: 300)"),
    ] = None,
) -> None:
    """The closed loop over 2013: traffic, labels, drift jobs, retraining, promotion.

    Bootstraps on the weeks before --start (default 2013-02-26), then steps to --end.
    Writes $FLEET_HOME/reports/replay.html and replay.json.
    """
    settings = _setup()
    from fleet import processes
    from fleet.replay import ReplayError
    from flows.replay import replay_flow

    for value, flag in ((start, "--start"), (end, "--end")):
        _date(value, flag)
    try:
        with _flows(settings, progress="replay"):
            summary = replay_flow(
                start=start, end=end, step=step, quick=quick, topology_name=topology,
                per_week=per_week,
            )  # fmt: skip
    except (ReplayError, processes.ProcessError, ValueError) as exc:
        _fail(str(exc))
    _print_timeline(summary)
    reports = settings.reports_dir
    console.print(f"report: {reports / 'replay.html'}", soft_wrap=True)
    console.print(f"data:   {reports / 'replay.json'}", soft_wrap=True)
    console.print(f"drift reports: {reports / 'index.html'}", soft_wrap=True)


def _print_timeline(summary: dict) -> None:
    models = list(summary["models"])
    table = Table(title="replay: weekly quality, closed loop (frozen)")
    table.add_column("week", no_wrap=True)
    for name in models:
        table.add_column(f"{name} {summary['models'][name]['metric']}", no_wrap=True)
    for week in summary["weeks"]:
        cells = []
        for name in models:
            m = week["models"][name]
            closed = "–" if m["closed_loop"] is None else f"{m['closed_loop']:.3f}"
            frozen = "–" if m["frozen"] is None else f"{m['frozen']:.3f}"
            act = RETRAIN_MARKS.get(m["retrain"], "")
            act = act or (f" retrain {m['retrain']}" if m["retrain"] else "")
            act += SHADOW_MARKS.get(m.get("shadow", ""), "")
            cells.append(f"v{m['served_version']} {closed} ({frozen}){act}")
        table.add_row(week["start"], *cells)
    means = [
        f"{summary['models'][n]['closed_loop']} ({summary['models'][n]['frozen']})" for n in models
    ]
    table.add_row("mean", *means)
    console.print(table)
    _print_arms(summary)


def _print_arms(summary: dict) -> None:
    """The three arms side by side: mean metric, retrains, promotions, seconds fitting."""
    arms = summary.get("arms", {})
    order = [a for a in ("closed_loop", "scheduled", "frozen") if a in arms]
    table = Table(title="replay: the loop against its peers (mean weekly metric)")
    table.add_column("model", no_wrap=True)
    table.add_column("metric")
    for arm in order:
        table.add_column(arm.replace("_", " "), justify="right")
    for arm in order[:-1]:
        table.add_column(f"{arm.replace('_', ' ')}: retrains / promoted / fit s", justify="right")
    for name, info in summary["models"].items():
        better = "higher" if info["greater_is_better"] else "lower"
        cells = [_fmt(arms[a][name]["mean_metric"]) for a in order]
        cells += [
            f"{arms[a][name]['retrains']} / {arms[a][name]['promotions']} / "
            f"{arms[a][name]['train_seconds']:.1f}"
            for a in order[:-1]
        ]
        table.add_row(name, f"{info['metric']} ({better} better)", *cells)
    console.print(table)


@bench_app.command("pipeline")
def bench_pipeline(
    model: Annotated[str, typer.Option(help="model to time")] = "flight_delay",
    until: DateOption = "2013-03-04",
    repeats: Annotated[int, typer.Option(help="timed repetitions of each variant")] = 3,
) -> None:
    """Stage times for one model and the Prefect overhead ratio (flow / direct calls)."""
    settings = _setup()
    from bench.pipeline import run_pipeline_bench

    last = _date(until, "--until")
    with _flows(settings):
        results = run_pipeline_bench(settings, model, last, repeats)
    console.print(results.markdown())
    console.print(f"results: {results.json_path} and {results.markdown_path}")


@bench_app.command("drift")
def bench_drift(
    sizes: Annotated[
        str, typer.Option(help="comma-separated current window sizes (rows)")
    ] = "10000,100000,1000000",
    max_rows: Annotated[int, typer.Option(help="rows per side when sampling")] = 10_000,
    out_dir: Annotated[Path | None, typer.Option(help="default: bench/results")] = None,
) -> None:
    """Drift job time and peak memory for flight_delay by window size, sampled and not."""
    settings = _setup()
    from bench.drift import RESULTS_DIR, run_drift_bench

    rows = _integers(sizes, "--sizes", "10000,100000")
    results = run_drift_bench(
        settings, rows, max_rows, out_dir or RESULTS_DIR, say=lambda line: console.print(line)
    )
    console.print(results.markdown())
    console.print(f"results: {results.json_path} and {results.markdown_path}", soft_wrap=True)


@bench_app.command("topology")
def bench_topology(
    requests: Annotated[int, typer.Option(help="measured requests per point")] = 600,
    concurrency: Annotated[str, typer.Option(help="comma-separated client counts")] = "1,8,32",
    quick: Annotated[
        bool, typer.Option("--quick", help="smoke size: few requests, small simulations")
    ] = False,
    p99_budget: Annotated[
        float, typer.Option(help="p99 (ms) a simulated layout must keep to count its load")
    ] = 50.0,
    out_dir: Annotated[Path | None, typer.Option(help="default: bench/results")] = None,
) -> None:
    """micro vs mono measured on this machine, then simulated on 1..64 machines."""
    settings = _setup()
    from bench.topology import RESULTS_DIR, run_topology_bench

    levels = _integers(concurrency, "--concurrency", "1,8,32")
    size: dict[str, object] = {"requests": requests}
    if quick:
        size = {"requests": min(requests, 60), "machines": (1, 8), "sim_requests": 400,
                "advice_machines": (1,)}  # fmt: skip
    bench = run_topology_bench(
        settings,
        levels=levels,
        p99_budget_ms=p99_budget,
        out_dir=out_dir or RESULTS_DIR,
        say=lambda line: console.print(line, soft_wrap=True),
        **size,  # type: ignore[arg-type]
    )
    val = bench.simulation["validation"]
    console.print(
        f"simulator validation error: {val['validation_error']:.1%} "
        f"(target <= {val['target']:.0%}: {'met' if val['met'] else 'MISSED'}); p99 "
        f"{val['p99_error']:.1%} (target <= {val['p99_target']:.0%}: "
        f"{'met' if val['p99_met'] else 'MISSED'})"
    )
    rep = bench.simulation.get("repeat")
    if rep:
        console.print(
            f"the same points measured twice differ by {rep['difference']:.1%} "
            f"(p99 {rep['p99_difference']:.1%})"
        )
    console.print(f"results: {bench.json_path} and {bench.markdown_path}", soft_wrap=True)
    console.print("document: docs/topology.md (generated section), plots: docs/topology/")


@bench_app.command("serve")
def bench_serve(
    model: Annotated[str, typer.Option(help="model to serve")] = "flight_delay",
    requests: Annotated[int, typer.Option(help="measured requests per target and level")] = 2000,
    warmup: Annotated[int, typer.Option(help="unmeasured requests before each level")] = 200,
    concurrency: Annotated[str, typer.Option(help="comma-separated levels")] = "1,8,32",
    time_bound: Annotated[
        float, typer.Option(help="seconds at most per HTTP target (all levels)")
    ] = 180.0,
    out_dir: Annotated[Path | None, typer.Option(help="default: bench/results")] = None,
) -> None:
    """Single-record req/s and latency: in-process, model service, gateway, mlflow serve."""
    settings = _setup()
    from bench.serve import RESULTS_DIR, run_serve_bench

    _known_model(model)
    levels = _integers(concurrency, "--concurrency", "1,8,32")
    with _flows(settings):
        results = run_serve_bench(
            settings, model, requests, warmup, levels, time_bound, out_dir or RESULTS_DIR,
            say=console.print,
        )  # fmt: skip
    console.print(results.markdown())
    console.print(f"results: {results.json_path} and {results.markdown_path}")


@bench_app.command("bentos")
def bench_bentos(
    models: Annotated[
        str | None, typer.Option(help="comma-separated model names; default: all")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option(help="default: bench/results")] = None,
) -> None:
    """Every Bento built, installed in a fresh venv from its own requirements, served."""
    settings = _setup()
    from bench.bentos import RESULTS_DIR, run_bentos_bench

    names = models.split(",") if models else None
    for name in names or []:
        _known_model(name)
    with _flows(settings):
        results = run_bentos_bench(settings, names, out_dir or RESULTS_DIR, say=console.print)
    console.print(results.markdown())
    console.print(f"results: {results.json_path} and {results.markdown_path}")
    if not results.all_served:
        raise typer.Exit(1)


@bench_app.command("cli")
def bench_cli(
    repeat: Annotated[int, typer.Option(help="runs per command (median)")] = 5,
    out_dir: Annotated[Path | None, typer.Option(help="default: bench/results")] = None,
) -> None:
    """How fast `fleet` commands answer, against `python -c pass` in the same run."""
    from bench.cli import RESULTS_DIR, run_cli_bench

    _, rows, markdown = run_cli_bench(out_dir or RESULTS_DIR, repeat, say=console.print)
    console.print(markdown.read_text())
    if not all(r.met for r in rows):
        console.print("some targets were missed (see the table)")


@bench_app.command("window")
def bench_window(
    model: Annotated[
        str, typer.Option(help="model whose retraining is replayed")
    ] = "arrival_delay",
    train_weeks: Annotated[
        str, typer.Option(help="comma-separated training-window lengths, weeks")
    ] = "8,12,16",
    start: DateOption = "2013-02-26",
    end: DateOption = "2013-12-30",
    retrain_every: Annotated[int, typer.Option(help="weeks between challengers")] = 2,
    sample: Annotated[
        int, typer.Option(help="rows a week in the sampled score (the replay's); 0: all")
    ] = 300,
    out_dir: Annotated[Path | None, typer.Option(help="default: bench/results")] = None,
) -> None:
    """Gated retraining against the frozen model, offline, per training-window length."""
    _setup()
    from bench.window import RESULTS_DIR, run_window_bench

    _known_model(model)
    lengths = _integers(train_weeks, "--train-weeks", "8,12,16")
    try:
        results = run_window_bench(
            model, lengths, _date(start, "--start"), _date(end, "--end"), retrain_every,
            sample or None, out_dir or RESULTS_DIR, say=console.print,
        )  # fmt: skip
    except ValueError as exc:
        _fail(str(exc), code=USAGE)
    console.print(results.markdown())
    console.print(f"results: {results.json_path} and {results.markdown_path}")


@app.command()
def serve(
    topology: Annotated[
        str, typer.Option(help="micro: a process per model + gateway; mono: one process")
    ] = "micro",
    models: Annotated[
        str | None, typer.Option(help="comma-separated model names; default: all")
    ] = None,
    gateway_port: Annotated[
        int | None, typer.Option(help="gateway port (default: FLEET_GATEWAY_PORT, else 3000)")
    ] = None,
    model_port_base: Annotated[
        int | None,
        typer.Option(
            help="first model port, catalog order (default: FLEET_MODEL_PORT_BASE, else 3001)"
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="seconds each component may take to start")
    ] = 180.0,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload", help="running fleet: move each model to its current @champion, no downtime"
        ),
    ] = False,
    placement: Annotated[
        str | None,
        typer.Option(
            help="a plan FILE (YAML: model -> dedicated/shared, workers), `auto` (from the "
            "prediction log's traffic), `micro` or `mono`; on a running fleet: move to it live"
        ),
    ] = None,
    window: Annotated[
        float, typer.Option(help="--placement auto: minutes of logged traffic to plan for")
    ] = 60.0,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="--placement auto: per-call costs (default: bench/results/topology.json)"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the placement plan and its reasons only")
    ] = False,
) -> None:
    """Start the fleet's services (champion versions) and wait until they are healthy.

    With --reload, the running fleet moves to the current champions instead; with
    --placement on a running fleet, to that placement plan (no downtime).
    """
    settings = _setup()
    updates = {"gateway_port": gateway_port, "model_port_base": model_port_base}
    settings = settings.model_copy(update={k: v for k, v in updates.items() if v is not None})
    from fleet import processes
    from fleet import topology as topo

    if reload:
        _reload(settings, timeout)
        return

    if topology not in topo.TOPOLOGIES:
        _fail(f"unknown topology {topology!r}; choose one of: {', '.join(topo.TOPOLOGIES)}", USAGE)
    try:
        names = topo.resolve_models(models.split(",") if models else None)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=USAGE)
    if placement is not None:
        _place(settings, placement, models.split(",") if models else None, window, calibration,
               dry_run, timeout)  # fmt: skip
        return
    if dry_run:
        _fail("--dry-run prints a placement plan: give --placement FILE|auto", USAGE)
    if not models and not topo.running(settings):  # the whole fleet: serve what has a champion
        names = _trained(settings, names)
    console.print(f"starting {topology}: {', '.join(names)} ...")
    try:
        _, started = topo.start_fleet(settings, topology, names, timeout=timeout)
    except processes.ProcessError as exc:
        _fail(str(exc))
    if not started:
        console.print(f"the fleet is already running ({topology}); nothing started")
    _print_components(settings)
    console.print("stop with `fleet stop`")


def _trained(settings: Settings, names: list[str]) -> list[str]:
    """The models of ``names`` that have a @champion (the others are named and left out)."""
    from fleet.registry import champion_info

    untrained = [n for n in names if champion_info(settings, n) is None]
    for name in untrained:
        console.print(f"{name}: no @champion yet, not served (train it: `fleet train {name}`)")
    names = [n for n in names if n not in untrained]
    if not names:
        _fail("no model has a @champion yet; train them with `fleet train --all`")
    return names


def _place(
    settings: Settings,
    choice: str,
    names: list[str] | None,
    window: float,
    calibration: Path | None,
    dry_run: bool,
    timeout: float,
) -> None:
    """--placement: resolve the plan, print it, then start the fleet by it or move the
    running fleet to it."""
    from datetime import timedelta

    from fleet import placement, processes
    from fleet import topology as topo

    up = bool(topo.running(settings))
    if up and names is None:
        names = topo.served_models(settings)
    elif names is None and choice in ("auto", *topo.TOPOLOGIES):
        names = _trained(settings, topo.resolve_models(None))
    try:
        plan = placement.resolve(settings, choice, names, timedelta(minutes=window), calibration)
    except placement.PlacementError as exc:
        _fail(str(exc), USAGE)
    for line in plan.lines():
        console.print(line, soft_wrap=True)
    if dry_run:
        return
    try:
        if up:
            steps = topo.move(settings, plan, timeout=timeout)
            for step in steps or ["the fleet already serves this placement; nothing moved"]:
                console.print(step)
        else:
            console.print(f"starting {plan.topology}: {', '.join(plan.models)} ...")
            topo.start_fleet(settings, plan, list(plan.models), timeout=timeout)
    except processes.ProcessError as exc:
        _fail(str(exc))
    console.print(f"placement written to {placement.state_file(settings)}", soft_wrap=True)
    _print_components(settings)


@app.command()
def scale(
    model: Annotated[str, typer.Argument(help="a dedicated model of the running fleet")],
    workers: Annotated[int, typer.Argument(help="its service's workers from now on", min=1)],
    timeout: Annotated[float, typer.Option(help="seconds the new service may take")] = 180.0,
) -> None:
    """Change a dedicated model's workers live: a new service with N workers takes over
    before the old one stops, so no request fails."""
    settings = _setup()
    from fleet import processes
    from fleet import topology as topo

    try:
        topo.resolve_models([model])
    except KeyError as exc:
        _fail(str(exc.args[0]), code=USAGE)
    try:
        console.print(topo.scale(settings, model, workers, timeout=timeout))
    except processes.ProcessError as exc:
        _fail(str(exc))
    _print_components(settings)


def _reload(settings: Settings, timeout: float) -> None:
    from fleet import processes
    from fleet import topology as topo

    try:
        swaps = topo.reload_champions(settings, timeout=timeout)
    except processes.ProcessError as exc:
        _fail(f"{exc}; the previous versions keep serving")
    if not swaps:
        console.print("every model already serves its @champion; nothing changed")
    for swap in swaps:
        console.print(swap.text())
    _print_components(settings)


def _print_components(settings: Settings) -> None:
    from fleet import processes, supervisor
    from fleet import topology as topo

    table = Table(title="serving")
    for column in ("component", "version", "url", "pid", "state", "restarts"):
        table.add_column(column, no_wrap=True)
    colours = {"healthy": "green", "unhealthy": "yellow"}
    for row in topo.component_report(settings):
        state = f"[{colours.get(row['state'], 'red')}]{row['state']}[/]"
        if row["orphans"]:
            state += f" (port held by {', '.join(map(str, row['orphans']))})"
        version = row["version"] or "-"  # a model service's own version is a bare number
        version = f"v{version}" if version.isdigit() else version
        table.add_row(row["name"], version, row["url"], str(row["pid"]), state,
                      str(row["restarts"]))  # fmt: skip
    console.print(table)
    watcher = supervisor.supervisor_record(settings)
    console.print(
        f"supervisor: {'pid ' + str(watcher.pid) if watcher else 'not running (`fleet serve`)'}"
    )
    console.print(f"logs: {processes.logs_dir(settings)}/<component>.log", soft_wrap=True)


@app.command()
def build(
    model: Annotated[
        str | None, typer.Argument(help="model name from the catalog, or gateway")
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="every model with a @champion, and the gateway")
    ] = False,
) -> None:
    """A self-contained Bento per model (its @champion pinned) and for the gateway."""
    if (model is None) == (not all_models):
        _fail("name one MODEL (or gateway) or pass --all", code=USAGE)
    settings = _setup()
    from bentos import build as bento_build
    from fleet.bento_store import StoreError, bentoml_home
    from fleet.catalog import get_model, model_names
    from fleet.registry import champion_info

    if all_models:
        names = [n for n in model_names() if champion_info(settings, n) is not None]
        for skipped in sorted(set(model_names()) - set(names)):
            console.print(f"{skipped}: no @champion yet, skipped (`fleet train {skipped}`)")
        names.append(bento_build.GATEWAY)
    else:
        names = [model]
        if model != bento_build.GATEWAY:
            try:
                get_model(model)
            except KeyError as exc:
                _fail(str(exc.args[0]), code=USAGE)
    built = []
    for name in names:
        try:
            with console.status(f"building the {name} Bento"):
                if name == bento_build.GATEWAY:
                    done = bento_build.build_gateway(settings)
                else:
                    done = bento_build.build_model(settings, name)
        except StoreError as exc:
            _fail(str(exc))
        console.print(f"built Bento {done.tag} ({done.seconds:.0f} s): {done.path}")
        built.append(done)
    home = bentoml_home(settings)
    console.print(f"Bento store: {home}")
    example = next((b for b in built if b.name != bento_build.GATEWAY), built[0])
    console.print(
        f"serve one on its own: BENTOML_HOME={home} bentoml serve {example.tag} --port 3001"
    )
    console.print(
        "container image (needs Docker): bentoml containerize <tag>; see docs/operations.md"
    )


@app.command()
def stop(
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 15.0,
) -> None:
    """Stop exactly what `fleet serve` started (recorded pid files)."""
    settings = _setup()
    from fleet import topology

    done = topology.stop_fleet(settings, grace=grace)
    if not done:
        console.print("nothing to stop: no component is recorded as running")
        return
    for running, was_alive in done:
        what = "stopped" if was_alive else "was not running (stale pid file removed)"
        console.print(f"{running.name} (pid {running.pid}, {running.url}): {what}")


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object, nothing else")] = False,
) -> None:
    """Recorded components (stack servers, services): url, pid, version, state, restarts."""
    settings = _setup()
    from fleet import stack
    from fleet import topology as topo

    found = topo.component_report(settings)
    servers = [c for c in stack.servers(settings) if c.detail != "process gone"]
    if as_json:
        payload: dict[str, dict] = {
            c.name: {"url": c.url, "pid": c.pid, "healthy": c.healthy, "state": (
                "healthy" if c.healthy else "unhealthy")} for c in servers
        }  # fmt: skip
        payload |= {row.pop("name"): row for row in found}
        # plain print: rich would wrap or colour the JSON
        print(json.dumps(payload))
        return
    if not found and not servers:
        console.print("nothing running; start the stack with `fleet up` (or `fleet serve`)")
        return
    if servers:
        _print_stack(settings)
    if found:
        _print_components(settings)


def _print_stack(settings: Settings) -> None:
    from fleet import processes, stack

    table = Table(title="stack")
    for column in ("component", "url", "pid", "healthy"):
        table.add_column(column, no_wrap=True)
    for c in stack.servers(settings):
        state = "[green]yes[/]" if c.healthy else f"[red]no[/] {c.detail}".strip()
        table.add_row(c.name, c.url, "-" if c.pid is None else str(c.pid), state)
    console.print(table)
    logs = processes.logs_dir(settings, stack.STACK)
    console.print(f"logs: {logs}/<component>.log", soft_wrap=True)


@app.command()
def up(
    serve: Annotated[
        bool, typer.Option(help="also serve every model that has a @champion, with the gateway")
    ] = True,
    timeout: Annotated[
        float, typer.Option(help="seconds each component may take to become healthy")
    ] = 300.0,
) -> None:
    """Start the local stack: Prefect server + deployments + worker, MLflow UI, services."""
    settings = _setup()
    from fleet import processes, stack

    try:
        stack.up(settings, timeout=timeout, serve=serve, say=console.print)
    except processes.ProcessError as exc:
        _fail(str(exc))
    _print_stack(settings)
    if processes.read_pid_files(settings):
        _print_components(settings)
    urls = {c.name: c.url for c in stack.servers(settings)}
    console.print(f"Prefect UI: {urls.get(stack.PREFECT, '-')}")
    api = mask_url(stack.prefect_api_url(settings))
    console.print(f"Prefect API: {api} (set PREFECT_API_URL to use it)")
    console.print(f"MLflow UI: {urls.get(stack.MLFLOW, '-')}")
    console.print("stop everything with `fleet down`")


@app.command()
def down(
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 15.0,
) -> None:
    """Stop exactly what `fleet up` started (recorded pid files), nothing else."""
    settings = _setup()
    from fleet import stack

    done = stack.down(settings, grace=grace)
    if not done:
        console.print("nothing to stop: no stack component is recorded as running")
        return
    for running, was_alive in done:
        what = "stopped" if was_alive else "was not running (stale pid file removed)"
        console.print(f"{running.name} (pid {running.pid}, {running.url}): {what}")


@app.command()
def prune(
    older_than: Annotated[
        str | None,
        typer.Option(help="age such as 30d, 12h, 4w [default: FLEET_RETENTION_DAYS]"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, delete nothing")] = False,
) -> None:
    """Delete logged predictions, gateway results and drift reports older than an age."""
    from datetime import timedelta

    from monitoring.retention import parse_age
    from monitoring.retention import prune as do_prune

    settings = _setup()
    if older_than is None and settings.retention_days is None:
        _fail("give --older-than (e.g. 30d) or set FLEET_RETENTION_DAYS", code=USAGE)
    try:
        age = parse_age(older_than) if older_than else timedelta(days=settings.retention_days)
    except ValueError as exc:
        _fail(str(exc), code=USAGE)
    console.print(do_prune(settings, age, dry_run).summary())


@catalog_app.command("check")
def catalog_check() -> None:
    """Validate every dataset and model spec; exit 1 naming the file and field on error."""
    from fleet import catalog, readers
    from fleet.deployments import deployments

    root = catalog.catalog_dir()
    catalog.clear_cache()
    try:
        loaded = catalog.load_catalog(root)
    except catalog.CatalogError as exc:
        _fail(str(exc))
    problems = [p for ds in loaded.datasets.values() for p in readers.check(ds)]
    if problems:
        _fail(problems[0])
    table = Table(title=f"catalog {root}")
    for column in ("model", "dataset", "task", "target", "features", "estimator", "metric"):
        table.add_column(column, no_wrap=column != "features")
    for spec in loaded.models.values():
        table.add_row(
            spec.name, spec.dataset.name, spec.task, spec.target, str(len(spec.features)),
            spec.estimator.name, f"{spec.promotion.metric} (+{spec.promotion.margin})",
        )  # fmt: skip
    console.print(table)
    for ds in loaded.datasets.values():
        console.print(
            f"dataset {ds.name}: {len(ds.columns)} columns, reader {ds.reader.name}, "
            f"gateway input '{ds.record}'"
        )
    per_model = [
        d["name"] for d in deployments() if any(d["name"].endswith(m) for m in loaded.models)
    ]
    console.print(f"derived deployments: {', '.join(per_model)}")
    console.print(f"[green]ok[/]: {len(loaded.datasets)} dataset(s), {len(loaded.models)} model(s)")


@app.command()
def deploy() -> None:
    """Create the work pool, retrain limits and every deployment (per-model ones from the
    catalog) on the Prefect API in use: PREFECT_API_URL, else the `fleet up` stack."""
    settings = _setup()
    from fleet import processes, stack

    try:
        names = stack.deploy_all(settings, say=console.print)
    except processes.ProcessError as exc:
        _fail(str(exc))
    console.print(f"deployed {len(names)}: {', '.join(names)}")


def main() -> None:
    """The ``fleet`` entry point: an error is a line or two on stderr, not a traceback
    (``--debug`` shows it); a catalog problem is bad usage (exit 2)."""
    from fleet.catalog import CatalogError

    try:
        app()
    except CatalogError as exc:
        errors.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise SystemExit(USAGE) from None
    except Exception as exc:
        if _options_given["debug"] or "--debug" in sys.argv[1:]:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        errors.print(f"[bold red]error:[/] {type(exc).__name__}: {first}", soft_wrap=True)
        errors.print("run again with `fleet --debug ...` for the traceback")
        raise SystemExit(REJECTED) from None
