"""The `cait` command: a thin Typer layer over library functions.

Every command parses options, calls one library function and prints its result.
A CaitError becomes one red line on stderr and exit code 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

import typer
from rich.console import Console

from ..errors import CaitError

app = typer.Typer(
    name="cait",
    help="Make pretrained Vision Transformers about twice as fast (CAIT: ATME + CDCP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")


def run_or_exit(action: Callable[[], T], console: Console) -> T:
    """Run `action`; user errors become one line and a non-zero exit, never a traceback."""
    try:
        return action()
    except CaitError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130)


def err_console() -> Console:
    return Console(stderr=True)


@app.command()
def compress() -> None:
    """Compress a ViT to a target speedup (not yet available)."""
    err_console().print("cait compress: not yet available")
    raise typer.Exit(2)


@app.command(name="eval")
def eval_() -> None:
    """Measure accuracy and speed of a model (not yet available)."""
    err_console().print("cait eval: not yet available")
    raise typer.Exit(2)


@app.command()
def push() -> None:
    """Upload a compressed checkpoint to the Hugging Face Hub (not yet available)."""
    err_console().print("cait push: not yet available")
    raise typer.Exit(2)


def main() -> None:
    app(prog_name="cait")


if __name__ == "__main__":
    sys.exit(main())
