"""What planning for the wrong runtime costs: each model planned under each runtime, measured under all.

For every model and every planning runtime, `cait compress MODEL --target-speedup S --runtime R`
(no training: speed does not depend on the weights) lands a checkpoint; then `cait eval` times that
checkpoint against the original under every runtime (interleaved, read as compress reads it: the median of paired ratios).
The diagonal is what compress promised; off the diagonal, what a user serving under another runtime
would get.

    python -m benchmarks.runtimes --out benchmarks/results/runtimes_cpu.md
    python -m benchmarks.runtimes --models examples/reference --runtimes eager onnxruntime \\
        --bench-batch-size 8 --repeats 2      # smoke test of the script only
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from benchmarks import harness
from cait_cli.errors import CaitError
from cait_cli.pipeline.compress import CompressConfig, compress
from cait_cli.pipeline.evaluate import EvalConfig, evaluate

WEIGHTS = {"examples/reference": "pretrained", "examples/reference_converged": "pretrained"}  # else random


def plan_under(model: str, runtime: str, args, out: Path) -> Dict:
    cfg = CompressConfig(model=model, target_speedup=args.target, out=out, weights=WEIGHTS.get(model, "random"),
                         calib_steps=0, finetune_steps=0, device=args.device, runtime=runtime,
                         bench_batch_size=args.bench_batch_size, latency_cache=out.parent / "latency")
    start = time.perf_counter()
    report = compress(cfg).report
    report["wall_s"] = time.perf_counter() - start
    return report


def measured_under(checkpoint: Path, model: str, runtime: str, args) -> Tuple[str, Optional[float]]:
    """The checkpoint's speedup over the original under `runtime`: its cell, and the ratio (None: failed)."""
    try:
        report = evaluate(EvalConfig(model=str(checkpoint), baseline=model, weights=WEIGHTS.get(model, "random"),
                                     device=args.device, runtime=runtime, batch_size=args.bench_batch_size,
                                     repeats=args.repeats, workers=0))
    except CaitError as err:
        return f"failed: {err}", None
    low, high = report["speedup_range"]
    return f"{report['speedup']:.2f}x ({low:.2f}-{high:.2f})", report["speedup"]


def add_rows(table: harness.Table, model: str, args, tmp: Path) -> List[Optional[float]]:
    """A row per planning runtime; the speedups measured under each runtime (None: failed)."""
    ratios = []
    for planned in args.runtimes:
        out = tmp / f"{Path(model).name}-{planned}.cait"
        try:
            report = plan_under(model, planned, args, out)
        except CaitError as err:
            table.add(model, planned, f"refused: {err}")
            continue
        cells, measured = zip(*(measured_under(out, model, runtime, args) for runtime in args.runtimes))
        table.add(model, planned, harness.plan_cell(report),
                  f"{report['measured_speedup']:.2f}x ({len(report['attempts'])} landing)", *cells,
                  f"{report['wall_s']:.0f} s")
        ratios += measured
    return ratios


def main() -> None:
    parser = harness.make_parser(__doc__, "target", "bench_batch", "out", models=["examples/reference", "deit_small"],
                                 device="cpu", repeats=harness.Default(11, "timed repeats of each cross-measurement"))
    parser.add_argument("--runtimes", nargs="+", default=["eager", "compile", "onnxruntime"])
    args = parser.parse_args()
    table = harness.Table("model", "planned under", "plan", "compress's own measurement",
                          *(f"measured under {r}" for r in args.runtimes), "compress wall time", echo=True)
    with tempfile.TemporaryDirectory(prefix="cait-runtimes-") as tmp:
        measured = [ratio for model in args.models for ratio in add_rows(table, model, args, Path(tmp))]
    ratios = [ratio for ratio in measured if ratio is not None]
    failed = len(measured) - len(ratios)
    harness.write_results(args.out, f"Planned under one runtime, measured under each ({args.target:g}x target)",
                          table.lines, device=args.device, headline=f"measured {harness.spread(ratios)} in "
                          f"{len(ratios)} cells" + (f", {failed} failed" if failed else ""))


if __name__ == "__main__":
    harness.run_script(main)
