"""One self-contained ``report.html`` per run: summary, table, confusion matrices, per-defect
metrics, rankings, figures, configuration and provenance.

The page uses no script and no network, and its figures are embedded as ``data:`` URIs: the file
can be mailed or archived alone. The figures are also kept as PNG files in ``figures/``.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from defectscope.atomic import write_text
from defectscope.report.table import RANKED_BY, SHOWN, shown
from defectscope.results import (
    METRIC_LABELS,
    CategoryResult,
    outcome_summary,
    precision_line,
    skipped_reason,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1360px; color: #222;
       padding: 0 1em; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.82em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f0f0f0; white-space: normal; vertical-align: bottom; max-width: 7em; }
td:first-child, td:nth-child(2) { text-align: left; }
table.results th:first-child, table.results td:first-child { position: sticky; left: 0;
       background: #fff; }
tr.mean td { font-weight: bold; background: #fafafa; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 46%; }
figure.wide-fig { max-width: 96%; }
figcaption { font-size: 0.85em; color: #444; }
img { max-width: 100%; border: 1px solid #ddd; }
.notice { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.4em 0.8em;
          margin: 0.3em 0; }
.alarm { background: #fdecea; border-left: 4px solid #d93025; padding: 0.4em 0.8em;
         margin: 0.3em 0; }
.summary { font-size: 1.05em; }
.meta { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""

#: captions in words, by figure kind (the figure's key, or its suffix for ranking bars)
CAPTIONS = {
    "roc": "ROC curves: how well the scores separate defective from good images (image) and "
    "defect pixels from good pixels (pixel). The dotted diagonal is chance.",
    "pro": "Per-region overlap against the false-positive rate on good pixels: how much of each "
    "defect region is found, region by region, for each rate of false alarms (AUPRO is the area "
    "up to 0.3).",
    "histogram": "Image scores of the good and the defective test images, with the pass/fail "
    "threshold (dashed): parts to the right of it fail.",
    "examples": "Examples: the most confident detections, the missed defects and the false "
    "alarms, each with its ground truth, heatmap (the model's fixed colour scale) and the "
    "pixels above the threshold.",
    "synthetic": "Synthetic defects made from training images (outlined in yellow), each scored "
    "by the model of the folds that did not hold its source image, over its heatmap: with the "
    "out-of-fold scores of the training images, they chose the threshold without a label.",
    "loss": "Training and validation loss per epoch.",
    "fit_time": "Seconds to fit each category.",
    "evaluate_time": "Seconds to score each category's test split and compute its metrics.",
}

#: headers of the results table, in words that wrap
HEADERS = {
    "n_train": "train images",
    "n_test": "test images",
    "image_auroc": "image AUROC",
    "image_f1_best": "image F1 (best)",
    "image_f1_fixed": "image F1 (model threshold)",
    "pixel_auroc": "pixel AUROC",
    "pixel_f1_best": "pixel F1 (best)",
    "pixel_f1_fixed": "pixel F1 (model threshold)",
    "aupro_30": "AUPRO (FPR 0.3)",
    "image_accuracy_fixed": "accuracy (model threshold)",
    "shortcut_auroc": "trivial-score AUROC",
    "shortcut": "trivial score",
    "fit_s": "fit s",
    "evaluate_s": "evaluate s",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def _caption(name: str) -> str:
    if name in CAPTIONS:
        return CAPTIONS[name]
    for key, label in RANKED_BY.items():
        if name.endswith(f"_rank_{key}"):
            return f"{name.split('_rank_')[0]}: categories ranked by {label}, best first."
    return name.replace("_", " ")


def _embed(run: Path | None, path: str) -> str:
    """A figure as a ``data:`` URI (the page stands alone); its path if it cannot be read.

    Only PNG files inside the run folder are read: ``figures.json`` is data, and a path in it
    that leaves the folder (``/etc/passwd``, ``../../x``) is shown as text, never embedded."""
    if run is not None:
        try:
            root = run.resolve()
            file = (run / path).resolve()
            if file.is_relative_to(root) and file.suffix.lower() == ".png":
                data = file.read_bytes()
                if data.startswith(b"\x89PNG\r\n\x1a\n"):
                    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        except (OSError, ValueError):
            pass
    return html.escape(path)


def _figure(src: str, name: str) -> str:
    cls = ' class="wide-fig"' if name in ("examples", "synthetic") else ""
    caption = _caption(name)
    return (
        f'<figure{cls}><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def chance_warnings(row: dict[str, Any]) -> list[str]:
    """A sentence per AUROC that is below or near chance (0.5): such a number is not a result
    to rely on, and below 0.5 the detector ranks good parts above defective ones."""
    out = []
    for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC")):
        value = row.get(key)
        if value is None:
            continue
        where = f"{row['category']} ({row['detector']})"
        if value < 0.5:
            out.append(
                f"{where}: {label} {value:.3f} is below chance: the scores rank good "
                f"{'parts' if key == 'image_auroc' else 'pixels'} above defective ones"
            )
        elif value < 0.6:
            out.append(f"{where}: {label} {value:.3f} is near chance (0.5): not a usable result")
    return out


def _expected(point: dict[str, Any]) -> str:
    """What the fit's operating point promised, in words."""
    lo, hi = point["false_reject_interval"]
    text = (
        f"{point['expected_false_reject']:.1%} of good parts rejected (95% interval "
        f"{lo:.1%}-{hi:.1%}, {point['n_good']} out-of-fold training images)"
    )
    if point.get("synthetic_catch_rate") is not None:
        text += (
            f", {point['synthetic_catch_rate']:.1%} of {point['n_synthetic']} synthetic defects "
            f"caught (synthetic AUROC {point['synthetic_auroc']:.3f})"
        )
    return text


def _auto_table(auto: dict[str, Any]) -> list[str]:
    """What ``fit --auto`` tried, how each candidate ranked without labels, and what it chose."""
    rows = []
    for r in auto["candidates"]:
        label = html.escape(r["label"])
        if "skipped" in r:
            what, why = skipped_reason(r["skipped"])
            rows.append(f"<tr><td>{label}</td><td colspan=5>{what}: {html.escape(why)}</td></tr>")
            continue
        chosen = r["label"] == auto["chosen"]
        lit = r.get("lighting_false_reject")
        rows.append(
            f"<tr{' class=chosen' if chosen else ''}><td>{'<b>' if chosen else ''}{label}"
            f"{' (chosen)</b>' if chosen else ''}</td><td>{r['ranking_auroc']:.3f}</td>"
            f"<td>{r['synthetic_auroc']:.3f}</td><td>{r['synthetic_catch_rate']:.0%}</td>"
            f"<td>{'' if lit is None else f'{lit:.0%}'}</td><td>{r['seconds']:.0f}</td></tr>"
        )
    return [
        f"<p>Configuration chosen without labels (<code>fit --auto</code>, "
        f"{auto['seconds']:.0f} s): <b>{html.escape(auto['chosen'])}</b>. Rule: "
        f"{html.escape(auto['rule'])}. The test split chose nothing.</p>",
        "<table><caption>candidates (figures from the training images and synthetic defects "
        "only)</caption><tr><th>candidate</th><th>ranking AUROC</th><th>synthetic AUROC</th>"
        "<th>synthetic defects caught</th><th>good parts rejected at x0.9/x1.1 light</th>"
        "<th>fit s</th></tr>",
        *rows,
        "</table>",
    ]


def _summary(result: dict[str, Any]) -> list[str]:
    s = result.get("summary") or outcome_summary(result["images"])
    defective, good = s["caught"] + s["missed"], s["rejected"] + s["passed"]
    name = f"{result['category']} ({result['detector']})"
    threshold = result["threshold"]
    model = result.get("model") or {}
    source = (model.get("threshold_source") or {}).get("rule")
    point = (model.get("threshold_source") or {}).get("operating_point")
    precision = precision_line(model.get("precision"))
    parts = [
        f'<p class="summary"><b>{html.escape(name)}</b>: at the model\'s threshold '
        f"{threshold:.4g}, caught <b>{s['caught']} of {defective}</b> defective parts and "
        f"rejected <b>{s['rejected']} of {good}</b> good parts."
        + (f" Threshold from: {html.escape(source)}." if source else "")
        + (f" Expected at fit, before any label: {html.escape(_expected(point))}." if point else "")
        + (f" {html.escape(precision[0].upper() + precision[1:])}." if precision else "")
        + "</p>",
        "<table><caption>confusion matrix (test images)</caption>"
        "<tr><th></th><th>failed</th><th>passed</th></tr>"
        f"<tr><td>defective</td><td>{s['caught']} caught</td><td>{s['missed']} missed</td></tr>"
        f"<tr><td>good</td><td>{s['rejected']} rejected</td><td>{s['passed']} passed</td></tr>"
        "</table>",
    ]
    auto = model.get("auto")
    if auto:
        parts += _auto_table(auto)
    if s["defect_types"]:
        parts.append(
            "<table><caption>per defect type (image AUROC: that type against the good images)"
            "</caption><tr><th>defect type</th><th>images</th><th>caught</th>"
            "<th>mean score</th><th>image AUROC</th></tr>"
        )
        for d in s["defect_types"]:
            parts.append(
                f"<tr><td>{html.escape(d['defect_type'])}</td><td>{d['images']}</td>"
                f"<td>{d['caught']}</td><td>{d['mean_score']:.4g}</td>"
                f"<td>{_fmt(d['image_auroc'])}</td></tr>"
            )
        parts.append("</table>")
    return parts


def render(
    payload: dict[str, Any],
    figures: dict[str, dict[str, str]],
    meta: dict[str, Any],
    run: Path | None = None,
) -> str:
    """The report page from the ``results.json`` payload, figure paths (relative to ``run``,
    embedded from there) and run metadata."""
    from defectscope.version import __version__

    rows = payload["rows"]
    results = payload.get("results", [])
    command = " ".join(meta.get("command") or []) or "(Python API)"
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>defectscope report</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>defectscope report</h1>",
        f'<p class="meta">defectscope {html.escape(__version__)} &middot; written {written}'
        f" &middot; command <code>{html.escape(command)}</code></p>",
    ]
    if meta.get("status") in ("interrupted", "running"):
        done, planned = len(meta.get("completed", [])), len(meta.get("categories", []))
        parts.append(
            f'<div class="alarm">this run was interrupted: it has the results of {done} '
            f"category/detector pairs of the {planned} categories planned</div>"
        )
    for row in rows:
        if row["category"] != "mean":
            parts += [f'<div class="alarm">{html.escape(w)}</div>' for w in chance_warnings(row)]

    parts.append("<h2>Summary</h2>")
    for result in results:
        parts += _summary(result)

    parts.append("<h2>Results</h2>")
    parts.append(
        '<div class="wide"><table class="results"><thead><tr>'
        + "".join(f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in SHOWN)
        + "</tr></thead><tbody>"
    )
    for row in rows:
        cls = ' class="mean"' if row["category"] == "mean" else ""
        parts.append(
            f"<tr{cls}>" + "".join(f"<td>{_fmt(shown(row, c))}</td>" for c in SHOWN) + "</tr>"
        )
    parts.append("</tbody></table></div>")
    parts.append(
        '<p class="meta">'
        + "<br>".join(f"<b>{k}</b>: {html.escape(v)}" for k, v in METRIC_LABELS.items())
        + "</p>"
    )
    for notice in dict.fromkeys(payload.get("notices", [])):
        cls = "alarm" if notice.startswith(("warning:", "shift:")) else "notice"
        parts.append(f'<div class="{cls}">{html.escape(notice)}</div>')
    for failure in meta.get("failures", []):
        parts.append(f'<div class="alarm">failed: {html.escape(failure)}</div>')

    categories = {r["category"] for r in rows if r["category"] != "mean"}
    if len(categories) > 1:
        parts.append("<h2>Rankings</h2>")
        for detector, per_metric in payload["rankings"].items():
            for key, entries in per_metric.items():
                parts.append(f"<h3>{html.escape(detector)}: by {RANKED_BY[key]}</h3><ol>")
                ranked = [e for e in entries if e["rank"] is not None]
                parts += [
                    f"<li>{html.escape(e['category'])}: {_fmt(e['value'])}</li>" for e in ranked
                ]
                parts.append("</ol>")
                unranked = [html.escape(e["category"]) for e in entries if e["rank"] is None]
                if unranked:
                    parts.append(f"<p>not ranked (n/a): {', '.join(unranked)}</p>")
    overview = figures.get("", {})
    if overview:
        parts.append("<h2>Overview</h2>")
        parts += [_figure(_embed(run, p), name) for name, p in overview.items()]
    for section, figs in figures.items():
        if not section:
            continue
        parts.append(f"<h2>{html.escape(section)}</h2>")
        parts += [_figure(_embed(run, p), name) for name, p in figs.items()]

    parts.append("<h2>Models</h2><ul>")
    for result in results:
        model = result.get("model") or {}
        sha = model.get("model_sha256")
        parts.append(
            f"<li>{html.escape(result['category'])} ({html.escape(result['detector'])}): "
            f"{html.escape(str(model.get('model') or 'not saved'))}"
            + (f", SHA-256 <code>{sha}</code>" if sha else "")
            + "</li>"
        )
    parts.append("</ul>")
    parts.append("<h2>Configuration</h2>")
    parts.append(f"<p>Command: <code>{html.escape(command)}</code></p>")
    effective = meta.get("effective")
    parts.append(
        "<p>Every option as it ran, defaults included:</p>"
        if effective
        else "<p>The options given (the others at their defaults):</p>"
    )
    shown_options = effective or meta.get("params", {})
    parts.append(f"<pre>{html.escape(json.dumps(shown_options, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return _with_contents(parts)


def _with_contents(parts: list[str]) -> str:
    """The page with an id on every section heading and a table of contents after the title."""
    contents, out = [], []
    for part in parts:
        match = re.match(r"<h2>(.*?)</h2>(.*)", part, flags=re.S)
        if match:
            anchor = f"s{len(contents) + 1}"
            contents.append(f'<li><a href="#{anchor}">{match.group(1)}</a></li>')
            part = f'<h2 id="{anchor}">{match.group(1)}</h2>{match.group(2)}'
        out.append(part)
    nav = '<nav><h2>Contents</h2><ol class="contents">' + "".join(contents) + "</ol></nav>"
    title = next(i for i, part in enumerate(out) if part.startswith("<h1>"))
    out.insert(title + 2, nav)  # after the title and its line of provenance
    return "\n".join(out)


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
    write_text(run / "figures.json", json.dumps(figures, indent=2))
    return rebuild_report(run, meta)


def rebuild_report(run: Path, meta: dict[str, Any] | None = None) -> Path:
    """(Re)write ``run/report.html`` from the saved ``results.json`` and ``figures.json`` of a
    run folder, and ``meta`` (by default the folder's ``run.json``)."""
    from defectscope.errors import DataError

    needed = [run / "results.json"] + ([run / "run.json"] if meta is None else [])
    missing = [p for p in needed if not p.is_file()]
    if missing == [run / "results.json"] and (run / "run.json").is_file():
        status = _read_json(run / "run.json", dict, ()).get("status")
        if status in ("interrupted", "running", "failed"):
            raise DataError(
                f"{run} holds no results: its run was {status} before any category finished "
                "(see its run.json); run the benchmark again"
            )
    if missing:
        raise DataError(
            f"{missing[0]} not found: {run} is not a run folder written by evaluate or benchmark"
        )
    payload = _read_json(needed[0], dict, ("rows",))
    if meta is None:
        meta = _read_json(needed[1], dict, ())
    figures_file = run / "figures.json"
    figures = _read_json(figures_file, dict, ()) if figures_file.is_file() else {}
    if not all(isinstance(v, dict) for v in figures.values()):
        raise DataError(f"{figures_file} is damaged (not a table of figures); run again")
    path = run / "report.html"
    try:
        text = render(payload, figures, meta, run)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(
            f"{needed[0]} or its run.json is damaged ({type(exc).__name__}: {exc}); run the "
            "evaluation or benchmark again"
        ) from exc
    return write_text(path, text)


def _read_json(path: Path, kind: type, keys: tuple[str, ...]) -> Any:
    """A JSON file of a run folder; DataError naming it when it is damaged."""
    from defectscope.errors import DataError

    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is damaged or unreadable ({exc}); run again") from exc
    if not isinstance(value, kind) or any(k not in value for k in keys):
        raise DataError(f"{path} is damaged (not the record defectscope writes); run again")
    return value
