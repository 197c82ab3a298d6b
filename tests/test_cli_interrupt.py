"""Honest progress and clean interrupts of `transformer-flows run` (issue 21 item 4): the bar
says when it compiles, Ctrl-C prints one line with what is saved and exits 130, and a rerun
resumes to the dataset of an uninterrupted run."""

import io
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr
import yaml
from tqdm import tqdm

import transformer_flows as tf
from transformer_flows import _fit as fit_module, experiment
from transformer_flows._progress import COMPILING
from transformer_flows.cli import main
from transformer_flows.experiment import load_config, run_experiment
from transformer_flows.experiment._build import (
    build_fit_model,
    build_flow,
    build_optimizer,
    build_task,
)

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


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _saved_chunks(out: Path) -> list[Path]:
    return sorted(out.glob("chunks/*/chunk_*.nc"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT")
def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(tmp_path, capsys, monkeypatch):
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

    # The same command again (here in-process) computes only the chunks left; a Ctrl-C while
    # its figures are drawn leaves the dataset whole and says so.
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(experiment, "draw_figures", _interrupt)
        argv = ["run", str(config), "--out", str(out), "--no-cache", "--no-progress"]
        assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    # Without a bar, a first chunk that compiles for over 2 s says so on one line of its own.
    notice = re.compile(re.escape(COMPILING) + r"… compiled in \d+\.\d s\n")
    err = notice.sub("", err, count=1)
    assert err == (
        f"interrupted while drawing figures: the dataset dataset.nc in {out} is complete and "
        f"valid; `transformer-flows plot {out}` draws them"
    )
    resumed = xr.open_dataset(out / "dataset.nc", engine="h5netcdf").load()
    assert resumed.attrs["compute_seconds"] > 0

    # Reference: the same config uninterrupted (the program compiled above is reused).
    reference = run_experiment(load_config(config), tmp_path / "reference", progress=False)
    xr.testing.assert_identical(resumed.drop_attrs(deep=False), reference.drop_attrs(deep=False))
    assert int(resumed["cluster_count"].isel(time=-1).min()) >= 1


def test_compile_notice_shows_the_elapsed_time_while_the_first_call_runs():
    from transformer_flows._progress import compile_notice

    stream = io.StringIO()
    with tqdm(total=3, file=stream, mininterval=0) as bar:
        with compile_notice(bar, delay=0.05, every=0.2):
            time.sleep(0.5)  # a first call: tracing and compiling
        with compile_notice(bar, delay=5.0):
            pass  # an already compiled program: nothing shown
    text = stream.getvalue()
    assert f"{COMPILING}: 0 s" in text and "compiled in 0." in text
    assert text.count("compiled in") == text.count("compiled in 0.")
    quiet = io.StringIO()
    with tqdm(total=3, file=quiet, disable=True) as bar, compile_notice(bar, delay=0.0):
        time.sleep(0.05)
    assert quiet.getvalue() == ""


FIT_CONFIG = ROOT / "configs" / "fit_two_clusters.yaml"


def test_fit_interrupted_reports_the_checkpointed_step(tmp_path, monkeypatch):
    config = load_config(FIT_CONFIG, ["task.n=4", "train.batch_size=2"])
    model, task, flow = build_fit_model(config), build_task(config), build_flow(config)
    calls = []

    def fake_make_step(*args):
        def step(model, opt_state, key):  # no solve, no compile: steps 1, 2 pass, 3 is stopped
            calls.append(key)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return model, opt_state, np.float32(len(calls))

        return step

    monkeypatch.setattr(fit_module, "make_step", fake_make_step)
    monkeypatch.setattr(fit_module, "evaluate", lambda *args: {"heldout_loss": 0.0})
    checkpoint = tmp_path / "checkpoint.eqx"
    with pytest.raises(tf.FitInterrupted) as stopped:
        tf.fit(
            model,
            task,
            build_optimizer(config),
            key=jax.random.key(0),
            num_steps=5,
            flow=flow,
            checkpoint=checkpoint,
            checkpoint_every=2,
        )
    assert (stopped.value.step, stopped.value.num_steps) == (2, 5)
    assert str(stopped.value) == f"fit interrupted: 2/5 steps saved in {checkpoint}"
    assert np.load(str(checkpoint) + ".history.npy").tolist() == [1.0, 2.0]


def test_fit_command_ctrl_c_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fit"

    def stopped(*args, checkpoint, num_steps, **kwargs):
        raise tf.FitInterrupted(3, num_steps, checkpoint)

    monkeypatch.setattr("transformer_flows.experiment._fit_run.fit", stopped)
    argv = ["fit", str(FIT_CONFIG), "--out", str(out), "--no-cache", "task.n=4"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == f"interrupted: 3/300 steps saved in {out}; rerun the same command to resume\n"


def test_reported_counts_at_the_interrupt(tmp_path):
    from transformer_flows.experiment._interrupt import RunInterrupted, reported

    on_disk = []
    with pytest.raises(RunInterrupted) as stopped:
        with reported(tmp_path, "texts") as saved:
            saved.total, saved.recount = 5, lambda: len(on_disk)
            on_disk += ["a", "b"]  # counted when the interrupt comes, not before
            raise KeyboardInterrupt
    assert (stopped.value.saved, stopped.value.total) == (2, 5)
    assert str(stopped.value) == (
        f"interrupted: 2/5 texts saved in {tmp_path}; rerun the same command to resume"
    )
    with pytest.raises(KeyboardInterrupt) as early:  # before any work was counted
        with reported(tmp_path, "texts"):
            raise KeyboardInterrupt
    assert type(early.value) is KeyboardInterrupt
