"""One validation result as a self-contained HTML page: no script, no font, no CDN.

GX's Data Docs load jQuery, bootstrap-table, vega and Font Awesome from CDNs, so without
internet their index is empty and the status icons are missing. This page is written
beside each result (``<result>.html``) and linked from every failure message: the
failing batch's own page, which opens anywhere.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.4rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
.pass { color: #2e7d32; font-weight: 600; } .fail { color: #b00020; font-weight: 600; }
tr.failed td { background: #fff1f0; } code { font-size: 0.85rem; }
"""
# result keys worth showing, in this order; the rest is in the JSON beside the page
SHOWN = ("observed_value", "unexpected_percent", "unexpected_count", "partial_unexpected_list")


def _kwargs(config: dict[str, Any]) -> str:
    kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}
    return ", ".join(f"{k}={json.dumps(v, default=str)[:120]}" for k, v in kwargs.items())


def _observed(result: dict[str, Any]) -> str:
    found = result.get("result") or {}
    parts = [f"{k}: {json.dumps(found[k], default=str)[:200]}" for k in SHOWN if k in found]
    error = (result.get("exception_info") or {}).get("exception_message")
    if error:
        parts.append(f"error: {error}")
    return "<br>".join(html.escape(p) for p in parts) or "-"


def render(result: dict[str, Any], dataset: str, batch: str) -> str:
    """The page for one GX suite result (its JSON as written to the results store)."""
    rows = sorted(result.get("results", []), key=lambda r: bool(r.get("success")))
    body = []
    for r in rows:
        config = r.get("expectation_config", {})
        ok = bool(r.get("success"))
        body.append(
            f'<tr class="{"" if ok else "failed"}">'
            f'<td class="{"pass" if ok else "fail"}">{"passed" if ok else "FAILED"}</td>'
            f"<td><code>{html.escape(config.get('type', '?'))}</code></td>"
            f"<td><code>{html.escape(_kwargs(config))}</code></td>"
            f"<td>{_observed(r)}</td></tr>"
        )
    stats = result.get("statistics", {})
    verdict = "passed" if result.get("success") else "FAILED"
    colour = "pass" if result.get("success") else "fail"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(dataset)} batch {html.escape(batch)}: {verdict}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(dataset)} batch <code>{html.escape(batch)}</code>:
<span class="{colour}">{verdict}</span></h1>
<p>{stats.get("unsuccessful_expectations", "?")} of {stats.get("evaluated_expectations", "?")}
expectations failed (suite <code>{html.escape(str(result.get("suite_name", "")))}</code>);
failures first. The full result is the JSON file beside this page.</p>
<table><thead><tr><th>status</th><th>expectation</th><th>arguments</th><th>observed</th></tr>
</thead><tbody>{"".join(body)}</tbody></table>
</body></html>
"""


def write_page(result_path: Path, dataset: str, batch: str) -> Path:
    """``<result>.html`` beside the result's JSON."""
    result_path = Path(result_path)
    page = result_path.with_suffix(".html")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    page.write_text(render(result, dataset, batch), encoding="utf-8")
    return page
