#!/usr/bin/env bash
# The README quick start, as a new user runs it: a fresh clone, a fresh venv, the latency cache
# cleared, then the README's command unchanged. Repeats it RUNS times and prints each report line.
#
#   bash benchmarks/quickstart.sh 3 > benchmarks/results/quickstart_cpu.md
set -euo pipefail
runs=${1:-3}
repo=$(cd "$(dirname "$0")/.." && pwd)
command=$(grep -m1 '^pip install -c constraints.txt' "$repo/README.md")
echo "# README quick start, $runs fresh runs"
echo
echo "Command (README): \`$command\`"
echo
echo "Each run: \`git clone\` of $(git -C "$repo" rev-parse --short HEAD), a new venv, \`\$CAIT_CACHE\` pointing at an empty folder."
echo
echo "| run | plan | landing measurements | measured speedup (repeat range) | top-1 original -> compressed | wall time |"
echo "|---|---|---|---|---|---|"
for run in $(seq 1 "$runs"); do
  work=$(mktemp -d)
  git clone -q "$repo" "$work/cait"
  python3 -m venv "$work/venv"
  (
    cd "$work/cait"
    source "$work/venv/bin/activate"
    export CAIT_CACHE="$work/cache"
    eval "${command%% && *}" > "$work/install.log" 2>&1
    start=$(date +%s)
    eval "${command#* && }" > "$work/run.log" 2>&1 || true
    seconds=$(( $(date +%s) - start ))
    python - "$run" "$seconds" <<'PY'
import json, sys
run, seconds = sys.argv[1], int(sys.argv[2])
r = json.load(open("fashion.cait/report.json"))
plan = r["plan"]
merges = ",".join(str(b) for b, _ in plan["schedule"]) or "none"
tries = " / ".join(f"{a['measured']:.2f}x" for a in r["attempts"])
lo, hi = r["measured_speedup_range"]
b, c = r["baseline"], r["compressed"]
print(f"| {run} | merge {merges}; keep {plan['keep']:.0%} | {tries} | {r['measured_speedup']:.2f}x ({lo:.2f}-{hi:.2f}) "
      f"| {100 * b['top1']:.1f}% -> {100 * c['top1']:.1f}% ({100 * (c['top1'] - b['top1']):+.1f} pt) | {seconds} s |")
PY
  )
  rm -rf "$work"
done
echo
echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; nothing else running."
