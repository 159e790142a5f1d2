"""Does the speed of a CDCP-slimmed model depend on how its kept widths are rounded?

The proof found channel pruning's measured speed erratic on the CPU (planned for 1.9x,
measured 1.57x; planned for 1.5x, measured 1.71x). This slims the reference at several
budgets twice, with the widths CDCP allocates ("raw") and with every width rounded to a
multiple of --channel-multiple ("rounded"), and times all of them against the reference,
interleaved in one run.

    python -m benchmarks.widths --reference examples/reference --out benchmarks/results/widths_cpu.md
"""
from __future__ import annotations

import copy
from typing import Dict, List

import torch
import torch.nn as nn

from benchmarks import harness
from cait_cli.method.cdcp import full_gated_macs, gated_macs, gates_of, set_budget
from cait_cli.method.slim import slim
from cait_cli.models.loading import load_model
from cait_cli.pipeline.measuring.measure import SpeedConfig, measure_throughput, paired_speedup
from cait_cli.pipeline.training.calibrate import gated_student


def round_widths(student: nn.Module, multiple: int) -> None:
    """Round every gate's kept count to the nearest multiple (at least one multiple)."""
    for gate in gates_of(student).values():
        gate.set_keep(min(gate.channels, max(multiple, multiple * round(gate.keep / multiple))))


def slimmed(student: nn.Module, keep: float, multiple: int) -> tuple[nn.Module, str, float]:
    set_budget(student, keep)
    if multiple:
        round_widths(student, multiple)
    gates = list(gates_of(student).values())
    widths = f"qk {sorted({g.keep for g in gates[0::3]})}, mlp {min(g.keep for g in gates[2::3])}-" \
             f"{max(g.keep for g in gates[2::3])}"
    share = gated_macs(student) / full_gated_macs(student)
    return slim(copy.deepcopy(student)).eval(), widths, share


def main() -> None:
    parser = harness.make_parser(__doc__, "reference", "out", timed_batch=64, repeats=9,
                                 channel_multiple=harness.Default(8, "the multiple widths are rounded to"))
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.27, 0.30, 0.34, 0.39, 0.42, 0.50])
    args = parser.parse_args()
    device = torch.device("cpu")
    reference = load_model(args.reference).model.eval()
    student = gated_student(reference, [])
    models: Dict[str, nn.Module] = {"reference": reference}
    rows: List[tuple] = []
    for keep in args.keeps:
        for label, multiple in (("raw", 0), (f"rounded to {args.channel_multiple}", args.channel_multiple)):
            model, widths, share = slimmed(student, keep, multiple)
            name = f"{keep:.2f} {label}"
            models[name] = model
            rows.append((keep, label, name, widths, share))
    speed = measure_throughput(models, (3, *reference.patch_embed.img_size),
                               SpeedConfig(args.batch_size, warmup=2, repeats=args.repeats), device)
    table = harness.Table("budget", "widths", "gated MACs kept", "kept widths (qk per head; mlp)", "measured speedup")
    ratios: Dict[str, List[float]] = {}
    for keep, label, name, widths, share in rows:
        ratio, low, high = paired_speedup(speed, name, "reference")
        ratios.setdefault(label, []).append(ratio)
        table.add(f"{keep:.2f}", label, f"{share:.0%}", widths, f"{ratio:.2f}x ({low:.2f}-{high:.2f})")
    raw, rounded = ratios.values()
    body = [f"Batch {args.batch_size}, fp32, {args.repeats} repeats interleaved; weight-norm scores (no "
            "calibration).", "", *table.lines]
    harness.write_results(args.out, "CDCP widths: raw against rounded, slimmed reference against the reference", body,
                          headline="rounded over raw at equal budget: "
                                   + harness.spread(r / w for r, w in zip(rounded, raw)))


if __name__ == "__main__":
    harness.run_script(main)
