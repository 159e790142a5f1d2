"""The printed tables say the speedup the verdicts use."""
from rich.console import Console

from cait_cli.interface.report import comparison_table
from cait_cli.pipeline.reports.parts import ModelSide, Speedup


def rendered(table) -> str:
    console = Console(record=True, width=120)
    console.print(table)
    return console.export_text()


def test_the_throughput_row_shows_the_paired_speedup_not_the_ratio_of_medians():
    # medians 257 and 509.5 img/s are 1.98x apart, while the paired repeats said 1.78x
    original, compressed = ModelSide(throughput=257.0), ModelSide(throughput=509.5)
    text = rendered(comparison_table(original, compressed, Speedup(1.78, 1.58, 2.29)))
    assert "1.78x faster (paired)" in text and "1.98x" not in text
    unpaired = rendered(comparison_table(original, compressed, None))
    assert "1.98x (ratio of medians)" in unpaired and "faster" not in unpaired
