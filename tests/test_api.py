"""The Python API (cait_cli.compress, sweep, evaluate, export, push): the CLI's defaults, its report, examples that
run."""
import doctest
import inspect
import json

import pytest
from ideal_latency import write_ideal_tables
from support import mac_speeds, make_image_folder, save_tiny_timm_dir, tiny_vit
from typer.testing import CliRunner

import cait_cli
from cait_cli import api
from cait_cli.interface import cli
from cait_cli.pipeline.export.quantize import parse_keep_fp32

ARGS = dict(img_size=32, patch_size=4, depth=4, embed_dim=48, num_heads=3, num_classes=3)
COMMANDS = {"compress": cli.compress, "evaluate": cli.eval_, "export": cli.export_, "push": cli.push,
            "sweep": cli.sweep}
CLI_ONLY = {"ctx", "json_out"}  # Typer's context (--debug); --json writes the returned report
QUICK = dict(target_speedup=1.2, calib_steps=2, finetune_steps=2, batch_size=8, bench_batch_size=16, workers=0,
             device="cpu", replan=False)


def cli_defaults(command) -> dict:
    """The defaults of a Typer command's options (its arguments have none)."""
    params = inspect.signature(command).parameters.values()
    return {p.name: p.default.default for p in params if p.name not in CLI_ONLY and p.default.default is not ...}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_cli_options_default_to_the_apis(name):
    ours, theirs = cli_defaults(COMMANDS[name]), api.defaults(name)
    if name == "export":
        ours["keep_fp32"] = parse_keep_fp32(ours["keep_fp32"])  # the CLI takes it as comma-separated text
    assert set(ours) <= set(theirs)
    assert ours == {key: theirs[key] for key in ours}


def test_the_defaults_are_the_config_dataclasses():
    assert api.defaults("compress")["calib_steps"] == 300 and api.defaults("compress")["target_speedup"] == 1.9
    assert api.defaults("evaluate")["repeats"] == 7 and api.defaults("export")["opset"] == 18
    assert api.defaults("push")["dry_run"] is False


@pytest.mark.parametrize("call", [lambda: cait_cli.compress("m", calib_step=3), lambda: cait_cli.evaluate("m", x=1),
                                  lambda: cait_cli.export("m", dynamic=True),
                                  lambda: cait_cli.push("d", "o/n", msg="")])
def test_an_unknown_option_is_one_line_naming_the_valid_ones(call):
    with pytest.raises(cait_cli.CaitError) as err:
        call()
    assert "has no option" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    model_dir = save_tiny_timm_dir(root / "deit_small", tiny_vit(**ARGS), ARGS)  # named as in the examples
    data = make_image_folder(root / "imagenet", classes=3, per_class=8)
    cache = root / "cache"
    for batch in (16, 64):  # planning on latency tables proportional to the work, not this busy machine's
        write_ideal_tables(cache / "latency", tiny_vit(**ARGS), batch)
    return {"model": str(model_dir), "data": str(data), "cache": str(cache)}


def test_compress_from_python_returns_the_report_the_cli_writes(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("CAIT_CACHE", assets["cache"])
    options = ["--" + key.replace("_", "-") + ("" if value is False else f"={value}") for key, value in QUICK.items()]
    options = [o.replace("--replan", "--no-replan") for o in options]
    result = CliRunner().invoke(cli.app, ["compress", assets["model"], "--data", assets["data"], "--out",
                                          str(tmp_path / "cli.cait"), "--json", str(tmp_path / "r.json"), *options])
    assert result.exit_code in (0, 3), result.output  # 3: the measured speed missed on a busy machine
    printed = json.loads((tmp_path / "r.json").read_text())
    ours = cait_cli.compress(assets["model"], data=assets["data"], out=tmp_path / "api.cait", **QUICK)
    # (two runs, each measured on a busy machine: whether each reached its target may differ)
    assert ours.out == tmp_path / "api.cait" and ours.reached == ours.report["reached"]
    assert shape(ours.report) == shape(printed) and type(ours.report) is dict
    assert ours.typed_report.reached == ours.report["reached"]


def test_evaluate_and_export_return_the_dicts_their_json_writes(assets, tmp_path):
    report = cait_cli.evaluate(assets["model"], batch_size=2, device="cpu", workers=0, repeats=1, warmup=0)
    assert type(report) is dict and json.loads(json.dumps(report)) == report and "model" in report["results"]
    pytest.importorskip("onnxruntime")
    exported = cait_cli.export(assets["model"], out=tmp_path / "m.onnx", repeats=1, warmup=0)
    assert type(exported) is dict and json.loads(json.dumps(exported)) == exported
    assert exported["out"] == str(tmp_path / "m.onnx")


def shape(report: dict) -> dict:
    """The report's keys, and the keys of its dict values."""
    return {key: shape(value) if isinstance(value, dict) else None for key, value in report.items()}


def test_the_docstring_examples_run(assets, tmp_path, monkeypatch):
    """In order, in one folder, on the tiny model and images the assets name as in the examples."""
    pytest.importorskip("onnxruntime")
    from cait_cli.method.cost import model_macs

    monkeypatch.setenv("CAIT_CACHE", assets["cache"])
    monkeypatch.setattr("cait_cli.pipeline.planning.landing.quick_speedup",  # this busy machine's load is not
                        lambda base, slim, *args, **kwargs: model_macs(base) / model_macs(slim))  # the test
    monkeypatch.setattr("cait_cli.pipeline.measuring.report.measure_throughput", mac_speeds)  # (nor the report's)
    monkeypatch.chdir(tmp_path)
    globs = {"cait_cli": cait_cli, "model": assets["model"], "images": assets["data"]}
    tests = {t.name.split(".")[-1]: t for t in doctest.DocTestFinder().find(api, globs=globs) if t.examples}
    assert set(tests) == {"compress", "sweep", "evaluate", "export", "push"}
    runner, said = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS), []
    for name in ("compress", "sweep", "evaluate", "export", "push"):  # each uses what the one before wrote
        runner.run(tests[name], out=said.append)
    assert runner.failures == 0, "".join(said)


def test_progress_is_silent_unless_asked():
    from cait_cli.interface.progress import RichProgress
    from cait_cli.pipeline.progress import Silent

    recorder = Silent()
    assert isinstance(api._progress(None), Silent) and isinstance(api._progress(False), Silent)
    assert isinstance(api._progress(True), RichProgress) and api._progress(recorder) is recorder
