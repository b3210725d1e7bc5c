"""Run every bad or unusual input of docs/bad_inputs.md and write the table from what happened.

    .venv/bin/python docs/bad_inputs.py          # rewrites docs/bad_inputs.md

Each case builds its files in a temporary folder, runs the command (in-process, as the
``defectscope`` command would) or the Python call, and records the exit code and the first line
defectscope printed (error, warning, shift or notice). Nothing in the table is written by hand
except the case descriptions, so it stays true as the code changes.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = 64
SMALL = ["--model", "padim", "--image-size", str(SIZE), "--n-features", "40"]


def run(argv: list[str]) -> tuple[int, str, str]:
    from defectscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def call(fn: Callable[[], object]) -> tuple[int, str, str]:
    from defectscope.errors import DefectscopeError

    try:
        result = fn()
    except DefectscopeError as exc:
        return 2, "", f"{type(exc).__name__}: {exc}"
    return 0, str(result), ""


class Cases:
    def __init__(self, work: Path) -> None:
        from defectscope.data.synthetic import make_category

        self.work = work
        self.cat = work / "cat"
        make_category(
            self.cat, kind="texture", size=SIZE, n_train=16, n_test_good=4, n_test_defect=3, seed=1
        )
        code, _, err = run(
            ["fit", "--data", str(self.cat), "--project", str(work / "runs"), *SMALL]
        )
        assert code == 0, err
        self.model = work / "runs" / "fit" / "cat" / "model.safetensors"
        self.image = sorted((self.cat / "test" / "scratch").glob("*.png"))[0]
        self.n = 0
        self.rows: list[tuple[str, str, int, str]] = []

    def fresh(self) -> Path:
        self.n += 1
        folder = self.work / f"case{self.n}"
        folder.mkdir()
        return folder

    def copy_cat(self) -> Path:
        return Path(shutil.copytree(self.cat, self.fresh() / "cat"))

    def record(self, group: str, case: str, result: tuple[int, str, str]) -> None:
        code, out, err = result
        err = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\r", "", err)  # progress bars' cursor moves
        lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
        said = [ln for ln in lines if " error: " in ln or "Error: " in ln]
        said += [ln for ln in lines if ln.startswith(("warning:", "shift:", "notice:"))]
        if not said:
            last = [ln for ln in out.splitlines() if ln.strip()]
            said = ["(accepted) " + (last[-1] if last else "")]
        text = "<br>".join(said[:3]) + (f"<br>(+{len(said) - 3} more)" if len(said) > 3 else "")
        text = text.replace(str(self.work), "<tmp>").replace(str(ROOT), ".")
        self.rows.append((group, case, code, text))

    # -- helpers that write files
    def model_with(
        self,
        edit: Callable[[dict, bytes], tuple[dict, bytes]],
        recompute=True,
        source: Path | None = None,
    ):
        from tests.fuzz.mutate import join_safetensors, split_safetensors

        header, body = split_safetensors((source or self.model).read_bytes())
        header, body = edit(header, body)
        meta = header["__metadata__"]
        if recompute:
            import hashlib

            meta["config_sha256"] = hashlib.sha256(meta["config"].encode()).hexdigest()
        path = self.fresh() / "model.safetensors"
        path.write_bytes(join_safetensors(header, body))
        return path


def edit_config(change: Callable[[dict], None]):
    def edit(header, body):
        config = json.loads(header["__metadata__"]["config"])
        change(config)
        header["__metadata__"]["config"] = json.dumps(config)
        return header, body

    return edit


def build(c: Cases) -> None:  # noqa: C901, PLR0915 - one list of cases
    P = str
    predict = ["predict", "--model", P(c.model), "--project"]

    # ---- training data
    g = "training data (fit)"
    fit = lambda data, *more: run(
        [
            "fit",
            "--data",
            P(data),
            "--project",  # noqa: E731
            P(c.fresh() / "runs"),
            *SMALL,
            *more,
        ]
    )
    c.record(g, "--data folder does not exist", fit(c.work / "nowhere"))
    f = c.fresh() / "file.txt"
    f.write_text("x")
    c.record(g, "--data is a file", fit(f))
    d = c.fresh()
    (d / "test").mkdir()
    c.record(g, "no train/good folder", fit(d))
    d = c.fresh()
    (d / "train" / "good").mkdir(parents=True)
    c.record(g, "train/good is empty", fit(d))
    d = c.copy_cat()
    (d / "train" / "good" / "notes.txt").write_text("x")
    c.record(g, "non-image files in train/good", fit(d))
    d = c.copy_cat()
    for p in sorted((d / "train" / "good").glob("*.png"))[2:]:
        p.unlink()
    c.record(g, "fewer than 3 training images", fit(d))
    d = c.copy_cat()
    p = sorted((d / "train" / "good").glob("*.png"))[0]
    p.write_bytes(p.read_bytes()[:200])
    c.record(g, "a truncated PNG", fit(d))
    d = c.copy_cat()
    (d / "train" / "good" / "zz.png").write_text("this is text")
    c.record(g, "a text file named .png", fit(d))
    d = c.copy_cat()
    (d / "train" / "good" / "zz.png").write_bytes(b"")
    c.record(g, "a zero-byte image file", fit(d))
    d = c.copy_cat()
    Image.new("RGB", (1, 1)).save(d / "train" / "good" / "zz.png")
    c.record(g, "a 1x1 image", fit(d))
    d = c.copy_cat()
    for p in (d / "train" / "good").glob("*.png"):
        grey = np.asarray(Image.open(p).convert("L")).astype(np.uint16) * 16  # 12-bit values
        Image.fromarray(grey).save(p)
    c.record(g, "16-bit PNGs holding 12-bit values (scaled by their bit depth)", fit(d))
    d = c.copy_cat()
    p = sorted((d / "train" / "good").glob("*.png"))[0]
    im = Image.open(p)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(p, exif=exif)
    c.record(g, "an image with an EXIF orientation (applied)", fit(d))
    d = c.copy_cat()
    import defectscope.data.images as images

    limit = images.MAX_IMAGE_PIXELS
    images.MAX_IMAGE_PIXELS = 1000
    try:
        c.record(g, "an image over the pixel limit (limit lowered to 1,000 for the case)", fit(d))
    finally:
        images.MAX_IMAGE_PIXELS = limit

    # ---- test data
    g = "test data (evaluate, benchmark)"
    ev = lambda data: run(
        [
            "evaluate",
            "--model",
            P(c.model),
            "--data",
            P(data),  # noqa: E731
            "--project",
            P(c.fresh() / "runs"),
        ]
    )
    d = c.copy_cat()
    shutil.rmtree(d / "test")
    c.record(g, "no test folder", ev(d))
    d = c.copy_cat()
    for p in (d / "test").rglob("*.png"):
        p.unlink()
    c.record(g, "test folders without images", ev(d))
    d = c.copy_cat()
    shutil.rmtree(d / "ground_truth")
    c.record(g, "no ground_truth folder (image level only)", ev(d))
    d = c.copy_cat()
    sorted((d / "ground_truth" / "scratch").glob("*.png"))[0].unlink()
    c.record(g, "a mask missing", ev(d))
    d = c.copy_cat()
    m = sorted((d / "ground_truth" / "scratch").glob("*.png"))[0]
    Image.new("L", (SIZE * 2, SIZE)).save(m)
    c.record(g, "a mask of another size than its image", ev(d))
    d = c.copy_cat()
    m = sorted((d / "ground_truth" / "scratch").glob("*.png"))[0]
    Image.fromarray(np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)).save(m)
    c.record(g, "a mask that is not binary", ev(d))
    d = c.copy_cat()
    m = sorted((d / "ground_truth" / "scratch").glob("*.png"))[0]
    Image.new("L", (SIZE, SIZE)).save(m)
    c.record(g, "an all-zero mask", ev(d))
    d = c.copy_cat()
    for m in (d / "ground_truth").rglob("*.png"):
        Image.new("L", (SIZE, SIZE)).save(m)
    c.record(g, "every mask all-zero", ev(d))
    d = c.copy_cat()
    Image.new("L", (SIZE, SIZE)).save(d / "ground_truth" / "scratch" / "999_mask.png")
    c.record(g, "a mask with no test image", ev(d))
    d = c.copy_cat()
    for folder in (d / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(d / "ground_truth")
    c.record(g, "only good test images", ev(d))
    d = c.copy_cat()
    for p in (d / "test").rglob("*.png"):
        Image.open(p).convert("L").save(p)
    c.record(g, "grayscale test images, model fitted on colour", ev(d))
    d = c.copy_cat()
    for p in (d / "test").rglob("*.png"):
        Image.open(p).resize((SIZE * 2, SIZE * 2)).save(p)
    for p in (d / "ground_truth").rglob("*.png"):
        Image.open(p).resize((SIZE * 2, SIZE * 2), Image.Resampling.NEAREST).save(p)
    c.record(g, "test images of another size than the training images", ev(d))
    d = c.copy_cat()
    for p in (d / "test" / "good").glob("*.png"):
        Image.fromarray((np.asarray(Image.open(p)) * 0.6).astype(np.uint8)).save(p)
    c.record(g, "good test images much darker than training", ev(d))
    c.record(
        g,
        "benchmark --categories with an unknown name",
        run(
            [
                "benchmark",
                "--data",
                P(c.cat.parent),
                "--categories",
                "catt",
                "--project",
                P(c.fresh()),
                *SMALL,
            ]
        ),
    )
    c.record(
        g,
        "benchmark on a folder with no category",
        run(["benchmark", "--data", P(c.fresh()), "--project", P(c.fresh()), *SMALL]),
    )

    # ---- options and config files
    g = "options and config files"
    opt = lambda *more: run(
        [
            "fit",
            "--data",
            P(c.cat),
            "--project",  # noqa: E731
            P(c.fresh() / "runs"),
            *SMALL,
            *more,
        ]
    )
    c.record(g, "unknown detector", run(["fit", "--data", P(c.cat), "--model", "padin"]))
    c.record(g, "unknown backbone", opt("--backbone", "resnet81"))
    c.record(g, "unknown layer", opt("--layers", "layer9"))
    c.record(g, "--image-size 100000", opt("--image-size", "100000"))
    c.record(g, "--image-size 8", opt("--image-size", "8"))
    c.record(g, "--n-features abc", opt("--n-features", "abc"))
    c.record(g, "--threshold-quantile 0.2", opt("--threshold-quantile", "0.2"))
    c.record(g, "--runtime tensorrt", opt("--runtime", "tensorrt"))
    c.record(g, "demo --size 0", run(["demo", "--size", "0", "--project", P(c.fresh())]))
    c.record(g, "config file missing", opt("--config", P(c.work / "none.json")))
    d = c.fresh()
    (d / "c.json").write_text("[1, 2]")
    c.record(g, "config top level is not an object", opt("--config", P(d / "c.json")))
    (d / "b.json").write_bytes(b'{"n_features": 4\xff}')
    c.record(g, "config file not UTF-8", opt("--config", P(d / "b.json")))
    (d / "t.json").write_text('{"regularization": "abc"}')
    c.record(
        g,
        'config value of a wrong type ("regularization": "abc")',
        opt("--config", P(d / "t.json")),
    )
    (d / "l.json").write_text('{"layers": "blocks.2"}')
    c.record(g, 'config "layers" as one string', opt("--config", P(d / "l.json")))
    (d / "u.json").write_text('{"n_featurs": 10}')
    c.record(g, "config with an unknown key", opt("--config", P(d / "u.json")))
    (d / "y.yaml").write_text("n_features: 30\nimage_size: 64\n")
    c.record(g, "a YAML config (read as YAML)", opt("--config", P(d / "y.yaml")))
    (d / "bad.toml").write_text("n_features = ")
    c.record(g, "a TOML config with a syntax error", opt("--config", P(d / "bad.toml")))
    c.record(g, "--weights file does not exist", opt("--weights", P(c.work / "w.pth")))
    import argparse

    import torch

    torch.save({"args": argparse.Namespace(lr=1)}, d / "pickle.pth")
    c.record(g, "--weights file holding pickled objects", opt("--weights", P(d / "pickle.pth")))
    torch.save({"x": torch.zeros(3)}, d / "other.pth")
    c.record(g, "--weights of another architecture", opt("--weights", P(d / "other.pth")))

    # ---- model files
    g = "model files (evaluate, predict, export)"
    use = lambda model: run(
        [
            *predict[:2],
            P(model),
            P(c.image),
            "--project",  # noqa: E731
            P(c.fresh()),
        ]
    )
    c.record(g, "model file missing", use(c.work / "none.safetensors"))
    d = c.fresh()
    (d / "t.safetensors").write_bytes(c.model.read_bytes()[:1000])
    c.record(g, "truncated model file", use(d / "t.safetensors"))
    (d / "r.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    c.record(g, "random bytes", use(d / "r.safetensors"))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(d / "o.safetensors"), metadata={"x": "y"})
    c.record(g, "a safetensors file that is not a defectscope model", use(d / "o.safetensors"))

    def newer(header, body):
        header["__metadata__"]["format_version"] = "99"
        return header, body

    c.record(g, "written by a newer format version", use(c.model_with(newer)))
    c.record(
        g,
        "header edited, checksum not updated (threshold doubled)",
        use(
            c.model_with(
                edit_config(
                    lambda cfg: cfg["fitted"].update(threshold=cfg["fitted"]["threshold"] * 2)
                ),
                recompute=False,
            )
        ),
    )
    c.record(
        g,
        "NaN threshold (checksum updated)",
        use(c.model_with(edit_config(lambda cfg: cfg["fitted"].update(threshold=float("nan"))))),
    )
    c.record(
        g,
        "an extra config parameter, as a newer version writes (checksum updated)",
        use(c.model_with(edit_config(lambda cfg: cfg["config"].update(new_option=1)))),
    )
    c.record(
        g,
        "a config value of the wrong type (checksum updated)",
        use(c.model_with(edit_config(lambda cfg: cfg["config"].update(n_features="abc")))),
    )
    c.record(
        g,
        "unknown detector name (checksum updated)",
        use(c.model_with(edit_config(lambda cfg: cfg.update(detector="padim2")))),
    )

    data = bytearray(c.model.read_bytes())
    data[-100] ^= 0x10
    d = c.fresh()
    (d / "flip.safetensors").write_bytes(bytes(data))
    c.record(g, "one bit flipped in the tensor data", use(d / "flip.safetensors"))

    def dtype(header, body):
        name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
        header[name]["dtype"] = "I32"
        return header, body

    c.record(g, "a tensor's dtype changed in the header", use(c.model_with(dtype)))
    c.record(
        g,
        "predict --runtime torch with an exported .onnx",
        run([*predict[:2], P(d / "m.onnx"), P(c.image), "--runtime", "torch"]),
    )
    (d / "bad.onnx").write_bytes(b"not onnx")
    c.record(g, "a damaged .onnx file", use(d / "bad.onnx"))
    c.record(
        g,
        "calibrate an exported .onnx",
        run(["calibrate", "--model", P(d / "bad.onnx"), "--data", P(c.cat)]),
    )
    c.record(
        g,
        "predict --threshold nan",
        run(
            [*predict[:2], P(c.model), P(c.image), "--threshold", "nan", "--project", P(c.fresh())]
        ),
    )

    # ---- predict inputs
    g = "images to predict"
    pr = lambda *inputs: run([*predict, P(c.fresh()), *map(P, inputs)])  # noqa: E731
    c.record(g, "input does not exist", pr(c.work / "none.png"))
    d = c.fresh()
    (d / "a.txt").write_text("x")
    c.record(g, "input is not an image file", pr(d / "a.txt"))
    c.record(g, "folder with no images", pr(c.fresh()))
    c.record(g, "the same image twice", pr(c.image, c.image))
    d = c.fresh()
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    c.record(g, "a corrupt image among the inputs", pr(c.image, d / "bad.png"))
    d = c.fresh()
    for sub in ("d1", "d2"):
        (d / sub).mkdir()
        shutil.copy(c.image, d / sub / "a.png")
    result = pr(d / "d1" / "a.png", d / "d2" / "a.png")
    c.record(g, "two inputs with the same file name (overlays d1/a.png, d2/a.png)", result)
    d = c.fresh()
    grey = np.asarray(Image.open(c.image).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(d / "g16.png")
    c.record(g, "a 16-bit grey image", pr(d / "g16.png"))

    # ---- outputs
    g = "output folders"
    f = c.fresh() / "file"
    f.write_text("x")
    c.record(
        g,
        "--project inside a file (cannot be created)",
        run(["fit", "--data", P(c.cat), "--project", P(f / "runs"), *SMALL]),
    )
    c.record(
        g,
        "export --output into a missing folder",
        run(["export", "--model", P(c.model), "--output", P(c.work / "no" / "m.onnx")]),
    )
    c.record(g, "report on a folder that is not a run", run(["report", P(c.fresh())]))
    d = c.fresh()
    (d / "run.json").write_text(json.dumps({"status": "interrupted"}))
    c.record(g, "report on a benchmark interrupted before its first result", run(["report", P(d)]))

    round_two(c, predict)
    precision_cases(c)
    ensemble_cases(c)

    # ---- Python API
    g = "Python API"
    import defectscope

    model = defectscope.load(c.model)
    frame = np.asarray(Image.open(c.image).convert("RGB"))
    c.record(
        g,
        "model.predict(one H x W x 3 array)",
        call(lambda: f"{len(model.predict(frame))} prediction"),
    )
    c.record(
        g,
        'model.predict("part.png") (one path string)',
        call(lambda: f"{len(model.predict(str(c.image)))} prediction"),
    )
    c.record(
        g, "predict with an array of shape (5, 7)", call(lambda: model.predict(np.zeros((5, 7, 2))))
    )
    c.record(g, "score before fit", call(lambda: defectscope.PaDiM().score(frame)))
    c.record(
        g,
        "fit(labels=...) on an unsupervised detector",
        call(lambda: defectscope.PaDiM().fit(c.cat, labels=[True])),
    )
    c.record(
        g,
        "struct-packed 3 bytes as a model",
        call(
            lambda: defectscope.load(
                _write(c.fresh() / "x.safetensors", struct.pack("<Q", 3) + b"{}x")
            )
        ),
    )


def round_two(c: Cases, predict: list[str]) -> None:  # noqa: PLR0915 - one list of cases
    """The cases of reliability round two (issue 24): values that would make every part pass,
    edited files whose checksums were recomputed, data layouts that paired masks wrongly, the
    service's options, damaged run folders and a full disk."""
    import errno
    import os

    P = str
    g = "options and config files (round two)"
    opt = lambda *more: run(  # noqa: E731
        ["fit", "--data", P(c.cat), "--project", P(c.fresh() / "runs"), *SMALL, *more]
    )
    c.record(g, "--holdout 0", opt("--holdout", "0"))
    c.record(g, "--regularization inf", opt("--regularization", "inf"))
    c.record(g, "--regularization 1e-300", opt("--regularization", "1e-300"))
    c.record(g, "--sigma inf", opt("--sigma", "inf"))
    c.record(g, "--seed -1", opt("--seed", "-1"))
    c.record(g, "--batch-size 0", opt("--batch-size", "0"))
    c.record(g, "--max-false-reject 1", opt("--max-false-reject", "1"))
    c.record(g, "a mistyped flag (--n-feature)", opt("--n-feature", "40"))
    d = c.fresh()
    configs = {
        "regularization Infinity in JSON": ("c.json", '{"regularization": Infinity}'),
        "config data: 123": ("d.yaml", "data: 123\n"),
        "config model: [padim, 2]": ("m.yaml", "model: [padim, 2]\n"),
        "YAML integer keys": ("i.yaml", "1: 2\n"),
        "a YAML alias bomb": (
            "bomb.yaml",
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
        ),
        "a config file over 1 MB": ("big.yaml", "# " + "x" * 1_100_000 + "\n"),
    }
    for case, (name, text) in configs.items():
        (d / name).write_text(text)
        c.record(g, case, opt("--config", P(d / name)))

    g = "model and exported files (round two)"
    use = (
        lambda model, *more: run(  # noqa: E731
            [*predict[:2], P(model), P(c.image), "--project", P(c.fresh()), *more]
        )
    )

    def both(value):
        def change(cfg):
            cfg["fitted"]["threshold"] = value
            cfg["fitted"]["threshold_source"]["threshold"] = value

        return change

    c.record(
        g,
        "threshold set to 1e30 in both places it is recorded (checksum updated)",
        use(c.model_with(edit_config(both(1e30)))),
    )
    c.record(
        g,
        "threshold edited in one place (checksum updated)",
        use(c.model_with(edit_config(lambda cfg: cfg["fitted"].update(threshold=1.0)))),
    )

    def no_checksum(header, body):
        del header["__metadata__"]["config_sha256"]
        return header, body

    c.record(g, "config_sha256 deleted", use(c.model_with(no_checksum, recompute=False)))
    c.record(
        g,
        "intensity statistics of the wrong type (checksum updated)",
        use(c.model_with(edit_config(lambda cfg: cfg["fitted"]["intensity"].update(mean="abc")))),
    )
    c.record(
        g,
        "formats of the wrong type (checksum updated)",
        use(c.model_with(edit_config(lambda cfg: cfg["fitted"]["formats"].update(sizes=7)))),
    )
    c.record(g, "predict --threshold inf", use(c.model, "--threshold", "inf"))
    d = c.fresh()
    onnx_file = d / "m.onnx"
    run(["export", "--model", P(c.model), "--output", P(onnx_file), "-q"])
    c.record(g, "predict --batch-size 0 with an export", use(onnx_file, "--batch-size", "0"))

    def edited_export(change, recompute: bool) -> Path:
        import onnx

        from defectscope.engine.runtimes.exported import DIGEST_KEY, METADATA_KEY, export_digest

        model = onnx.load(P(onnx_file))
        props = {p.key: p for p in model.metadata_props}
        meta = json.loads(props[METADATA_KEY].value)
        change(model, meta)
        props[METADATA_KEY].value = json.dumps(meta)
        if recompute:
            graph = model.graph.SerializeToString()
            props[DIGEST_KEY].value = export_digest(graph, props[METADATA_KEY].value)
        out = c.fresh() / "m.onnx"
        onnx.save(model, P(out))
        return out

    c.record(
        g,
        "export: threshold edited in its metadata",
        use(edited_export(lambda m, meta: meta.update(threshold=1e30), recompute=False)),
    )

    def zero_weight(model, meta):
        from onnx import numpy_helper

        init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        zeros = np.zeros_like(numpy_helper.to_array(init))
        init.CopyFrom(numpy_helper.from_array(zeros, init.name))

    c.record(
        g,
        "export: its largest weight tensor zeroed",
        use(edited_export(zero_weight, recompute=False)),
    )
    c.record(
        g,
        "export: input_shape edited (digest recomputed)",
        use(edited_export(lambda m, meta: meta.update(input_shape=[32, 32]), recompute=True)),
    )
    c.record(
        g,
        "export: colour_scale of the wrong type (digest recomputed)",
        use(edited_export(lambda m, meta: meta.update(colour_scale="abc"), recompute=True)),
    )

    g = "data layouts and files (round two)"
    pr = lambda *inputs: run([*predict, P(c.fresh()), *map(P, inputs)])  # noqa: E731
    ev = lambda data: run(  # noqa: E731
        ["evaluate", "--model", P(c.model), "--data", P(data), "--project", P(c.fresh())]
    )
    d = c.copy_cat()
    Image.open(d / "test" / "scratch" / "000.png").save(d / "test" / "scratch" / "000.jpg")
    c.record(g, "two test images with the same stem (000.png, 000.jpg)", ev(d))
    d = c.copy_cat()
    (d / "test" / "good").rename(d / "test" / "Good")
    c.record(g, "test/Good instead of test/good (read as good)", ev(d))
    d = c.fresh()
    frames = [Image.open(c.image), Image.open(c.image).rotate(90)]
    frames[0].save(d / "pages.tif", save_all=True, append_images=frames[1:])
    c.record(g, "a multi-page TIFF", pr(d / "pages.tif"))
    d = c.fresh()
    (d / "loop.png").symlink_to(d / "loop.png")
    c.record(g, "a symbolic link loop", pr(d / "loop.png"))
    (d / "broken.png").symlink_to(d / "nowhere.png")
    c.record(g, "a broken symbolic link", pr(d / "broken.png"))
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        d = c.fresh()
        video = d / "cut.avi"
        writer = cv2.VideoWriter(P(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (SIZE, SIZE))
        for i in range(8):
            frame = np.asarray(Image.open(c.image).convert("RGB").rotate(i * 10))
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
        c.record(g, "a truncated video (half its bytes)", pr(video))

    g = "service options (round two)"
    srv = lambda *more: run(["serve", "--model", P(c.model), *more])  # noqa: E731
    c.record(g, "serve --port 99999", srv("--port", "99999"))
    c.record(g, "serve --max-upload-mb nan", srv("--max-upload-mb", "nan"))
    c.record(g, "serve --max-wait-ms inf", srv("--max-wait-ms", "inf"))
    c.record(g, "serve --upload-timeout-s 0", srv("--upload-timeout-s", "0"))

    g = "run folders and disks (round two)"
    run_dir = c.fresh() / "runs"
    run(["evaluate", "--model", P(c.model), "--data", P(c.cat), "--project", P(run_dir), "-q"])
    done = run_dir / "evaluate" / "cat"
    d = Path(shutil.copytree(done, c.fresh() / "run"))
    (d / "results.json").write_text('{"rows": [1, 2')
    c.record(g, "report on a damaged results.json", run(["report", P(d)]))
    d = Path(shutil.copytree(done, c.fresh() / "run"))
    (d / "figures.json").write_text(json.dumps({"cat (padim)": {"roc": "/etc/passwd"}}))
    c.record(g, "report with figures.json naming /etc/passwd (not embedded)", run(["report", P(d)]))
    real = os.replace

    def full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", P(dst))

    os.replace = full
    try:
        c.record(
            g,
            "predict on a full disk (simulated: every rename fails with ENOSPC)",
            use(c.model),
        )
    finally:
        os.replace = real


def precision_cases(c: Cases) -> None:
    """``--precision`` where it cannot run (the CPU's flags and OpenVINO simulated away), and
    int8 model files edited by hand."""
    from defectscope.engine.runtimes import precision

    P = str
    g = "precision (fit --precision, model files)"
    fit = lambda *more: run(  # noqa: E731
        ["fit", "--data", P(c.cat), "--project", P(c.fresh() / "runs"), *SMALL, *more]
    )
    real_flags, real_openvino = precision.cpu_flags, precision.openvino_available
    precision.cpu_flags = lambda: frozenset({"sse4_2", "avx2"})
    try:
        c.record(g, "--precision int8 on a CPU without VNNI or AMX", fit("--precision", "int8"))
        c.record(g, "--precision auto on that CPU", fit("--precision", "auto"))
    finally:
        precision.cpu_flags = real_flags
    precision.cpu_flags = lambda: frozenset({"amx_bf16", "amx_int8"})
    precision.openvino_available = lambda: False
    try:
        c.record(g, "--precision bf16 without OpenVINO installed", fit("--precision", "bf16"))
    finally:
        precision.cpu_flags, precision.openvino_available = real_flags, real_openvino
    c.record(g, "--precision int4", fit("--precision", "int4"))
    c.record(
        g, "--precision int8 with --runtime torch", fit("--precision", "int8", "--runtime", "torch")
    )

    precision.cpu_flags = lambda: frozenset({"avx512_vnni"})
    try:
        runs = c.fresh() / "runs"
        code, _, err = run(
            ["fit", "--data", P(c.cat), "--project", P(runs), *SMALL, "--precision", "int8"]
        )
        assert code == 0, err
    finally:
        precision.cpu_flags = real_flags
    int8_model = runs / "fit" / "cat" / "model.safetensors"
    use = lambda model: run(  # noqa: E731
        ["predict", "--model", P(model), P(c.image), "--project", P(c.fresh())]
    )
    c.record(g, "an int8 model file as saved", use(int8_model))
    from tests.fuzz.mutate import join_safetensors, split_safetensors

    header, body = split_safetensors(int8_model.read_bytes())
    start, end = header[precision.INT8_TENSOR]["data_offsets"]
    body = bytearray(body)
    body[(start + end) // 2] ^= 0xFF
    edited = c.fresh() / "model.safetensors"
    edited.write_bytes(join_safetensors(header, bytes(body)))
    c.record(g, "an int8 model file, one byte of its quantized graph changed", use(edited))

    def claims_fp32(config):
        config["fitted"]["precision"] = {"requested": "fp32", "used": "fp32"}

    claimed = c.model_with(edit_config(claims_fp32), source=int8_model)
    c.record(
        g,
        "an int8 model file whose record says fp32 (header checksum recomputed)",
        use(claimed),
    )


def ensemble_cases(c: Cases) -> None:
    """``defectscope ensemble`` of models that cannot be combined, and ensemble files edited
    by hand."""
    P = str
    g = "ensemble (defectscope ensemble, ensemble files)"

    def fitted(*more: str) -> Path:
        runs = c.fresh() / "runs"
        code, _, err = run(["fit", "--data", P(c.cat), "--project", P(runs), *SMALL, *more])
        assert code == 0, err
        return runs / "fit" / "cat" / "model.safetensors"

    combine = lambda *models: run(  # noqa: E731
        ["ensemble", *map(P, models), "--project", P(c.fresh() / "runs"), "-q"]
    )
    c.record(g, "one model", combine(c.model))
    c.record(g, "nine models", combine(*[c.model] * 9))
    c.record(g, "a model that does not exist", combine(c.model, c.work / "none.safetensors"))
    c.record(g, "members whose input sizes differ", combine(c.model, fitted("--image-size", "96")))
    c.record(g, "members fitted with different seeds", combine(c.model, fitted("--seed", "1")))
    c.record(
        g, "members fitted in different folds", combine(c.model, fitted("--threshold-folds", "3"))
    )
    other = c.copy_cat()
    for png in sorted((other / "train" / "good").glob("*.png"))[:4]:
        png.unlink()
    runs = c.fresh() / "runs"
    code, _, err = run(["fit", "--data", P(other), "--project", P(runs), *SMALL])
    assert code == 0, err
    c.record(
        g,
        "members fitted on different images",
        combine(c.model, runs / "fit" / "cat" / "model.safetensors"),
    )
    exported = c.fresh() / "m.onnx"
    code, _, err = run(["export", "--model", P(c.model), "--output", P(exported), "-q"])
    assert code == 0, err
    c.record(g, "a member that is an exported .onnx file", combine(c.model, exported))
    calibrated = c.fresh() / "calibrated.safetensors"
    code, _, err = run(
        ["calibrate", "--model", P(c.model), "--data", P(c.cat), "--output", P(calibrated), "-q"]
    )
    assert code == 0, err
    c.record(
        g, "a calibrated member (its out-of-fold scores replaced)", combine(c.model, calibrated)
    )
    runs = c.fresh() / "runs"
    code, _, err = run(
        ["ensemble", P(c.model), P(fitted("--n-features", "30")), "--project", P(runs), "-q"]
    )
    assert code == 0, err
    ensemble = runs / "ensemble" / "ensemble" / "model.safetensors"
    use = lambda *argv: run([*argv, "--project", P(c.fresh())])  # noqa: E731
    c.record(
        g,
        "predict with an ensemble file as saved",
        use("predict", "--model", P(ensemble), P(c.image)),
    )
    c.record(
        g,
        "update an ensemble",
        run(["update", "--model", P(ensemble), "--good", P(c.cat / "train" / "good"), "-q"]),
    )

    def zero_spread(config):
        config["fitted"]["ensemble"]["members"][0]["spread"] = 0.0

    edited = c.model_with(edit_config(zero_spread), source=ensemble)
    c.record(
        g,
        "an ensemble file, a member's spread set to 0 (header checksum recomputed)",
        use("predict", "--model", P(edited), P(c.image)),
    )

    def one_member(config):
        config["config"]["headers"].pop()

    edited = c.model_with(edit_config(one_member), source=ensemble)
    c.record(
        g,
        "an ensemble file, one member's header removed (header checksum recomputed)",
        use("predict", "--model", P(edited), P(c.image)),
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        cases = Cases(Path(folder))
        build(cases)
        rows = cases.rows
    lines = [
        "# Bad and unusual inputs, and what defectscope answers",
        "",
        "Generated by `python docs/bad_inputs.py` (it runs every case; nothing here is written by",
        "hand but the case names). Exit code 2 is a defectscope error (one line on stderr, no",
        "traceback), 0 an accepted input; `notice:`/`warning:`/`shift:` lines are printed with the",
        "results. `<tmp>` is the case's temporary folder.",
        "",
        f"{len(rows)} cases.",
    ]
    group = None
    for g, case, code, text in rows:
        if g != group:
            lines += ["", f"## {g}", "", "| case | exit | first line printed |", "|---|---|---|"]
            group = g
        text = text.replace("|", "\\|")
        lines.append(f"| {case} | {code} | {text} |")
    out = ROOT / "docs" / "bad_inputs.md"
    out.write_text("\n".join(lines) + "\n")
    bad = [r for r in rows if "Traceback" in r[3]]
    print(f"{len(rows)} cases written to {out}; {len(bad)} tracebacks")


if __name__ == "__main__":
    main()
