"""MkDocs hook: the site's home page is README.md, with its links made relative to docs/.

docs/index.md holds the marker `<!-- readme -->`; this hook replaces it at build time, so the
home page cannot drift from the README (which GitHub and PyPI show) and nobody keeps a copy.
Why a hook: pymdownx.snippets could include README.md, but not rewrite its links, which point
into docs/ from the repository root.
"""
from __future__ import annotations

from pathlib import Path

MARKER = "<!-- readme -->"


def home_page(readme: str) -> str:
    """README.md's text as the site's home page: links into docs/ made relative to it."""
    return (readme.replace("The site is built from [`docs/`](docs/index.md) with MkDocs",
                           "This site is built from `docs/` with MkDocs")
            .replace("](docs/", "](")
            .replace("](CHANGELOG.md)", "](changelog.md)"))  # the site includes it as changelog.md


def on_page_markdown(markdown: str, page, config, files):
    if MARKER not in markdown:
        return markdown
    readme = Path(config["config_file_path"]).resolve().parent / "README.md"
    return markdown.replace(MARKER, home_page(readme.read_text()))
