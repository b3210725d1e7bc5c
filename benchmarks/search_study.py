"""Exact search against approximate indexes for PatchCore's bank (issue 25, part 2).

    .venv/bin/pip install faiss-cpu hnswlib     # benchmark only; defectscope does not need them
    .venv/bin/python benchmarks/search_study.py --data ../shared/datasets/screw

Fits the default PatchCore (seed 0) on the category, embeds every training image's patches and
a balanced subset of test images (``--test-images``, half good, half defective). Banks: the
fitted bank, and random subsets of all training patches of ``--bank-sizes`` rows (what a bank
of a training set 10x or 40x larger would hold at the same ratio). For each bank: the exact
chunked numpy search of the lean path, faiss's exact flat index, faiss HNSW (M 32) at two
``efSearch``, faiss IVF-Flat at two ``nprobe`` and defectscope's own numpy IVF-Flat
(:class:`defectscope.ops.search.InvertedIndex`, what the lean path uses on large banks) at
three ``nprobe`` (``--no-faiss``: the numpy methods only). Printed per bank and method: build
seconds, search seconds per test image (median of the images' queries, all methods in the same run),
recall@1 (the approximate nearest distance equals the exact one within 1e-4 relative), the
largest relative overestimate of a patch distance, and the image AUROC of the test subset
when the full scoring (upsampling, smoothing, the map's maximum) runs on those distances.
Rows are appended to benchmarks/results/search_study.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets/screw")
    parser.add_argument("--bank-sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--test-images", type=int, default=48)
    parser.add_argument("--no-faiss", action="store_true", help="numpy exact and IVF only")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "search_study.jsonl"
    )
    args = parser.parse_args()

    import defectscope
    from defectscope.data import load_category
    from defectscope.data.loader import iter_batches
    from defectscope.metrics import auroc
    from defectscope.ops.search import InvertedIndex, nearest_distance

    faiss = None
    if not args.no_faiss:
        import faiss

        faiss.omp_set_num_threads(2)
    category = load_category(args.data, require_test=True)
    model = defectscope.PatchCore(seed=0).fit(category)
    module = model.module_
    shape = model.config_.input_shape

    def embed(paths):
        parts = []
        for _, batch in iter_batches(paths, shape, 16, 2, None):
            parts.append(module.embedding(batch, module.target))
        return np.concatenate(parts)

    train = embed(list(category.train_paths))
    positions, dim = train.shape[1], train.shape[2]
    train = train.reshape(-1, dim)
    good = [s for s in category.test_samples if not s.is_anomalous]
    bad = [s for s in category.test_samples if s.is_anomalous]
    rng = np.random.default_rng(0)
    half = args.test_images // 2
    picked = [good[i] for i in sorted(rng.choice(len(good), min(half, len(good)), False))]
    picked += [bad[i] for i in sorted(rng.choice(len(bad), min(half, len(bad)), False))]
    labels = np.array([s.is_anomalous for s in picked])
    queries = embed([s.path for s in picked])  # (images, positions, dim)

    banks = {"fitted": module.bank}
    for size in args.bank_sizes:
        if size < len(train):
            banks[f"{size:,} of the training patches"] = train[rng.choice(len(train), size, False)]

    def run(search) -> tuple[np.ndarray, float]:
        out, seconds = [], []
        for image in queries:
            start = time.perf_counter()
            out.append(search(image))
            seconds.append(time.perf_counter() - start)
        return np.stack(out), float(np.median(seconds))

    for bank_name, bank in banks.items():
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        exact, exact_s = run(lambda q, bank=bank: nearest_distance(q, bank))
        methods = {}
        start = time.perf_counter()
        ours = InvertedIndex(bank, seed=0)
        build = time.perf_counter() - start
        for nprobe in (8, 16, 32):
            methods[f"numpy IVF-Flat nlist {ours.nlist} nprobe {nprobe}"] = (ours, build, nprobe)
        if not args.no_faiss:
            methods.update(faiss_methods(faiss, bank, dim))
        rows = [("numpy exact (the lean path)", exact, exact_s, 0.0)]
        for name, (index, build, knob) in methods.items():
            if isinstance(index, InvertedIndex):

                def search(q, index=index, nprobe=knob):
                    return index.nearest_distance(q, nprobe)

            else:
                if knob and knob[0] == "ef":
                    index.hnsw.efSearch = knob[1]
                if knob and knob[0] == "probe":
                    index.nprobe = knob[1]

                def search(q, index=index):
                    d2, _ = index.search(np.ascontiguousarray(q), 1)
                    return np.sqrt(np.maximum(d2[:, 0], 0.0))

            dist, seconds = run(search)
            rows.append((name, dist, seconds, build))
        for name, dist, seconds, build in rows:
            rel = (dist - exact) / np.maximum(exact, 1e-12)
            scores, _ = module.scores_and_maps(dist.reshape(len(dist), positions))
            row = {
                "category": category.name,
                "bank": bank_name,
                "bank_rows": len(bank),
                "method": name,
                "build_s": round(build, 2),
                "search_s_per_image": round(seconds, 4),
                "speedup_vs_numpy": round(exact_s / seconds, 2),
                "recall_at_1": round(float(np.mean(np.abs(rel) <= 1e-4)), 4),
                "max_overestimate": round(float(rel.max()), 4),
                "image_auroc": round(float(auroc(labels, scores)), 4),
                "test_images": len(picked),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


def faiss_methods(faiss, bank: np.ndarray, dim: int) -> dict:
    """faiss's exact flat index, HNSW (M 32) at two efSearch, IVF-Flat at two nprobe:
    ``{name: (index, build seconds, knob)}``."""
    methods = {}
    flat = faiss.IndexFlatL2(dim)
    start = time.perf_counter()
    flat.add(bank)
    methods["faiss flat (exact)"] = (flat, time.perf_counter() - start, None)
    for ef in (32, 128):
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efConstruction = 80
        start = time.perf_counter()
        index.add(bank)
        methods[f"faiss HNSW M32 efSearch {ef}"] = (index, time.perf_counter() - start, ("ef", ef))
    nlist = int(4 * np.sqrt(len(bank)))
    for nprobe in (8, 32):
        quantizer = faiss.IndexFlatL2(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist)
        start = time.perf_counter()
        index.train(bank)
        index.add(bank)
        build = time.perf_counter() - start
        methods[f"faiss IVF-Flat nlist {nlist} nprobe {nprobe}"] = (index, build, ("probe", nprobe))
    return methods


if __name__ == "__main__":
    main()
