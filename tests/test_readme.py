"""The README's and the tour's examples run as written: each file's blocks in order, in one
fresh interpreter, as a user runs them (float32 by default, none of the suite's settings such as
64-bit mode or strict dtype promotion); and the README's sweep config is a valid config.

A fresh interpreter also keeps these examples apart from the suite's process state: twice an
intermittent XLA compile crash (a segfault in `backend_compile_and_load`) killed the worker
running them in-process, after the worker had imported torch for other tests."""

import os
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOUR = ROOT / "docs" / "tour.md"


def _blocks(path: pathlib.Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)


def _run(path: pathlib.Path, tmp_path: pathlib.Path) -> str:
    """stdout of the file's Python blocks run top to bottom in a new interpreter (in an empty
    folder; no persistent compilation cache written)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "TF_STRICT")}
    env |= {"TRANSFORMER_FLOWS_NO_CACHE": "1", "JAX_PLATFORMS": "cpu"}
    code = "\n".join(_blocks(path, "python"))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{path.name} failed:\n{done.stderr[-4000:]}"
    return done.stdout


def test_readme_examples_run(tmp_path):
    assert len(_blocks(README, "python")) >= 3  # first script, first fit, bad input
    out = _run(README, tmp_path)
    assert "(61, 32, 3) True" in out
    assert "must be points on the unit sphere" in out


def test_tour_examples_run(tmp_path):
    assert len(_blocks(TOUR, "python")) >= 5
    out = _run(TOUR, tmp_path)
    assert "(61, 32, 3)" in out
    assert "must be points on the unit sphere" in out


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
