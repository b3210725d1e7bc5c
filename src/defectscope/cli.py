"""The ``defectscope`` command: a thin layer over the Python API.

Option precedence, lowest to highest: built-in defaults < ``--config FILE`` < command line.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import re
import sys
import time
import typing
from pathlib import Path
from typing import Any

from defectscope.atomic import write_text
from defectscope.errors import ConfigError, DefectscopeError, OutputError

#: the detector of fit, benchmark and demo when none is named: the best mean image AUROC on the
#: shared categories within the time budget (see benchmarks/README.md)
DEFAULT_DETECTOR = "patchcore"

EXAMPLES = {
    "fit": "defectscope fit --data ../shared/datasets/tire\n"
    "  defectscope fit --data mvtec/bottle --backbone resnet18 --weights resnet18.pth\n"
    "  defectscope fit --data mvtec --executor ray --address auto   # every category, on Ray\n"
    "  defectscope fit --data big/category --shards 8 --executor ray",
    "evaluate": "defectscope evaluate --model runs/fit/tire/model.safetensors "
    "--data ../shared/datasets/tire",
    "predict": "defectscope predict --model runs/fit/tire images/ part_017.png\n"
    "  defectscope predict --model runs/fit/tire/model.onnx --executor ray --list paths.txt",
    "benchmark": "defectscope benchmark --data ../shared/datasets\n"
    "  defectscope benchmark --data mvtec --categories bottle screw --runtime torch\n"
    "  defectscope benchmark --data mvtec --executor ray --address auto",
    "demo": "defectscope demo",
    "export": "defectscope export --model runs/fit/tire --format onnx",
    "serve": "defectscope serve --model runs/fit/tire/model.onnx --port 8000",
    "update": "defectscope update --model runs/fit/tire --good new_good_parts/\n"
    "  defectscope update --model runs/fit/tire --restore",
    "ensemble": "defectscope ensemble runs/fit/tire-k1 runs/fit/tire-k3 --name tire-ensemble",
    "calibrate": "defectscope calibrate --model runs/fit/tire --data labelled/tire\n"
    "  defectscope calibrate --model runs/fit/tire --data labelled/tire --false-reject-rate 0.01",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option of every detector and of the engine, from their dataclasses."""
    import typing

    from defectscope.engine.fitting.options import catalogue

    group = parser.add_argument_group(
        "options (defaults < --config < these; each applies to the detectors that take it)"
    )
    group.add_argument("--config", help="JSON, TOML or YAML file of options (a run's config.json)")
    for name, (kind, text) in catalogue().items():
        if name == "progress":
            continue  # -q
        args = [typing.get_args(kind)] if typing.get_origin(kind) else []
        base = next((k for k in (args[0] if args else (kind,)) if k is not type(None)), str)
        flags = [_flag(name)] + (["--workers"] if name == "num_workers" else [])
        help_text = text.replace("%", "%%")
        if typing.get_origin(base) is tuple:
            group.add_argument(*flags, dest=name, nargs="+", default=None, help=help_text)
        elif base is bool:
            group.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            group.add_argument(*flags, dest=name, type=base, default=None, help=help_text)


def _cli_values(args: argparse.Namespace) -> dict[str, Any]:
    from defectscope.engine.fitting.options import catalogue

    values = {k: getattr(args, k, None) for k in catalogue() if k != "progress"}
    return {k: v for k, v in values.items() if v is not None}


def model_params(args: argparse.Namespace, models: list[str]) -> dict[str, dict[str, Any]]:
    """Per detector, its options: defaults < config file < command line."""
    from defectscope.engine.fitting.options import read_config_file, resolve_params

    file_values = read_config_file(args.config) if getattr(args, "config", None) else {}
    where = f"config file {args.config}: " if file_values else ""
    params = resolve_params(models, file_values, _cli_values(args), where=where)
    for own in params.values():
        own["progress"] = not args.quiet
    return params


def _from_config(args: argparse.Namespace, key: str, default: Any = None) -> Any:
    """A run key (``model``, ``data``...) from the command line, else from --config."""
    value = getattr(args, key, None)
    positional = getattr(args, "data_dir", None) if key == "data" else None
    if positional is not None:
        if value is not None and value != positional:
            raise ConfigError(f"two data folders given: --data {value} and {positional}")
        value = positional
    if value is None and getattr(args, "config", None):
        from defectscope.engine.fitting.options import read_config_file

        value = read_config_file(args.config).get(key)
    return default if value is None else value


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime options (do not change the scores)")
    group.add_argument("--runtime", choices=["auto", "torch", "onnxruntime"], help="default auto")
    group.add_argument("--batch-size", type=int, help="images per scoring batch (default 32)")
    group.add_argument("--num-workers", "--workers", type=int, help="decoding threads (default 2)")


def _add_executor_options(parser: argparse.ArgumentParser, *, tasks: bool = True) -> None:
    group = parser.add_argument_group(
        "scale-out (optional extra defectscope[ray]; same results as a local run)"
    )
    group.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local (default): here, one job after the other; ray: Ray tasks or actors",
    )
    group.add_argument(
        "--address",
        help="Ray cluster to use: auto (the one this machine belongs to) or ray://HOST:PORT; "
        "default: start a private Ray on this machine for this command",
    )
    if tasks:
        group.add_argument(
            "--task-cpus", type=float, default=1.0, help="CPUs each Ray task declares (default 1)"
        )
        group.add_argument(
            "--task-memory-gb",
            type=float,
            help="memory each Ray task declares, so a node never takes more than it holds",
        )


def _wants_ray(args: argparse.Namespace) -> bool:
    """Whether ``--executor ray`` was given (``--address`` without it is an error)."""
    if args.address and args.executor != "ray":
        raise ConfigError("--address needs --executor ray")
    return args.executor == "ray"


def _executor(args: argparse.Namespace):
    """A RayExecutor for ``--executor ray`` (a context manager), else None."""
    if not _wants_ray(args):
        return None
    from defectscope.cluster import RayExecutor

    return RayExecutor(args.address, task_cpus=args.task_cpus, task_memory_gb=args.task_memory_gb)


def _add_common(parser: argparse.ArgumentParser, run_folder: bool = True) -> None:
    if run_folder:  # verbs that write a run folder
        parser.add_argument(
            "--project", default="runs", help="folder of run folders (default runs)"
        )
        parser.add_argument("--name", help="run folder name (numbered if taken)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or notices")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the mistake, the close matches of a mistyped flag, and
    where the help is (never the whole usage, which runs to dozens of lines for fit)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # no abbreviations: `--n-feature 40` is a mistake to point out (with the close match),
        # not a guess, and a flag added later cannot silently change what an old one meant
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        hints = []
        if message.startswith("unrecognized arguments:"):
            known = self._flags()
            previous = ""
            for token in message.split(":", 1)[1].split():
                name = token.split("=", 1)[0]
                if name.startswith("-"):
                    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
                    if close:
                        hints.append(f"{name}: did you mean {' or '.join(close)}?")
                elif "--data" in known and not previous.startswith("-") and Path(token).is_dir():
                    hints.append(f"{token}: give folders as --data {token}")
                previous = token if "=" not in token else ""
        elif "invalid choice:" in message:
            given = message.split("invalid choice:", 1)[1].split("'")[1:2]
            choices = re.findall(r"'([^']+)'", message.split("choose from", 1)[-1])
            close = difflib.get_close_matches(given[0], choices, n=2) if given else []
            if close:
                hints.append(f"did you mean {' or '.join(close)}?")
        prog = self.prog if " " in self.prog else f"{self.prog} {getattr(self, 'verb_hint', '')}"
        text = " ".join(message.split())
        print(
            f"{prog.strip()}: error: {text}"
            + "".join(f"; {h}" for h in hints)
            + f" (see {prog.strip()} --help)",
            file=sys.stderr,
        )
        sys.exit(2)

    def _flags(self) -> list[str]:
        """The option strings of this parser, or of the verb being parsed."""
        parsers = [self]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                verb = getattr(self, "verb_hint", None)
                parsers = [action.choices[verb]] if verb in action.choices else []
                parsers += [] if parsers else list(action.choices.values())
        return sorted({o for p in parsers for o in p._option_string_actions if o.startswith("--")})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; with ``only`` (a verb, or ``""`` for none), the detector options of
    the other verbs are left out (every call is a new process: a one-image predict should not
    build fit's hundred flags)."""

    def model_options(sub: argparse.ArgumentParser) -> None:
        if only is None or sub.prog.split()[-1] == only:
            _add_model_options(sub)

    parser = Parser(
        prog="defectscope",
        description="Visual anomaly detection and localisation on MVTec-layout data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
    )
    from defectscope.version import __version__

    parser.add_argument("--version", action="version", version=f"defectscope {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=text,
            description=text,
            epilog="example:\n  " + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # calibrate rewrites a model, export writes next to it, serve writes nothing
        _add_common(sub, run_folder=name not in ("calibrate", "update", "export", "serve"))
        return sub

    models_help = ""
    if only in (None, "fit", "benchmark"):  # the detectors' registry only where it is shown
        from defectscope.models import DETECTORS

        models_help = "; ".join(f"{n}: {i.summary}" for n, i in DETECTORS.items())
    fit = verb("fit", "fit a detector on one category's train/good images and save it")
    fit.add_argument("--data", help="category folder (MVTec layout); or `data` in --config")
    fit.add_argument("data_dir", nargs="?", metavar="DATA", help="the same as --data DATA")
    fit.add_argument("--model", help=f"detector (default {DEFAULT_DETECTOR}). {models_help}")
    fit.add_argument("--categories", nargs="+", help="with a root as --data: only these")
    fit.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split one category's training images into this many shards, fitted apart and "
        "merged (padim, patchcore; with --executor ray, on the cluster)",
    )
    fit.add_argument(
        "--auto",
        action="store_true",
        help="choose the detector and its options without labels: fit a few candidates (PatchCore"
        ", PaDiM, the aspect ratio kept, k-NN, layers, lighting) and the ensemble of the best two "
        "that pair, rank them by how well they separate synthetic defects from good parts under "
        "changed light, keep the best",
    )
    fit.add_argument(
        "--budget-s",
        type=float,
        help="with --auto: seconds the candidates may take (default: about 5 default fits; the "
        "first candidate, the default configuration, always runs)",
    )
    model_options(fit)
    _add_executor_options(fit)

    ens = verb(
        "ensemble",
        "combine fitted models of one category into one: the mean of their scores, each "
        "normalised by its own out-of-fold good scores; threshold by the same rule",
    )
    ens.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="2 to 8 model files or fit run folders, fitted on the same images with the same "
        "input size, seed and folds",
    )

    ev = verb("evaluate", "evaluate a saved or exported model on a category's test split")
    ev.add_argument("--model", required=True, help="model file, run folder or exported .onnx")
    ev.add_argument("--data", required=True, help="category folder with test/ (and ground_truth/)")
    _add_runtime_options(ev)

    pr = verb("predict", "score images or folders: pass/fail, heatmaps, CSV/JSON")
    pr.add_argument("--model", required=True, help="model file, run folder or exported .onnx")
    pr.add_argument("inputs", nargs="*", help="image or video files, or folders of them")
    pr.add_argument(
        "--list",
        action="append",
        default=[],
        metavar="FILE",
        dest="lists",
        help="a text file of image paths, one per line (may be repeated)",
    )
    pr.add_argument(
        "--threshold",
        type=float,
        help="pass/fail threshold on the raw score for this call (default: the model's; "
        "`defectscope calibrate` changes the model's own)",
    )
    pr.add_argument(
        "--save",
        choices=["all", "fail", "none"],
        default="all",
        help="which heatmap overlays to write: all (default), fail (failed parts only), none",
    )
    pr.add_argument("--no-images", action="store_true", help="same as --save none")
    pr.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="of a video input (.mp4, .avi, .mov, ...), score every N-th frame (default 1)",
    )
    _add_runtime_options(pr)
    _add_executor_options(pr, tasks=False)
    pr.add_argument(
        "--actors", type=int, default=2, help="with --executor ray: model copies (default 2)"
    )
    pr.add_argument(
        "--actor-cpus", type=float, default=1.0, help="with --executor ray: CPUs per actor"
    )

    upd = verb(
        "update",
        "fold new good images into a fitted model without a refit (PaDiM, PatchCore), or "
        "restore the version before the last update",
    )
    upd.add_argument("--model", required=True, help="model file or run folder (not .onnx)")
    upd.add_argument("--good", nargs="+", metavar="IMAGE", help="good images or folders to add")
    upd.add_argument(
        "--defective",
        nargs="+",
        metavar="IMAGE",
        default=[],
        help="parts that escaped (passed but were defective): recorded for calibrate",
    )
    upd.add_argument(
        "--restore", action="store_true", help="put back the model as it was before the update"
    )

    cal = verb(
        "calibrate",
        "set a model's threshold from labelled images (the best balance of catches and false "
        "rejects, best F1, or a target false-reject or escape rate) and save it into the model",
    )
    cal.add_argument("--model", required=True, help="model file or run folder (not .onnx)")
    cal.add_argument(
        "--data", required=True, help="category folder whose test/ holds labelled images"
    )
    target = cal.add_mutually_exclusive_group()
    target.add_argument(
        "--false-reject-rate",
        type=float,
        metavar="R",
        help="reject at most this fraction of good parts (lowest such threshold)",
    )
    target.add_argument(
        "--escape-rate",
        type=float,
        metavar="R",
        help="pass at most this fraction of defective parts (highest such threshold)",
    )
    target.add_argument(
        "--best-f1",
        action="store_true",
        help="the threshold of best F1 on these images (it depends on their mix: with more "
        "defective than good parts it rejects most good ones; the default weighs the catch "
        "rate and the false-reject rate equally)",
    )
    cal.add_argument(
        "--output", help="write the calibrated model here (default: overwrite the model file)"
    )
    _add_runtime_options(cal)

    bench = verb("benchmark", "fit and evaluate every category under a root; table + rankings")
    bench.add_argument("--data", help="MVTec root or one category folder; or `data` in --config")
    bench.add_argument("data_dir", nargs="?", metavar="DATA", help="the same as --data DATA")
    bench.add_argument("--categories", nargs="+", help="only these categories")
    bench.add_argument(
        "--model",
        nargs="+",
        dest="models",
        help=f"detectors to compare (default {DEFAULT_DETECTOR}). {models_help}",
    )
    model_options(bench)
    _add_executor_options(bench)

    demo = verb("demo", "generate a synthetic data set and run fit + benchmark on it, offline")
    demo.add_argument("--size", type=int, default=128, help="synthetic image size (default 128)")
    model_options(demo)

    ex = verb("export", "write a fitted model's whole pipeline to one file (ONNX)")
    ex.add_argument("--model", required=True, help="model file or run folder")
    ex.add_argument("--format", default="onnx", choices=["onnx", "openvino"], help="default onnx")
    ex.add_argument("--output", help="file to write (default: next to the model, model.onnx)")

    srv = verb("serve", "serve a model over HTTP: POST /predict, GET /model, an operator page")
    srv.add_argument("--model", required=True, help="exported .onnx (no torch), model or run")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    srv.add_argument(
        "--api-key",
        help="require this key (header X-API-Key) on every route but /health; default: "
        "$DEFECTSCOPE_API_KEY if set, else none",
    )
    srv.add_argument("--max-upload-mb", type=float, default=20, help="per request (default 20)")
    srv.add_argument("--max-images", type=int, default=16, help="per request (default 16)")
    srv.add_argument("--max-queue", type=int, default=64, help="images waiting (default 64)")
    srv.add_argument("--max-batch", type=int, default=8, help="images per model call (default 8)")
    srv.add_argument(
        "--max-wait-ms", type=float, default=10, help="wait for more images per batch (default 10)"
    )
    srv.add_argument(
        "--upload-timeout-s",
        type=float,
        default=30,
        help="seconds a client has for a request's head, then for its body (default 30)",
    )
    srv.add_argument(
        "--max-connections", type=int, default=64, help="open connections; more get 503 (64)"
    )
    srv.add_argument(
        "--feedback-dir",
        help="store operators' feedback (POST /feedback: good or defective) in this folder; "
        "default: feedback is off",
    )
    srv.add_argument(
        "--learn",
        action="store_true",
        help="fold each good feedback into the model (a model file, not .onnx) and swap it in "
        "(POST /model/update does it on demand)",
    )

    rep = verbs.add_parser("report", help="rebuild report.html of a saved run folder")
    rep.add_argument("run_dir", help="a run folder written by evaluate or benchmark")
    rep.add_argument("-q", "--quiet", action="store_true")
    return parser


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr)


def _fit_root(args, data, model: str, params: dict[str, Any], executor) -> int:
    """``fit`` over a root: every category, one job each (on Ray with ``--executor ray``)."""
    from defectscope.engine.workflows.benchmark import fit_root
    from defectscope.runs import run_folder

    with run_folder(Path(args.project) / "fit", args.name or Path(data).name) as run:
        with executor or contextlib.nullcontext():
            fitted, failures = fit_root(
                data,
                model,
                params,
                run,
                categories=_from_config(args, "categories"),
                command=args.command,
                log=lambda s: _say(args, s),
                executor=executor,
            )
    print(f"{'category':20}  {'train':>5}  {'threshold':>10}  {'fit s':>7}  model")
    for row in fitted:
        print(
            f"{row['category']:20}  {row['n_train']:5d}  {row['threshold']:10.4g}  "
            f"{row['fit_seconds']:7.1f}  {row['model']}"
        )
    for failure in failures:
        print(f"defectscope fit: error: skipped {failure}", file=sys.stderr)
    print(f"fitted {len(fitted)} categories; {run / 'run.json'} lists them")
    return 1 if failures else 0


def _write_fit_files(args: argparse.Namespace, run: Path, detector, data, path: Path) -> None:
    """A fit's ``config.json`` (every option) and ``run.json`` (the fit record) beside the
    model saved at ``path``."""
    try:
        if detector.name == "ensemble":  # fit --auto chose one: each member's options
            saved = {"model": detector.name, "data": str(data), **detector.get_params()}
        else:
            config, engine = detector.options()
            saved = {"model": detector.name, "data": str(data)}
            saved.update(config.to_dict(), **engine.to_dict())
            saved.pop("progress")
        write_text(run / "config.json", json.dumps(saved, indent=2))
        fitted = {"command": args.command, "fitted": detector.fit_info_.to_dict()}
        write_text(run / "run.json", json.dumps(fitted, indent=2, default=str))
    except (OSError, TypeError, ValueError) as exc:
        raise OutputError(
            f"the fitted model is saved in {path}, but writing its run files failed: {exc}"
        ) from exc


def _print_fitted(detector, category, took: str, path: Path) -> None:
    """What a fit of one category says at the end: the model, its threshold and where it is
    saved, then what its operating point expects."""
    print(
        f"fitted {detector.name} on {len(category.train_paths)} images of {category.name} "
        f"in {took}; threshold {detector.threshold_:.4g}; saved {path}"
    )
    point = detector.fit_info_.operating_point
    if point:
        from defectscope.engine.rules.operating import OperatingPoint

        print(OperatingPoint(**point).summary())
    from defectscope.results import precision_line

    line = precision_line(detector.fit_info_.precision)
    if line:
        print(line)


def _fit_auto(args: argparse.Namespace, data) -> int:
    """``fit --auto``: the candidates of :mod:`defectscope.auto`, the winner saved."""
    from defectscope.auto import (
        auto_fit,
        candidate_line,
        candidates,
        chosen_options,
        summary,
    )
    from defectscope.data import load_category
    from defectscope.data.mvtec import is_category
    from defectscope.runs import run_folder

    if _from_config(args, "model") is not None:
        raise ConfigError("--auto chooses the detector; drop --model (or fit it without --auto)")
    if args.shards > 1 or _wants_ray(args):
        raise ConfigError("--auto fits here, unsharded; drop --shards and --executor")
    if Path(data).is_dir() and not is_category(Path(data)):
        raise ConfigError(
            f"--auto fits one category; {data} is a root of several: run it once per category"
        )
    if args.budget_s is not None and not (0 < args.budget_s < float("inf")):
        raise ConfigError(f"--budget-s must be a number of seconds > 0, got {args.budget_s:g}")
    given: dict[str, Any] = {}
    for own in model_params(args, sorted({c.model for c in candidates()})).values():
        given.update(own)
    chosen = chosen_options(given)
    if chosen:
        raise ConfigError(
            "--auto chooses the detector and its options itself; drop "
            + ", ".join(map(_flag, chosen))
            + " (or fit that detector without --auto)"
        )
    category = load_category(data)
    for notice in category.notices:
        if "train" in notice:
            _say(args, f"notice: {notice}")

    def said(record: dict[str, Any], detector) -> None:
        _say(args, f"auto: {candidate_line(record)}")

    with run_folder(Path(args.project) / "fit", args.name or category.name) as run:
        start = time.perf_counter()
        detector = auto_fit(category, budget_s=args.budget_s, on_candidate=said, **given)
        seconds = time.perf_counter() - start
        path = detector.save(run / "model.safetensors")
    _write_fit_files(args, run, detector, data, path)
    print(summary(detector.fit_info_.auto))
    _print_fitted(detector, category, f"{seconds:.1f} s (every candidate)", path)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from defectscope.data import load_category
    from defectscope.data.mvtec import is_category
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.runs import run_folder

    model = _from_config(args, "model", DEFAULT_DETECTOR)
    data = _from_config(args, "data")
    if data is None:
        raise ConfigError("fit needs --data (a category folder), or `data` in the --config file")
    if args.auto:
        return _fit_auto(args, data)
    if model == "ensemble":  # a config.json written for an ensemble that fit --auto chose
        raise ConfigError(
            "an ensemble is not fitted in one step: fit each member (a run's config.json lists "
            "their options under members), then combine them with `defectscope ensemble RUN "
            "RUN`; or fit --auto again"
        )
    if args.budget_s is not None:
        raise ConfigError("--budget-s bounds --auto; add --auto or drop --budget-s")
    params = model_params(args, [model])[model]
    detector = make_detector(model, params)
    detector.options()  # bad options fail before any work
    executor = _executor(args)
    if Path(data).is_dir() and not is_category(Path(data)):  # a root of several categories
        if args.shards > 1:
            raise ConfigError("--shards splits one category; --data is a root of several")
        return _fit_root(args, data, model, params, executor)
    category = load_category(data)
    for notice in category.notices:
        if "train" in notice:  # fit reads train/ only: what the test split lacks is evaluate's
            _say(args, f"notice: {notice}")
    # the run folder exists and is writable before the fit starts: no fit is lost to a bad path
    with run_folder(Path(args.project) / "fit", args.name or category.name) as run:
        start = time.perf_counter()
        with executor or contextlib.nullcontext():
            detector.fit(category, shards=args.shards, executor=executor)
        seconds = time.perf_counter() - start
        path = detector.save(run / "model.safetensors")
    _write_fit_files(args, run, detector, data, path)
    _print_fitted(detector, category, f"{seconds:.1f} s", path)
    return 0


def _load_model(args: argparse.Namespace):
    from defectscope.engine.workflows.loading import load

    overrides: dict[str, Any] = {"progress": not args.quiet}
    for key in ("runtime", "batch_size", "num_workers"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if str(args.model).endswith(".onnx") and overrides.get("runtime") == "torch":
        raise ConfigError("an exported .onnx model runs on ONNX Runtime only; drop --runtime")
    return load(args.model, **overrides)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from defectscope.data import load_category
    from defectscope.engine.workflows.benchmark import write_run
    from defectscope.engine.workflows.evaluation import evaluate
    from defectscope.runs import run_folder

    detector = _load_model(args)
    category = load_category(args.data, require_test=True)
    with run_folder(Path(args.project) / "evaluate", args.name or category.name) as run:
        result = evaluate(detector, category)
        params = detector.get_params() if hasattr(detector, "get_params") else detector.metadata
        meta = {"command": args.command, "model": str(args.model), "params": params}
        write_run([result], run, meta)
    _print_results([result], run, args)
    return 0


def _print_results(results, run: Path, args: argparse.Namespace, notices: bool = True) -> None:
    from defectscope.report.table import markdown_rankings, rankings, result_rows, terminal_table

    for notice in dict.fromkeys(n for r in results for n in r.notices if notices):
        # -q: nothing but the table and errors; every notice is in results.md and notices.json
        _say(args, notice if notice.startswith(("warning:", "shift:")) else f"notice: {notice}")
    print(terminal_table(result_rows(results)))
    if len(results) > 1:
        print()
        print(markdown_rankings(rankings(results)))
    print(f"results written to {run} (every column: results.md, results.csv)")


def cmd_predict(args: argparse.Namespace) -> int:
    from defectscope.engine.workflows.predicting import predict_to_folder
    from defectscope.runs import run_folder

    if not args.inputs and not args.lists:
        raise ConfigError("predict needs images: files or folders, or --list FILE")
    if _wants_ray(args):
        return _predict_ray(args)
    if args.lists:
        from defectscope.cluster.predict import read_path_list

        args.inputs += [p for lst in args.lists for p in read_path_list(lst)]
    detector = _load_model(args)
    save = "none" if args.no_images else args.save
    with run_folder(Path(args.project) / "predict", args.name or "predict") as run:
        rows, notices = predict_to_folder(
            detector,
            args.inputs,
            run,
            save=save,
            threshold=args.threshold,
            command=args.command,
            every=args.every,
            workers=2 if args.num_workers is None else args.num_workers,
        )
    for notice in notices:
        _say(args, notice if notice.startswith("shift:") else f"notice: {notice}")
    flagged = sum(r["verdict"] == "fail" for r in rows)
    errors = [r for r in rows if r["verdict"] == "error"]
    threshold = detector.threshold_ if args.threshold is None else args.threshold
    print(f"{'verdict':7}  {'score':>10}  {'0-1':>5}  path")
    for r in rows:
        if r["verdict"] == "error":
            print(f"{'ERROR':7}  {'':>10}  {'':>5}  {r['path']}: {r['error']}")
            continue
        verdict = "FAIL" if r["verdict"] == "fail" else "pass"
        print(f"{verdict:7}  {r['score']:10.4g}  {r['normalized_score']:5.2f}  {r['path']}")
    source = "given with --threshold" if args.threshold is not None else "the model's"
    print(
        f"{flagged} of {len(rows)} images failed at threshold {threshold:.4g} ({source}; "
        f"0.50 on the 0-1 scale)"
        + (f", {len(errors)} could not be read (error rows)" if errors else "")
        + f"; results in {run}"
    )
    return 1 if errors else 0


def _predict_ray(args: argparse.Namespace) -> int:
    from defectscope.cluster import start_ray, stop_ray
    from defectscope.cluster.predict import predict_ray
    from defectscope.runs import run_folder

    load_options = {k: getattr(args, k) for k in ("runtime",) if getattr(args, k) is not None}
    save = "none" if args.no_images else args.save
    with run_folder(Path(args.project) / "predict", args.name or "predict") as run:
        start_ray(args.address)
        try:
            meta = predict_ray(
                args.model,
                args.inputs,
                run,
                path_lists=args.lists,
                actors=args.actors,
                actor_cpus=args.actor_cpus,
                batch_size=args.batch_size or 16,
                save=save,
                threshold=args.threshold,
                load_options=load_options,
                command=args.command,
                log=lambda s: _say(args, s),
            )
        finally:
            stop_ray()
    for notice in meta["notices"]:
        _say(args, f"notice: {notice}")
    print(
        f"{meta['failed']} of {meta['images']} images failed, {meta['errors']} could not be "
        f"scored ({meta['images_per_second']} images/s); predictions.parquet and "
        f"predictions.csv in {run}"
    )
    return 1 if meta["errors"] else 0


def cmd_update(args: argparse.Namespace) -> int:
    from defectscope.atomic import write_bytes
    from defectscope.engine.persistence.files import keep_previous, model_path

    if str(args.model).endswith(".onnx"):
        raise ConfigError(
            "update changes a fitted model (.safetensors or its run folder); update that, then "
            "export it again"
        )
    path = model_path(args.model)
    previous = path.with_name(f"{path.stem}.previous{path.suffix}")
    if args.restore:
        if args.good or args.defective:
            raise ConfigError("--restore takes no images: it puts back the previous version")
        if not previous.is_file():
            raise ConfigError(f"nothing to restore: {previous} does not exist")
        current, earlier = path.read_bytes(), previous.read_bytes()
        write_bytes(previous, current)  # restoring twice undoes the restore
        write_bytes(path, earlier)
        print(f"restored {path} from {previous} (the replaced version is now {previous.name})")
        return 0
    if not args.good:
        raise ConfigError("update needs --good IMAGE... (or --restore)")
    from defectscope.engine.workflows.predicting import expand_inputs

    good, _ = expand_inputs(args.good)
    escapes = expand_inputs(args.defective)[0] if args.defective else []
    detector = _load_model(args)
    entry = detector.update(good, defective=escapes)
    kept = keep_previous(path)
    detector.save(path)
    info = detector.fit_info_
    size = f"bank {info['bank_size']:,} patches; " if "bank_size" in info else ""
    print(
        f"added {entry['added']} good images to {path} ({size}{info.get('n_train')} training "
        f"images in all); threshold {entry['threshold_before']:.4g} -> "
        f"{entry['threshold_after']:.4g}"
        + (f"; {len(escapes)} escapes recorded for calibrate" if escapes else "")
    )
    if kept is not None:
        print(
            f"the previous version is {kept}: `defectscope update --model {args.model} --restore`"
        )
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from defectscope.engine.fitting.ensemble import Ensemble
    from defectscope.engine.persistence.files import model_path
    from defectscope.engine.rules.operating import OperatingPoint
    from defectscope.engine.workflows.loading import load
    from defectscope.runs import run_folder

    if any(str(m).endswith(".onnx") for m in args.models):
        raise ConfigError(
            "an ensemble combines fitted models (.safetensors or run folders), not exported "
            ".onnx files; export the ensemble afterwards"
        )
    members = [load(m, progress=not args.quiet) for m in args.models]
    labels = [str(model_path(m)) for m in args.models]
    ensemble = Ensemble.of(members, labels=labels)
    with run_folder(Path(args.project) / "ensemble", args.name or "ensemble") as run:
        path = ensemble.save(run / "model.safetensors")
        fitted = {"command": args.command, "fitted": ensemble.fit_info_.to_dict()}
        write_text(run / "run.json", json.dumps(fitted, indent=2, default=str))
    print(
        f"combined {len(members)} models ({', '.join(m.name for m in members)}); threshold "
        f"{ensemble.threshold_:.4g}; saved {path}"
    )
    print(OperatingPoint(**ensemble.fit_info_.operating_point).summary())
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from defectscope.engine.persistence.files import keep_previous, model_path
    from defectscope.engine.workflows.calibration import MOST_GOOD, calibrate, trade_off_lines
    from defectscope.runs import check_output_file

    if str(args.model).endswith(".onnx"):
        raise ConfigError(
            "calibrate changes a fitted model (.safetensors or its run folder); calibrate that, "
            "then export it again"
        )
    detector = _load_model(args)
    out = Path(args.output) if args.output else model_path(args.model)
    check_output_file(out)
    before, after, source = calibrate(
        detector,
        args.data,
        false_reject_rate=args.false_reject_rate,
        escape_rate=args.escape_rate,
        best_f1=args.best_f1,
    )
    for line in trade_off_lines(source["trade_off"]):
        print(line)
    if after.false_reject_rate > MOST_GOOD:
        print(
            f"warning: this threshold rejects {after.rejected} of {after.good} good parts "
            f"({after.false_reject_rate:.0%}). To reject fewer, choose a rule from the table: "
            "--false-reject-rate 0.1 (or --escape-rate 0.05)",
            file=sys.stderr,
        )
    kept = keep_previous(out)
    path = detector.save(out)
    print(f"before: {before.sentence()}")
    print(f"after:  {after.sentence()}")
    if kept is not None:
        print(f"the previous model is kept as {kept} (copy it back to undo)")
    print(
        f"threshold set by {source['rule'].split(': ', 1)[1]} on {source['good']} good and "
        f"{source['defective']} defective images of {args.data}; saved {path}"
    )
    _say(
        args,
        "notice: these figures are measured on the images the threshold was chosen on; expect "
        "somewhat worse on new parts (keep some labelled images aside to check)",
    )
    return 0


def _run_benchmark(
    args: argparse.Namespace,
    data: str | Path,
    models: list[str],
    run: Path,
    categories: list[str] | None = None,
) -> int:
    """Benchmark, print the table; exit code 1 when any category or model failed."""
    from defectscope.engine.workflows.benchmark import benchmark

    executor = _executor(args) if hasattr(args, "executor") else None
    with executor or contextlib.nullcontext():
        outcome = benchmark(
            data,
            models,
            model_params(args, models),
            run,
            categories=categories,
            command=args.command,
            log=lambda s: _say(args, s),
            executor=executor,
        )
    _print_results(outcome.results, run, args, notices=False)  # said as each finished
    for failure in outcome.failures:
        print(f"defectscope {args.verb}: error: skipped {failure}", file=sys.stderr)
    return 1 if outcome.failures else 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from defectscope.data import discover
    from defectscope.runs import run_folder

    data = _from_config(args, "data")
    if data is None:
        raise ConfigError("benchmark needs --data (an MVTec root), or `data` in the --config file")
    models = _from_config(args, "models") or [_from_config(args, "model", DEFAULT_DETECTOR)]
    model_params(args, models)  # bad options fail before a run folder is made
    categories = _from_config(args, "categories")
    discover(data, categories)  # so does a wrong data folder
    with run_folder(Path(args.project) / "benchmark", args.name or "benchmark") as run:
        return _run_benchmark(args, data, models, run, categories)


def cmd_demo(args: argparse.Namespace) -> int:
    from defectscope.data.synthetic import make_dataset
    from defectscope.runs import run_folder

    if args.size < 32:
        raise ConfigError(f"--size must be at least 32 pixels, got {args.size}")
    model_params(args, [DEFAULT_DETECTOR])  # bad options fail before a run folder is made
    with run_folder(Path(args.project) / "demo", args.name or "demo") as run:
        data = run / "data"
        _say(args, f"writing a synthetic MVTec-layout data set to {data}")
        make_dataset(data, size=args.size)
        return _run_benchmark(args, data, [DEFAULT_DETECTOR], run)


def cmd_report(args: argparse.Namespace) -> int:
    from defectscope.report.html import rebuild_report

    path = rebuild_report(Path(args.run_dir))
    print(f"report written to {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from defectscope.engine.persistence.files import model_path
    from defectscope.engine.runtimes.exported import export_onnx, exported_precision
    from defectscope.engine.workflows.loading import load
    from defectscope.runs import check_output_file

    detector = load(args.model, progress=not args.quiet)
    suffix = ".xml" if args.format == "openvino" else ".onnx"
    out = Path(args.output) if args.output else model_path(args.model).with_suffix(suffix)
    check_output_file(out)  # before the export's minutes, not after
    if args.format == "openvino":
        try:
            import openvino as ov
        except ImportError as exc:
            raise ConfigError(
                "--format openvino needs the openvino package: pip install openvino"
            ) from exc
        onnx_file = export_onnx(detector, out.with_suffix(".onnx"))
        ov.save_model(ov.convert_model(str(onnx_file)), str(out))
        print(f"exported {detector.name} to {out} (OpenVINO IR, from {onnx_file})")
        return 0
    from defectscope.progress import Stages

    stages = Stages(not args.quiet)
    stages.start(f"exporting {detector.name} to ONNX and checking it against the model")
    try:
        path = export_onnx(detector, out)
    finally:
        stages.finish()
    height, width = detector.input_shape
    used = exported_precision(detector)
    print(
        f"exported {detector.name} to {path} ({path.stat().st_size / 1e6:.1f} MB): uint8 images "
        f"(batch, {height}, {width}, 3) in, scores and maps out; threshold "
        f"{detector.threshold_:.4g} in its metadata"
        + (f"; features in {used}" if used != "fp32" else "")
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    try:
        from defectscope.serve.app import Limits, serve
    except ImportError as exc:
        raise ConfigError(
            f"serve needs the optional packages fastapi, uvicorn and python-multipart ({exc}); "
            "pip install 'defectscope[serve]'"
        ) from exc
    import math

    ranges = {
        "max_upload_mb": (1e-3, 1024),
        "max_images": (1, 256),
        "max_queue": (1, 4096),
        "max_batch": (1, 256),
        "max_wait_ms": (0, 10_000),
        "upload_timeout_s": (0.1, 3600),
        "max_connections": (1, 100_000),
        "port": (1, 65535),
    }
    for name, (low, high) in ranges.items():
        value = getattr(args, name)
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"--{name.replace('_', '-')} must be in [{low}, {high}], got {value}")
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_images=args.max_images,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_wait=args.max_wait_ms / 1000,
        upload_timeout=args.upload_timeout_s,
        max_connections=args.max_connections,
    )
    key = args.api_key or os.environ.get("DEFECTSCOPE_API_KEY") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach it can "
            "use it (set --api-key or DEFECTSCOPE_API_KEY)",
            file=sys.stderr,
        )
    _say(args, f"serving {args.model} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    if args.learn and (args.feedback_dir is None or str(args.model).endswith(".onnx")):
        raise ConfigError("--learn needs --feedback-dir and a model file (not an exported .onnx)")
    if args.feedback_dir is not None:
        from defectscope.runs import check_writable

        Path(args.feedback_dir).mkdir(parents=True, exist_ok=True)
        check_writable(Path(args.feedback_dir))
    serve(
        args.model,
        host=args.host,
        port=args.port,
        api_key=key,
        limits=limits,
        quiet=args.quiet,
        feedback_dir=args.feedback_dir,
        learn=args.learn,
    )
    return 0


COMMANDS = {
    "fit": cmd_fit,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "benchmark": cmd_benchmark,
    "demo": cmd_demo,
    "report": cmd_report,
    "export": cmd_export,
    "ensemble": cmd_ensemble,
    "calibrate": cmd_calibrate,
    "update": cmd_update,
    "serve": cmd_serve,
}


#: commands whose blocks stay on the heap (glibc's own mapping threshold): predict allocates the
#: same batch-sized blocks from first batch to last, so reusing them bounds its memory, and
#: mapping each afresh cost a page fault per 4 kB: half the system time of a tire predict
#: (benchmarks/README.md, "Scoring pieces side by side")
UNMAPPED_VERBS = ("predict",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in COMMANDS else "")
    parser.verb_hint = verb if verb in COMMANDS else ""
    args = parser.parse_args(argv)
    args.command = ["defectscope", *argv]
    from defectscope.memory import map_large_blocks

    if args.verb not in UNMAPPED_VERBS:
        map_large_blocks()  # batch-sized blocks unmapped when freed: a fit's memory stays bounded
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    redirect = contextlib.nullcontext()
    if not args.quiet:  # bars only then; the import costs 0.1 s
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
    try:
        with redirect:  # a log line never breaks a progress bar
            return COMMANDS[args.verb](args)
    except DefectscopeError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the parser said
        print(f"defectscope {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # what the operating system refused: a full disk, a lost mount
        print(f"defectscope {args.verb}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("defectscope: interrupted", file=sys.stderr)
        return 130


def _os_error_line(exc: OSError) -> str:
    import errno

    where = f" ({exc.filename})" if exc.filename else ""
    line = f"{exc.strerror or exc}{where}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        line += (
            ": the disk is full; free space and run again (files finished before this one "
            "are kept; none is left half-written)"
        )
    return line


if __name__ == "__main__":
    sys.exit(main())
