"""What keeping freed memory in the process (pipeline/measuring/allocator.py) changes on this CPU.

Times the forward of a timm model (random weights) in child processes, alternately with glibc's
malloc as it is (`CAIT_SYSTEM_MALLOC=1`) and with freed memory kept, and prints the median forward,
the kernel (system) time per forward and the minor page faults per forward of each.

    python -m benchmarks.allocator --out benchmarks/results/allocator_cpu.md
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from benchmarks import harness

CHILD = """
import json, resource, sys, time, torch, timm
from cait_cli.pipeline.measuring.allocator import keep_freed_memory
kept = keep_freed_memory()
model = timm.create_model(sys.argv[1], pretrained=False).eval()
images = torch.randn(int(sys.argv[2]), 3, 224, 224)
times = []
with torch.inference_mode():
    model(images)
    start = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(int(sys.argv[3])):
        begin = time.perf_counter(); model(images); times.append(time.perf_counter() - begin)
    end = resource.getrusage(resource.RUSAGE_SELF)
n = len(times)
print(json.dumps({"kept": kept, "times": times, "sys": (end.ru_stime - start.ru_stime) / n,
                  "faults": (end.ru_minflt - start.ru_minflt) / n}))
"""


def child(model: str, batch: int, forwards: int, system: bool) -> dict:
    env = dict(os.environ, CAIT_SYSTEM_MALLOC="1" if system else "0")
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(batch), str(forwards)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = harness.make_parser(__doc__, "out", timed_batch=64, model="deit_small_patch16_224")
    parser.add_argument("--rounds", type=int, default=2, help="child processes per setting, alternating")
    parser.add_argument("--forwards", type=int, default=5, help="timed forwards per child")
    args = parser.parse_args()
    runs = {"system malloc": [], "freed memory kept": []}
    for _ in range(args.rounds):
        for name in runs:
            runs[name].append(child(args.model, args.batch_size, args.forwards, name == "system malloc"))
    table = harness.Table("malloc", "median forward (s)", "range (s)", "kernel time per forward (s)",
                          "minor page faults per forward", echo=True)
    medians = {}
    for name, results in runs.items():
        times = [t for r in results for t in r["times"]]
        medians[name] = statistics.median(times)
        table.add(name, f"{medians[name]:.2f}", f"{min(times):.2f}-{max(times):.2f}",
                  f"{statistics.mean(r['sys'] for r in results):.3f}",
                  f"{statistics.mean(r['faults'] for r in results):,.0f}")
    ratio = medians["system malloc"] / medians["freed memory kept"]
    body = [f"{args.model}, random weights, batch {args.batch_size}, fp32 eager; {args.rounds} child processes per "
            f"setting, alternating, {args.forwards} timed forwards each.", "", *table.lines, "",
            f"Kept memory is {ratio:.2f}x as fast."]
    harness.write_results(args.out, "Freed memory kept in the process against glibc's malloc as it is", body,
                          headline=f"{args.model} batch {args.batch_size}: {ratio:.2f}x with freed memory kept",
                          device="cpu")


if __name__ == "__main__":
    harness.run_script(main)
