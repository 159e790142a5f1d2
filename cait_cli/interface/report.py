"""Rich tables for the terminal: original vs compressed, speed comparisons, a sweep's targets."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from ..pipeline.reports.compress import CompressReport, Training
from ..pipeline.reports.evaluate import EvalReport
from ..pipeline.reports.export import ExportReport, ExportSide, Int8Report
from ..pipeline.reports.parts import ModelSide, Speedup, Timing
from ..pipeline.reports.sweep import SweepReport
from ..pipeline.training.teacher import ORIGINAL
from ..pipeline.training.train import FEATURE_LOSS

DASH = "—"
NOT_APPLICABLE = "not applicable"


def _num(value: Optional[float], fmt: str) -> str:
    return DASH if value is None else format(value, fmt)


def _pct(value: Optional[float]) -> str:
    return DASH if value is None else f"{100 * value:.2f}%"


def _change(new: Optional[float], old: Optional[float], fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    if new is None or old is None:
        return DASH
    return f"{(new - old) * scale:+{fmt}}{suffix}"


def comparison_table(base: ModelSide, comp: ModelSide, speedup: Optional[Speedup],
                     title: str = "original vs compressed", labels: tuple = ("original", "compressed"),
                     unlabelled: bool = False) -> Table:
    """Two measured sides (params, macs, throughput, top1, top5, agreement, feature cosine) and the change.

    speedup: the paired measurement, shown as the throughput's change so that the table says the
    speedup every verdict uses. The ratio of the two median throughputs is not it: on a noisy
    machine the two can differ by a tenth (1.98x against a paired 1.78x). None: that ratio, named so.
    unlabelled (the data's classes are not the model's): top-1 and top-5 show as "not applicable"
    rather than being left out.
    """
    table = Table(title=title)
    for column in ("", *labels, "change"):
        table.add_column(column, justify="right" if column else "left")
    rows = [  # label, what it reads, its format, the change, whether it does not apply
        ("params (M)", lambda s: s.params, lambda v: _num(v and v / 1e6, ".2f"), _ratio, False),
        ("GMACs", lambda s: s.macs, lambda v: _num(v and v / 1e9, ".2f"), _ratio, False),
        ("throughput (img/s)", lambda s: s.throughput, lambda v: _num(v, ".1f"),
         lambda n, o: _speedup(n, o, speedup), False),
        ("top-1", lambda s: s.top1, _pct, lambda n, o: _change(n, o, ".2f", 100, " pt"), unlabelled),
        ("top-5", lambda s: s.top5, _pct, lambda n, o: _change(n, o, ".2f", 100, " pt"), unlabelled),
        ("agreement with original", lambda s: s.agreement, _pct, lambda n, o: DASH, False),
        ("feature cosine to original", lambda s: s.feature_cosine, lambda v: _num(v, ".4f"), lambda n, o: DASH,
         False),
    ]
    for label, read, fmt, change, not_applicable in rows:
        old, new = read(base), read(comp)
        if not_applicable:
            table.add_row(label, NOT_APPLICABLE, NOT_APPLICABLE, DASH)
            continue
        if old is None and new is None:
            continue
        table.add_row(label, fmt(old), fmt(new), change(new, old))
    return table


def _ratio(new: Optional[float], old: Optional[float]) -> str:
    return DASH if not new or not old else f"{new / old:.2f}x"


def _speedup(new: Optional[float], old: Optional[float], paired: Optional[Speedup]) -> str:
    if paired is not None:
        return f"{paired.ratio:.2f}x faster (paired)"
    return DASH if not new or not old else f"{new / old:.2f}x (ratio of medians)"


def estimator_note(timing: Timing) -> str:
    """How the throughputs (and so the speedup) were read from the timed repeats."""
    return f"throughput is the median of {timing.repeats or 'the'} repeats (min-max)"


def summary_line(report: CompressReport) -> str:
    measured, timing = report.measured, report.timing
    spread = f" (repeats {measured.low:.2f}-{measured.high:.2f}x)" if measured.low is not None else ""
    return (f"target {report.target_speedup:g}x, measured {measured.ratio:.2f}x{spread}, "
            f"predicted {_num(report.predicted_speedup, '.2f')}x on {timing.device or '?'}, "
            f"batch {timing.batch_size}, {timing.precision}")


def landing_line(report: CompressReport) -> str:
    """How many measurements landing took, and how far the planner's first prediction was off."""
    first, count = report.attempts[0], len(report.attempts)
    return (f"landing: {count} measurement{'s' if count > 1 else ''}; the first model measured "
            f"{first.measured:.2f}x, predicted {first.predicted:.2f}x ({report.first_prediction_error:+.0%})")


def distill_words(kind: str, temperature: float = 1.0) -> str:
    """What --distill KIND teaches; the temperature is named inside the soft half, the only one it softens."""
    soft = "KL to its probabilities" + (f" at temperature {temperature:g}" if temperature != 1.0 else "")
    hard = "cross-entropy to its top-1 class"
    words = {"soft": f"soft ({soft})", "hard": f"hard ({hard})",
             "both": f"soft and hard (the mean of {soft} and {hard})"}
    return words.get(kind, kind)


def distillation_line(training: Training) -> Optional[str]:
    """Which teacher trained the model and how; None when it was not trained on logits (no data,
    a headless model, or a report from before the teacher was recorded)."""
    if not training.steps or training.distill is None:
        return None
    teacher = "the original" if training.teacher in (None, ORIGINAL) else training.teacher
    line = f"distilled from {teacher}: {distill_words(training.distill, training.temperature)}"
    if training.labels == "used":
        line += ", plus cross-entropy on the labels"
    if training.token_distill:
        line += (f"; tokens x {training.token_distill:g} (1 - cosine to its final tokens averaged over the cells "
                 "of each merged token)")
    return line


def print_compress_report(console: Console, report: CompressReport, out: Optional[Path]) -> None:
    training = report.training
    unlabelled = training is not None and training.labels == NOT_APPLICABLE
    console.print(comparison_table(report.baseline, report.compressed, report.measured, unlabelled=unlabelled))
    console.print(summary_line(report), highlight=False)
    if report.attempts:
        console.print(landing_line(report), highlight=False)
    if unlabelled:
        console.print(training.labels_note, highlight=False)
    distilled = distillation_line(training) if training is not None else None
    if distilled:
        console.print(distilled, highlight=False)
    if training is not None and training.schedule == "continuous" and len(training.steps) > 1:
        console.print("calibration and fine-tuning: one stream of batches (none seen twice) under one warm-up and "
                      "cosine", highlight=False)
    if training is not None and training.loss == FEATURE_LOSS:
        console.print("headless model (no classifier): distilled on features, 1 - cosine of the final tokens on "
                      "the full patch grid plus 1 - cosine of the pooled feature", highlight=False)
    if training is not None and training.processes > 1:
        console.print(f"trained on {training.processes} processes, global batch {training.global_batch} "
                      f"({training.batch_size_per_process} per process)", highlight=False)
    if report.skipped_images:
        console.print(f"skipped {report.skipped_images} unreadable images", highlight=False)
    if out is not None:
        console.print(f"wrote {out} (model.safetensors, config.json, report.json)", highlight=False)


def single_table(side: ModelSide, title: str, unlabelled: bool = False) -> Table:
    """One measured side; unlabelled: top-1 and top-5 show as "not applicable"."""
    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [("params (M)", _num(side.params and side.params / 1e6, ".2f")),
            ("GMACs", _num(side.macs and side.macs / 1e9, ".2f")),
            ("throughput (img/s)", _speed_cell(side)),
            ("top-1", NOT_APPLICABLE if unlabelled else _pct(side.top1)),
            ("top-5", NOT_APPLICABLE if unlabelled else _pct(side.top5)),
            ("peak GPU memory (MB)", _num(side.peak_memory_mb, ".0f"))]
    for label, value in rows:
        if value != DASH:
            table.add_row(label, value)
    return table


def _speed_cell(side: ModelSide) -> str:
    if side.throughput is None:
        return DASH
    return f"{side.throughput:.1f} ({side.throughput_min:.1f}-{side.throughput_max:.1f})"


def print_eval_report(console: Console, report: EvalReport) -> None:
    results, timing = report.results, report.timing
    unlabelled = report.labels_note is not None
    if report.speedup is not None:
        console.print(comparison_table(results["baseline"], results["model"], report.speedup,
                                       title=f"{report.model} vs {report.baseline}", labels=("baseline", "model"),
                                       unlabelled=unlabelled))
        console.print(f"speedup {report.speedup.ratio:.2f}x (repeats {report.speedup.low:.2f}-"
                      f"{report.speedup.high:.2f}x)", highlight=False)
    else:
        console.print(single_table(results["model"], report.model, unlabelled=unlabelled))
    if unlabelled:
        console.print(report.labels_note, highlight=False)
    console.print(f"{timing.device}, batch {timing.batch_size}, {timing.precision}, "
                  f"{timing.threads} threads; {estimator_note(timing)}", highlight=False)
    if report.skipped_images:
        console.print(f"skipped {report.skipped_images} unreadable images", highlight=False)


def export_check_line(report: ExportReport) -> str:
    counts = report.checked.checked_images
    checks = ", ".join(f"{kind} {diff:.2g} ({counts[kind]} image{'' if counts[kind] == 1 else 's'})"
                       for kind, diff in report.checked.max_difference.items())
    return f"max |ONNX Runtime - PyTorch| of the logits: {checks}; tolerance {report.checked.tolerance:g}"


def onnx_side(side: ExportSide, agreement: Optional[float] = None) -> ModelSide:
    """A timed file as the tables show a side: its top-1 from the int8 check, when it measured one."""
    return ModelSide(side.params, side.macs, side.throughput, side.throughput_min, side.throughput_max,
                     top1=side.top1, agreement=agreement)


def print_export_report(console: Console, report: ExportReport) -> None:
    checked, results, timing, int8 = report.checked, report.results, report.timing, report.int8
    shape = "x".join(str(d) for d in checked.input_size)
    console.print(f"wrote {report.out} ({report.file_mb:.1f} MB, opset {checked.opset}, batch "
                  f"{checked.batch}, input {shape})", highlight=False)
    console.print(export_check_line(report), highlight=False)
    compared = int8.verdict.compared if int8 else None
    agreement = compared.agreement if compared else {}
    if int8 is not None:
        print_int8_check(console, report, int8, onnx_side(results["model"], agreement.get("fp32")))
    if report.speedup is not None:
        console.print(comparison_table(onnx_side(results["baseline"]),
                                       onnx_side(results["model"], agreement.get("baseline")), report.speedup,
                                       title="under ONNX Runtime", labels=("baseline", "model")))
        console.print(f"ONNX Runtime speedup {report.speedup.ratio:.2f}x (repeats {report.speedup.low:.2f}-"
                      f"{report.speedup.high:.2f}x); the baseline's own export differs from PyTorch by "
                      f"{results['baseline'].max_difference:.2g}", highlight=False)
    elif int8 is None:
        console.print(single_table(onnx_side(results["model"]), f"{checked.model} under ONNX Runtime"))
    console.print(f"{timing.device}, batch {timing.batch_size}, {int8.mode if int8 else 'fp32'}, "
                  f"{timing.threads} threads; {estimator_note(timing)}", highlight=False)


def int8_check_line(int8: Int8Report) -> str:
    """What the int8 file was checked on, and by what."""
    kept = ", ".join(int8.keep_fp32) or "nothing"
    raced = int8.raced()
    method = int8.method + (f", the faster of {' and '.join(raced)}" if len(raced) > 1 else "")
    verdict = int8.verdict
    if verdict.compared is None:
        random = verdict.random_check
        return (f"int8 ({method}, {kept} kept in fp32): accuracy not measured (no --data); on "
                f"{random.images} random images its logits are off by {random.relative_error:.2g} of the "
                f"largest, and it agrees with fp32 on {100 * random.agreement:.0f}% of the top-1 classes")
    note = f"; {verdict.labels_note}" if verdict.labels_note else ""
    return (f"int8 ({method}, {kept} kept in fp32): {verdict.checked_by} {verdict.drop:.2f} pt below "
            f"fp32 (--max-drop {int8.max_drop:g}) on {verdict.images}{note}")


def print_int8_check(console: Console, report: ExportReport, int8: Int8Report, int8_side: ModelSide) -> None:
    speedup = report.int8_speedup
    console.print(comparison_table(onnx_side(report.results["fp32"]), int8_side, speedup,
                                   title="int8 vs fp32 under ONNX Runtime", labels=("fp32", "int8")))
    console.print(f"int8 speedup over fp32 {speedup.ratio:.2f}x (repeats {speedup.low:.2f}-{speedup.high:.2f}x)",
                  highlight=False)
    console.print(int8_check_line(int8), highlight=False)


def sweep_table(report: SweepReport) -> Table:
    """One row per target (the original first): measured speedup, landing, accuracy, size, checkpoint."""
    unlabelled = report.labels_note is not None
    table = Table(title=f"{report.model}: speed against accuracy, in {report.out}")
    for column in ("target", "speedup (repeats)", "landing", "top-1 (change)", "agreement", "params (M)", "GMACs",
                   "checkpoint"):
        table.add_column(column, justify="left" if column in ("target", "landing", "checkpoint") else "right")
    original = report.original or ModelSide()
    table.add_row("original", "1.00x", DASH, NOT_APPLICABLE if unlabelled else _pct(original.top1), DASH,
                  *_size(original), DASH)
    for point in report.points:
        speed = point.measured
        top1 = NOT_APPLICABLE if unlabelled or point.error else (
            f"{_pct(point.top1)} ({_change(point.top1, original.top1, '.2f', 100, ' pt')})")
        agreement = _pct(point.agreement) if point.feature_cosine is None else f"cos {point.feature_cosine:.4f}"
        table.add_row(f"{point.target:g}x", f"{speed.ratio:.2f}x ({speed.low:.2f}-{speed.high:.2f})" if speed
                      else DASH, point.status, DASH if point.error else top1, agreement, *_size(point),
                      Path(point.checkpoint).name if speed else DASH)
    return table


def _size(side) -> tuple:
    """Params (M) and GMACs cells of a ModelSide or a SweepPoint."""
    return _num(side.params and side.params / 1e6, ".2f"), _num(side.macs and side.macs / 1e9, ".2f")


def shared_line(report: SweepReport) -> str:
    """What the points shared and what that saved, said as the estimate it is."""
    parts = [work.what + (f" {work.seconds:.1f} s" if work.seconds is not None else "")
             + (f" ({work.note})" if work.note else "") for work in report.shared]
    saved = (f"; saved about {report.saved_seconds:.0f} s against {report.computed} runs of compress (an estimate: "
             f"{report.computed - 1} x the shared work counted per run)" if report.computed > 1 else "")
    return "done once for every target: " + "; ".join(parts) + saved


def print_sweep_report(console: Console, report: SweepReport, sweep_json: Path) -> None:
    console.print(sweep_table(report))
    timing = report.timing
    console.print(f"{timing.device}, batch {timing.batch_size}, {timing.precision}; the speedup is the median of "
                  "the paired repeats (min-max)", highlight=False)
    if report.labels_note:
        console.print(report.labels_note, highlight=False)
    for point in report.points:
        if point.error:
            console.print(f"{point.target:g}x not compressed: {point.error}", highlight=False)
    front = [f"{p.target:g}x" for p in report.points if p.pareto]
    if front:
        console.print(f"on the Pareto front (no other point, nor the original, as fast and more accurate): "
                      f"{', '.join(front)}", highlight=False)
    resumed = [f"{p.target:g}x" for p in report.points if p.resumed]
    if resumed:
        console.print(f"read back from their checkpoints (--resume): {', '.join(resumed)}", highlight=False)
    if report.shared:
        console.print(shared_line(report), highlight=False)
    plot = f"plot: {Path(report.out) / report.plot}" if report.plot else f"no plot: {report.plot_skipped}"
    console.print(f"{plot}; wrote {sweep_json}", highlight=False)
