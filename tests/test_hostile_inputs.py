"""Hostile inputs (issue 20): data is never code, a run touches only its own files, YAML
cannot blow up, a non-finite solve is a failure, and config migration never drops a key.
Each test is named by what it protects."""

import textwrap

import pytest
import yaml

from transformer_flows.cli import main
from transformer_flows.experiment import (
    ConfigError,
    config_from_dict,
    import_fields,
    load_dataset,
    run_sweep,
)

# A module whose import leaves a mark: reading data must never run it.
EVIL = textwrap.dedent(
    """
    import pathlib
    pathlib.Path(__file__).with_name("IMPORTED").write_text("ran")
    from transformer_flows import SelfAttention as Field
    """
)


def tiny_raw(**changes):
    raw = {
        "name": "tiny",
        "model": {"n": 4, "d": 2},
        "sweep": {"beta": [0.5, 4.0], "starts": 2, "seed": 3},
        "time": {"t1": 2.0, "num": 3},
        "solver": {"name": "normalized_euler", "dt": 0.25},
        "precision": "float32",
        "observables": {"names": ["clustered_fraction", "cluster_count"]},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section] = {**raw[section], name: value}
        else:
            raw[section] = value
    return raw


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """`evilmod.py` on sys.path; returns the file its import would create."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "evilmod.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("TRANSFORMER_FLOWS_NO_IMPORTS", raising=False)
    return folder / "IMPORTED"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny sweep (float32, fixed step: one small program)."""
    out = tmp_path_factory.mktemp("finished")
    config = config_from_dict(tiny_raw(figures=["phase_diagram"]))
    run_sweep(config, out, progress=False)
    return out


# --- data is never code ------------------------------------------------------------------


def test_reading_a_config_never_imports_the_class_it_names(evil, capsys):
    config = config_from_dict(tiny_raw(model__field="evilmod:Field"))
    assert config.model.field == "evilmod:Field" and not evil.exists()
    # `this:X` printed the Zen of Python while validating; now it is a name until `run`.
    config_from_dict(tiny_raw(model__field="this:X"))
    assert "Beautiful is better" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="neither a registered field"):
        config_from_dict(tiny_raw(model__field="os.system('x'):y"))


def test_run_imports_only_after_everything_else_validated(evil, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(model__field="evilmod:Field")))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "sweep.starts=0"]) == 2
    assert "sweep.starts" in capsys.readouterr().err
    assert not evil.exists() and not out.exists()
    # Valid: `run` imports it (configs may name code), after validating the rest.
    config = import_fields(config_from_dict(tiny_raw(model__field="evilmod:Field")))
    assert evil.exists() and config.model.field == "evilmod:Field"


def test_no_imports_switch_refuses_import_paths(evil, tmp_path, monkeypatch, capsys):
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(model__field="evilmod:Field")))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-imports"]) == 2
    assert "TRANSFORMER_FLOWS_NO_IMPORTS" in capsys.readouterr().err
    assert not evil.exists() and not (tmp_path / "out").exists()
    monkeypatch.setenv("TRANSFORMER_FLOWS_NO_IMPORTS", "1")
    with pytest.raises(ConfigError, match="model.field.*import path"):
        config_from_dict(tiny_raw(model__field="evilmod:Field"))
    config_from_dict(tiny_raw(model__field="SA"))  # registered names still work
    assert not evil.exists()


def test_plot_and_summarize_never_import_a_stored_field_name(finished, evil, tmp_path, capsys):
    """A dataset received from someone else names `evilmod:Field`: reading, plotting and
    summarizing it rebuild from stored data and names only."""
    import shutil

    from transformer_flows.experiment._store import atomic_to_netcdf

    copy = tmp_path / "received"
    shutil.copytree(finished, copy)
    dataset, _ = load_dataset(copy)
    stored = yaml.safe_load(dataset.attrs["config"])
    stored["model"]["field"] = "evilmod:Field"
    dataset.attrs["config"] = yaml.safe_dump(stored)
    atomic_to_netcdf(copy / "dataset.nc", dataset)
    assert load_dataset(copy)[1].model.field == "evilmod:Field"
    assert main(["plot", str(copy), "--figures-dir", str(tmp_path / "figures")]) == 0
    assert main(["summarize", str(copy), "--times", "1.0", "--betas", "4.0"]) == 0
    capsys.readouterr()
    assert list((tmp_path / "figures").glob("*.png")) and not evil.exists()
