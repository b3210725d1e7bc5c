"""Does synthetic validation pick configurations well? (issue 22's study of ``fit --auto``)

    .venv/bin/python benchmarks/auto_study.py --data ../shared/datasets --seeds 0 1 2 3
    .venv/bin/python benchmarks/auto_study.py --table

For every category and seed, ``auto_fit`` fits every candidate of :mod:`defectscope.auto`
(no time budget) and ranks them by their label-free ranking AUROC; each fitted candidate is
then evaluated on the labelled test split, which chooses nothing; so is the ensemble of the two
best-ranked candidates that ``auto_fit`` ranks last (one table row for every such ensemble,
whichever its members). One row per candidate is
appended to benchmarks/results/auto_study.jsonl (with which candidate auto chose); ``--table``
prints, per category, the Spearman rank correlation of ranking AUROC and test AUROC, the test
AUROC and F1 of auto's choice against the default's and the best candidate's, and the fit time
of the whole automatic fit against the default fit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "auto_study.jsonl"


def run(args: argparse.Namespace) -> None:
    from defectscope.auto import auto_fit
    from defectscope.data import load_category
    from defectscope.engine.workflows.evaluation import evaluate

    for seed in args.seeds:
        for name in args.categories:
            category = load_category(Path(args.data) / name)
            rows = []

            def judged(record, detector, rows=rows, category=category, seed=seed):
                if detector is None:
                    return
                start = time.perf_counter()
                result = evaluate(detector, category)
                m = result.metrics
                rows.append(
                    {
                        "category": category.name,
                        "seed": seed,
                        **record,
                        "test_image_auroc": m["image_auroc"],
                        "test_pixel_auroc": m["pixel_auroc"],
                        "test_f1_own": m["image_f1_fixed"],
                        "test_f1_best": m["image_f1_best"],
                        "evaluate_s": round(time.perf_counter() - start, 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)

            start = time.perf_counter()
            model = auto_fit(category, budget_s=1e9, seed=seed, on_candidate=judged)
            total = time.perf_counter() - start
            chosen = model.fit_info_.auto["chosen"]
            evaluate_s = sum(r["evaluate_s"] for r in rows)
            with open(args.out, "a") as f:
                for r in rows:
                    r.update(chosen=r["label"] == chosen, auto_fit_s=round(total - evaluate_s, 1))
                    f.write(json.dumps(r) + "\n")


def spearman(a: list[float], b: list[float]) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


#: the ensemble candidate's label names its members, which vary by run: one row for all
ENSEMBLE_ROW = "ensemble of the two best-ranked"


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        if r.get("model") == "ensemble":
            r["members"], r["label"] = r["label"], ENSEMBLE_ROW
    cats = sorted({r["category"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    print("| candidate | " + " | ".join(f"{c} ranking / test AUROC" for c in cats) + " |")
    print("|---|" + "---|" * len(cats))
    for label in labels:
        cells = []
        for c in cats:
            sel = [r for r in rows if r["category"] == c and r["label"] == label]
            if not sel:
                cells.append("")
                continue
            rank = np.mean([r["ranking_auroc"] for r in sel])
            test = np.mean([r["test_image_auroc"] for r in sel])
            cells.append(f"{rank:.3f} / {test:.3f} ({len(sel)})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print(
        "| category | seeds | Spearman (ranking vs test AUROC), mean | test AUROC: default / "
        "auto / best candidate | F1 own / best: default / auto | auto fit s / default fit s |"
    )
    print("|---|---|---|---|---|---|")
    for c in cats:
        seeds = sorted({r["seed"] for r in rows if r["category"] == c})
        rho, d_auc, a_auc, b_auc, d_f1, a_f1, ratio = [], [], [], [], [], [], []
        for s in seeds:
            sel = [r for r in rows if r["category"] == c and r["seed"] == s]
            rho.append(
                spearman([r["ranking_auroc"] for r in sel], [r["test_image_auroc"] for r in sel])
            )
            default = sel[0]
            auto = next(r for r in sel if r["chosen"])
            d_auc.append(default["test_image_auroc"])
            a_auc.append(auto["test_image_auroc"])
            b_auc.append(max(r["test_image_auroc"] for r in sel))
            d_f1.append(default["test_f1_own"] / default["test_f1_best"])
            a_f1.append(auto["test_f1_own"] / auto["test_f1_best"])
            ratio.append(auto["auto_fit_s"] / default["seconds"])
        print(
            f"| {c} | {','.join(map(str, seeds))} | {np.nanmean(rho):.2f} | "
            f"{np.mean(d_auc):.3f} / {np.mean(a_auc):.3f} / {np.mean(b_auc):.3f} | "
            f"{np.mean(d_f1):.2f} / {np.mean(a_f1):.2f} | {np.median(ratio):.1f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--categories", nargs="+", default=["bottle", "screw", "tire"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.table:
        table(args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
