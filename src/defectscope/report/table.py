"""The per-category results table and the category rankings, as CSV, JSON and Markdown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.atomic import write_csv, write_text
from defectscope.results import METRICS, CategoryResult

COLUMNS = (
    "category",
    "detector",
    "n_train",
    "n_test",
    *METRICS,
    "shortcut_auroc",
    "shortcut",
    "shortcut_beats_detector",
    "fit_s",
    "evaluate_s",
)
#: the columns shown in Markdown and HTML: the flag is drawn as ``!`` before the shortcut's name
SHOWN = tuple(c for c in COLUMNS if c != "shortcut_beats_detector")
RANKED_BY = {
    "pixel_f1_best": "pixel F1",
    "image_auroc": "image AUROC",
    "image_f1_best": "image F1",
}


def result_rows(results: Sequence[CategoryResult]) -> list[dict[str, Any]]:
    """One row per result, then one ``mean`` row per detector (means over available values)."""
    rows = [
        {
            "category": r.category,
            "detector": r.detector,
            "n_train": r.n_train,
            "n_test": len(r.images),
            **r.metrics,
            **_shortcut(r),
            "fit_s": r.fit_seconds,
            "evaluate_s": r.evaluate_seconds,
        }
        for r in results
    ]
    for detector in dict.fromkeys(r["detector"] for r in rows):
        own = [r for r in rows if r["detector"] == detector]
        if len(own) < 2:
            continue
        mean: dict[str, Any] = {"category": "mean", "detector": detector}
        for key in COLUMNS[2:]:
            if key in ("shortcut", "shortcut_beats_detector"):
                continue
            values = [r[key] for r in own if r[key] is not None]
            if key in ("n_train", "n_test"):
                mean[key] = int(sum(values))  # totals: a mean image count means nothing
            else:
                mean[key] = float(np.mean(values)) if values else None
        rows.append(mean)
    return rows


def _shortcut(result: CategoryResult) -> dict[str, Any]:
    """The best trivial score of a result (see engine/scoring/shortcuts.py), and whether it matches
    or beats the detector's image AUROC (a column of its own: CSV cells stay plain values)."""
    shortcuts = result.extra.get("shortcuts") or {}
    if not shortcuts:
        return {"shortcut_auroc": None, "shortcut": None, "shortcut_beats_detector": None}
    name, best = max(shortcuts.items(), key=lambda kv: kv[1])
    auroc = result.metrics.get("image_auroc")
    beats = auroc is not None and best >= auroc
    return {"shortcut_auroc": best, "shortcut": name, "shortcut_beats_detector": beats}


def shown(row: dict[str, Any], column: str) -> Any:
    """A cell as Markdown and HTML show it: the shortcut's name with ``!`` when it beats the
    detector."""
    value = row.get(column)
    if column == "shortcut" and value and row.get("shortcut_beats_detector"):
        return "! " + str(value)
    return value


def rankings(results: Sequence[CategoryResult]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per detector and metric, categories from best to worst; missing values rank last."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for detector in dict.fromkeys(r.detector for r in results):
        own = [r for r in results if r.detector == detector]
        out[detector] = {}
        for key in RANKED_BY:
            if all(r.metrics.get(key) is None for r in own):
                continue  # a metric this detector does not have (the classifier's pixel F1)
            ordered = sorted(
                own, key=lambda r: (r.metrics[key] is None, -(r.metrics[key] or 0.0), r.category)
            )
            out[detector][key] = [
                {
                    "rank": i + 1 if r.metrics[key] is not None else None,
                    "category": r.category,
                    "value": r.metrics[key],
                }
                for i, r in enumerate(ordered)
            ]
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _cell(text: str) -> str:
    """A Markdown table cell: ``|`` escaped and line breaks joined, so every row keeps its
    columns whatever a name holds."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(SHOWN) + " |"
    rule = "|" + "|".join("---" for _ in SHOWN) + "|"
    body = ["| " + " | ".join(_cell(_fmt(shown(row, c))) for c in SHOWN) + " |" for row in rows]
    return "\n".join([header, rule, *body])


#: the terminal's table: what fits 100 columns (every column is in results.md and .csv)
TERMINAL = (
    ("category", "category", 14),
    ("detector", "detector", 11),
    ("image_auroc", "img AUROC", 9),
    ("pixel_auroc", "pix AUROC", 9),
    ("aupro_30", "AUPRO", 6),
    ("image_f1_fixed", "F1 model", 8),
    ("image_f1_best", "F1 best", 7),
    ("fit_s", "fit s", 7),
    ("evaluate_s", "eval s", 7),
)


def terminal_table(rows: list[dict[str, Any]]) -> str:
    """The main columns of the results as fixed-width text, at most 100 characters wide."""

    def cell(row: dict[str, Any], key: str, width: int) -> str:
        value = row.get(key)
        if isinstance(value, float) and key.endswith("_s"):
            text = f"{value:.1f}"
        else:
            text = _fmt(value)
        return (
            text[:width].rjust(width)
            if key not in ("category", "detector")
            else (text if len(text) <= width else text[: width - 1] + "~").ljust(width)
        )

    lines = [
        "  ".join(
            label.ljust(w) if i < 2 else label.rjust(w) for i, (_, label, w) in enumerate(TERMINAL)
        )
    ]
    for row in rows:
        lines.append("  ".join(cell(row, key, w) for key, _, w in TERMINAL))
    return "\n".join(line.rstrip() for line in lines)


def markdown_rankings(ranks: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = []
    for detector, per_metric in ranks.items():
        for key, entries in per_metric.items():
            lines.append(f"**{detector}: categories ranked by {RANKED_BY[key]}** ({key})")
            lines.append("")
            for e in entries:
                if e["rank"] is None:
                    lines.append(f"- {e['category']}: n/a (not ranked)")
                else:
                    lines.append(f"{e['rank']}. {e['category']}: {_fmt(e['value'])}")
            lines.append("")
    return "\n".join(lines)


def write_tables(results: Sequence[CategoryResult], out_dir: Path) -> dict[str, Path]:
    """Write ``results.{csv,json,md}`` and ``scores_<category>.csv``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result_rows(results)
    ranks = rankings(results)
    paths = {
        "csv": out_dir / "results.csv",
        "json": out_dir / "results.json",
        "md": out_dir / "results.md",
    }
    write_csv(paths["csv"], list(COLUMNS), ([row.get(c) for c in COLUMNS] for row in rows))
    notices = [n for r in results for n in r.notices]
    payload = {
        "rows": rows,
        "rankings": ranks,
        "notices": notices,
        "results": [r.to_dict() for r in results],
    }
    write_text(paths["json"], json.dumps(payload, indent=2))  # never a half-written one
    by_category = {f"{r.category} ({r.detector})": list(dict.fromkeys(r.notices)) for r in results}
    write_text(out_dir / "notices.json", json.dumps(by_category, indent=2))
    md = ["# Results", "", markdown_table(rows), "", "## Rankings", "", markdown_rankings(ranks)]
    if notices:
        md += ["## Notices", "", *[f"- {n}" for n in dict.fromkeys(notices)], ""]
    write_text(paths["md"], "\n".join(md))
    for r in results:
        write_csv(
            out_dir / f"scores_{r.detector}_{r.category}.csv",
            ["path", "defect_type", "is_anomalous", "score", "predicted_anomalous"],
            (
                [
                    img.path,
                    img.defect_type,
                    int(img.is_anomalous),
                    f"{img.score:.6g}",
                    int(img.predicted_anomalous),
                ]
                for img in r.images
            ),
        )
    return paths
