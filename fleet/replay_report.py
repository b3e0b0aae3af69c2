"""``replay.json`` and ``replay.html``: the replay's timeline, for machines and people.

The HTML page is self-contained (the plot is an embedded PNG): weekly model quality of
the closed loop against the frozen bootstrap champions, with each retraining and
promotion marked, then the week-by-week table with links to the drift reports.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import date
from pathlib import Path
from typing import Any

from fleet.settings import Settings


def write_reports(settings: Settings, summary: dict[str, Any]) -> dict[str, str]:
    """Write both files under ``$FLEET_HOME/reports/``; returns their paths."""
    out = settings.reports_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "replay.json"
    html_path = out / "replay.html"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    html_path.write_text(render_html(summary, out))
    return {"json": str(json_path), "html": str(html_path)}


def quality_plot(summary: dict[str, Any]) -> bytes:
    """One panel per model: weekly metric, closed loop vs frozen, events marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["models"])
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 2.8 * len(models)), squeeze=False)
    weeks = summary["weeks"]
    days = [date.fromisoformat(w["start"]) for w in weeks]
    for ax, name in zip(axes[:, 0], models, strict=True):
        info = summary["models"][name]
        rows = [w["models"][name] for w in weeks]
        closed = [r["closed_loop"] for r in rows]
        frozen = [r["frozen"] for r in rows]
        ax.plot(days, closed, marker="o", ms=3, label="closed loop (served)")
        ax.plot(days, frozen, marker="s", ms=3, ls="--", label="frozen bootstrap champion")
        # retraining runs at the end of a week, once its labels are in
        fired = [date.fromisoformat(w["end"]) for w in weeks if w["models"][name]["retrain"]]
        for d in fired:
            ax.axvline(d, color="0.8", lw=1, zorder=0)
        promotions = [p for p in summary["promotions"] if p["model"] == name]
        for d in (date.fromisoformat(p["at"]) for p in promotions):
            ax.axvline(d, color="tab:green", lw=1.5, ls=":", zorder=0)
        better = "higher" if info["greater_is_better"] else "lower"
        ax.set_title(f"{name}: weekly {info['metric']} ({better} is better)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.text(
        0.01, 0.005, "grey: a drift trigger fired (retraining); green dotted: a promotion",
        fontsize=8,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _link(path: str, base: Path, text: str) -> str:
    if not path:
        return ""
    target = Path(path)
    href = target.relative_to(base).as_posix() if target.is_relative_to(base) else target.as_uri()
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def render_html(summary: dict[str, Any], base: Path) -> str:
    png = base64.b64encode(quality_plot(summary)).decode()
    head_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(m['metric'])}</td>"
        f"<td>{_fmt(m['closed_loop'])}</td><td>{_fmt(m['frozen'])}</td>"
        f"<td>v{m['frozen_version']}</td><td>{m['retrainings']}</td><td>{m['promotions']}</td></tr>"
        for name, m in summary["models"].items()
    )
    week_rows = []
    for week in summary["weeks"]:
        for name, m in week["models"].items():
            drift = "" if m["drift_share"] is None else f"{m['drift_share']:.2f}"
            week_rows.append(
                f"<tr><td>{week['start']}</td><td>{html.escape(name)}</td>"
                f"<td>v{html.escape(m['served_version'])}</td><td>{m['rows']}</td>"
                f"<td>{m['labelled']}</td><td>{_fmt(m['closed_loop'])}</td>"
                f"<td>{_fmt(m['frozen'])}</td><td>{drift}</td>"
                f"<td>{html.escape(', '.join(m['drifted_columns']))}</td>"
                f"<td>{html.escape(m['retrain'] or ('fired' if m['fired'] else ''))}</td>"
                f"<td>{html.escape(m['champion_after'])}</td>"
                f"<td>{_link(m['report'], base, 'report')}</td></tr>"
            )
    cfg = summary["config"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modelfleet replay</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f3f3f3; }}
</style></head><body>
<h1>Replay {cfg["start"]} .. {cfg["end"]}</h1>
<p>Every {cfg["step_days"]} days of 2013 went through the gateway as live traffic; labels
arrived after each step, the drift jobs ran and their triggers retrained. The frozen
fleet is the bootstrap champions, scored on the same rows. <a href="index.html">All drift
reports</a> · <a href="replay.json">replay.json</a></p>
<h2>Mean weekly quality</h2>
<table><tr><th>model</th><th>metric</th><th>closed loop</th><th>frozen</th>
<th>frozen version</th><th>retrainings</th><th>promotions</th></tr>{head_rows}</table>
<img alt="weekly quality, closed loop vs frozen" src="data:image/png;base64,{png}">
<h2>Week by week</h2>
<table><tr><th>week</th><th>model</th><th>served</th><th>rows</th><th>labelled</th>
<th>closed loop</th><th>frozen</th><th>drift share</th><th>drifted columns</th>
<th>retrain</th><th>champion after</th><th>drift report</th></tr>
{"".join(week_rows)}</table>
</body></html>
"""
