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


ARM_NAMES = {"closed_loop": "closed loop", "scheduled": "scheduled", "frozen": "frozen"}


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
        scheduled = [r.get("scheduled") for r in rows]
        if any(v is not None for v in scheduled):
            ax.plot(days, scheduled, marker="^", ms=3, ls=":", label="scheduled (weekly retrain)")
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
    arms = summary.get("arms", {})
    order = [a for a in ("closed_loop", "scheduled", "frozen") if a in arms]
    arm_head = "".join(f"<th>{html.escape(ARM_NAMES[a])}</th>" for a in order)
    head_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(m['metric'])}</td>"
        + "".join(f"<td>{_fmt(arms[a][name]['mean_metric'])}</td>" for a in order)
        + "".join(
            f"<td>{arms[a][name]['retrains']} / {arms[a][name]['promotions']} / "
            f"{arms[a][name]['train_seconds']:.1f} s</td>"
            for a in order
            if a != "frozen"
        )
        + f"<td>v{m['frozen_version']}</td></tr>"
        for name, m in summary["models"].items()
    )
    effort_head = "".join(
        f"<th>{html.escape(ARM_NAMES[a])}: retrains / promotions / fitting</th>"
        for a in order
        if a != "frozen"
    )
    week_rows = []
    for week in summary["weeks"]:
        for name, m in week["models"].items():
            drift = "" if m["drift_share"] is None else f"{m['drift_share']:.2f}"
            week_rows.append(
                f"<tr><td>{week['start']}</td><td>{html.escape(name)}</td>"
                f"<td>v{html.escape(m['served_version'])}</td><td>{m['rows']}</td>"
                f"<td>{m['labelled']}</td><td>{_fmt(m['closed_loop'])}</td>"
                f"<td>{_fmt(m.get('scheduled'))}</td>"
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
fleet is the bootstrap champions; the scheduled arm retrains every week with the same
champion gate (a cron job); all three are scored on the same rows. <a href="index.html">All drift
reports</a> · <a href="replay.json">replay.json</a></p>
<h2>Mean weekly quality</h2>
<table><tr><th>model</th><th>metric</th>{arm_head}{effort_head}<th>frozen version</th>
</tr>{head_rows}</table>
<img alt="weekly quality, closed loop vs frozen" src="data:image/png;base64,{png}">
<h2>Week by week</h2>
<table><tr><th>week</th><th>model</th><th>served</th><th>rows</th><th>labelled</th>
<th>closed loop</th><th>scheduled</th><th>frozen</th><th>drift share</th>
<th>drifted columns</th>
<th>retrain</th><th>champion after</th><th>drift report</th></tr>
{"".join(week_rows)}</table>
</body></html>
"""
