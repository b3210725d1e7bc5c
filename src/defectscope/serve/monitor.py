"""What the service remembers and tells: Prometheus metrics (``GET /metrics``), the images it
judged recently (so that feedback can only be given on a real verdict), and the operator's
feedback stored on disk (``POST /feedback``, ``GET /feedback``)."""

from __future__ import annotations

import collections
import hashlib
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.atomic import write_bytes
from defectscope.engine.scoring.shortcuts import batch_stats

#: feedback labels: the operator says the part was good (a false alarm if it failed) or
#: defective (an escape if it passed)
LABELS = ("good", "defective")
#: images remembered for feedback; older ones are forgotten
REMEMBERED = 10_000
#: images the shift gauges are computed over
RECENT = 100


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (two apps in one process do
    not share counters)."""

    def __init__(self, identity: dict[str, Any], version: str, training, train_sizes) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "defectscope_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "defectscope_request_seconds", "request latency by route", ["route"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self.verdicts = Counter(
            "defectscope_verdicts", "images judged, by verdict", ["verdict"], registry=r
        )
        self.scores = Histogram(
            "defectscope_normalized_score", "images' scores on the 0-1 scale (0.5: threshold)",
            registry=r, buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
        )  # fmt: skip
        self.brightness = Gauge(
            "defectscope_brightness_shift_sigmas",
            f"mean grey level of the last {RECENT} images minus the training images', in "
            "training standard deviations (over images)",
            registry=r,
        )
        self.contrast = Gauge(
            "defectscope_contrast_shift_sigmas",
            f"grey-level spread of the last {RECENT} images minus the training images', in "
            "training standard deviations",
            registry=r,
        )
        self.new_sizes = Gauge(
            "defectscope_unseen_size_ratio",
            f"fraction of the last {RECENT} images whose size no training image had",
            registry=r,
        )
        self.feedback = Counter(
            "defectscope_feedback", "operator feedback stored, by label", ["label"], registry=r
        )
        self._model = Info("defectscope_model", "the model served", registry=r)
        self._version = version
        self.set_model(identity)
        self._training = training
        self._train_sizes = set(train_sizes or ())
        self._recent: collections.deque = collections.deque(maxlen=RECENT)
        self._lock = threading.Lock()

    def set_model(self, identity: dict[str, Any]) -> None:
        """The model served (again after a hot swap)."""
        self._model.info(
            {
                "version": self._version,
                "detector": str(identity.get("detector")),
                "model_sha256": str(identity.get("model_sha256")),
                "threshold": f"{identity.get('threshold'):.6g}",
            }
        )

    def judged(self, image: np.ndarray, failed: bool, normalized: float) -> None:
        self.verdicts.labels("fail" if failed else "pass").inc()
        self.scores.observe(normalized)
        mean, std = batch_stats(image[None])
        size = f"{image.shape[1]}x{image.shape[0]}"
        with self._lock:
            self._recent.append((float(mean[0]), float(std[0]), size))
            means, stds, sizes = zip(*self._recent)
        if self._training is not None:
            t = self._training
            self.brightness.set((np.mean(means) - t.mean) / max(t.mean_sd, 1e-6))
            self.contrast.set((np.mean(stds) - t.spread) / max(t.spread_sd, 1e-6))
        if self._train_sizes:
            self.new_sizes.set(sum(s not in self._train_sizes for s in sizes) / len(sizes))

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Judged:
    """The verdicts of the last :data:`REMEMBERED` images, by the SHA-256 of their bytes."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._items: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def remember(self, digest: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._items[digest] = record
            self._items.move_to_end(digest)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, digest: str) -> dict[str, Any] | None:
        with self._lock:
            return self._items.get(digest)

    def __len__(self) -> int:
        return len(self._items)


class FeedbackStore:
    """Feedback cases under ``folder``: each image once, as ``<label>/<sha256 prefix><suffix>``,
    and one JSON line per case in ``feedback.jsonl`` (appended under a lock)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index = self.folder / "feedback.jsonl"
        self._lock = threading.Lock()

    def add(self, data: bytes, suffix: str, label: str, judged: dict[str, Any]) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.folder / label).mkdir(exist_ok=True)
        image = self.folder / label / f"{digest[:16]}{suffix}"
        case = {
            "image": str(image.relative_to(self.folder)),
            "image_sha256": digest,
            "label": label,
            **judged,
            "false_alarm": label == "good" and judged["verdict"] == "fail",
            "escape": label == "defective" and judged["verdict"] == "pass",
            "stored": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with self._lock:
            write_bytes(image, data)
            with open(self.index, "a") as handle:
                handle.write(json.dumps(case) + "\n")
        return case

    def cases(self, limit: int = 1000) -> list[dict]:
        if not self.index.is_file():
            return []
        with self._lock:
            lines = self.index.read_text().splitlines()
        out = []
        for line in lines[-limit:]:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash: the others still count
        return out


def now() -> float:
    return time.perf_counter()
