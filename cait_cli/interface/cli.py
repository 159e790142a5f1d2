"""The `cait` command: a thin Typer layer over library functions.

Every command parses options, calls one library function and prints its result.
A CaitError becomes one red line on stderr and exit code 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, Tuple, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..atomic import write_json_atomic
from ..errors import CaitError
from ..models.loading import model_stem

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


def run_or_exit(action: Callable[[], T], console: Console) -> T:
    """Run `action`; user errors become one line and a non-zero exit, never a traceback."""
    try:
        return action()
    except CaitError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(getattr(err, "exit_code", 1))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(130)


def err_console() -> Console:
    return Console(stderr=True)


@app.command()
def compress(
    model: str = typer.Argument(..., help="deit_tiny|deit_small|deit_base, a timm name, hf-hub:ORG/NAME or a path"),
    target_speedup: float = typer.Option(1.9, "--target-speedup", "-s", help="measured throughput ratio to reach"),
    data: Optional[str] = typer.Option(None, help="ImageFolder root (train/ and val/), a folder of images, "
                                                  "or a timm dataset name"),
    val_data: Optional[str] = typer.Option(None, help="held-out images for accuracy (default: DATA/val)"),
    out: Optional[Path] = typer.Option(None, help="checkpoint directory to write (default: NAME.cait)"),
    calib_steps: int = typer.Option(300, help="CDCP calibration steps"),
    finetune_steps: int = typer.Option(1000, help="fine-tuning steps of the slim model (0 allowed)"),
    batch_size: int = typer.Option(64, help="training batch size per process (under torchrun: per GPU)"),
    bench_batch_size: Optional[int] = typer.Option(None, help="throughput batch (default 64 on CPU, 256 on GPU)"),
    lr: float = typer.Option(1e-4, help="learning rate of the weights"),
    device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda or cuda:N"),
    runtime: str = typer.Option("auto", help=RUNTIME_HELP),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bfloat16 autocast on GPU"),
    workers: Optional[int] = typer.Option(None, help="data loading processes per training process "
                                          "(default: CPU cores / processes on this machine, at most 8)"),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="light augmentation of training images "
                                 "(random resized crop, horizontal flip)"),
    seed: int = typer.Option(0, help="seed for data order and initialisation"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run into the same --out"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    weights: str = typer.Option("pretrained", help="pretrained, or random (architecture only, for speed studies)"),
    plan_only: bool = typer.Option(False, "--plan-only", help="print the plan and exit"),
    replan: bool = typer.Option(True, "--replan/--no-replan", help="measure the slimmed model and re-plan "
                                "until it reaches the target (off: keep the first plan, e.g. for reproducibility)"),
    method: str = typer.Option("cait", help="cait (ATME + CDCP); atme or cdcp alone, for ablations"),
    importance: Optional[str] = typer.Option(None, help="what weighs tokens in ATME's merges: cls (the class "
                                             "token's attention) or received (the attention each token receives); "
                                             "default: cls where the model has a class token"),
    channel_multiple: int = typer.Option(8, help="kept widths (per head, MLP hidden) are multiples of this; "
                                         "1 keeps any width"),
    max_keep: float = typer.Option(1.0, help="CDCP keeps at most this fraction of the prunable channel MACs "
                                   "(e.g. 0.8: prune at least 20%, merge less); 1.0 lets the planner decide"),
    min_keep: float = typer.Option(0.25, help="CDCP keeps at least this fraction of the prunable channel MACs "
                                   "(e.g. 0.9: prune at most 10%, merge more); 0.25 is the planner's floor"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report here"),
) -> None:
    """Compress a ViT to a target speedup: plan, CDCP calibration, slimming, fine-tuning, export."""
    from ..pipeline.compress import CompressConfig
    from ..pipeline.compress import compress as run_compress
    from ..pipeline.distributed import is_main_process
    from ..pipeline.progress import Silent
    from .progress import RichProgress
    from .report import print_compress_report

    console = Console()
    cfg = CompressConfig(
        model=model, target_speedup=target_speedup, out=out or Path(model_stem(model) + ".cait"), data=data,
        val_data=val_data, calib_steps=calib_steps, finetune_steps=finetune_steps, batch_size=batch_size,
        bench_batch_size=bench_batch_size, lr=lr, device=device, runtime=runtime, amp=amp, workers=workers,
        augment=augment, seed=seed, resume=resume, overwrite=overwrite, weights=weights, plan_only=plan_only,
        replan=replan, method=method, importance=importance, channel_multiple=channel_multiple, max_keep=max_keep,
        min_keep=min_keep,
    )
    progress = RichProgress(console) if is_main_process() else Silent()  # under torchrun, rank 0 speaks
    result = run_or_exit(lambda: run_compress(cfg, progress), err_console())
    if plan_only or not result.main:
        return
    print_compress_report(console, result.report, result.out)
    if json_out is not None:
        run_or_exit(lambda: write_json_atomic(json_out, result.report), err_console())
    if not result.reached:
        err_console().print(f"[bold red]error:[/] measured speedup {result.report['measured_speedup']:.2f}x "
                            f"misses the {target_speedup:g}x target; the checkpoint in {result.out} is slower "
                            "than asked", highlight=False)
        raise typer.Exit(3)


@app.command(name="eval")
def eval_(
    model: str = typer.Argument(..., help="a compressed checkpoint directory, a Hub id, or any model cait loads"),
    data: Optional[str] = typer.Option(None, help="ImageFolder (its val/ if present) or timm dataset name"),
    baseline: Optional[str] = typer.Option(None, help="model to compare against (speed ratio, agreement)"),
    batch_size: Optional[int] = typer.Option(None, help="batch size (default 64 on CPU, 256 on GPU)"),
    device: str = typer.Option("auto", help="auto (cuda, then cpu), cpu, cuda or cuda:N"),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="bfloat16 autocast on GPU"),
    runtime: str = typer.Option("auto", help=RUNTIME_HELP),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs", hidden=True, help="the same as --runtime cuda-graphs"),
    workers: int = typer.Option(4, help="data loading processes"),
    repeats: int = typer.Option(7, help="timed repeats (median and min-max reported)"),
    weights: str = typer.Option("pretrained", help="pretrained, or random (speed only)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the report as JSON here"),
) -> None:
    """Measure accuracy and speed of a model, interleaved with a baseline when given."""
    from ..pipeline.evaluate import EvalConfig, evaluate
    from .progress import RichProgress
    from .report import print_eval_report

    console = Console()
    cfg = EvalConfig(model=model, data=data, baseline=baseline, batch_size=batch_size, device=device, amp=amp,
                     runtime="cuda-graphs" if cuda_graphs else runtime, workers=workers, repeats=repeats,
                     weights=weights)
    report = run_or_exit(lambda: evaluate(cfg, RichProgress(console)), err_console())
    print_eval_report(console, report)
    if json_out is not None:
        run_or_exit(lambda: write_json_atomic(json_out, report), err_console())


@app.command(name="export")
def export_(
    model: str = typer.Argument(..., help="a compressed checkpoint directory, or any model cait loads"),
    format: str = typer.Option("onnx", "--format", help="onnx (for ONNX Runtime, TensorRT and others)"),
    out: Optional[Path] = typer.Option(None, help="file to write (default: NAME.onnx)"),
    opset: int = typer.Option(18, help="ONNX opset (18 or newer)"),
    batch_size: Optional[int] = typer.Option(None, help="fixed batch size of the file (default 1)"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="let the file take any batch size"),
    input_size: Optional[Tuple[int, int]] = typer.Option(None, help="H W to export at (default: the model's); "
                                                         "position embeddings are resampled"),
    data: Optional[str] = typer.Option(None, help="also check the outputs on these images (its val/ if present)"),
    check_images: int = typer.Option(64, help="how many of --data's images to check on"),
    baseline: Optional[str] = typer.Option(None, help="the original model: exported the same way and timed "
                                                      "interleaved under ONNX Runtime"),
    tolerance: float = typer.Option(1e-4, help="largest allowed absolute difference of the logits, "
                                               "ONNX Runtime vs PyTorch"),
    bench_batch_size: Optional[int] = typer.Option(None, help="timing batch of a --dynamic-batch file (default 64)"),
    repeats: int = typer.Option(7, help="timed repeats (median and min-max reported)"),
    workers: int = typer.Option(0, help="data loading processes"),
    weights: str = typer.Option("pretrained", help="pretrained, or random (speed only)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out"),
    quantize: Optional[str] = typer.Option(None, help="int8: quantize with ONNX Runtime (static, calibrated on "
                                                      "--data's train/; dynamic without --data)"),
    max_drop: float = typer.Option(1.0, help="int8: refuse a file whose top-1 (agreement, without labels) falls "
                                             "more points than this below the fp32 file's"),
    calib_images: int = typer.Option(128, help="int8: calibration images from --data's train/ split"),
    compare_images: int = typer.Option(1000, help="int8: held-out images from --data's val/ split to compare on"),
    keep_fp32: Optional[str] = typer.Option(None, help="int8: layers left in fp32, comma-separated: patch_embed, "
                                            "head, attention and ONNX op types, or none (default: patch_embed,"
                                            "head,LayerNormalization, measured on the reference)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report here"),
) -> None:
    """Export a model to ONNX, refusing a file whose ONNX Runtime outputs differ from PyTorch's
    (with --quantize int8: whose top-1 falls below the fp32 file's by more than --max-drop)."""
    from ..pipeline.export.onnx_export import ExportConfig, export
    from ..pipeline.export.quantize import DEFAULT_KEEP_FP32, parse_keep_fp32
    from .progress import RichProgress
    from .report import print_export_report

    console = Console()
    keep = run_or_exit(lambda: parse_keep_fp32(keep_fp32), err_console()) if keep_fp32 else DEFAULT_KEEP_FP32
    cfg = ExportConfig(model=model, out=out, format=format, opset=opset, batch_size=batch_size,
                       dynamic_batch=dynamic_batch, input_size=input_size, data=data, check_images=check_images,
                       baseline=baseline, tolerance=tolerance, bench_batch_size=bench_batch_size, repeats=repeats,
                       workers=workers, weights=weights, overwrite=overwrite, quantize=quantize, max_drop=max_drop,
                       calib_images=calib_images, compare_images=compare_images, keep_fp32=keep)
    report = run_or_exit(lambda: export(cfg, RichProgress(console)), err_console())
    print_export_report(console, report)
    if json_out is not None:
        run_or_exit(lambda: write_json_atomic(json_out, report), err_console())


@app.command()
def push(
    directory: Path = typer.Argument(..., help="a checkpoint directory written by cait compress"),
    repo_id: str = typer.Argument(..., help="Hub repository, ORG/NAME (created if missing)"),
    private: bool = typer.Option(False, "--private", help="create the repository as private"),
    revision: Optional[str] = typer.Option(None, help="branch to push to (created if missing)"),
    token: Optional[str] = typer.Option(None, help="Hub token (default: HF_TOKEN or the stored login)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="write what would be uploaded, upload nothing"),
    dry_run_out: Optional[Path] = typer.Option(None, help="where --dry-run writes (default DIR.push-preview)"),
    message: Optional[str] = typer.Option(None, help="commit message"),
    with_onnx: bool = typer.Option(False, "--with-onnx", help="also upload model.onnx (dynamic batch, checked "
                                                              "against PyTorch) and how to run it"),
    quantize: Optional[str] = typer.Option(None, help="with --with-onnx: int8 also uploads model.int8.onnx (as "
                                                      "cait export --quantize int8 makes it)"),
    data: Optional[str] = typer.Option(None, help="with --quantize: images to calibrate (train/) and check (val/) "
                                                  "the int8 file on; without: dynamic int8, accuracy not measured"),
) -> None:
    """Upload a compressed checkpoint with a generated model card to the Hugging Face Hub."""
    from .hub import push as run_push

    console = Console()
    result = run_or_exit(lambda: run_push(directory, repo_id, private=private, revision=revision, token=token,
                                          dry_run=dry_run, dry_run_out=dry_run_out, commit_message=message,
                                          with_onnx=with_onnx, quantize=quantize, data=data),
                         err_console())
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
