"""Honest progress and clean interrupts of `transformer-flows run` (issue 21 item 4): the bar
says when it compiles, Ctrl-C prints one line with what is saved and exits 130, and a rerun
resumes to the dataset of an uninterrupted run."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from transformer_flows._progress import COMPILING
from transformer_flows.cli import main
from transformer_flows.experiment import load_config, run_experiment

ROOT = Path(__file__).resolve().parent.parent

# 16 one-combo chunks: chunk 1 is compile + solve, each later one ~0.1 s, so the interrupt
# sent when chunk 1 appears on disk lands while chunks remain.
CONFIG = {
    "name": "interrupt",
    "model": {"field": "SA", "n": 64, "d": 3, "weights": "identity"},
    "sweep": {"beta": {"start": 1.0, "stop": 16.0, "num": 16}, "starts": 1, "chunk_size": 1},
    "time": {"t1": 100.0, "num": 5},
    "solver": {"name": "tsit5", "rtol": 1e-10, "atol": 1e-10, "max_steps": 100000},
    "observables": {"names": ["cluster_count", "energy"], "delta": 1e-3},
    "figures": ["cluster_staircase"],
}
LINE = re.compile(
    r"^interrupted: (\d+)/16 chunks saved in (.+); rerun the same command to resume$", re.M
)


def _argv(config: Path, out: Path) -> list[str]:
    return ["run", str(config), "--out", str(out), "--no-figures", "--no-cache"]


def _saved_chunks(out: Path) -> list[Path]:
    return sorted(out.glob("chunks/*/chunk_*.nc"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(tmp_path, capsys):
    config = tmp_path / "interrupt.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "transformer_flows.cli", *_argv(config, out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not _saved_chunks(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    err = err.decode()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    # The bar said what the silent first chunk was doing, with the elapsed time.
    assert COMPILING in err and "compiled in" in err
    lines = LINE.findall(err)
    assert len(lines) == 1, err
    saved, where = int(lines[0][0]), lines[0][1]
    assert where == str(out)
    # The count is the truth on disk: every saved chunk, and chunks were left to do.
    assert 1 <= saved < 16 and len(_saved_chunks(out)) == saved
    assert not (out / "dataset.nc").exists()

    # The same command again (here in-process) computes only the chunks left.
    assert main([*_argv(config, out), "--no-progress"]) == 0
    assert "dataset" in capsys.readouterr().out
    resumed = xr.open_dataset(out / "dataset.nc", engine="h5netcdf").load()
    assert resumed.attrs["compute_seconds"] > 0

    # Reference: the same config uninterrupted (the program compiled above is reused).
    reference = run_experiment(load_config(config), tmp_path / "reference", progress=False)
    xr.testing.assert_identical(resumed.drop_attrs(deep=False), reference.drop_attrs(deep=False))
    assert int(resumed["cluster_count"].isel(time=-1).min()) >= 1
