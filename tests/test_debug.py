"""`cait --debug` (or CAIT_DEBUG=1): an error's one line comes after its traceback, with what caused it."""
import traceback

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from cait_cli.errors import CaitError
from cait_cli.interface.cli import app


@pytest.fixture
def broken_model(tmp_path):
    """A model directory whose config.json is not JSON: a CaitError caused by json's own error."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    return str(tmp_path / "broken")


def run(*args, env=None):
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 1, result.output
    return result.output.strip()


def test_an_error_is_one_line_without_debug(broken_model):
    for env in (None, {"CAIT_DEBUG": "0"}):
        output = run("eval", broken_model, env=env)
        assert output.startswith("error: cannot read") and len(output.splitlines()) == 1


@pytest.mark.parametrize("args, env", [(["--debug"], None), ([], {"CAIT_DEBUG": "1"})])
def test_debug_prints_the_traceback_with_its_cause_before_the_line(broken_model, args, env):
    output = run(*args, "eval", broken_model, env=env)
    lines = output.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "json.decoder.JSONDecodeError" in output  # the cause, where json failed
    assert "The above exception was the direct cause of the following exception" in output
    assert "cait_cli.errors.CaitError: cannot read" in output
    assert lines[-1].startswith("error: cannot read")


class Buggy(nn.Module):
    """A model whose own forward is wrong (a bug, not an exporter limit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(5, 2)  # (B, 3) @ (5, 2): shapes do not match


def test_an_export_failure_keeps_the_error_that_caused_it(tmp_path):
    pytest.importorskip("onnxscript")
    from cait_cli.models.onnx_file import write_onnx

    with pytest.raises(CaitError, match="torch could not export") as refused:
        write_onnx(Buggy(), tmp_path / "m.onnx", torch.zeros(2, 3), dynamic_batch=False, opset=18, meta={})
    assert refused.value.__cause__ is not None
    shown = "".join(traceback.format_exception(refused.value))
    assert "x @ torch.ones(5, 2)" in shown  # the line of the bug, where --debug shows it
