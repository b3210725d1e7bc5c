"""Load test of `defectscope serve`: throughput, latency, errors and server memory at 1, 4 and
16 concurrent clients, beside `defectscope predict` on the same images, in one run.

    .venv/bin/python benchmarks/load_serve.py --model runs/fit/tire/model.onnx \\
        --images ../shared/datasets/tire/test --requests 2000 --seconds 120

The server runs in a subprocess bound to 127.0.0.1 only. Every level stops by itself after
``--requests`` requests or ``--seconds`` seconds, whichever comes first. One image per request
(raw PNG body). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return (
        process.memory_info().rss + sum(c.memory_info().rss for c in process.children())
    ) / 2**20


def run_level(url: str, bodies: list[bytes], clients: int, requests: int, seconds: float):
    import httpx

    latencies: list[float] = []
    errors = [0]
    counter = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(worker: int) -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop_at:
                with lock:
                    if counter[0] >= requests:
                        return
                    n = counter[0]
                    counter[0] += 1
                start = time.perf_counter()
                try:
                    r = http.post(
                        url, content=bodies[n % len(bodies)], headers={"content-type": "image/png"}
                    )
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - start)
                    errors[0] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": wall,
        "throughput": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="exported .onnx (or a model / run)")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--requests", type=int, default=2000, help="per level (default 2000)")
    parser.add_argument("--seconds", type=float, default=120, help="per level (default 120)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    import httpx

    images = sorted(p for p in Path(args.images).rglob("*.png"))
    bodies = [p.read_bytes() for p in images]

    start = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "defectscope"),
            "predict",
            "--model",
            args.model,
            args.images,
            "--save",
            "none",
            "-q",
            "--project",
            "/tmp/defectscope-load-predict",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    predict_wall = time.perf_counter() - start
    predict_rate = len(images) / predict_wall

    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "defectscope"),
            "serve",
            "--model",
            args.model,
            "--port",
            str(port),
            "-q",
            "--max-queue",
            "256",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start: " + server.stderr.read().decode()[-2000:])
        for body in bodies[:8]:  # warm-up
            httpx.post(base + "/predict", content=body, timeout=60)
        rss_start = rss_mib(server.pid)
        rows = []
        for c in args.levels:
            rows.append(run_level(base + "/predict", bodies, c, args.requests, args.seconds))
            rows[-1]["rss_mib"] = rss_mib(server.pid)
        rss_end = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"model {args.model}; {len(images)} distinct images from {args.images}")
    print(
        f"`defectscope predict` on the {len(images)} images (whole process): "
        f"{predict_wall:.1f} s, {predict_rate:.2f} img/s"
    )
    print(f"server RSS after warm-up {rss_start:.0f} MiB, after all levels {rss_end:.0f} MiB\n")
    print(
        "| clients | requests | seconds | img/s | vs predict | p50 ms | p99 ms | errors "
        "| server RSS after, MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']} | {r['requests']} | {r['seconds']:.1f} | {r['throughput']:.2f} "
            f"| {r['throughput'] / predict_rate:.0%} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {r['errors']} | {r['rss_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
