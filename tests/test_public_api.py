"""Every public name is where the documentation says it is: each row of the API reference's table
(``docs/api/index.md``) names objects reachable from the package (``polyact.fit``,
``he_backend.compile``, ``polyact.train.robust_finetune``) and the module that defines them; every
exported name has a row; the command keeps its verbs."""
import importlib
import re
import tomllib
from pathlib import Path

import pytest

import he_backend
import polyact
from polyact.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| (?P<names>`[^|]+`) \| `(?P<module>[\w.]+)` \| .+ \|$")
VERBS = {"bench", "compile", "convert", "demo", "encrypt-run", "fit", "serve", "tradeoff", "train", "tune"}


def _documented() -> list[tuple[str, str]]:
    """``(dotted name from its package, defining module)`` for every name in the table."""
    rows = [ROW.match(line) for line in (ROOT / "docs/api/index.md").read_text().splitlines()]
    return [(name, row["module"]) for row in rows if row for name in re.findall(r"`([\w.]+)`", row["names"])]


DOCUMENTED = _documented()


def test_the_table_is_read():
    assert len(DOCUMENTED) >= 40
    assert ("fit", "polyact.approx.fitting") in DOCUMENTED and ("compile", "he_backend.lowering.compiler") in DOCUMENTED


@pytest.mark.parametrize("name, module", DOCUMENTED, ids=[f"{m}:{n}" for n, m in DOCUMENTED])
def test_each_documented_name_is_reachable_from_its_package_and_defined_in_its_module(name, module):
    package = importlib.import_module(module.split(".")[0])
    value = package
    for part in name.split("."):
        value = getattr(value, part)
    assert value is getattr(importlib.import_module(module), name.split(".")[-1])
    if hasattr(value, "__module__") and not isinstance(value, str):
        assert value.__module__ == module


@pytest.mark.parametrize("package", [polyact, he_backend], ids=lambda p: p.__name__)
def test_every_exported_name_is_documented(package):
    exported = set(package.__all__) - set(getattr(package, "_SUBMODULES", ()))
    documented = {name for name, module in DOCUMENTED if module.split(".")[0] == package.__name__}
    assert exported - documented == set()


def test_the_design_names_keep_working():
    assert callable(polyact.fit) and callable(polyact.convert) and callable(polyact.train.robust_finetune)
    assert callable(he_backend.compile) and callable(he_backend.run_interactive)
    assert isinstance(he_backend.Client, type) and isinstance(he_backend.Server, type)
    from polyact import convert, fit  # the functions, not the modules of the same names
    from polyact.train import robust_finetune

    assert convert is polyact.convert and fit is polyact.fit and robust_finetune is polyact.train.robust_finetune


def test_the_command_keeps_its_verbs_and_its_entry_point():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(choices) == VERBS
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["polyact"]
    module, _, function = script.partition(":")
    assert getattr(importlib.import_module(module), function) is importlib.import_module("polyact.cli.commands").main
