"""Griffe extension: doctest examples in docstrings render as Python code blocks.

A docstring's `>>>` lines (and the output lines after them, up to a blank line) are plain text to
Markdown, which reads `>>>` as nested quotes and `x["a"]["b"]` as a reference link. Outside a
Google-style `Examples:` section (which griffe already handles) this wraps each such run in a
```pycon fence, so the examples show as code in the API reference. A block indented by four spaces
after a blank line (reST's and plain docstrings' code block) becomes a ```python fence likewise.
"""
from __future__ import annotations

import ast

import griffe


def fence_doctests(text: str) -> str:
    out: list[str] = []
    lines = text.split("\n")
    i, in_fence = 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += [f"{indent}```pycon", *block, f"{indent}```"]
            continue
        if not in_fence and line.startswith("    ") and line.strip() and (not out or not out[-1].strip()) \
                and not line.lstrip().startswith(("-", "*")):
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```python", *block, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        docstring = obj.docstring
        if docstring is None or "Examples:" in docstring.value:
            return
        text = docstring.value
        if isinstance(node, ast.Module):  # griffe dedented it; a module's docstring starts at column 0
            text = (ast.get_docstring(node, clean=False) or text).strip("\n")
        docstring.value = fence_doctests(text)
