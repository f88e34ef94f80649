"""The command's help and version: every option explains itself, the data-set help names every
data set polyact.data loads, and --version is the installed distribution's."""
import argparse
import re
from importlib.metadata import version

import pytest

from polyact import data
from polyact.cli.commands import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_version_is_the_installed_distribution(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"polyact {version('polyact')}"


def test_every_option_of_every_command_has_help():
    missing = [f"{name} {a.option_strings[0]}" for name, sub in subcommands().items() for a in sub._actions
               if a.option_strings and not a.help]
    assert missing == []


@pytest.mark.parametrize("command", ["convert", "train", "tradeoff", "encrypt-run"])
def test_dataset_help_names_every_data_set_polyact_loads(command):
    help_text = next(a.help for a in subcommands()[command]._actions if "--dataset" in a.option_strings)
    with pytest.raises(ValueError) as unknown:  # load_dataset's own list of the NAME:FOLDER forms
        data.load_dataset("no-such-data-set")
    folders = re.findall(r"(\w+):FOLDER", str(unknown.value))
    assert set(folders) >= {"mnist", "fashion_mnist", "cifar10", "images"}
    for name in [*data.BUILTIN, *(f"{kind}:DIR" for kind in folders), ".npz"]:
        assert name in help_text, f"{command} --dataset help omits {name}"
