"""Learning from the line, measured: the time to fold one image into a fitted model
(``Detector.update``), and request latency before, during and after a hot swap of the service
under 8 loopback clients.

    .venv/bin/python benchmarks/update.py --data ../shared/datasets/bottle

Fits PaDiM and PatchCore (default options) on the category's train/good, then for each: loads
the saved model fresh three times and times ``update`` with one test/good image (median).
Then serves the PaDiM model on 127.0.0.1, runs 8 client threads for ``--seconds`` (bounded),
stores one good feedback and calls ``POST /model/update`` halfway; reports p50/p99 latency of
the requests before the swap and of those that overlapped it. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed_updates(model_file: Path, image: Path, repeats: int = 3) -> list[float]:
    import defectscope

    out = []
    for _ in range(repeats):
        model = defectscope.load(model_file)
        start = time.perf_counter()
        model.update([image])
        out.append(time.perf_counter() - start)
    return out


def swap_latency(model_file: Path, images: list[Path], taught: Path, seconds: float) -> dict:
    import httpx
    import uvicorn

    from defectscope.serve.app import Limits, create_app, server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    feedback = Path(tempfile.mkdtemp())
    app = create_app(model_file, feedback_dir=feedback)
    server = uvicorn.Server(server_config(app, port=port, limits=Limits(), quiet=True))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    bodies = [p.read_bytes() for p in images]
    samples: list[tuple[float, float, int]] = []  # (start, seconds, status)
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                r = http.post("/predict", content=bodies[(k + i) % len(bodies)])
                samples.append((t0, time.perf_counter() - t0, r.status_code))

    with httpx.Client(base_url=base, timeout=120) as http:
        http.post("/predict", content=taught.read_bytes())
        http.post(
            "/feedback", files={"image": ("t.png", taught.read_bytes())}, data={"label": "good"}
        )
        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        time.sleep(seconds / 2)
        swap_start = time.perf_counter()
        answer = http.post("/model/update").json()
        swap_end = time.perf_counter()
        time.sleep(seconds / 2)
        stop.set()
        for t in threads:
            t.join(timeout=120)
    server.should_exit = True
    thread.join(timeout=10)

    def p(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")

    steady = [d for t0, d, _ in samples if t0 + d < swap_start]
    during = [d for t0, d, _ in samples if t0 < swap_end and t0 + d > swap_start]
    return {
        "requests": len(samples),
        "failed": sum(code != 200 for *_, code in samples),
        "swap_s": swap_end - swap_start,
        "added": answer.get("added"),
        "steady_p50_s": p(steady, 50),
        "steady_p99_s": p(steady, 99),
        "during_swap_n": len(during),
        "during_swap_p99_s": max(during) if len(during) < 100 else p(during, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    import numpy as np
    from PIL import Image

    import defectscope
    from defectscope.data import load_category

    category = load_category(args.data)
    good = sorted(s.path for s in category.test_samples if not s.is_anomalous)
    work = Path(tempfile.mkdtemp())
    files = {}
    for name in ("padim", "patchcore"):
        start = time.perf_counter()
        model = getattr(defectscope, {"padim": "PaDiM", "patchcore": "PatchCore"}[name])()
        model.fit(category)
        fit_s = time.perf_counter() - start
        files[name] = model.save(work / name / "model.safetensors")
        times = timed_updates(files[name], good[0])
        print(json.dumps({"model": name, "category": category.name, "fit_s": round(fit_s, 1),
                          "update_one_image_s": [round(t, 3) for t in times],
                          "median_s": round(statistics.median(times), 3)}), flush=True)  # fmt: skip
    part = np.asarray(Image.open(good[1]).convert("RGB")).copy()
    h, w = part.shape[:2]
    part[h // 3 : h // 3 + h // 20, w // 8 : w * 7 // 8] = 255
    taught = work / "scratched.png"
    Image.fromarray(part).save(taught)
    row = swap_latency(files["padim"], good[:16], taught, args.seconds)
    print(json.dumps({"model": "padim", "category": category.name, **row}), flush=True)


if __name__ == "__main__":
    main()
