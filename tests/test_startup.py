"""The ``polyact`` command starts without heavy imports, and ``polyact``'s lazy names behave as
eager imports did. Checked on ``sys.modules`` in fresh interpreters, not on timings."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import polyact
from polyact.cli import commands as cli

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "tenseal", "fastapi", "uvicorn", "matplotlib", "scipy", "sklearn", "he_backend")


def _fresh(code: str) -> str:
    """stdout of ``code`` run in a new interpreter with this checkout first on the path."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": ""},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _heavy_modules_after(code: str) -> list[str]:
    out = _fresh(f"{code}\nimport json, sys\n"
                 f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    return json.loads(out.splitlines()[-1])


def test_help_of_every_command_imports_nothing_heavy():
    code = (
        "import contextlib, io\n"
        "from polyact.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "commands = parser._subparsers._group_actions[0].choices\n"
        "assert len(commands) >= 8, sorted(commands)\n"
        "for argv in [['--help']] + [[name, '--help'] for name in commands]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "    assert 'usage: polyact' in out.getvalue(), argv\n"
    )
    assert _heavy_modules_after(code) == []


def test_import_polyact_imports_nothing_heavy_until_a_name_is_used():
    assert _heavy_modules_after("import polyact") == []
    assert "torch" in _heavy_modules_after("import polyact\npolyact.fit")


def test_fit_help_names_real_methods_and_activations_and_an_unknown_name_lists_all(capsys):
    from polyact.approx.fitting import METHODS

    assert cli.FIT_METHODS == METHODS
    assert set(cli.COMMON_ACTIVATIONS) <= set(polyact.available_activations())
    assert cli.main(["fit", "no_such_activation", "--interval", "-1", "1", "--degree", "3"]) == cli.EXIT_USAGE
    assert ", ".join(polyact.available_activations()) in capsys.readouterr().err


@pytest.mark.parametrize("name", polyact.__all__)
def test_every_public_name_is_the_object_of_its_module(name):
    value = getattr(polyact, name)
    if name in polyact._SUBMODULES:
        assert value is importlib.import_module(f"polyact.{name}")
    else:
        assert value is getattr(importlib.import_module(f"polyact.{polyact._EXPORTS[name]}"), name)
    assert name in dir(polyact)


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_importing_a_submodule_first_keeps_the_function_of_the_same_name():
    # polyact.tradeoff imports the subpackage polyact.convert, which Python binds as a package
    # attribute; the public names must stay the functions
    out = _fresh("import polyact.tradeoff, polyact\n"
                 "from polyact import convert\n"
                 "print(callable(polyact.fit), callable(polyact.convert), callable(convert))")
    assert out.split() == ["True", "True", "True"]


def test_submodules_stay_reachable_and_unknown_names_fail_clearly():
    assert polyact.nn.poly_act is importlib.import_module("polyact.nn.poly_act")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        polyact.no_such_name
