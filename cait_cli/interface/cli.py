"""The `cait` command: a thin Typer layer over library functions.

Every command parses options, calls one library function and prints its result.
A CaitError becomes one red line on stderr and exit code 1 (`cait --debug` or CAIT_DEBUG=1
also prints its traceback, with the torch, ONNX or Hub error that caused it); Ctrl-C exits 130.
During calibration and fine-tuning Ctrl-C and SIGTERM save the training checkpoint, say how to
resume and exit 130 and 143 (128 + the signal's number).
"""
from __future__ import annotations

import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

from .. import api
from ..atomic import write_json_atomic
from ..errors import CaitError
from ..version import __version__

app = typer.Typer(
    name="cait",
    help="Make pretrained Vision Transformers about twice as fast (CAIT: ATME + CDCP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")
RUNTIME_HELP = ("what serves the model, so what the speedup is measured under: eager, cuda-graphs, compile, "
                "tensorrt, onnxruntime; auto: cuda-graphs on a GPU, eager on the CPU")


@dataclass
class Settings:
    """The options given before the command (`cait --debug compress ...`): the commands' ctx.obj."""

    debug: bool = False


def print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"cait {__version__}")
        raise typer.Exit()


@app.callback()
def settings(ctx: typer.Context,
             debug: bool = typer.Option(False, "--debug", envvar="CAIT_DEBUG", help="on an error, also print "
                                        "its traceback and what caused it (torch, ONNX, the Hub)"),
             version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True,
                                          help="print cait's version and exit")) -> None:
    ctx.obj = Settings(debug=debug)


def run_or_exit(action: Callable[[], T], ctx: typer.Context) -> T:
    """Run `action`; user errors become one line on stderr and a non-zero exit, after their traceback
    (with the exception that caused them) under --debug."""
    console = err_console()
    try:
        return action()
    except CaitError as err:
        if isinstance(ctx.obj, Settings) and ctx.obj.debug:
            traceback.print_exception(err, file=sys.stderr)
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(getattr(err, "exit_code", 1))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130)


def err_console() -> Console:
    return Console(stderr=True)


COMPRESS, EVAL, EXPORT, PUSH, SWEEP = (api.defaults(command)
                                      for command in ("compress", "evaluate", "export", "push", "sweep"))


def _options(values: Dict[str, Any], *cli_only: str) -> Dict[str, Any]:
    """A command's parameters as the API's keyword options, less its context and those only the CLI has."""
    return {name: value for name, value in values.items() if name not in ("ctx", *cli_only)}


def _write_json(path: Optional[Path], report: Dict[str, Any], ctx: typer.Context) -> None:
    if path is not None:
        run_or_exit(lambda: write_json_atomic(path, report), ctx)


@app.command()
def compress(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="deit_tiny|deit_small|deit_base, a timm name, hf-hub:ORG/NAME or a path"),
    target_speedup: float = typer.Option(COMPRESS["target_speedup"], "--target-speedup", "-s",
                                         help="measured throughput ratio to reach"),
    data: Optional[str] = typer.Option(COMPRESS["data"], help="ImageFolder root (train/ and val/), a folder of "
                                       "images, or a timm dataset name"),
    val_data: Optional[str] = typer.Option(COMPRESS["val_data"], help="held-out images for accuracy "
                                           "(default: DATA/val)"),
    out: Optional[Path] = typer.Option(COMPRESS["out"], help="checkpoint directory to write (default: NAME.cait)"),
    calib_steps: int = typer.Option(COMPRESS["calib_steps"], help="CDCP calibration steps"),
    finetune_steps: int = typer.Option(COMPRESS["finetune_steps"], help="fine-tuning steps of the slim model "
                                       "(0 allowed)"),
    batch_size: Optional[int] = typer.Option(COMPRESS["batch_size"], help="training batch per process (under "
                                             "torchrun: per GPU); default 256 on CUDA, 64 on the CPU"),
    bench_batch_size: Optional[int] = typer.Option(COMPRESS["bench_batch_size"], help="throughput batch (default 64 "
                                                   "on CPU, 256 on GPU)"),
    lr: Optional[float] = typer.Option(COMPRESS["lr"], help="learning rate of the weights; default 1e-4 x global "
                                       "batch / 64 (linear scaling; global batch = batch size x processes); a value "
                                       "given is used as is"),
    score_lr: float = typer.Option(COMPRESS["score_lr"], help="learning rate of CDCP's channel scores during "
                                   "calibration"),
    merge_lr: Optional[float] = typer.Option(COMPRESS["merge_lr"], help="learning rate of ATME's merge weights "
                                             "(how much token importance weighs against size); default: --lr's"),
    compile: Optional[bool] = typer.Option(COMPRESS["compile"], "--compile/--no-compile", help="compile the "
                                           "training step with torch.compile (default: on for CUDA, off on the "
                                           "CPU); if compiling fails, one line says so and training runs eagerly"),
    decode: str = typer.Option(COMPRESS["decode"], help="where training JPEGs are decoded: cpu (loader workers), "
                               "gpu (in batches on the training device, JPEG folders only), auto (gpu on CUDA for a "
                               "JPEG folder)"),
    device: str = typer.Option(COMPRESS["device"], help="auto (cuda, then cpu), cpu, cuda or cuda:N"),
    runtime: str = typer.Option(COMPRESS["runtime"], help=RUNTIME_HELP),
    amp: bool = typer.Option(COMPRESS["amp"], "--amp/--no-amp", help="bfloat16 autocast on GPU"),
    workers: Optional[int] = typer.Option(COMPRESS["workers"], help="data loading processes per training process "
                                          "(default: CPU cores / processes on this machine, at most 8)"),
    augment: bool = typer.Option(COMPRESS["augment"], "--augment/--no-augment", help="light augmentation of "
                                 "training images (random resized crop, horizontal flip)"),
    seed: int = typer.Option(COMPRESS["seed"], help="seed for data order and initialisation"),
    resume: bool = typer.Option(COMPRESS["resume"], "--resume", help="continue an interrupted run into the same "
                                "--out"),
    overwrite: bool = typer.Option(COMPRESS["overwrite"], "--overwrite", help="replace an existing --out"),
    weights: str = typer.Option(COMPRESS["weights"], help="pretrained, or random (architecture only, for speed "
                                "studies)"),
    plan_only: bool = typer.Option(COMPRESS["plan_only"], "--plan-only", help="print the plan and exit"),
    plan: Optional[str] = typer.Option(COMPRESS["plan"], help="reuse an earlier run's plan (merges and channel "
                                       "budget) instead of planning: its checkpoint folder, report.json, or "
                                       "interrupted run folder; slimmed as it is, without re-planning"),
    replan: bool = typer.Option(COMPRESS["replan"], "--replan/--no-replan", help="measure the slimmed model and "
                                "re-plan until it reaches the target (off: keep the first plan, e.g. for "
                                "reproducibility)"),
    method: str = typer.Option(COMPRESS["method"], help="cait (ATME + CDCP); atme or cdcp alone, for ablations"),
    importance: Optional[str] = typer.Option(COMPRESS["importance"], help="what weighs tokens in ATME's merges: cls "
                                             "(the class token's attention) or received (the attention each token "
                                             "receives); default: cls where the model has a class token"),
    channel_multiple: int = typer.Option(COMPRESS["channel_multiple"], help="kept widths (per head, MLP hidden) are "
                                         "multiples of this; 1 keeps any width"),
    max_keep: float = typer.Option(COMPRESS["max_keep"], help="CDCP keeps at most this fraction of the prunable "
                                   "channel MACs (e.g. 0.8: prune at least 20%, merge less); 1.0 lets the planner "
                                   "decide"),
    min_keep: float = typer.Option(COMPRESS["min_keep"], help="CDCP keeps at least this fraction of the prunable "
                                   "channel MACs (e.g. 0.9: prune at most 10%, merge more); 0.25 is the planner's "
                                   "floor"),
    teacher: Optional[str] = typer.Option(COMPRESS["teacher"], help="the model to distil from (default: the "
                                          "original): a timm name, hf-hub:ORG/NAME, a checkpoint folder or a "
                                          ".safetensors file with its config.json; it must predict the model's "
                                          "classes"),
    distill: str = typer.Option(COMPRESS["distill"], help="what the teacher's logits teach: soft (KL to its "
                                "probabilities), hard (cross-entropy to its top-1 class, as DeiT) or both (their "
                                "mean); cross-entropy on the labels is added where they are the model's classes"),
    token_distill: float = typer.Option(COMPRESS["token_distill"], help="weight of token distillation: 1 - cosine "
                                        "between the student's final tokens and the teacher's averaged over the "
                                        "cells each merged token covers; 0 is off; needs a teacher of the model's "
                                        "width and patch grid (the original)"),
    temperature: float = typer.Option(COMPRESS["temperature"], help="of soft distillation: the teacher's and "
                                      "student's logits divided by it, the KL multiplied by its square; 1 is plain "
                                      "KL"),
    schedule: str = typer.Option(COMPRESS["schedule"], help="phases: calibration and fine-tuning each start from "
                                 "the first batch with their own warm-up and cosine; continuous: fine-tuning's "
                                 "batches follow calibration's (none seen twice) under one warm-up and cosine"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report here"),
) -> None:
    """Compress a ViT to a target speedup: plan, CDCP calibration, slimming, fine-tuning, export."""
    options = _options(locals(), "json_out")
    from ..pipeline.distributed import is_main_process
    from ..pipeline.progress import Silent
    from .progress import RichProgress
    from .report import print_compress_report

    console = Console()
    progress = RichProgress(console) if is_main_process() else Silent()  # under torchrun, rank 0 speaks
    result = run_or_exit(lambda: api.compress(progress=progress, **options), ctx)
    if plan_only or not result.main:
        return
    print_compress_report(console, result.typed_report, result.out)
    _write_json(json_out, result.report, ctx)
    if not result.reached:
        err_console().print(f"[bold red]error:[/] measured speedup {result.typed_report.measured.ratio:.2f}x "
                            f"misses the {target_speedup:g}x target; the checkpoint in {result.out} is slower "
                            "than asked", highlight=False)
        raise typer.Exit(3)


def options_of(source: Callable[..., Any], leave_out: Sequence[str] = ()) -> Callable[[Callable], Callable]:
    """Give a command `source`'s options too (less `leave_out` and those it declares itself), so they
    are declared once, in `source`'s signature; the command takes them as **options."""
    def give(command: Callable) -> Callable:
        own = inspect.signature(command).parameters
        taken = [p for name, p in inspect.signature(source).parameters.items() if name not in (*own, *leave_out)]
        listed = [p for p in own.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = inspect.Signature(listed + taken)
        command.__annotations__ = {**source.__annotations__, **command.__annotations__}
        return command
    return give


class SpacedValues(TyperCommand):
    """A command whose --speedups also takes its values one after another (`--speedups 1.3 1.6 1.9`),
    besides click's way of repeating the option (`--speedups 1.3 --speedups 1.6`)."""

    spaced = "--speedups"

    def parse_args(self, ctx: Any, args: List[str]) -> List[str]:
        return super().parse_args(ctx, spread(args, self.spaced))


def spread(args: Sequence[str], flag: str) -> List[str]:
    """`args` with each number that follows `flag`'s value given as a value of `flag` of its own."""
    out: List[str] = []
    after = False  # the argument before was `flag` or one of its values
    for arg in args:
        if after and out[-1] != flag and _is_number(arg):
            out.append(flag)  # one more value: given its own flag
        after = arg == flag or (after and _is_number(arg))
        out.append(arg)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@app.command(cls=SpacedValues)
@options_of(compress, leave_out=(*api.NOT_SWEPT, "json_out"))
def sweep(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="deit_tiny|deit_small|deit_base, a timm name, hf-hub:ORG/NAME or a path"),
    speedups: List[float] = typer.Option(SWEEP["speedups"], "--speedups", show_default=False, help="the target "
                                         "speedups, one checkpoint each: --speedups 1.3 1.6 1.9 2.2 2.5"),
    out: Optional[Path] = typer.Option(SWEEP["out"], help="folder to write DIR/1.9x.cait ..., sweep.json and "
                                       "sweep.png into (default: NAME.sweep)"),
    resume: bool = typer.Option(SWEEP["resume"], "--resume", help="go on with the sweep in --out: skip the targets "
                                "whose checkpoint is written, continue an interrupted one"),
    **options: Any,
) -> None:
    """Compress a ViT to several target speedups, one checkpoint each, and see what each costs in accuracy:
    a table, sweep.json and a plot (sweep.png). Takes every option of compress but its target."""
    from ..pipeline.distributed import is_main_process
    from ..pipeline.progress import Silent
    from ..pipeline.sweep import SWEEP_FILE
    from .progress import RichProgress
    from .report import print_sweep_report

    console = Console()
    main = is_main_process()
    progress = RichProgress(console) if main else Silent()  # under torchrun, rank 0 speaks
    report = run_or_exit(lambda: api.sweep_report(model, speedups, out=out, resume=resume, progress=progress,
                                                  **options), ctx)
    if not main:
        return
    print_sweep_report(console, report, Path(report.out) / SWEEP_FILE)
    short = [f"{p.target:g}x" for p in report.points if p.error or p.reached is False]
    if short:
        err_console().print(f"[bold red]error:[/] {', '.join(short)} not compressed or slower than asked; the "
                            "table and sweep.json say why", highlight=False)
        raise typer.Exit(3)


@app.command(name="eval")
def eval_(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="a compressed checkpoint directory, a Hub id, or any model cait loads"),
    data: Optional[str] = typer.Option(EVAL["data"], help="ImageFolder (its val/ if present) or timm dataset name"),
    baseline: Optional[str] = typer.Option(EVAL["baseline"], help="model to compare against (speed ratio, "
                                           "agreement)"),
    batch_size: Optional[int] = typer.Option(EVAL["batch_size"], help="batch size (default 64 on CPU, 256 on GPU)"),
    device: str = typer.Option(EVAL["device"], help="auto (cuda, then cpu), cpu, cuda or cuda:N"),
    amp: bool = typer.Option(EVAL["amp"], "--amp/--no-amp", help="bfloat16 autocast on GPU"),
    runtime: str = typer.Option(EVAL["runtime"], help=RUNTIME_HELP),
    workers: int = typer.Option(EVAL["workers"], help="data loading processes"),
    repeats: int = typer.Option(EVAL["repeats"], help="timed repeats (median and min-max reported)"),
    weights: str = typer.Option(EVAL["weights"], help="pretrained, or random (speed only)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON here"),
) -> None:
    """Measure accuracy and speed of a model, interleaved with a baseline when given."""
    options = _options(locals(), "json_out")
    from .progress import RichProgress
    from .report import print_eval_report

    console = Console()
    report = run_or_exit(lambda: api.evaluate_report(progress=RichProgress(console), **options), ctx)
    print_eval_report(console, report)
    _write_json(json_out, report.to_json(), ctx)


@app.command(name="export")
def export_(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="a compressed checkpoint directory, or any model cait loads"),
    format: str = typer.Option(EXPORT["format"], "--format", help="onnx (for ONNX Runtime, TensorRT and others)"),
    out: Optional[Path] = typer.Option(EXPORT["out"], help="file to write (default: NAME.onnx)"),
    opset: int = typer.Option(EXPORT["opset"], help="ONNX opset (18 or newer)"),
    batch_size: Optional[int] = typer.Option(EXPORT["batch_size"], help="fixed batch size of the file (default 1)"),
    dynamic_batch: bool = typer.Option(EXPORT["dynamic_batch"], "--dynamic-batch", help="let the file take any "
                                       "batch size"),
    input_size: Optional[Tuple[int, int]] = typer.Option(EXPORT["input_size"], help="H W to export at (default: "
                                                         "the model's); position embeddings are resampled"),
    data: Optional[str] = typer.Option(EXPORT["data"], help="also check the outputs on these images (its val/ if "
                                       "present)"),
    check_images: int = typer.Option(EXPORT["check_images"], help="how many of --data's images to check on"),
    baseline: Optional[str] = typer.Option(EXPORT["baseline"], help="the original model: exported the same way "
                                           "and timed interleaved under ONNX Runtime"),
    tolerance: float = typer.Option(EXPORT["tolerance"], help="largest allowed absolute difference of the logits, "
                                    "ONNX Runtime vs PyTorch"),
    bench_batch_size: Optional[int] = typer.Option(EXPORT["bench_batch_size"], help="timing batch of a "
                                                   "--dynamic-batch file (default 64)"),
    repeats: int = typer.Option(EXPORT["repeats"], help="timed repeats (median and min-max reported)"),
    workers: int = typer.Option(EXPORT["workers"], help="data loading processes"),
    weights: str = typer.Option(EXPORT["weights"], help="pretrained, or random (speed only)"),
    overwrite: bool = typer.Option(EXPORT["overwrite"], "--overwrite", help="replace an existing --out"),
    quantize: Optional[str] = typer.Option(EXPORT["quantize"], help="int8: quantize with ONNX Runtime (with --data: "
                                           "calibrated on its train/, checked on its val/; see --int8-method)"),
    int8_method: str = typer.Option(EXPORT["int8_method"], help="int8: auto (with --data, a static and a dynamic "
                                    "file are both made and checked, the faster written; without, dynamic), "
                                    "static or dynamic"),
    max_drop: float = typer.Option(EXPORT["max_drop"], help="int8: refuse a file whose top-1 (agreement, without "
                                   "labels) falls more points than this below the fp32 file's"),
    calib_images: int = typer.Option(EXPORT["calib_images"], help="int8: calibration images from --data's train/ "
                                     "split"),
    compare_images: int = typer.Option(EXPORT["compare_images"], help="int8: held-out images from --data's val/ "
                                       "split to compare on"),
    keep_fp32: str = typer.Option(",".join(EXPORT["keep_fp32"]), help="int8: layers left in fp32, comma-separated: "
                                  "patch_embed, head, attention and ONNX op types, or none (default: "
                                  f"{','.join(EXPORT['keep_fp32'])}, measured on the reference)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report here"),
) -> None:
    """Export a model to ONNX, refusing a file whose ONNX Runtime outputs differ from PyTorch's
    (with --quantize int8: whose top-1 falls below the fp32 file's by more than --max-drop)."""
    options = _options(locals(), "json_out")
    from .progress import RichProgress
    from .report import print_export_report

    console = Console()
    report = run_or_exit(lambda: api.export_report(progress=RichProgress(console), **options), ctx)
    print_export_report(console, report)
    _write_json(json_out, report.to_json(), ctx)


@app.command()
def push(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="a checkpoint directory written by cait compress"),
    repo_id: str = typer.Argument(..., help="Hub repository, ORG/NAME (created if missing)"),
    private: bool = typer.Option(PUSH["private"], "--private", help="create the repository as private"),
    revision: Optional[str] = typer.Option(PUSH["revision"], help="branch to push to (created if missing)"),
    token: Optional[str] = typer.Option(PUSH["token"], help="Hub token (default: HF_TOKEN or the stored login)"),
    dry_run: bool = typer.Option(PUSH["dry_run"], "--dry-run", help="write what would be uploaded, upload nothing"),
    dry_run_out: Optional[Path] = typer.Option(PUSH["dry_run_out"], help="where --dry-run writes (default "
                                               "DIR.push-preview)"),
    commit_message: Optional[str] = typer.Option(PUSH["commit_message"], "--message", help="commit message"),
    with_onnx: bool = typer.Option(PUSH["with_onnx"], "--with-onnx", help="also upload model.onnx (dynamic batch, "
                                   "checked against PyTorch) and how to run it"),
    quantize: Optional[str] = typer.Option(PUSH["quantize"], help="with --with-onnx: int8 also uploads "
                                           "model.int8.onnx (as cait export --quantize int8 makes it)"),
    data: Optional[str] = typer.Option(PUSH["data"], help="with --quantize: images to calibrate (train/) and check "
                                       "(val/) the int8 file on; without: dynamic int8, accuracy not measured"),
) -> None:
    """Upload a compressed checkpoint with a generated model card to the Hugging Face Hub."""
    options = _options(locals())
    console = Console()
    result = run_or_exit(lambda: api.push(**options), ctx)
    verb = "would upload" if result.dry_run else "uploaded"
    console.print(f"{verb} to {result.repo_id}" + (f" ({result.revision})" if result.revision else "") + ":",
                  highlight=False)
    for name in result.files:
        console.print(f"  {name}", highlight=False)
    where = "preview written to" if result.dry_run else "commit:"
    console.print(f"{where} {result.url}", highlight=False)


def main() -> None:
    app(prog_name="cait")


if __name__ == "__main__":
    sys.exit(main())
