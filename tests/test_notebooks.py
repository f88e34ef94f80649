"""The notebooks are stored executed, with their outputs, and what they show is what the code
produces today: each runs top to bottom (their cells assert what they show) and its fresh outputs
match the stored ones, numbers aside (``python notebooks/execute.py`` refreshes them)."""
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("notebook_runner", ROOT / "notebooks" / "execute.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)
NOTEBOOKS = runner.notebooks()
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")
REFRESH = "run `python notebooks/execute.py` to store what the notebooks produce now"


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def errors(notebook) -> list:
    return [o for cell in code_cells(notebook) for o in cell.outputs if o.output_type == "error"]


def shown(cell) -> list[tuple[str, ...]]:
    """What a cell shows, numbers masked: per output its kind, its media types and its text.
    Consecutive chunks of one stream are one text (the kernel splits a stream as it flushes, so
    where a chunk ends depends on timing)."""
    merged = []
    for out in cell.outputs:
        text = out.get("text", "") if out.output_type == "stream" else out.get("data", {}).get("text/plain", "")
        if "image/png" in out.get("data", {}):
            text = ""  # a figure's repr names its memory address
        kind = (out.output_type, out.get("name", ""), *sorted(out.get("data", {})))
        if out.output_type == "stream" and merged and merged[-1][0] == kind:
            merged[-1][1] += text
        else:
            merged.append([kind, text])
    return [(*kind, " ".join(NUMBER.sub("#", text).split())) for kind, text in merged]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebook_was_executed_top_to_bottom_with_its_outputs(path):
    cells = code_cells(nbformat.read(path, as_version=4))
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), REFRESH
    assert not errors(nbformat.read(path, as_version=4))
    for cell in cells:
        if "plt.show()" in cell.source or "Image(" in cell.source:
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), (cell.source, REFRESH)
        if "print(" in cell.source:
            assert any(o.output_type == "stream" and o.name == "stdout" for o in cell.outputs), (cell.source, REFRESH)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_shows_what_is_stored(path, tmp_path):
    stored = nbformat.read(path, as_version=4)
    fresh = runner.execute_notebook(path, tmp_path)
    assert not errors(fresh)
    for before, now in zip(code_cells(stored), code_cells(fresh)):
        assert shown(now) == shown(before), f"{path.name}, cell {before.execution_count}: {REFRESH}"
