"""Thread choice (polyact.threads): the override is obeyed where the work runs, the automatic choice
keeps the digits networks on one thread, and MACs are counted as the layers' definitions say."""
import pytest
import torch
from torch import nn

from polyact import threads
from polyact.cli import demo
from polyact.cli.commands import EXIT_USAGE, main
from polyact.models import build_model
from polyact.train import loop


class _Stop(Exception):
    """Raised by the recording stand-in for training: the test has what it needs."""


@pytest.fixture
def seen(monkeypatch):
    """Record torch's thread count where training starts (CLI and demo), then stop; restore the
    process's thread settings afterwards (use_threads changes them process-wide)."""
    counts: list[int] = []

    def record(*_args, **_kwargs):
        counts.append(torch.get_num_threads())
        raise _Stop

    monkeypatch.setattr(loop, "train_classifier", record)  # the CLI imports it at call time
    monkeypatch.setattr(demo, "train_classifier", record)  # the demo at module import
    monkeypatch.delenv(threads.ENV, raising=False)
    for variable in threads._CHILD_VARIABLES:  # use_threads writes them; monkeypatch puts them back
        monkeypatch.setenv(variable, "1")
    before = torch.get_num_threads()
    yield counts
    threads.use_threads(before)


def test_env_var_sets_the_threads_of_polyact_train(seen, monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    with pytest.raises(_Stop):
        main(["train", "--model", "mlp", "--epochs", "1"])
    assert seen == [3]


def test_threads_option_wins_over_the_env_var(seen, monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    with pytest.raises(_Stop):
        main(["train", "--model", "cnn", "--epochs", "1", "--threads", "2"])
    assert seen == [2]


def test_demo_obeys_the_env_var_and_threads(seen, monkeypatch, tmp_path):
    monkeypatch.setenv(threads.ENV, "3")
    with pytest.raises(_Stop):
        main(["demo", "--out", str(tmp_path)])
    with pytest.raises(_Stop):
        main(["demo", "--out", str(tmp_path), "--threads", "2"])
    torch.set_num_threads(4)
    with pytest.raises(_Stop):  # the library's entry point, without the command around it
        demo.run_demo(tmp_path, demo.DemoConfig(threads=2, progress=False))
    monkeypatch.delenv(threads.ENV)
    torch.set_num_threads(4)
    with pytest.raises(_Stop):  # chosen: 1 for the digits CNN
        demo.run_demo(tmp_path, demo.DemoConfig(progress=False))
    assert seen == [3, 2, 2, 1]


def test_without_an_override_the_digits_cnn_trains_on_one_thread(seen, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(16)))  # an idle 16-core machine
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    torch.set_num_threads(4)  # what torch would start with on a machine of 4 cores
    with pytest.raises(_Stop):
        main(["train", "--model", "cnn", "--epochs", "1"])
    assert seen == [1]


def test_automatic_choice_small_vs_large_networks_and_the_load(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.delenv(threads.ENV, raising=False)
    for name in ("mlp", "cnn"):
        assert threads.choose_threads(build_model(name, (1, 8, 8), 10), (1, 8, 8)) == 1
    resnet20 = build_model("resnet", (3, 32, 32), 10, channels=(16,) * 3 + (32,) * 3 + (64,) * 3)
    assert threads.choose_threads(resnet20, (3, 32, 32)) == 16  # 2.6 G MACs per batch of 64
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (13.5, 0.0, 0.0))  # 13 of 16 cores busy
    assert threads.choose_threads(resnet20, (3, 32, 32)) == 3
    monkeypatch.setenv(threads.ENV, "5")
    assert threads.choose_threads(build_model("cnn", (1, 8, 8), 10), (1, 8, 8)) == 5


def test_macs_are_counted_from_the_layer_shapes():
    # conv 2->6, 3x3, stride 1, padding 1 on 2x5x7: 6*5*7 outputs x 2*9 products; grouped conv
    # 6->6 in 3 groups, 1x1: 6*5*7 outputs x 2; linear 210->4: 4 outputs x 210
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1, groups=3), nn.Flatten(),
                          nn.Linear(210, 4))
    assert threads.macs_per_sample(model, (2, 5, 7)) == 210 * 18 + 210 * 2 + 4 * 210
    assert model.training  # the probe ran on a copy


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_exits_2_naming_the_variable(value, seen, monkeypatch, capsys):
    monkeypatch.setenv(threads.ENV, value)
    assert main(["train", "--model", "mlp", "--epochs", "1"]) == EXIT_USAGE
    assert "POLYACT_THREADS" in capsys.readouterr().err and seen == []
