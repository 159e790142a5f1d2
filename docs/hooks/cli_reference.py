"""MkDocs hook: the CLI reference is `cait --help` and `cait COMMAND --help`, rendered at build time.

docs/reference/cli.md holds the marker `<!-- cli-reference -->`; this hook replaces it with one
section per command of the Typer app, each holding exactly what `--help` prints (run through
Typer's own test runner, so the page is the help text and cannot drift from it), plus a one-line
usage summary built from the click command (`typer.main.get_command(app)`).
Why a hook and not a plugin: no extra dependency, and it reuses Typer's own rendering of the help
(mkdocs-click formats click's help itself and misses Typer's rich panels and metavars).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
ENV = {"TERMINAL_WIDTH": "80", "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}


def _help(app, args: list[str]) -> str:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, args, env=ENV)
    if result.exit_code != 0:
        raise RuntimeError(f"`cait {' '.join(args)}` exited {result.exit_code}: {result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def render() -> str:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import typer

    from cait_cli.interface.cli import app

    group = typer.main.get_command(app)
    parts = ["## `cait`", "", "```text", _help(app, ["--help"]), "```", ""]
    for name, command in group.commands.items():
        summary = (command.help or "").strip().split("\n")[0]
        parts += [f"## `cait {name}`", "", summary, "", "```text", _help(app, [name, "--help"]), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files):
    if MARKER not in markdown:
        return markdown
    root = str(Path(config["config_file_path"]).resolve().parent)  # the repository: import its cait_cli
    if root not in sys.path:
        sys.path.insert(0, root)
    return markdown.replace(MARKER, render())
