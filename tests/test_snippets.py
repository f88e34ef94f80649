"""The README's and the documentation's examples run: every ``polyact`` command line parses, the
Python blocks of each page run in order in one namespace (as a reader pastes them), and the
bring-your-own-model commands run end to end. A block that is not run is listed in ``NOT_RUN``
with the reason; a block that is neither run nor listed fails the inventory test."""
from __future__ import annotations

import os
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from polyact.cli.commands import build_parser, main

pytestmark = pytest.mark.isolated  # the pages' examples encrypt: SEAL's pool stays with the process

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")

# (page, first line of the block) -> why it is not run (checked: each names a real block)
NOT_RUN = {
    ("README.md", "from he_backend.service import RemoteClient"): "needs a running HTTPS server and a token "
    "(tests/test_service.py runs RemoteClient against the service)",
    ("docs/how-to/serve.md", "from he_backend.service import RemoteClient"): "needs a running server "
    "(tests/test_service.py)",
}
# Python run before a page's blocks: the names a page leaves to the reader (their own model, data)
PRELUDE = {
    "docs/index.md": """
        from polyact import data, models, train
        digits = data.digits()
        model = models.build_model("mlp", digits.input_shape, 10)
        train.train_classifier(model, digits, epochs=1)
        calib_data, x = digits, digits.x_test[:1].double()
    """,
    "docs/how-to/own-model.md": """
        import torch
        from torch import nn
        class MyNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                          nn.Linear(2 * 14 * 14, 10))
            def forward(self, x):
                return self.body(x)
        torch.manual_seed(0)
        torch.save(MyNet().state_dict(), "weights.pt")
        train_inputs = torch.rand(600, 1, 28, 28)
    """,
    "docs/how-to/precision.md": """
        import polyact
        from polyact import data as datasets, models
        data = datasets.digits()
        model = models.build_model("mlp", data.input_shape, 10)
        polyact.train.train_classifier(model, data, epochs=1)
    """,
}
# pages whose Python examples train, convert or encrypt (seconds to a minute): marked slow
SLOW_PAGES = {"README.md", "docs/getting-started.md", "docs/index.md", "docs/how-to/own-model.md",
              "docs/how-to/precision.md"}


def blocks(page: Path) -> list[tuple[str, int, str]]:
    """The fenced blocks of ``page``: (language, line of the fence, text)."""
    found, lines, i = [], page.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        match = FENCE.match(lines[i].strip())
        if match:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```"))
            found.append((match.group(1), i + 1, textwrap.dedent("\n".join(lines[i + 1 : end]))))
            i = end
        i += 1
    return found


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def command_lines(text: str) -> list[str]:
    """The ``polyact ...`` commands of a shell block (continuations joined, comments and the
    ``[--optional]`` brackets of a synopsis removed)."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for part in line.split("&&"):
            part = part.split("  #")[0].strip()
            if part.startswith("polyact "):
                found.append(part.replace("[", "").replace("]", ""))
    return found


def all_commands() -> list[tuple[str, str]]:
    return [(f"{rel(page)}:{line}", command) for page in PAGES for lang, line, text in blocks(page)
            if lang in ("bash", "sh", "") for command in command_lines(text)]


def test_the_docs_have_examples_to_check():
    pages = {rel(p) for p in PAGES if any(lang == "python" for lang, _, _ in blocks(p))}
    assert {"README.md", "docs/getting-started.md", "docs/how-to/own-model.md"} <= pages
    assert len(all_commands()) >= 20
    for page, first in NOT_RUN:  # every exemption names a block that exists
        assert any(text.splitlines()[0] == first for _, _, text in blocks(ROOT / page)), (page, first)


@pytest.mark.parametrize("where, command", all_commands())
def test_every_polyact_command_line_parses(where, command):
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on a bad option; --help and --version exit 0
        assert exc.code == 0, f"{where}: `{command}` does not parse"


def _python_pages() -> list:
    pages = []
    for page in PAGES:
        if any(lang == "python" for lang, _, _ in blocks(page)):
            marks = [pytest.mark.slow] if rel(page) in SLOW_PAGES else []
            pages.append(pytest.param(page, id=rel(page), marks=marks))
    return pages


def _few_epochs(monkeypatch, most: int = 2) -> None:
    """The examples' training calls, at most ``most`` epochs: the check is that they run as written
    (names, arguments, what they return), not the accuracy they reach, which their tests check."""
    import polyact.train
    from polyact.train import loop, robust

    for module, name in ((loop, "train_classifier"), (robust, "robust_finetune")):
        original = getattr(module, name)

        def capped(*args, _original=original, **kwargs):
            kwargs["epochs"] = min(kwargs.get("epochs", most), most)
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, name, capped)
        monkeypatch.setattr(polyact.train, name, capped)


@pytest.mark.parametrize("page", _python_pages())
def test_python_examples_run_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    _few_epochs(monkeypatch)
    namespace: dict = {"__name__": "__snippet__"}
    exec(textwrap.dedent(PRELUDE.get(rel(page), "")), namespace)
    for lang, line, text in blocks(page):
        if lang != "python" or (rel(page), text.splitlines()[0]) in NOT_RUN:
            continue
        try:
            exec(compile(text, f"{rel(page)}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the example at {rel(page)}:{line} fails: {exc!r}") from exc


MYNETS = """
from torch import nn

class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))
"""


@pytest.mark.slow  # converts, compiles (depth 5, batch packing) and runs 64 images encrypted: seconds
def test_own_model_commands_run_as_written(tmp_path, monkeypatch, digits):
    """docs/how-to/own-model.md's commands, verbatim, on a small net and digits saved as data.npz."""
    import numpy as np
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text(MYNETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    exec(MYNETS, namespace)
    torch.manual_seed(0)
    torch.save(namespace["Net"]().state_dict(), "weights.pt")
    digits.save_npz("data.npz")
    commands = [c for lang, _, text in blocks(ROOT / "docs/how-to/own-model.md") if lang == "bash"
                for c in command_lines(text)]
    assert [c.split()[1] for c in commands] == ["convert", "compile", "encrypt-run"]
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, f"`{command}` failed"
    assert np.load("data.npz")["x_test"].shape[1:] == (1, 8, 8)
    assert os.path.exists("deploy/server.bundle") and os.path.exists("deploy/client.bundle")


def test_readme_demo_summary_is_the_committed_reports():
    """The README quotes docs/demo_report.md's summary (both from one `polyact demo` run)."""
    def summary(page: str) -> str:
        return next(text for lang, _, text in blocks(ROOT / page) if not lang and text.startswith("original CNN"))

    assert summary("README.md") == summary("docs/demo_report.md")
