"""A self-contained ``report.html`` per run: table, rankings, figures, config and command.

The page uses no script and no network: figures are PNG files in ``figures/`` next to it,
referenced by relative paths, so the run folder can be copied or zipped and opened from disk.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectscope.report.table import COLUMNS, RANKED_BY
from defectscope.results import METRIC_LABELS, CategoryResult

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, td:nth-child(2) { text-align: left; }
tr.mean td { font-weight: bold; background: #fafafa; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; border: 1px solid #ddd; }
.notice { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em;
          margin: 0.3em 0; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _figure(path: str, caption: str) -> str:
    return (
        f'<figure><img src="{html.escape(path)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def render(
    payload: dict[str, Any], figures: dict[str, dict[str, str]], meta: dict[str, Any]
) -> str:
    """The report page from the ``results.json`` payload, figure paths and run metadata."""
    rows = payload["rows"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>defectscope report</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>defectscope report</h1>",
        "<h2>Results</h2>",
        '<div class="wide"><table><thead><tr>'
        + "".join(f"<th>{c}</th>" for c in COLUMNS)
        + "</tr></thead><tbody>",
    ]
    for row in rows:
        cls = ' class="mean"' if row["category"] == "mean" else ""
        parts.append(
            f"<tr{cls}>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in COLUMNS) + "</tr>"
        )
    parts.append("</tbody></table></div>")
    parts.append(
        "<p>"
        + "<br>".join(f"<b>{k}</b>: {html.escape(v)}" for k, v in METRIC_LABELS.items())
        + "</p>"
    )
    for notice in dict.fromkeys(payload.get("notices", [])):
        parts.append(f'<div class="notice">{html.escape(notice)}</div>')
    if meta.get("status") in ("interrupted", "running"):
        done, planned = len(meta.get("completed", [])), len(meta.get("categories", []))
        parts.append(
            f'<div class="notice">this run was interrupted: it has the results of {done} '
            f"category/detector pairs of the {planned} categories planned</div>"
        )
    for failure in meta.get("failures", []):
        parts.append(f'<div class="notice">failed: {html.escape(failure)}</div>')

    parts.append("<h2>Rankings</h2>")
    for detector, per_metric in payload["rankings"].items():
        for key, entries in per_metric.items():
            parts.append(f"<h3>{html.escape(detector)}: by {RANKED_BY[key]}</h3><ol>")
            ranked = [e for e in entries if e["rank"] is not None]
            parts += [f"<li>{html.escape(e['category'])}: {_fmt(e['value'])}</li>" for e in ranked]
            parts.append("</ol>")
            unranked = [html.escape(e["category"]) for e in entries if e["rank"] is None]
            if unranked:
                parts.append(f"<p>not ranked (n/a): {', '.join(unranked)}</p>")
    overview = figures.get("", {})
    if overview:
        parts.append("<h2>Overview</h2>")
        parts += [_figure(p, name.replace("_", " ")) for name, p in overview.items()]
    for section, figs in figures.items():
        if not section:
            continue
        parts.append(f"<h2>{html.escape(section)}</h2>")
        parts += [_figure(p, name) for name, p in figs.items()]

    parts.append("<h2>Configuration</h2>")
    command = " ".join(meta.get("command") or []) or "(Python API)"
    parts.append(f"<p>Command: <code>{html.escape(command)}</code></p>")
    parts.append(
        f"<pre>{html.escape(json.dumps(meta.get('params', {}), indent=2, default=str))}</pre>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: Sequence[CategoryResult], run: Path, meta: dict[str, Any]) -> Path:
    """Draw every figure into ``run/figures`` and write ``run/report.html``."""
    from defectscope.report.plots import benchmark_figures, category_figures

    out = run / "figures"
    figures: dict[str, dict[str, str]] = {}
    if len(results) > 1:
        figures[""] = {k: f"figures/{p.name}" for k, p in benchmark_figures(results, out).items()}
    for result in results:
        made = category_figures(result, out)
        figures[f"{result.category} ({result.detector})"] = {
            k: str(p.relative_to(run)) if p.is_relative_to(run) else str(p) for k, p in made.items()
        }
    (run / "figures.json").write_text(json.dumps(figures, indent=2))
    return rebuild_report(run, meta)


def rebuild_report(run: Path, meta: dict[str, Any] | None = None) -> Path:
    """(Re)write ``run/report.html`` from the saved ``results.json`` and ``figures.json`` of a
    run folder, and ``meta`` (by default the folder's ``run.json``)."""
    from defectscope.errors import DataError

    needed = [run / "results.json"] + ([run / "run.json"] if meta is None else [])
    missing = [p for p in needed if not p.is_file()]
    if missing == [run / "results.json"] and (run / "run.json").is_file():
        status = json.loads((run / "run.json").read_text()).get("status")
        if status in ("interrupted", "running", "failed"):
            raise DataError(
                f"{run} holds no results: its run was {status} before any category finished "
                "(see its run.json); run the benchmark again"
            )
    if missing:
        raise DataError(
            f"{missing[0]} not found: {run} is not a run folder written by evaluate or benchmark"
        )
    payload = json.loads(needed[0].read_text())
    if meta is None:
        meta = json.loads(needed[1].read_text())
    figures_file = run / "figures.json"
    figures = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
    path = run / "report.html"
    path.write_text(render(payload, figures, meta))
    return path
