"""Video input: every Nth frame of a video file, written once as a lossless PNG so that it is
scored, drawn and listed exactly like an image (optional extra ``video``: OpenCV)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from defectscope.errors import DataError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class Frame:
    """One sampled frame: the PNG it was written to, its index in the video and its time."""

    path: Path
    video: Path
    index: int
    seconds: float | None


def extract_frames(
    video: Path, out_dir: Path, every: int = 1, notices: list[str] | None = None
) -> list[Frame]:
    """Decode ``video`` and write frames 0, ``every``, 2 x ``every``... as RGB PNGs in
    ``out_dir``; returns them in order. A file that decodes to fewer frames than its container
    declares (a truncated or damaged recording) adds a line to ``notices``: its frames past the
    break are not scored, and that is said, not left for the user to notice.

    Raises:
        DataError: OpenCV is missing, or the file cannot be decoded or holds no frame.
    """
    if every < 1:
        raise DataError(f"--every must be at least 1, got {every}")
    try:
        import cv2
    except ImportError as exc:
        raise DataError(
            f"{video} is a video; reading videos needs OpenCV: pip install 'defectscope[video]'"
        ) from exc
    from PIL import Image

    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise DataError(f"video {video} cannot be opened (unknown codec or damaged file)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    declared = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    out_dir.mkdir(parents=True, exist_ok=True)
    frames: list[Frame] = []
    index = 0
    try:
        while True:
            ok = capture.grab()
            if not ok:
                break
            if index % every == 0:
                ok, bgr = capture.retrieve()
                if not ok or bgr is None:
                    break
                path = out_dir / f"frame_{index:06d}.png"
                Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).save(path)
                frames.append(Frame(path, video, index, index / fps if fps > 0 else None))
            index += 1
    finally:
        capture.release()
    if not frames:
        raise DataError(f"video {video} holds no frame that OpenCV can decode")
    if notices is not None and math.isfinite(declared) and 0 < index < int(declared):
        notices.append(
            f"video {video.name}: decoded {index} of the {int(declared)} frames its header "
            f"declares (truncated or damaged); frames {index}-{int(declared) - 1} are not scored"
        )
    return frames
