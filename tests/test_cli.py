import csv
import json

import pytest

from defectscope.cli import main

from .conftest import PADIM_ARGS, SIZE

SMALL = PADIM_ARGS


def test_fit_evaluate_predict(texture, tmp_path, capsys):
    project = str(tmp_path / "runs")
    assert main(["fit", "--data", str(texture), "--project", project, *SMALL]) == 0
    model = tmp_path / "runs" / "fit" / "texture" / "model.safetensors"
    assert model.is_file()
    assert "threshold" in capsys.readouterr().out

    # A second fit goes to a numbered folder, never over the first.
    assert main(["fit", "--data", str(texture), "--project", project, *SMALL]) == 0
    assert (tmp_path / "runs" / "fit" / "texture2" / "model.safetensors").is_file()

    assert (
        main(
            ["evaluate", "--model", str(model), "--data", str(texture), "--project", project, "-q"]
        )
        == 0
    )
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("texture ")]
    assert len(table) == 1 and table[0].split()[:2] == ["texture", "padim"]
    header = [line for line in out.splitlines() if line.startswith("category ")]
    assert len(header) == 1 and len(header[0]) <= 100 and len(table[0]) <= 100
    rows = list(csv.DictReader(open(tmp_path / "runs" / "evaluate" / "texture" / "results.csv")))
    assert len(rows) == 1 and float(rows[0]["image_auroc"]) > 0.9

    assert (
        main(["predict", "--model", str(model), str(texture / "test"), "--project", project, "-q"])
        == 0
    )
    run = tmp_path / "runs" / "predict" / "predict"
    predictions = json.loads((run / "predictions.json").read_text())
    assert len(predictions) == len(list((texture / "test").rglob("*.png")))
    assert len(list((run / "overlays").rglob("*.png"))) == len(predictions)
    assert (run / "overlays" / "scratch" / "000.png").is_file()  # named by relative path
    assert (run / "most_anomalous.png").is_file()


def test_benchmark_writes_table_rankings_and_notices(mvtec_root, tmp_path, capsys):
    project = str(tmp_path / "runs")
    assert main(["benchmark", "--data", str(mvtec_root), "--project", project, *SMALL]) == 0
    run = tmp_path / "runs" / "benchmark" / "benchmark"
    payload = json.loads((run / "results.json").read_text())
    assert [r["category"] for r in payload["rows"]] == ["object", "texture", "mean"]
    object_row = payload["rows"][0]
    assert object_row["pixel_auroc"] is None and object_row["image_auroc"] is not None
    assert any("object: no ground-truth masks" in n for n in payload["notices"])
    assert set(payload["rankings"]["padim"]) == {"pixel_f1_best", "image_auroc", "image_f1_best"}
    assert payload["rankings"]["padim"]["pixel_f1_best"][-1]["category"] == "object"
    md = (run / "results.md").read_text()
    assert "categories ranked by pixel F1" in md
    assert "- object: n/a (not ranked)" in md
    assert (run / "models" / "padim" / "texture" / "model.safetensors").is_file()


def test_config_file_precedence(texture, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps({"model": "padim", "n_features": 30, "image_size": SIZE, "seed": 5})
    )
    project = str(tmp_path / "runs")
    args = ["fit", "--data", str(texture), "--project", project, "--config", str(config), "-q"]
    assert main([*args, "--n-features", "20"]) == 0
    saved = json.loads((tmp_path / "runs" / "fit" / "texture" / "config.json").read_text())
    assert saved["n_features"] == 20  # command line beats the file
    assert saved["seed"] == 5  # the file beats the default


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--data", "/nonexistent/cat"], "category folder not found: /nonexistent/cat"),
        (
            ["evaluate", "--model", "/nonexistent.safetensors", "--data", "."],
            "model file not found",
        ),
        (["benchmark", "--data", "{root}", "--categories", "textur"], "did you mean 'texture'"),
        (["fit", "--data", "{root}/texture", "--backbone", "resnet81"], "did you mean 'resnet18'"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(argv, message, mvtec_root, tmp_path, capsys):
    argv = [a.replace("{root}", str(mvtec_root)) for a in argv]
    assert main([*argv, "--project", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    assert "example:" in capsys.readouterr().out


def test_broken_category_is_reported_and_the_others_still_run(mvtec_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(mvtec_root / "texture", root / "texture")
    shutil.copytree(mvtec_root / "texture" / "train", root / "broken" / "train")
    (root / "broken" / "train" / "good" / "000.png").write_bytes(b"not a png")
    shutil.copytree(mvtec_root / "texture" / "test", root / "broken" / "test")
    project = str(tmp_path / "runs")
    assert main(["benchmark", "--data", str(root), "--project", project, *SMALL]) == 1
    err = capsys.readouterr().err
    assert "skipped broken (padim):" in err and "000.png is not an image PIL can read" in err
    payload = json.loads(
        (tmp_path / "runs" / "benchmark" / "benchmark" / "results.json").read_text()
    )
    assert [r["category"] for r in payload["rows"]] == ["texture"]


def test_saved_config_reproduces_the_run(texture, tmp_path):
    import defectscope

    project = str(tmp_path / "runs")
    assert main(["fit", "--data", str(texture), "--project", project, *SMALL, "--seed", "2"]) == 0
    first = tmp_path / "runs" / "fit" / "texture"
    config = first / "config.json"
    assert main(["fit", "--config", str(config), "--project", project, "-q"]) == 0
    second = tmp_path / "runs" / "fit" / "texture2"
    a, b = defectscope.load(first), defectscope.load(second)
    assert a.get_params() == b.get_params() and a.threshold_ == b.threshold_
    images = sorted((texture / "test").rglob("*.png"))[:4]
    assert (a.score(images).scores == b.score(images).scores).all()


def test_every_option_is_a_flag_and_a_config_key():
    import dataclasses

    from defectscope.cli import _cli_values, build_parser
    from defectscope.engine.rules.settings import EngineOptions
    from defectscope.models import DETECTORS

    parser = build_parser()
    for info in DETECTORS.values():
        for f in [*dataclasses.fields(info.config), *dataclasses.fields(EngineOptions)]:
            if f.name == "progress":
                continue  # -q
            flag = "--" + f.name.replace("_", "-")
            value = ["hflip"] if f.name in ("augment", "layers") else ["7"]
            if f.metadata.get("choices"):
                value = [f.metadata["choices"][0]]
            if isinstance(f.default, bool):
                value = []
            args = parser.parse_args(["fit", "--data", "x", "--model", info.name, flag, *value])
            assert f.name in _cli_values(args), flag


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["fit", "--model", "autoencoder", "--backbone", "resnet18"],
            "option backbone does not apply to autoencoder (it is an option of padim, patchcore)",
        ),
        (["fit", "--model", "padim", "--epochs", "3"], "option epochs does not apply to padim"),
        (["fit", "--model", "padmi"], "unknown model 'padmi'; did you mean 'padim'?"),
        (["demo", "--size", "0"], "--size must be at least 32 pixels, got 0"),
        (["fit", "--image-size", "100000"], "image_size must be at most 2048"),
    ],
)
def test_wrong_options_are_one_line(argv, message, texture, tmp_path, capsys):
    if argv[0] == "fit":
        argv = [*argv, "--data", str(texture)]
    assert main([*argv, "--project", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "demo").exists()  # nothing made before the options were checked


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("c.yaml", "n_features: 30\nimage_size: 64\n", None),
        ("c.yml", "[padim]\n", "must hold a mapping of option names to values, got a list"),
        ("c.toml", "n_features = 30\n[padim]\nsigma = 2.0\n", None),
        ("c.json", "[1, 2]", "must hold a mapping of option names to values, got a list"),
        ("c.json", '{"n_features": "abc"}', "n_features: expected an integer or None, got 'abc'"),
        ("c.json", '{"layers": "blocks.1"}', "layers: expected a list of strings or None"),
        ("c.json", '{"n_featres": 3}', "unknown option 'n_featres'; did you mean 'n_features'"),
        ("c.json", '{"autoencoder": {"epochs": 2}}', "a [autoencoder] table is given but"),
        ("c.json", b"\xff\xfe{", "is not UTF-8 text"),
        ("c.yaml", "a: [1, 2", "is not valid YAML"),
    ],
)
def test_config_files(name, content, message, texture, tmp_path, capsys):
    config = tmp_path / name
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content)
    argv = ["fit", "--data", str(texture), "--config", str(config), "--project", str(tmp_path)]
    code = main([*argv, "--model", "padim", "--image-size", str(SIZE), "--batch-size", "8", "-q"])
    err = capsys.readouterr().err.strip()
    if message is None:
        assert code == 0, err
        saved = json.loads((tmp_path / "fit" / "texture" / "config.json").read_text())
        assert saved["n_features"] == 30
        if name.endswith(".toml"):
            assert saved["sigma"] == 2.0  # the [padim] table applies to padim
    else:
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_evaluate_runtime_on_a_baseline(texture, tmp_path, capsys):
    project = str(tmp_path)
    argv = ["fit", "--model", "autoencoder", "--data", str(texture), "--epochs", "2"]
    assert main([*argv, "--image-size", str(SIZE), "--project", project, "-q"]) == 0
    model = tmp_path / "fit" / "texture"
    argv = ["evaluate", "--model", str(model), "--data", str(texture), "--runtime", "torch"]
    assert main([*argv, "--project", project, "-q"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["texture", "autoencoder"] in [row[:2] for row in rows]


def test_a_root_given_for_a_category_names_its_categories(mvtec_root, tmp_path, capsys):
    argv = ["evaluate", "--model", str(tmp_path / "none"), "--data", str(mvtec_root)]
    assert main([*argv, "--project", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model file not found" in err or "is a root of 2 categories (object, texture)" in err
    from defectscope.data import load_category
    from defectscope.errors import DataError

    with pytest.raises(DataError, match=r"is a root of 2 categories \(object, texture\)"):
        load_category(mvtec_root)


def test_benchmark_writes_notices_json_and_quiet_is_quiet(texture, tmp_path, capsys):
    project = str(tmp_path)
    argv = ["benchmark", "--data", str(texture), "--project", project, *SMALL, "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "notice:" not in captured.err and "shift:" not in captured.err
    notices = json.loads((tmp_path / "benchmark" / "benchmark" / "notices.json").read_text())
    assert list(notices) == ["texture (padim)"] and isinstance(notices["texture (padim)"], list)


def test_verbs_that_write_no_run_folder_take_no_project(tmp_path, capsys):
    for verb in ("calibrate", "export", "serve"):
        with pytest.raises(SystemExit) as stop:
            main(
                [verb, "--model", "m", "--data", "d", "--project", str(tmp_path)][
                    : 3 if verb != "calibrate" else 5
                ]
                + ["--project", str(tmp_path)]
            )
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments: --project" in err, (verb, err)
