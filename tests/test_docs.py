"""The README and the documentation site (docs/): short, linked, and their code real.

Fast and without mkdocs (`mkdocs build --strict` runs in .ci/run): every relative link in README.md
and docs/ reaches a file, every `--8<--` include names a committed file, every Python block in
docs/ compiles and those whose first line is `# runs in tests/test_docs.py` run (keep them tiny), the README stays
short and keeps the quick start command the benchmark measured, and the home page and CLI reference
hooks render README.md and every command's --help.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_MARK = "# runs in tests/test_docs.py"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```([\w{}. -]*)\n(.*?)^```", re.S | re.M)


def doc_pages() -> list[Path]:
    """The site's own pages (not the results files docs/benchmarks/results links to)."""
    return sorted(p for p in DOCS.rglob("*.md") if "results" not in p.relative_to(DOCS).parts)


def without_code(text: str) -> str:
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def relative_links(text: str) -> list[str]:
    links = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http(s), mailto, ...; anchors within the page
        links.append(target.split("#")[0])
    return links


def test_docs_exist_and_mkdocs_config_names_them():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = doc_pages()
    assert len(pages) >= 15
    for page in pages:
        rel = page.relative_to(DOCS).as_posix()
        assert rel in config, f"docs/{rel} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("path", [ROOT / "README.md", *doc_pages()], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(path: Path):
    missing = [t for t in relative_links(path.read_text()) if t and not (path.parent / t).exists()]
    assert not missing, f"{path.relative_to(ROOT)}: links to missing files: {missing}"


def test_snippet_includes_exist():
    for page in doc_pages():
        for target in re.findall(r'^--8<-- "([^"]+)"', page.read_text(), re.M):
            assert (ROOT / target).is_file(), f"{page.relative_to(ROOT)} includes missing {target}"


def test_link_checker_catches_a_broken_link(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [gone](nowhere.md#x) [web](https://example.org) `[code](no.md)`\n")
    assert [t for t in relative_links(page.read_text()) if not (tmp_path / t).exists()] == ["nowhere.md"]


def python_blocks():
    for page in doc_pages():
        for lang, body in FENCE.findall(page.read_text()):
            if lang.strip().split(" ")[0] in ("python", "py"):
                yield page, body


def test_python_blocks_compile():
    blocks = list(python_blocks())
    assert blocks
    for page, body in blocks:
        compile(body, str(page), "exec")


def test_marked_python_blocks_run():
    marked = [(page, body) for page, body in python_blocks() if body.startswith(RUN_MARK)]
    assert marked, f"no docs block starts with {RUN_MARK!r}"
    for page, body in marked:  # in this process: a fresh interpreter would spend most of the time importing torch
        exec(compile(body, str(page), "exec"), {"__name__": "__docs__"})


def test_readme_is_short_and_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    measured = re.search(r"Command \(README\): `([^`]+)`", (ROOT / "benchmarks/results/quickstart_cpu.md").read_text())
    assert measured and f"```bash\n{measured.group(1)}\n```" in readme, "README's quick start is not the measured one"
    assert "```bash\npython -m pytest -q\n```" in readme
    assert "-m pytest -q" in (ROOT / ".ci/run").read_text()


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / f"{name}.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


def test_site_home_is_the_readme():
    """docs/index.md is README.md, links made relative to docs/, rendered by docs/hooks/home.py."""
    hook = _load_hook("home")
    config = {"config_file_path": str(ROOT / "mkdocs.yml")}
    page = hook.on_page_markdown((DOCS / "index.md").read_text(), None, config, None)
    readme = (ROOT / "README.md").read_text()
    assert hook.MARKER not in page and readme.splitlines()[0] in page
    assert "](docs/" in readme and "](docs/" not in page
    assert "[Changelog](changelog.md)" in page
    missing = [t for t in relative_links(page) if t and not (DOCS / t).exists()]
    assert not missing, f"the home page links to missing files: {missing}"


def test_cli_reference_renders_every_command():
    hook = _load_hook("cli_reference")
    page = (DOCS / "reference" / "cli.md").read_text()
    assert hook.MARKER in page
    rendered = hook.on_page_markdown(page, None, {"config_file_path": str(ROOT / "mkdocs.yml")}, None)
    for command in ("compress", "eval", "export", "push"):
        assert f"## `cait {command}`" in rendered
        assert f"Usage: cait {command} [OPTIONS]" in rendered
    assert "--target-speedup" in rendered and hook.MARKER not in rendered
