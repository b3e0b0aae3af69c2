"""``$FLEET_HOME/reports/index.html``: every drift report as one table, newest first."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from fleet.files import write_text_atomic
from monitoring.history import MonitorRun

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.fired td { background: #fff1f0; }
.retrain { color: #b00020; font-weight: 600; }
.quiet { color: #666; }
"""


def _link(report: str, index_dir: Path) -> str:
    path = Path(report)
    try:
        return Path(os.path.relpath(path, index_dir)).as_posix()
    except ValueError:  # another drive
        return path.as_uri()


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def render(runs: Sequence[MonitorRun], index_dir: Path) -> str:
    """The index page for ``runs`` (already newest first), links relative to ``index_dir``."""
    rows = []
    for r in runs:
        if not r.fired:
            decision = '<span class="quiet">no action</span>'
        else:  # and what the retraining ended as, once it has
            done = html.escape(r.outcome) if r.outcome else "retraining not finished"
            decision = f'<span class="retrain">retrain</span> &rarr; {done}'
        if r.shadow:
            decision += f"<br>{html.escape(r.shadow)}"
        window = f"{r.window_start:%Y-%m-%d %H:%M} .. {r.window_end:%Y-%m-%d %H:%M}"
        # a job below the policy's minimum rows measured nothing and wrote no report
        measured = bool(r.report_path)
        share = f"{r.drift_share:.2f}" if measured else '<span class="quiet">not enough data</span>'
        if not measured:
            report = '<span class="quiet">no report</span>'
        elif Path(r.report_path).is_file():
            report = f'<a href="{html.escape(_link(r.report_path, index_dir))}">report</a>'
        else:  # pruned or moved
            report = '<span class="quiet">report removed</span>'

        quality = (
            f"{r.metric} {_num(r.quality)}<br><span class='quiet'>champion v{r.champion_version} "
            f"{_num(r.champion_score)}</span>"
        )
        rows.append(
            f'<tr class="{"fired" if r.fired else ""}">'
            f"<td>{html.escape(r.model)}</td>"
            f"<td>{window}</td>"
            f'<td class="num">{r.rows_current}<br><span class="quiet">{r.rows_labelled} '
            f"labelled</span></td>"
            f'<td class="num">{share}</td>'
            f"<td>{html.escape(', '.join(r.drifted_columns)) or '-'}</td>"
            f"<td>{quality}</td>"
            f"<td>{decision}<br><span class='quiet'>{html.escape(r.reason)}</span></td>"
            f"<td>{report}</td>"
            "</tr>"
        )
    body = (
        "\n".join(rows)
        or '<tr><td colspan="8">no drift reports yet: run `fleet monitor MODEL`</td></tr>'
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>modelfleet drift reports</title><style>{STYLE}</style></head>
<body>
<h1>Drift reports</h1>
<p class="quiet">{len(runs)} report(s), newest first. Generated {generated}.</p>
<table>
<thead><tr><th>model</th><th>window</th><th>rows</th><th>drift share</th>
<th>drifted columns</th><th>quality</th><th>decision</th><th></th></tr></thead>
<tbody>
{body}
</tbody></table>
</body></html>
"""


def write_index(runs: Sequence[MonitorRun], path: Path) -> Path:
    """Render and atomically replace the index file."""
    path = Path(path)
    return write_text_atomic(path, render(runs, path.parent))
