"""MkDocs hook: bring the repository's own files into the site, so nothing is copied by hand.

- ``notebooks/*.ipynb`` become pages ``notebooks/...`` (rendered by mkdocs-jupyter with their stored
  outputs);
- ``README.md`` becomes the page ``readme.md``;
- a line ``<!-- readme-section: TITLE -->`` in a page is replaced by the README's ``## TITLE`` section.

README links into ``docs/`` (``docs/demo_report.md``, ``docs/x.png``) are rewritten relative to the
site root, where those files live.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
SECTION_MARKER = re.compile(r"^<!-- readme-section: (.+?) -->$", re.MULTILINE)


def readme_markdown() -> str:
    """The README with its ``docs/`` links made relative to the docs folder."""
    return re.sub(r"\]\(docs/", "](", (ROOT / "README.md").read_text(encoding="utf-8"))


def readme_section(title: str) -> str:
    """The body of the README's ``## title`` section (up to the next ``## `` heading)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme_markdown(), re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError(f"README.md has no section '## {title}'; fix the readme-section marker in the docs")
    return match.group(1).strip() + "\n"


@event_priority(100)  # before mkdocs-jupyter turns .ipynb files into pages
def on_files(files: Files, config) -> Files:
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{notebook.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    files.append(File.generated(config, "readme.md", content=readme_markdown()))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    return SECTION_MARKER.sub(lambda m: readme_section(m.group(1)), markdown)
