"""The README's and the tour's examples run as written (each file in one namespace, in order),
and the README's sweep config is a valid config."""

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOUR = ROOT / "docs" / "tour.md"


def _blocks(path: pathlib.Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def _run(path: pathlib.Path) -> dict:
    namespace: dict = {}
    for block in _blocks(path, "python"):
        exec(compile(block, str(path), "exec"), namespace)
    return namespace


def test_readme_examples_run(capsys):
    assert len(_blocks(README, "python")) >= 3  # first script, first fit, bad input
    namespace = _run(README)
    assert namespace["traj"].xs.shape == (61, 32, 3)
    assert "must be points on the unit sphere" in capsys.readouterr().out


def test_tour_examples_run(capsys):
    assert len(_blocks(TOUR, "python")) >= 5
    _run(TOUR)
    assert "must be points on the unit sphere" in capsys.readouterr().out


def test_readme_sweep_config_is_valid():
    from transformer_flows.experiment import SimulationConfig, config_from_dict

    (block,) = _blocks(README, "yaml")
    config = config_from_dict(yaml.safe_load(block), default_name="first_sweep")
    assert isinstance(config, SimulationConfig)
    assert len(config.sweep.beta) == 10 and config.sweep.starts == 16
    # The commands below it run that file under the name the README gives it.
    commands = "".join(_blocks(README, "bash"))
    assert "transformer-flows run first_sweep.yaml --out out/first_sweep" in commands
    assert "transformer-flows summarize out/first_sweep" in commands
