"""Rich tables for the terminal: original vs compressed, and speed comparisons."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from rich.console import Console
from rich.table import Table

from ..pipeline.export.quantize import raced_methods
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


def comparison_table(base: Dict[str, Any], comp: Dict[str, Any], title: str = "original vs compressed",
                     labels: tuple = ("original", "compressed"), not_applicable: tuple = ()) -> Table:
    """Two measured sides (params, macs, throughput, top1, top5, agreement) and the change.

    Keys in `not_applicable` (e.g. top1, top5 when the data's classes are not the model's)
    show as "not applicable" rather than being left out.
    """
    table = Table(title=title)
    for column in ("", *labels, "change"):
        table.add_column(column, justify="right" if column else "left")
    rows = [
        ("params (M)", "params", lambda v: _num(v and v / 1e6, ".2f"), lambda n, o: _ratio(n, o)),
        ("GMACs", "macs", lambda v: _num(v and v / 1e9, ".2f"), lambda n, o: _ratio(n, o)),
        ("throughput (img/s)", "throughput", lambda v: _num(v, ".1f"), lambda n, o: _speedup(n, o)),
        ("top-1", "top1", _pct, lambda n, o: _change(n, o, ".2f", 100, " pt")),
        ("top-5", "top5", _pct, lambda n, o: _change(n, o, ".2f", 100, " pt")),
        ("agreement with original", "agreement", _pct, lambda n, o: DASH),
        ("feature cosine to original", "feature_cosine", lambda v: _num(v, ".4f"), lambda n, o: DASH),
    ]
    for label, key, fmt, change in rows:
        old, new = base.get(key), comp.get(key)
        if key in not_applicable:
            table.add_row(label, NOT_APPLICABLE, NOT_APPLICABLE, DASH)
            continue
        if old is None and new is None:
            continue
        table.add_row(label, fmt(old), fmt(new), change(new, old))
    return table


def _ratio(new: Optional[float], old: Optional[float]) -> str:
    return DASH if not new or not old else f"{new / old:.2f}x"


def _speedup(new: Optional[float], old: Optional[float]) -> str:
    return DASH if not new or not old else f"{new / old:.2f}x faster"


def estimator_note(report: Dict[str, Any]) -> str:
    """How the throughputs (and so the speedup) were read from the timed repeats."""
    return f"throughput is the median of {report.get('repeats', 'the')} repeats (min-max)"


def summary_line(report: Dict[str, Any]) -> str:
    low, high = report.get("measured_speedup_range", [None, None])
    spread = f" (repeats {low:.2f}-{high:.2f}x)" if low is not None else ""
    return (f"target {report['target_speedup']:g}x, measured {report['measured_speedup']:.2f}x{spread}, "
            f"predicted {report.get('predicted_speedup', 0):.2f}x on {report.get('device', '?')}, "
            f"batch {report.get('batch_size')}, {report.get('precision', 'fp32')}")


def print_compress_report(console: Console, report: Dict[str, Any], out: Optional[Path]) -> None:
    training = report.get("training") or {}
    unlabelled = training.get("labels") == NOT_APPLICABLE
    console.print(comparison_table(report.get("baseline", {}), report.get("compressed", {}),
                                   not_applicable=("top1", "top5") if unlabelled else ()))
    console.print(summary_line(report), highlight=False)
    if unlabelled:
        console.print(training["labels_note"], highlight=False)
    if training.get("loss") == FEATURE_LOSS:
        console.print("headless model (no classifier): distilled on features, 1 - cosine of the final tokens on "
                      "the full patch grid plus 1 - cosine of the pooled feature", highlight=False)
    if training.get("processes", 1) > 1:
        console.print(f"trained on {training['processes']} processes, global batch {training['global_batch']} "
                      f"({training['batch_size_per_process']} per process)", highlight=False)
    if report.get("skipped_images"):
        console.print(f"skipped {report['skipped_images']} unreadable images", highlight=False)
    if out is not None:
        console.print(f"wrote {out} (model.safetensors, config.json, report.json)", highlight=False)


def single_table(side: Dict[str, Any], title: str, not_applicable: tuple = ()) -> Table:
    """One measured side; keys in `not_applicable` (top1, top5) show as "not applicable"."""
    table = Table(title=title)
    table.add_column("")
    table.add_column("value", justify="right")
    top = {key: NOT_APPLICABLE if key in not_applicable else _pct(side.get(key)) for key in ("top1", "top5")}
    rows = [("params (M)", _num(side.get("params") and side["params"] / 1e6, ".2f")),
            ("GMACs", _num(side.get("macs") and side["macs"] / 1e9, ".2f")),
            ("throughput (img/s)", _speed_cell(side)),
            ("top-1", top["top1"]), ("top-5", top["top5"]),
            ("peak GPU memory (MB)", _num(side.get("peak_memory_mb"), ".0f"))]
    for label, value in rows:
        if value != DASH:
            table.add_row(label, value)
    return table


def _speed_cell(side: Dict[str, Any]) -> str:
    if side.get("throughput") is None:
        return DASH
    return f"{side['throughput']:.1f} ({side['throughput_min']:.1f}-{side['throughput_max']:.1f})"


def print_eval_report(console: Console, report: Dict[str, Any]) -> None:
    results = report["results"]
    unlabelled = ("top1", "top5") if report.get("labels_note") else ()
    if "baseline" in results:
        console.print(comparison_table(results["baseline"], results["model"], title=f"{report['model']} vs "
                                       f"{report['baseline']}", labels=("baseline", "model"),
                                       not_applicable=unlabelled))
        low, high = report["speedup_range"]
        console.print(f"speedup {report['speedup']:.2f}x (repeats {low:.2f}-{high:.2f}x)", highlight=False)
    else:
        console.print(single_table(results["model"], report["model"], not_applicable=unlabelled))
    if unlabelled:
        console.print(report["labels_note"], highlight=False)
    console.print(f"{report['device']}, batch {report['batch_size']}, {report['precision']}, "
                  f"{report['threads']} threads; {estimator_note(report)}", highlight=False)
    if report.get("skipped_images"):
        console.print(f"skipped {report['skipped_images']} unreadable images", highlight=False)


def export_check_line(report: Dict[str, Any]) -> str:
    counts = report["checked_images"]
    checks = ", ".join(f"{kind} {diff:.2g} ({counts[kind]} image{'' if counts[kind] == 1 else 's'})"
                       for kind, diff in report["max_difference"].items())
    return f"max |ONNX Runtime - PyTorch| of the logits: {checks}; tolerance {report['tolerance']:g}"


def print_export_report(console: Console, report: Dict[str, Any]) -> None:
    shape = "x".join(str(d) for d in report["input_size"])
    console.print(f"wrote {report['out']} ({report['file_mb']:.1f} MB, opset {report['opset']}, batch "
                  f"{report['batch']}, input {shape})", highlight=False)
    console.print(export_check_line(report), highlight=False)
    results = report["results"]
    agreement = report.get("quantize", {}).get("agreement") or {}
    if "quantize" in report:
        print_int8_check(console, report, {**results["model"], "agreement": agreement.get("fp32")})
    if "baseline" in results:
        model_side = {**results["model"], "agreement": agreement.get("baseline")}
        console.print(comparison_table(results["baseline"], model_side, title="under ONNX Runtime",
                                       labels=("baseline", "model")))
        low, high = report["speedup_range"]
        console.print(f"ONNX Runtime speedup {report['speedup']:.2f}x (repeats {low:.2f}-{high:.2f}x); the "
                      f"baseline's own export differs from PyTorch by {results['baseline']['max_difference']:.2g}",
                      highlight=False)
    elif "quantize" not in report:
        console.print(single_table(results["model"], f"{report['model']} under ONNX Runtime"))
    console.print(f"{report['device']}, batch {report['bench_batch_size']}, {report.get('precision', 'fp32')}, "
                  f"{report['threads']} threads; {estimator_note(report)}", highlight=False)


def int8_check_line(check: Dict[str, Any]) -> str:
    """What the int8 file was checked on, and by what."""
    kept = ", ".join(check["keep_fp32"]) or "nothing"
    raced = raced_methods(check)
    method = check["method"] + (f", the faster of {' and '.join(raced)}" if len(raced) > 1 else "")
    if "drop" not in check:
        random = check["random_check"]
        return (f"int8 ({method}, {kept} kept in fp32): accuracy not measured (no --data); on "
                f"{random['images']} random images its logits are off by {random['relative_error']:.2g} of the "
                f"largest, and it agrees with fp32 on {100 * random['agreement']:.0f}% of the top-1 classes")
    note = f"; {check['labels_note']}" if check.get("labels_note") else ""
    return (f"int8 ({method}, {kept} kept in fp32): {check['checked_by']} {check['drop']:.2f} pt below "
            f"fp32 (--max-drop {check['max_drop']:g}) on {check['images']}{note}")


def print_int8_check(console: Console, report: Dict[str, Any], int8_side: Dict[str, Any]) -> None:
    console.print(comparison_table(report["results"]["fp32"], int8_side, title="int8 vs fp32 under ONNX Runtime",
                                   labels=("fp32", "int8")))
    low, high = report["int8_speedup_range"]
    console.print(f"int8 speedup over fp32 {report['int8_speedup']:.2f}x (repeats {low:.2f}-{high:.2f}x)",
                  highlight=False)
    console.print(int8_check_line(report["quantize"]), highlight=False)
