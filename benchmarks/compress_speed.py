"""Does `cait compress` hit the speedup it is asked for? Measured, on this device.

For each target S this runs the compress pipeline on DeiT-Small's architecture with
random weights and zero training steps (speed does not depend on the weights),
exactly as `cait compress deit_small --weights random --target-speedup S
--calib-steps 0 --finetune-steps 0` does, and prints target vs measured speedup
(the measurement of the exported model against the original, interleaved).

    python -m benchmarks.compress_speed --out benchmarks/results/compress_speed_cpu.md
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks import harness
from cait_cli.pipeline.compress import CompressConfig, compress


def main() -> None:
    parser = harness.make_parser(__doc__, "targets", "device", "runtime", "bench_batch", "out", model="deit_small")
    parser.add_argument("--keep", type=Path, help="keep the checkpoints in this folder (TARGET.cait each)")
    args = parser.parse_args()

    table = harness.Table("model", "target", "plan (merge blocks; kept channel MACs)", "predicted",
                          "measured (repeat range)", "in band (0.97-1.08 x target)", "landing measurements", "device",
                          "batch", "runtime", "wall time", echo=True)
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            out = (args.keep or Path(tmp)) / f"{target}.cait"
            cfg = CompressConfig(model=args.model, target_speedup=target, out=out,
                                 weights="random", calib_steps=0, finetune_steps=0, device=args.device,
                                 bench_batch_size=args.bench_batch_size, runtime=args.runtime,
                                 latency_cache=Path(tmp) / "latency")  # a new user's empty cache
            start = time.perf_counter()
            report = compress(cfg).report
            wall = time.perf_counter() - start
            low, high = report["measured_speedup_range"]
            measured.append(f"{target:g}x -> {report['measured_speedup']:.2f}x")
            table.add(args.model, f"{target:g}x", harness.plan_cell(report), f"{report['predicted_speedup']:.2f}x",
                      f"{report['measured_speedup']:.2f}x ({low:.2f}-{high:.2f})", "yes" if report["landed"] else "NO",
                      harness.landing_cell(report),
                      f"{report['device']} ({report['threads']} threads)", report["batch_size"], report["runtime"],
                      f"{wall / 60:.1f} min")
    harness.write_results(args.out, "Does `cait compress` hit the speedup it is asked for?", table.lines,
                          headline=f"{args.model}: " + ", ".join(measured), device=args.device)


if __name__ == "__main__":
    harness.run_script(main)
