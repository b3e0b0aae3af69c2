"""The ``fleet`` command line: a thin shell over the flows and the core functions.

Heavy libraries (prefect, mlflow, great_expectations, sklearn) are imported inside
the commands so ``fleet --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleet.settings import Settings, get_settings, prepare_environment

app = typer.Typer(
    help="modelfleet: a fleet of small models, trained, validated and registered by Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: measured figures and ratios, JSON + markdown.")
app.add_typer(bench_app, name="bench")
# piped output (logs, CI) gets room for whole table cells instead of rich's 80 columns
console = Console(width=None if sys.stdout.isatty() else 160)

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


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


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

    try:
        report = etl_flow(
            start=_date(start, "--start"),
            end=_date(end, "--end"),
            datasets=dataset,
            force=force,
        )
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
    from fleet.validation import load_batch_file, quarantine_batch, validate_batch

    try:
        spec = get_dataset(dataset)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=2)
    if not file.exists():
        _fail(f"no such file: {file}", code=2)
    frame = load_batch_file(file)
    outcome = validate_batch(settings, spec, frame, batch=f"file-{file.stem}")
    if outcome.success:
        console.print(f"[green]passed[/]: {file} ({len(frame)} rows) meets suite {dataset!r}")
        console.print(f"Data Docs: {outcome.data_docs}")
        return
    where = quarantine_batch(settings, outcome, frame)
    console.print(f"[bold red]failed[/]: {file} does not meet suite {dataset!r}")
    for failure in outcome.failures:
        console.print(f"  - {failure}")
    console.print(f"quarantined to: {where}")
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
        _fail("name one MODEL or pass --all", code=2)
    settings = _setup()
    from prefect.task_runners import ThreadPoolTaskRunner

    from fleet.catalog import MODELS, get_model
    from flows.train import train_fleet_flow

    names = list(MODELS) if all_models else [model]
    try:
        for name in names:
            get_model(name)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=2)
    runner = ThreadPoolTaskRunner(max_workers=settings.train_workers)
    flow = train_fleet_flow.with_options(task_runner=runner)
    results = flow(models=names, until=_date(until, "--until"))
    table = Table(title="training")
    table.add_column("model", no_wrap=True)
    for column in ("status", "version", "metric", "candidate", "champion before", "after"):
        table.add_column(column)
    for r in results:
        colour = {"promoted": "green", "kept": "yellow"}.get(r.status, "red")
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
    console.print(f"MLflow store: {settings.tracking_uri}")
    console.print(f"Data Docs: {settings.data_docs_index}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def models() -> None:
    """The catalog with champion version, metric, training window and last decision."""
    settings = _setup()
    from fleet.registry import fleet_table

    table = Table(title="fleet")
    table.add_column("model", no_wrap=True)
    for column in ("task", "champion", "metric", "window", "versions", "last decision"):
        table.add_column(column)
    for row in fleet_table(settings):
        if not row.registered:
            table.add_row(row.model, row.task, "-", row.metric, "-", "0", row.note)
            continue
        champion = "-" if row.champion_version is None else f"v{row.champion_version}"
        decision = f"v{row.last_version} {row.last_decision or '-'}"
        table.add_row(
            row.model,
            row.task,
            champion,
            f"{row.metric} {_fmt(row.champion_score)}",
            row.window or "-",
            str(row.versions),
            f"{decision} {row.note}".strip(),
        )
    console.print(table)
    console.print(f"MLflow store: {settings.tracking_uri}")


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
        _fail(str(exc.args[0]), code=2)
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"{model}: @champion moved from version {before} back to version {after}")


@bench_app.command("pipeline")
def bench_pipeline(
    model: Annotated[str, typer.Option(help="model to time")] = "flight_delay",
    until: DateOption = "2013-03-04",
    repeats: Annotated[int, typer.Option(help="timed repetitions of each variant")] = 3,
) -> None:
    """Stage times for one model and the Prefect overhead ratio (flow / direct calls)."""
    settings = _setup()
    from bench.pipeline import run_pipeline_bench

    results = run_pipeline_bench(settings, model, _date(until, "--until"), repeats)
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
) -> None:
    """Start the fleet's services (champion versions) and wait until they are healthy.

    With --reload, the running fleet moves to the current champions instead.
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
        _fail(f"unknown topology {topology!r}; choose one of: {', '.join(topo.TOPOLOGIES)}", 2)
    try:
        names = topo.resolve_models(models.split(",") if models else None)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=2)
    wanted = set(names) | {topo.GATEWAY} if topology == "micro" else {topo.GATEWAY}
    already = topo.running(settings)
    if already:
        same = {r.name for r in already} == wanted and all(r.topology == topology for r in already)
        if same and all(processes.is_healthy(r.url) for r in already):
            console.print(f"the fleet is already running ({topology}); nothing started")
            _print_components(settings)
            return
        running = ", ".join(f"{r.name} (pid {r.pid}, {r.url})" for r in already)
        _fail(f"already running: {running}; run `fleet stop` first")

    from fleet.registry import champion_info

    missing = [name for name in names if champion_info(settings, name) is None]
    if missing:
        hints = "; ".join(f"run `fleet train {name}` first" for name in missing)
        _fail(f"no @champion yet for {', '.join(missing)}: {hints}")
    from bentos.store import import_champion

    tags = {name: import_champion(settings, name) for name in names}
    plan = topo.plan(settings, topology, names, tags)  # type: ignore[arg-type]
    console.print(f"starting {topology}: {', '.join(plan.names)} ...")
    try:
        topo.start_plan(settings, plan, timeout=timeout)
    except processes.ProcessError as exc:
        _fail(str(exc))
    _print_components(settings)
    console.print("stop with `fleet stop`")


def _reload(settings: Settings, timeout: float) -> None:
    from fleet import processes
    from fleet import topology as topo

    try:
        names = topo.served_models(settings)
    except processes.ProcessError as exc:
        _fail(str(exc))
    from bentos.store import import_champion

    tags = {name: import_champion(settings, name) for name in names}
    try:
        swaps = topo.update(settings, tags, timeout=timeout)
    except processes.ProcessError as exc:
        _fail(f"{exc}; the previous versions keep serving")
    if not swaps:
        console.print("every model already serves its @champion; nothing changed")
    for swap in swaps:
        console.print(f"{swap.model}: {swap.old_tag} -> {swap.new_tag} ({swap.url})")
    _print_components(settings)


def _print_components(settings: Settings) -> None:
    from fleet import processes

    table = Table(title="serving")
    for column in ("component", "url", "pid", "healthy"):
        table.add_column(column, no_wrap=True)
    for s in processes.status(settings):
        state = "[green]yes[/]" if s.healthy else ("[red]no[/]" if s.alive else "[red]dead[/]")
        table.add_row(s.running.name, s.running.url, str(s.running.pid), state)
    console.print(table)
    console.print(f"logs: {processes.logs_dir(settings)}/<component>.log", soft_wrap=True)


@app.command()
def build(model: Annotated[str, typer.Argument(help="model name from the catalog")]) -> None:
    """`bentoml build` of one model's Bento, holding only its @champion version."""
    settings = _setup()
    from bentos.store import StoreError, bentoml_home, build_bento
    from fleet.catalog import get_model

    try:
        get_model(model)
        with console.status(f"building the {model} Bento (takes a minute)"):
            tag = build_bento(settings, model)
    except KeyError as exc:
        _fail(str(exc.args[0]), code=2)
    except StoreError as exc:
        _fail(str(exc))
    home = bentoml_home(settings)
    console.print(f"built Bento {tag} in the Bento store {home}")
    console.print(f"serve it on its own: BENTOML_HOME={home} bentoml serve {tag} --port 3001")


@app.command()
def stop(
    grace: Annotated[float, typer.Option(help="seconds between SIGTERM and SIGKILL")] = 15.0,
) -> None:
    """Stop exactly what `fleet serve` started (recorded pid files)."""
    settings = _setup()
    from fleet import processes

    done = processes.stop_all(settings, grace=grace)
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
    """Running components: url, pid and whether /readyz answers."""
    settings = _setup()
    from fleet import processes

    found = processes.status(settings)
    if as_json:
        payload = {
            s.running.name: {"url": s.running.url, "pid": s.running.pid, "healthy": s.healthy}
            for s in found
            if s.alive
        }
        # plain print: rich would wrap or colour the JSON
        print(json.dumps(payload))
        return
    if not found:
        console.print("nothing running; start the fleet with `fleet serve`")
        return
    _print_components(settings)


def main() -> None:
    app()
