import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cait_cli
from cait_cli.interface.cli import app

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_the_version_is_the_installed_packages():
    assert cait_cli.__version__ == version("cait-cli")


@pytest.mark.skipif(sys.version_info < (3, 11) or not PYPROJECT.is_file(), reason="needs tomllib and the clone")
def test_the_version_is_pyprojects_so_there_is_one_source():
    # fails when pyproject.toml was bumped without reinstalling (pip install -e .), as CI does
    import tomllib

    assert cait_cli.__version__ == tomllib.loads(PYPROJECT.read_text())["project"]["version"]


def test_cait_version_prints_it_and_exits():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"cait {cait_cli.__version__}\n"
