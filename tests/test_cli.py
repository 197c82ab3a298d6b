"""The `transformer-flows` command line: `--help`, errors, and a smoke run of every config."""

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import xarray as xr

from transformer_flows.cli import main
from transformer_flows.experiment import load_config

from helpers import SWEEP_CONFIGS as CONFIGS


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["run", "--help"], ["fit", "--help"], ["plot", "--help"], ["summarize", "--help"]],
)
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "usage: transformer-flows" in capsys.readouterr().out


def test_version_is_the_installed_distribution(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"transformer-flows {version('transformer-flows')}"


def test_bad_input_is_a_message_not_a_traceback(tmp_path, capsys):
    config = CONFIGS[0].parent / "figure3.yaml"
    assert main(["run", str(config), "--out", str(tmp_path), "solver.nmae=rk4"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'solver.nmae'" in err and "Traceback" not in err
    assert main(["run", str(config), "--out", str(tmp_path), "solver.rtol="]) == 2
    assert "has no value" in capsys.readouterr().err
    assert main(["run", str(config), "--out", str(tmp_path), "sweep.starts=0"]) == 2
    assert "`sweep.starts`: got 0" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "has not finished" in capsys.readouterr().err
    # --out that is a file, or lies under one, is refused before anything is computed.
    afile = tmp_path / "file"
    afile.write_text("")
    for out in (afile, afile / "below"):
        assert main(["run", str(config), "--out", str(out), "--smoke"]) == 2
        assert "is an existing file" in capsys.readouterr().err or "which is a file"
    assert main(["fit", str(config), "--out", str(tmp_path / "f")]) == 2
    assert "is a 'simulation' config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", str(config), "--out", str(tmp_path), "--bogus"])


def test_schema_command_prints_the_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"SimulationConfig", "TheoryConfig", "FitConfig"} <= set(schema["$defs"])
    assert "SA" in schema["x-registered-names"]["fields"]


def check_figures(paths):
    for path in paths:
        image = matplotlib.image.imread(path) if path.suffix == ".png" else None
        assert path.stat().st_size > 1000
        if image is not None:
            assert image.ndim == 3 and min(image.shape[:2]) > 100
            assert float(np.ptp(image)) > 0  # not a blank canvas


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_smoke_run_of_every_config(path, tmp_path, capsys):
    out = tmp_path / "run"

    def smoke_run(*flags):
        # An override after --out exercises the key=value words argparse leaves over.
        argv = ["run", str(path), "--out", str(out), "--smoke", "--no-progress", *flags]
        return main([*argv, "plot.max_panels_per_row=4"])

    assert smoke_run() == 0
    printed = capsys.readouterr().out
    figures = sorted(
        Path(line.split("figure ")[1]) for line in printed.splitlines() if " figure " in line
    )
    assert len(figures) >= len(load_config(path).figures)
    assert not list(out.rglob("*.tmp-*"))  # every write committed by a rename
    check_figures(figures)
    dataset = xr.open_dataset(out / "dataset.nc", engine="h5netcdf").load()
    assert dataset.attrs["smoke"] == 1 and dataset.attrs["git_commit"]
    if "clustered_fraction" in dataset:
        fraction = dataset["clustered_fraction"]
        assert float(fraction.min()) >= 0 and float(fraction.max()) <= 1
        assert "solver" in dataset.attrs
    if "succeeded" in dataset:
        assert bool(dataset["succeeded"].all())
    # `plot` redraws the same figures from the saved dataset alone.
    redraw = tmp_path / "redraw"
    assert main(["plot", str(out), "--figures-dir", str(redraw)]) == 0
    assert sorted(p.name for p in redraw.iterdir()) == sorted(p.name for p in figures)
    if "clustered_fraction" in dataset or "cluster_count" in dataset:
        capsys.readouterr()  # drop what `plot` printed
        saved_t = float(dataset["time"][1])
        assert main(["summarize", str(out), "--times", str(saved_t), "--betas", "4.0"]) == 0
        printed = capsys.readouterr().out
        assert "NaN" not in printed and "Infinity" not in printed  # strict JSON
        summary = json.loads(printed)
        for row in summary.get("phase_levels", []):
            assert row["t"] == pytest.approx(saved_t)
            if row.get("weights", "identity") == "identity":
                # Γ∞,δ lies in the β range, or is null where no β has clustered yet.
                beta = dataset["beta"]
                theory = row["beta_theory"]
                assert theory is None or float(beta.min()) <= theory <= float(beta.max())
        for row in summary.get("cluster_counts", []):
            assert 1 <= row["q10"] <= row["median"] <= row["q90"] <= int(dataset["n"].max())
            assert sum(row["histogram"].values()) == dataset.sizes["start"]
    # Running again resumes a finished directory: nothing is computed, nothing changes.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("chunks/*/*.nc")}
    assert smoke_run("--no-figures") == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("chunks/*/*.nc")} == stamps
    again = xr.open_dataset(out / "dataset.nc", engine="h5netcdf").load()
    xr.testing.assert_identical(again.drop_attrs(), dataset.drop_attrs())
