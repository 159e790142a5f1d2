"""CAIT against its peers at equal measured speedup, on real images (Fashion-MNIST).

    python examples/make_fashion_subset.py --out /tmp/fashion_full --train-per-class 6000 --val-per-class 1000
    python benchmarks/proof.py --reference examples/reference --data /tmp/fashion_full \
        --out benchmarks/results/proof_cpu

For every target speedup S, each method is set to the smallest compression whose
measured speedup over the reference clears S (by 2%), gets the same training
budget (steps x batch) and recipe (distillation from the reference, or `--teacher`, of the
`--distill` kind, with `--token-distill` for the arms whose tokens stay on the teacher's grid, plus
cross-entropy) and is
then measured with all the others side by side, interleaved (`--timing-runs` runs):

- cait:  `cait compress` end to end (ATME + CDCP; calibration + fine-tuning = budget)
- atme:  `cait compress --method atme` (token merging alone)
- cdcp:  `cait compress --method cdcp` (channel pruning alone)
- tome:  ToMe bipartite soft matching, r tokens per block (off the shelf, and fine-tuned)
- torch-pruning: channel pruning with the torch-pruning package, fine-tuned, in each of its four
  settings (uniform or global ranking x L2 or Taylor importance); the plot shows the best
- cait (keep K-K'): `cait compress --min-keep K --max-keep K'` (K' = K + 0.1) for each
  `--keep-bands` K: CDCP's budget held in a band, the merging set to match (how much pruning
  helps accuracy at equal speed, against the budget the planner picks itself)
- a control: the reference itself given the same training budget, uncompressed (does a
  row gain from its compression or from the extra training?)

`--second-seed N` runs every method and the control at 1.9x again with seed N (data order,
initialisation), so the table shows how far rows move by chance. `--prune-search-at T ...` tries
torch-pruning's four settings at those targets only and runs the best of them (test top-1, which
favours the peer) at the other targets and with the second seed, which saves hours on a CPU.

A full run takes hours on a CPU. Every finished job (trained model and row) is kept under
`--work`; run the same command again after a stop and it goes on from there. The speed of
every model is measured at the end, interleaved, so reused jobs are timed beside the new
ones; `--timing-runs` such runs (3 by default), as the ratio drifts between runs on a shared host.

Writes OUT.md (table and command), OUT.json and OUT.png (top-1 against measured speedup).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import harness  # noqa: E402
from benchmarks.job_cache import JobCache, settings_key  # noqa: E402
from benchmarks.peers.channel_pruning import SETTINGS, PruneSetting, prune_channels  # noqa: E402
from benchmarks.peers.tome import apply_tome, tome_macs  # noqa: E402
from benchmarks.proof_report import CONTROL, render  # noqa: E402
from cait_cli.atomic import write_json_atomic  # noqa: E402
from cait_cli.errors import CaitError  # noqa: E402
from cait_cli.method.cost import model_macs  # noqa: E402
from cait_cli.models.loading import load_model  # noqa: E402
from cait_cli.pipeline.compress import CompressConfig, compress  # noqa: E402
from cait_cli.pipeline.data.batches import StepBatches  # noqa: E402
from cait_cli.pipeline.data.sources import (  # noqa: E402  # noqa: E402
    collate_skipping,
    dataset_from,
    eval_loader,
    eval_transform,
    resolve_data_config,
    split_roots,
)
from cait_cli.pipeline.measuring.measure import (  # noqa: E402
    SpeedConfig,
    count_params,
    measure_accuracy,
    measure_throughput,
    paired_speedup,
)
from cait_cli.pipeline.measuring.report import quick_speedup  # noqa: E402
from cait_cli.pipeline.training.loop import run_phase  # noqa: E402
from cait_cli.pipeline.training.train import TrainConfig  # noqa: E402

CLEAR = 1.02  # a method's setting must measure at least target x CLEAR in the quick check
KEEP_BAND = 0.1  # width of each --keep-bands band of CDCP budgets
RATIO_RESOLUTION = 0.01  # torch-pruning's ratio is searched to within this


@dataclass
class Row:
    method: str
    target: float
    setting: str  # what the method was set to (plan, r, ratio)
    trained: bool
    keeps_grid: bool  # are the output patch tokens still a 2-D grid (dense transfer)?
    params: int = 0
    macs: int = 0
    measured_speedup: Optional[float] = None
    speedup_range: List[float] = field(default_factory=list)  # the lowest and highest paired ratio of every run
    speedup_runs: List[float] = field(default_factory=list)  # each timing run's own median ratio
    top1: Optional[float] = None
    agreement: Optional[float] = None
    note: str = ""
    seconds: float = 0.0
    seed: int = 0


@dataclass
class Recipe:
    """How every trained arm learns, the compressed ones and the control alike (`cait compress`'s
    --teacher, --distill, --token-distill, --temperature); --schedule, --score-lr, --merge-lr and
    --calib-share train what only a compressed model has (SHARED names the rest)."""

    teacher: Optional[str] = None  # a model to distil from; None: the reference
    distill: str = "soft"
    token_distill: float = 0.0  # the peers' tokens are off the teacher's grid (ToMe) or narrower
    # (torch-pruning): they distil logits only
    schedule: str = "phases"
    score_lr: float = CompressConfig.score_lr
    merge_lr: Optional[float] = None  # None: the weights' lr
    temperature: float = CompressConfig.temperature  # of soft distillation
    calib_share: float = 0.25  # of the steps that CDCP's calibration takes (the rest fine-tune the slim model)

    SHARED = ("teacher", "distill", "token_distill", "temperature")  # what trains the control and peers too

    @classmethod
    def of(cls, args: argparse.Namespace) -> "Recipe":
        return cls(args.teacher, args.distill, args.token_distill, args.schedule, args.score_lr, args.merge_lr,
                   args.temperature, args.calib_share)

    def shared(self) -> Dict[str, object]:
        """The settings that train every arm: a control or peer trained under them serves any recipe that shares them."""
        return {name: getattr(self, name) for name in self.SHARED}

    def describe(self) -> str:
        teacher = self.teacher or "the reference"
        tokens = f", tokens on the merged grid x {self.token_distill:g}" if self.token_distill else ""
        rates = "" if self.score_lr == CompressConfig.score_lr else f", score lr {self.score_lr:g}"
        rates += "" if self.merge_lr is None else f", merge-weight lr {self.merge_lr:g}"
        rates += "" if self.calib_share == Recipe.calib_share else f", calibration {self.calib_share:.0%} of the steps"
        soft = "" if self.temperature == Recipe.temperature else f" at temperature {self.temperature:g}"
        return (f"distillation ({self.distill}{soft}) from {teacher}{tokens} plus cross-entropy, schedule "
                f"{self.schedule}{rates}")


@dataclass
class Bench:
    """What every method works with: the reference, data, budget, recipe and device."""

    reference: nn.Module
    reference_path: str
    data: str
    batches: StepBatches
    steps: int
    batch_size: int
    lr: float
    bench_batch: int
    device: torch.device
    work: Path
    seed: int
    log: Callable[[str], None] = print
    recipe: Recipe = field(default_factory=Recipe)
    teacher: Optional[nn.Module] = None  # the recipe's teacher, loaded; None: the reference

    @property
    def input_size(self) -> tuple:
        return (3, *self.reference.patch_embed.img_size)

    def quick(self, model: nn.Module) -> float:
        return quick_speedup(self.reference, model, self.device, self.bench_batch)


def finetune(bench: Bench, student: nn.Module, tokens: bool = False) -> nn.Module:
    """The shared budget: bench.steps of the recipe's distillation + CE through `cait compress`'s own
    fine-tuning loop (tokens: with the recipe's token distillation, for a model on the teacher's grid)."""
    recipe = bench.recipe
    cfg = TrainConfig(steps=bench.steps, lr=bench.lr, warmup_steps=min(50, bench.steps // 10),
                      distill=recipe.distill, token_weight=recipe.token_distill if tokens else 0.0,
                      temperature=recipe.temperature)
    run_phase(student, bench.teacher or bench.reference, bench.batches, cfg, bench.device, phase="finetune")
    return student


def control(bench: Bench) -> tuple[Row, nn.Module]:
    """The uncompressed reference with the same training budget as every trained method."""
    model = finetune(bench, copy.deepcopy(bench.reference), tokens=True)
    row = Row(CONTROL, 1.0, "no compression", True, True, count_params(model), model_macs(model))
    return row, model


def ours(bench: Bench, method: str, target: float,
         keep_band: Optional[tuple[float, float]] = None) -> tuple[Row, Optional[nn.Module]]:
    """`cait compress` (or one of its ablations) end to end, with the shared budget."""
    calib = int(bench.steps * bench.recipe.calib_share) if method != "atme" else 0
    low, high = keep_band or (CompressConfig.min_keep, CompressConfig.max_keep)  # None: the planner's own range
    out = bench.work / f"{method}_{target:g}_{low:g}-{high:g}_{bench.seed}"
    name = method if keep_band is None else f"{method} (keep {low:.0%}-{high:.0%})"
    cfg = CompressConfig(model=bench.reference_path, target_speedup=target, out=out, data=bench.data,
                         calib_steps=calib, finetune_steps=bench.steps - calib, batch_size=bench.batch_size,
                         bench_batch_size=bench.bench_batch, lr=bench.lr, device=str(bench.device), workers=0,
                         seed=bench.seed, overwrite=True, method=method, max_val_images=500,
                         latency_cache=bench.work / "latency", min_keep=low, max_keep=high,
                         teacher=bench.recipe.teacher, distill=bench.recipe.distill,
                         token_distill=bench.recipe.token_distill, schedule=bench.recipe.schedule,
                         score_lr=bench.recipe.score_lr, merge_lr=bench.recipe.merge_lr,
                         temperature=bench.recipe.temperature)
    try:
        result = compress(cfg)
    except CaitError as err:
        return Row(name, target, "-", True, True, note=str(err)), None
    model = load_model(str(out)).model.to(bench.device).eval()
    plan = result.plan
    merges = "+".join(str(s.block) for s in plan.schedule) or "none"
    setting = f"merge after {merges}, keep {plan.keep:.0%}"
    landed = result.report.get("measured_speedup")
    if landed is not None:  # compress's own final measurement, which the table's joint timing re-does
        setting += f"; {landed:.2f}x in compress" + ("" if result.reached else ", under the target")
    early = result.report.get("compressed", {}).get("top1")
    if early is not None:
        bench.log(f"  ({name} @ {target:g}x: top-1 {early:.4f} on compress's 500 held-out images)")
    return Row(name, target, setting, True, True, count_params(model), model_macs(model)), model


def tome(bench: Bench, target: float) -> List[tuple[Row, Optional[nn.Module]]]:
    """ToMe with the smallest r (tokens merged per block) that reaches the target."""
    r = 0
    while True:
        r += 1
        model = apply_tome(copy.deepcopy(bench.reference), r).eval()
        if bench.quick(model) >= target * CLEAR:
            break
        if r >= bench.reference.patch_embed.num_patches // 2:  # merging more is capped anyway
            return [(Row("tome", target, "-", False, False, note=f"no r reaches {target:g}x"), None)]
    macs, params = tome_macs(model, r), count_params(model)
    rows = [(Row("tome (off the shelf)", target, f"r={r}", False, False, params, macs), model)]
    tuned = finetune(bench, copy.deepcopy(model))
    rows.append((Row("tome", target, f"r={r}", True, False, params, macs), tuned))
    return rows


def pruned_at(bench: Bench, target: float, setting: PruneSetting) -> tuple[Row, Optional[nn.Module]]:
    """torch-pruning in one setting, at the smallest ratio (to RATIO_RESOLUTION) that reaches the target."""
    taylor_batches = [batch for _, batch in bench.batches.iterate(0, 4, bench.device)] if setting.importance == "taylor" else None

    def prune(ratio: float) -> nn.Module:
        return prune_channels(bench.reference, ratio, bench.input_size, setting, taylor_batches)

    low, high = 0.0, 0.9
    if bench.quick(prune(high)) < target * CLEAR:
        return Row("torch-pruning", target, setting.label, True, True,
                   note=f"{setting.label}: ratio {high} stays under {target:g}x"), None
    while high - low > RATIO_RESOLUTION:
        mid = (low + high) / 2
        low, high = (low, mid) if bench.quick(prune(mid)) >= target * CLEAR else (mid, high)
    model = prune(high)
    row = Row("torch-pruning", target, f"{setting.label}, ratio {high:.2f}", True, True, count_params(model),
              model_macs(model))
    return row, finetune(bench, model)


def measure_all(bench: Bench, rows: List[Row], models: Dict[int, nn.Module], test, runs: int = 1) -> None:
    """Speed of every model against the reference, interleaved, in `runs` runs; top-1 on the test set.

    On a shared host the ratio itself drifts from run to run (timing_noise_cpu.md: a CDCP-only model read
    1.49-1.75x in eight runs back to back), by more than a target's band is wide; a row's speedup is the
    median of its runs' medians, and each run's median is kept (speedup_runs) to show the drift."""
    named = {"reference": bench.reference, **{f"row{i}": m for i, m in models.items()}}
    cfg = SpeedConfig(bench.bench_batch, warmup=2, repeats=11)
    speeds = [measure_throughput(named, bench.input_size, cfg, bench.device) for _ in range(runs)]
    for i, model in models.items():
        paired = [paired_speedup(speed, f"row{i}", "reference") for speed in speeds]
        rows[i].speedup_runs = [ratio for ratio, _, _ in paired]
        rows[i].measured_speedup = statistics.median(rows[i].speedup_runs)
        rows[i].speedup_range = [min(low for _, low, _ in paired), max(high for _, _, high in paired)]
        acc = measure_accuracy(model, test, bench.device, baseline=bench.reference)
        rows[i].top1, rows[i].agreement = acc.top1, acc.agreement
        bench.log(f"  {rows[i].method} @ {rows[i].target:g}x: {rows[i].measured_speedup:.2f}x, top-1 {acc.top1:.4f}")


Job = Callable[[], List[tuple[Row, Optional[nn.Module]]]]
OURS = ("cait", "atme", "cdcp")  # the arms `cait compress` trains: every setting of the recipe changes them


def method_jobs(bench: Bench, method: str, target: float,
                settings: Sequence[PruneSetting] = SETTINGS) -> List[tuple[str, Job]]:
    """(name, job) pairs for one method at one target; torch-pruning is one job per setting."""
    name = f"{method}_{target:g}"
    if method in OURS:
        return [(name, lambda: [ours(bench, method, target)])]
    if method == "tome":
        return [(name, lambda: tome(bench, target))]
    return [(f"{method}-{s.label.replace(' ', '-')}_{target:g}", lambda s=s: [pruned_at(bench, target, s)])
            for s in settings]


@dataclass
class Protocol:
    """The jobs of one seed: every method at every target, plus the optional extras."""

    targets: List[float]
    methods: List[str]
    keep_bands: List[float] = field(default_factory=list)  # K: cait with keep held in [K, K + KEEP_BAND]
    bands_at: Optional[List[float]] = None  # keep bands only at these targets (None: every target)
    with_control: bool = True

    def ordered_targets(self, first: Optional[List[float]]) -> List[float]:
        """The targets, those in `first` (where torch-pruning's setting is chosen) at the front."""
        return sorted(self.targets, key=lambda t: first is None or not _within(t, first))

    def bands(self, target: float) -> List[tuple[float, float]]:
        if self.bands_at is not None and not _within(target, self.bands_at):
            return []
        return [(low, min(1.0, round(low + KEEP_BAND, 6))) for low in self.keep_bands]


@dataclass
class PruneChoice:
    """torch-pruning's settings: all four are tried at the `search_at` targets (main seed); elsewhere
    only the one whose fine-tuned model scored the best top-1 at the nearest of them. None tries all
    four everywhere.

    The choice is made on the test set, which favours the peer: a CAIT win over it is conservative.
    """

    search_at: Optional[List[float]]
    main_seed: int
    score: Callable[[nn.Module], float]
    best: Dict[float, Optional[PruneSetting]] = field(default_factory=dict)  # per search target

    def searched(self, target: float, seed: int) -> bool:
        return self.search_at is None or (seed == self.main_seed and _within(target, self.search_at))

    def settings(self, target: float, seed: int, rows: List[Row],
                 models: Dict[int, nn.Module]) -> Sequence[PruneSetting]:
        if self.searched(target, seed):
            return SETTINGS
        nearest = min(self.search_at, key=lambda at: abs(at - target))
        if nearest not in self.best:
            self.best[nearest] = self.choose(nearest, rows, models)
        best = self.best[nearest]
        return SETTINGS if best is None else (best,)

    def choose(self, at: float, rows: List[Row], models: Dict[int, nn.Module]) -> Optional[PruneSetting]:
        scored = [(self.score(models[i]), s) for i, row in enumerate(rows) if i in models
                  and row.method == "torch-pruning" and _within(row.target, [at])
                  for s in SETTINGS if row.setting.startswith(s.label + ",")]
        if not scored:
            return None
        top1, best = max(scored, key=lambda pair: pair[0])
        print(f"torch-pruning: {best.label} scored best at {at:g}x (top-1 {top1:.4f}); "
              "only it runs at the targets nearest it", flush=True)
        return best


def _within(target: float, targets: Sequence[float]) -> bool:
    return any(abs(target - t) < 1e-9 for t in targets)


@dataclass
class Caches:
    """Finished jobs on disk: cait's arms keyed by the budget and the whole recipe, the control and the
    peers by the budget and the recipe's shared part only (a recipe that changes only what a compressed
    model has, its schedule or its scores' rate, reuses them)."""

    ours: JobCache
    shared: JobCache

    @classmethod
    def under(cls, work: Path, reference: nn.Module, budget: Dict[str, object], recipe: Recipe) -> "Caches":
        own, shared = dict(budget), dict(budget)
        if recipe != Recipe():  # a job trained under another recipe is another job (the default keeps old keys)
            own["recipe"] = asdict(recipe)
        if recipe.shared() != Recipe().shared():
            shared["recipe"] = recipe.shared()
        return cls(JobCache(work / f"jobs-{settings_key(reference, own)}"),
                   JobCache(work / f"jobs-{settings_key(reference, shared)}"))

    def of(self, method: str) -> JobCache:
        return self.ours if method in OURS else self.shared


def run_methods(bench: Bench, protocol: Protocol, prune: PruneChoice, caches: Caches, rows: List[Row],
                models: Dict[int, nn.Module]) -> None:
    """Every job of `protocol` with bench's seed, appended to rows/models.

    A job that finished in an earlier run with the same settings is read back from its cache
    instead of trained again.
    """
    if protocol.with_control:
        run_jobs(bench, [("control", lambda: [control(bench)])], caches.shared, rows, models)
    for target in protocol.ordered_targets(prune.search_at):
        settings = prune.settings(target, bench.seed, rows, models)
        for method in protocol.methods:
            run_jobs(bench, method_jobs(bench, method, target, settings), caches.of(method), rows, models)
        bands = [(f"cait-keep{low:g}-{high:g}_{target:g}", lambda b=(low, high), t=target: [ours(bench, "cait", t, b)])
                 for low, high in protocol.bands(target)]
        run_jobs(bench, bands, caches.of("cait"), rows, models)


def run_jobs(bench: Bench, jobs: List[tuple[str, Job]], cache: JobCache, rows: List[Row],
             models: Dict[int, nn.Module]) -> None:
    for name, job in jobs:
        done, cached = cache.run(f"{name}_seed{bench.seed}", lambda job=job: stamped(job, bench.seed))
        for row, model in done:
            if model is not None:
                models[len(rows)] = model
            rows.append(row)
            source = " (finished in an earlier run)" if cached else ""
            print(f"{row.method} @ {row.target:g}x (seed {row.seed}): {row.setting} {row.note}".rstrip() + source,
                  flush=True)


def stamped(job: Job, seed: int) -> List[tuple[Row, Optional[nn.Module]]]:
    """The job's rows, each marked with its seed and the seconds the job took."""
    began = time.time()
    done = job()
    for row, _ in done:
        row.seconds, row.seed = time.time() - began, seed
    return done


def main() -> None:
    parser = harness.make_parser(
        __doc__, "reference", "lr", "seed", train_steps=harness.Default(300, "training budget of every trained method"),
        data=harness.Default(help="ImageFolder root with train/ and val/ (the test split)", required=True),
        train_batch=64, bench_batch=64, work=Path("/tmp/cait-proof"), out_stem=Path("benchmarks/results/proof_cpu"))
    parser.add_argument("--speedups", type=float, nargs="+", default=[1.5, 1.9, 2.5])
    parser.add_argument("--methods", nargs="+", default=["cait", "atme", "cdcp", "tome", "torch-pruning"],
                        choices=["cait", "atme", "cdcp", "tome", "torch-pruning"])
    parser.add_argument("--keep-bands", type=float, nargs="*", default=[],
                        help=f"also run cait with CDCP's keep held in [K, K + {KEEP_BAND:g}] for each K "
                             "(--min-keep/--max-keep): what pruning more or less buys at equal speed")
    parser.add_argument("--keep-bands-at", type=float, nargs="+",
                        help="run the keep bands only at these targets (default: every target)")
    parser.add_argument("--prune-search-at", type=float, nargs="+",
                        help="try torch-pruning's four settings only at these targets; elsewhere (and with the "
                             "second seed) only the one with the best top-1 at the nearest of them "
                             "(default: all four everywhere)")
    parser.add_argument("--second-seed", type=int,
                        help="run every method and the control again at --second-seed-speedup with it")
    parser.add_argument("--second-seed-speedup", type=float, default=1.9)
    parser.add_argument("--no-control", action="store_true", help="skip the uncompressed, equally trained control")
    parser.add_argument("--teacher", help="distil every arm from this model (compress's --teacher; default: the "
                                          "reference)")
    parser.add_argument("--distill", default=Recipe.distill, choices=["soft", "hard", "both"])
    parser.add_argument("--token-distill", type=float, default=Recipe.token_distill,
                        help="weight of token distillation for the arms whose tokens stay on the teacher's grid")
    parser.add_argument("--schedule", default=Recipe.schedule, choices=["phases", "continuous"],
                        help="cait's calibration and fine-tuning: each its own schedule, or one")
    parser.add_argument("--score-lr", type=float, default=Recipe.score_lr,
                        help="learning rate of CDCP's channel scores (compress's --score-lr)")
    parser.add_argument("--temperature", type=float, default=Recipe.temperature,
                        help="of soft distillation (compress's --temperature)")
    parser.add_argument("--merge-lr", type=float, default=None,
                        help="learning rate of ATME's merge weights (compress's --merge-lr; default: --lr)")
    parser.add_argument("--timing-runs", type=int, default=3,
                        help="time every model against the reference in this many interleaved runs; a row's "
                             "speedup is the median of the runs' medians (the ratio drifts between runs)")
    parser.add_argument("--calib-share", type=float, default=Recipe.calib_share,
                        help="share of the steps that cait's CDCP calibration takes (compress's --calib-steps "
                             "out of the budget; the rest fine-tune the slim model)")
    args = parser.parse_args()
    for flag, values in (("--keep-bands-at", args.keep_bands_at), ("--prune-search-at", args.prune_search_at)):
        unknown = [t for t in values or [] if not _within(t, args.speedups)]
        if unknown:
            known = " ".join(f"{t:g}" for t in args.speedups)
            parser.error(f"{flag} {unknown[0]:g} is not a target of this run ({known})")
    if args.timing_runs < 1:
        parser.error(f"--timing-runs must be at least 1, got {args.timing_runs}")
    if not 0 <= args.calib_share < 1:
        parser.error(f"--calib-share must be at least 0 and below 1, got {args.calib_share:g}")
    started = time.time()
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    reference = load_model(args.reference).model.to(device).eval()
    data_cfg = resolve_data_config(reference)
    train = dataset_from(split_roots(args.data)[0], eval_transform(data_cfg), label_names=data_cfg.get("label_names"))
    test_loader, _ = eval_loader(args.data, data_cfg, batch_size=250)
    test = [batch for batch in test_loader]  # decoded once, reused for every model
    recipe = Recipe.of(args)
    teacher = load_model(args.teacher, require_vit=False).model.to(device).eval() if args.teacher else None

    def bench_with(seed: int) -> Bench:
        batches = StepBatches(train, args.batch_size, seed, collate_skipping)
        return Bench(reference, args.reference, args.data, batches, args.steps, args.batch_size, args.lr,
                     args.bench_batch_size, device, args.work, seed, recipe=recipe, teacher=teacher)

    reference_acc = measure_accuracy(reference, test, device)
    print(f"reference: top-1 {reference_acc.top1:.4f} on {reference_acc.n} test images", flush=True)
    budget = {k: getattr(args, k) for k in ("data", "steps", "batch_size", "bench_batch_size", "lr")}
    caches = Caches.under(args.work, reference, budget, recipe)
    rows: List[Row] = []
    models: Dict[int, nn.Module] = {}
    prune = PruneChoice(args.prune_search_at, args.seed, lambda model: measure_accuracy(model, test, device).top1)
    main_jobs = Protocol(args.speedups, args.methods, args.keep_bands, args.keep_bands_at, not args.no_control)
    run_methods(bench_with(args.seed), main_jobs, prune, caches, rows, models)
    if args.second_seed is not None:  # the noise: every method and the control again, no keep bands
        again = Protocol([args.second_seed_speedup], args.methods, with_control=not args.no_control)
        run_methods(bench_with(args.second_seed), again, prune, caches, rows, models)
    print(f"measuring every model against the reference, interleaved, {args.timing_runs} run(s)", flush=True)
    measure_all(bench_with(args.seed), rows, models, test, args.timing_runs)
    write_results(args, rows, reference, reference_acc.top1, time.time() - started)


def write_results(args: argparse.Namespace, rows: List[Row], reference: nn.Module, reference_top1: float,
                  seconds: float) -> None:
    """OUT.json (the run and every row), then OUT.md and OUT.png made from it."""
    meta = {"run": asdict(harness.Run.now()), "reference": args.reference, "reference_top1": reference_top1,
            "reference_params": count_params(reference), "reference_macs": model_macs(reference), "steps": args.steps,
            "batch_size": args.batch_size, "bench_batch_size": args.bench_batch_size, "lr": args.lr,
            "seed": args.seed, "seconds": round(seconds), "timing_runs": args.timing_runs,
            "recipe": Recipe.of(args).describe()}
    write_json_atomic(harness.beside(args.out, ".json"), {"meta": meta, "rows": [asdict(r) for r in rows]})
    render(meta, [asdict(r) for r in rows], args.out)


if __name__ == "__main__":
    harness.run_script(main)
