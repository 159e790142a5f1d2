"""Typed reports of `cait compress`, `cait sweep`, `cait eval` and `cait export`: `parts.py` (a measured
model, how it was timed, a speedup), `compress.py`, `sweep.py`, `evaluate.py` and `export.py`.

Each report turns into the JSON users read (`to_json()`: `--json`, report.json, the Python API's
dicts) and keeps dict-style reads by JSON key working (`parts.JsonView`); what is read back from a
file (a checkpoint's report.json) has `from_json()`.
"""
