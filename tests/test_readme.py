"""The README's commands, verbatim, in order, on synthetic data laid out where the README expects
the shared data (``../shared/datasets/{bottle,screw,tire}``): every line of its ``bash`` blocks
either runs and succeeds, or (Ray, a server left running, training two networks, installing)
is at least parsed by the command line, so a flag the CLI does not know fails here."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from defectscope.cli import COMMANDS, build_parser, main
from defectscope.data.synthetic import make_category

README = Path(__file__).parents[1] / "README.md"
#: a few minutes: `pytest -m "not slow"` leaves it out of a quick local loop (CI runs it)
pytestmark = pytest.mark.slow

#: lines that are only parsed, and why
PARSED_ONLY = {
    "--executor ray": "starts a Ray cluster (tests/test_cluster.py runs the Ray paths)",
    " serve ": "leaves a server running (tests/test_serve.py starts and stops one)",
    "classifier": "trains two networks for minutes (tests/test_baselines.py trains them)",
}


def readme_lines() -> list[str]:
    """The command lines of the README's ``bash`` blocks, comments stripped."""
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


@contextlib.contextmanager
def chdir(path: Path):
    """``contextlib.chdir`` (Python 3.11) for 3.10 too."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    shared = root / "shared" / "datasets"
    for name, kind, masks in (
        ("bottle", "object", False),
        ("screw", "texture", False),
        ("tire", "texture", True),
    ):
        make_category(
            shared / name,
            kind=kind,
            n_train=10,
            n_test_good=3,
            n_test_defect=2,
            size=64,
            seed=len(name),
            with_masks=masks,
        )
    # the README's defect folders of tire
    for defect in ("hole", "cut"):
        src = shared / "tire" / "test" / "scratch"
        (shared / "tire" / "test" / defect).mkdir(exist_ok=True)
        for png in sorted(src.glob("*.png")):
            (shared / "tire" / "test" / defect / png.name).write_bytes(png.read_bytes())
    work = root / "work"
    work.mkdir()
    return work


def test_every_readme_command_runs_or_parses(workdir, capsys):
    lines = readme_lines()
    assert len(lines) >= 15  # the README's commands were found
    ran, parsed = [], []
    with chdir(workdir):
        for line in lines:
            words = shlex.split(line.rstrip("&").strip())
            if words[0] in ("make",):
                continue  # the two set-up commands: what runs this test
            if words[0] == ".venv/bin/pip":
                assert words[1:3] == ["install", "-e"], line
                continue
            if words[0] == ".venv/bin/defectscope":
                args = words[1:]
                assert args and args[0] in COMMANDS, line
                why = next((w for k, w in PARSED_ONLY.items() if k in f" {line} "), None)
                if why:
                    build_parser(args[0]).parse_args(args)
                    parsed.append(line)
                    continue
                assert main([*args, "-q"] if args[0] != "report" else args) == 0, line
                ran.append(line)
            elif words[0] in ("ls", "sleep;") or line.startswith("sleep"):
                if "curl" in line:
                    parsed.append(line)  # the server of the line before is not started here
                    continue
                result = subprocess.run(line, shell=True, capture_output=True, text=True)
                assert result.returncode == 0, (line, result.stderr)
                ran.append(line)
            else:
                pytest.fail(f"a README line this test does not know how to run: {line}")
    capsys.readouterr()
    assert len(ran) >= 12, ran
    assert (workdir / "runs" / "fit" / "tire" / "model.onnx").is_file()
    assert (workdir / "runs" / "benchmark" / "benchmark" / "report.html").is_file()


def test_readme_python_api_example_runs(workdir):
    text = README.read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "fit(" in b)
    with chdir(workdir):
        namespace: dict = {}
        exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README
        assert Path("tire.safetensors").is_file()
    assert os.path.getsize(workdir / "tire.safetensors") > 0
