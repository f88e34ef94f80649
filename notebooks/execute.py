"""Re-execute the notebooks and store them with their outputs, so that a reader (on a code host, in
an editor, on the documentation site) sees what the code produces today.

Usage: python notebooks/execute.py [NOTEBOOK.ipynb ...]      (default: every notebook here)

Each notebook runs top to bottom in a fresh kernel, in a scratch folder (files it writes stay out
of the repository), with ``PYTHONHASHSEED=0``; the notebooks seed torch themselves. Timing
metadata is not recorded, so re-running on unchanged code changes little but the numbers that
depend on encryption randomness. ``tests/test_notebooks.py`` executes them the same way and
checks that the stored outputs match what they produce now.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 900


def notebooks() -> list[Path]:
    """The notebooks of this folder, in reading order."""
    return sorted(HERE.glob("*.ipynb"))


def execute_notebook(path: Path, workdir: str | Path) -> nbformat.NotebookNode:
    """``path`` executed in a fresh ``python3`` kernel whose working directory is ``workdir``;
    raises ``nbclient.exceptions.CellExecutionError`` naming the cell that failed."""
    notebook = nbformat.read(path, as_version=4)
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": os.pathsep.join(
        p for p in (str(HERE.parent), os.environ.get("PYTHONPATH", "")) if p)}
    client = NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks to execute (default: all)")
    args = parser.parse_args(argv)
    for path in args.paths or notebooks():
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            notebook = execute_notebook(path, workdir)
        nbformat.write(notebook, path)
        print(f"{path}: executed and stored in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
