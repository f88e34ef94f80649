"""Model files name code (a factory) but never run code the caller did not allow."""
import json
import sys
import textwrap

import pytest
import torch

from polyact.cli.commands import main
from polyact.convert.pipeline import convert
from polyact.convert.storage import (
    UntrustedFactory,
    load_model,
    load_pann,
    save_model,
    save_pann,
)

TABNET = textwrap.dedent("""
    from torch import nn

    class TabNet(nn.Module):
        def __init__(self, features=64, hidden=16, classes=10):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

        def forward(self, x):
            return self.net(x)
""")


@pytest.fixture(scope="module")
def pann_file(digits, digits_mlp, tmp_path_factory):
    pann, _ = convert(digits_mlp, digits, degree=3)
    path = tmp_path_factory.mktemp("storage") / "mlp.pann"
    save_pann(pann, path, input_shape=digits.input_shape)
    return path, pann


def _craft(source, target, factory, kwargs):
    """A copy of a polyact file whose factory is ``factory(**kwargs)``."""
    payload = torch.load(source, weights_only=True)
    payload.update(factory=factory, factory_kwargs=json.dumps(kwargs))
    torch.save(payload, target)
    return target


def _attacks(marker):
    """Factories that would create ``marker`` if the loader called them."""
    return [
        ("os:system", {"command": f"touch {marker}"}),
        ("subprocess:run", {"args": ["touch", str(marker)]}),
        ("builtins:eval", {"source": f"open({str(marker)!r}, 'w')"}),
        ("shutil:copyfile", {"src": __file__, "dst": str(marker)}),
    ]


@pytest.mark.parametrize("attack", range(4))
def test_a_crafted_pann_file_runs_no_code(pann_file, tmp_path, attack):
    marker = tmp_path / "pwned"
    factory, kwargs = _attacks(marker)[attack]
    crafted = _craft(pann_file[0], tmp_path / "evil.pann", factory, kwargs)
    with pytest.raises(UntrustedFactory, match=rf"not one of polyact's own.*factory='{factory}'.*--factory"):
        load_pann(crafted)
    assert not marker.exists()


def test_a_crafted_model_file_runs_no_code(digits_mlp, tmp_path):
    marker = tmp_path / "pwned"
    save_model(digits_mlp, tmp_path / "mlp.pt")
    crafted = _craft(tmp_path / "mlp.pt", tmp_path / "evil.pt", "os:system", {"command": f"touch {marker}"})
    with pytest.raises(UntrustedFactory, match="allow_factories"):
        load_model(crafted)
    assert not marker.exists()


@pytest.mark.parametrize("command", [["compile"], ["encrypt-run"], ["convert", "--model"], ["train", "--model"]])
def test_no_command_runs_code_from_a_file(pann_file, tmp_path, command, capsys):
    marker = tmp_path / "pwned"
    crafted = _craft(pann_file[0], tmp_path / "evil.pann", "os:system", {"command": f"touch {marker}"})
    assert main([*command, str(crafted)]) == 2
    assert "--factory os:system" in capsys.readouterr().err
    assert not marker.exists()


def test_own_factories_load_and_give_identical_outputs(pann_file, digits):
    path, pann = pann_file
    x = digits.x_test[:20]
    with torch.no_grad():
        assert torch.equal(load_pann(path)(x), pann(x))


def test_a_factory_the_caller_names_is_used(digits, tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(TABNET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    sys.modules.pop("mynets", None)
    from polyact.models import resolve_factory

    model = resolve_factory("mynets:TabNet")()  # the current directory is importable
    torch.manual_seed(0)
    pann, _ = convert(model, digits, degree=3)
    save_pann(pann, tmp_path / "tab.pann", factory="mynets:TabNet", input_shape=digits.input_shape)
    with pytest.raises(UntrustedFactory, match="mynets:TabNet"):
        load_pann(tmp_path / "tab.pann")
    x = digits.x_test[:5]
    with torch.no_grad():
        expected = pann(x)
        for kwargs in ({"allow_factories": ["mynets:TabNet"]}, {"factory": "mynets:TabNet"},
                       {"factory": f"{tmp_path / 'mynets.py'}:TabNet"}):
            assert torch.equal(load_pann(tmp_path / "tab.pann", **kwargs)(x), expected), kwargs
