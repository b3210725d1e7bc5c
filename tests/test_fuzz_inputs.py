"""Fuzzing what a user types and sends: every option of the command line and of config files set
to odd values, and the service's routes sent odd requests on loopback. Whatever comes in, the
answer is a run or one line (exit code 2; a 4xx with a JSON reason), never a traceback, a 500
or a non-finite threshold. Seeded (``derandomize``) and bounded in count and time."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectscope.cli import main
from defectscope.data.synthetic import make_category
from defectscope.models import DETECTORS

FUZZ = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: values typed for an option: non-finite, extreme, empty, of the wrong kind
ODD_TEXT = [
    "nan", "inf", "-inf", "-1", "0", "1", "3", "0.5", "1e-300", "1e308", "2147483648", "",
    "abc", "[1, 2]", "true", "None", "../../etc/passwd", "9" * 40,
]  # fmt: skip
#: values written in a config file
ODD_VALUES = [
    None, True, False, 0, -1, 3, 0.5, 1e-300, 1e308, 2**63, "", "abc", [], [1, "a"], {},
    {"a": 1}, "inf", "nan",
]  # fmt: skip
SMALL = ["--image-size", "32", "--threshold-folds", "2", "--synthetic", "8", "-q"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-data")
    return make_category(root / "part", size=32, n_train=6, n_test_good=2, n_test_defect=2)


def options_of(model: str) -> list[str]:
    from defectscope.engine.rules.settings import EngineOptions

    return sorted({*DETECTORS[model].config.names(), *EngineOptions.names()} - {"progress"})


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of the CLI, in-process; any exception but SystemExit propagates."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = int(exc.code or 0)
    return code, err.getvalue()


def check_fit(code: int, err: str, project: Path) -> str:
    if code == 2:
        lines = [ln for ln in err.splitlines() if "error:" in ln]
        assert len(lines) == 1 and "Traceback" not in err, err
        return "refused"
    assert code == 0, err
    import defectscope

    [model_file] = project.rglob("model.safetensors")
    assert math.isfinite(defectscope.load(model_file).threshold_)
    return "fitted"


@pytest.mark.slow
@FUZZ
@given(model=st.sampled_from(["padim", "patchcore"]), data=st.data())
def test_any_option_value_fits_or_is_one_line(tiny, tmp_path_factory, model, data):
    option = data.draw(st.sampled_from(options_of(model)))
    value = data.draw(st.sampled_from(ODD_TEXT))
    project = tmp_path_factory.mktemp("runs")
    flag = "--" + option.replace("_", "-")
    argv = ["fit", "--data", str(tiny), "--project", str(project), "--model", model, *SMALL]
    check_fit(*run_cli([*argv, flag, value]), project)


@pytest.mark.slow
@FUZZ
@given(
    model=st.sampled_from(["padim", "patchcore"]),
    data=st.data(),
    kind=st.sampled_from(["json", "yaml", "toml"]),
)
def test_any_config_file_fits_or_is_one_line(tiny, tmp_path_factory, model, data, kind):
    names = [*options_of(model), "model", "data", "categories", "no_such_option"]
    keys = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    values = {k: data.draw(st.sampled_from(ODD_VALUES)) for k in keys}
    project = tmp_path_factory.mktemp("runs")
    path = project / f"config.{kind}"
    if kind == "json":
        path.write_text(json.dumps(values))
    elif kind == "yaml":
        import yaml

        path.write_text(yaml.safe_dump(values))
    else:
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
        path.write_text("\n".join(lines) + "\n")  # some are not TOML at all: refused, one line
    argv = ["fit", "--data", str(tiny), "--project", str(project), "--model", model, *SMALL]
    check_fit(*run_cli([*argv, "--config", str(path)]), project)
