"""Hostile inputs (issue 20): data is never code, a run touches only its own files, YAML
cannot blow up, a non-finite solve is a failure, and config migration never drops a key.
Each test is named by what it protects."""

import os
import textwrap

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from transformer_flows.cli import main
from transformer_flows.experiment import (
    ConfigError,
    RunDirectory,
    config_from_dict,
    import_fields,
    load_config,
    load_dataset,
    run_sweep,
)

from helpers import FIT_CONFIGS

FIT_CONFIG = FIT_CONFIGS[0]

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
    # The flag holds for that command only (main runs in-process here, as in notebooks).
    assert "TRANSFORMER_FLOWS_NO_IMPORTS" not in os.environ
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


# --- a run touches only its own files ----------------------------------------------------


def test_a_run_never_deletes_a_users_files_that_look_like_temporaries(tmp_path):
    out = tmp_path / "mine"
    run = RunDirectory(out)
    with run.lock():
        run.claim("a: 1\n", "f" * 64)
    notes, data = out / "notes", out / "chunks" / "g"
    notes.mkdir()
    data.mkdir(parents=True)
    keep = [
        notes / "draft.tmp1",
        notes / "table.csv.tmp-42-deadbeef",
        data / "table.csv.tmp-42-deadbeef",
        out / "table.csv.tmp-42-deadbeef",
    ]
    for path in keep:
        path.write_text("keep")
    ours = [out / "dataset.nc.tmp-7-0123abcd", data / "chunk_00001.nc.tmp-7-0123abcd"]
    for path in ours:
        path.write_bytes(b"half")
    with run.lock():
        assert sorted(run.remove_temporaries()) == sorted(ours)
    assert all(path.read_text() == "keep" for path in keep)


def test_a_nonempty_foreign_out_is_refused_unless_asked(tmp_path, capsys):
    from transformer_flows.experiment import StoreError, allow_nonempty_out

    out = tmp_path / "home"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "draft.tmp1").write_text("keep")
    (out / "thesis.tex").write_text("keep")
    run = RunDirectory(out)
    with pytest.raises(StoreError, match="--allow-nonempty-out.*nothing there is deleted"):
        with run.lock():
            run.claim("a: 1\n", "f" * 64)
    assert not (out / "config.yaml").exists()
    with allow_nonempty_out(), run.lock():
        run.claim("a: 1\n", "f" * 64)
        run.remove_temporaries()
    assert (out / "notes" / "draft.tmp1").read_text() == "keep"
    # The command line: refused with exit 2 and the flag named.
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_raw()))
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep")
    assert main(["run", str(config), "--out", str(other), "--no-figures"]) == 2
    assert "--allow-nonempty-out" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]  # untouched


@pytest.mark.parametrize("name", [".lock", "config.yaml", "dataset.nc", "chunks"])
def test_symlinked_control_files_are_refused_never_followed(tmp_path, name):
    from transformer_flows.experiment import StoreError

    target = tmp_path / "precious"
    target.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(target)
    run = RunDirectory(out)
    with pytest.raises(StoreError, match="symbolic link"):
        with run.lock():
            run.claim("a: 1\n", "f" * 64)
            run.write_dataset(_dataset())
            run.read_chunk("chunks/g/chunk_00000.nc", "f" * 64)
    assert target.read_text() == "precious" and (out / name).is_symlink()


def test_a_fifo_lock_file_is_refused_without_blocking(tmp_path):
    from transformer_flows.experiment import StoreError

    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / ".lock")
    with pytest.raises(StoreError, match="not a regular file"):
        with RunDirectory(out).lock():
            pass


def _dataset():
    import xarray as xr

    return xr.Dataset({"a": ("combo", np.arange(2.0))}, coords={"combo": np.arange(2)})


# --- non-finite is failure, everywhere ---------------------------------------------------


@pytest.fixture(scope="module")
def overflow():
    """The issue's repro: USA at β = 1000, NormalizedEuler dt0 = 0.1, float32 (e^{1000}
    overflows). One start, four save times."""
    import jax
    import jax.numpy as jnp

    import transformer_flows as tf

    x0 = tf.sample_sphere(jax.random.key(0), 8, 2, dtype=jnp.float32)
    ts = jnp.linspace(0.0, 4.0, 5, dtype=jnp.float32)
    return tf.UnnormalizedSelfAttention(1000.0), x0, ts


def test_an_overflowing_fixed_step_solve_is_a_failure_not_a_result(overflow):
    import transformer_flows as tf

    field, x0, ts = overflow
    trajectory = tf.solve(field, x0, ts, solver=tf.NormalizedEuler(), dt0=0.1, throw=False)
    assert not np.all(np.isfinite(trajectory.xs))  # the states did overflow
    assert not bool(trajectory.succeeded) and trajectory.result == tf.RESULTS.overflow
    # (throw=True raises this message: tests/test_hostile_inputs.py's mean-field and batch
    # tests check throw= without compiling another solve here.)
    assert "time_rescaled=True" in tf.RESULTS.overflow._enumeration[tf.RESULTS.overflow]
    # The cure the message names: the rescaled time τ = e^{β} t keeps the states finite.
    rescaled = tf.UnnormalizedSelfAttention(1000.0, time_rescaled=True)
    fine = tf.solve(rescaled, x0, ts, solver=tf.NormalizedEuler(), dt0=0.1)
    assert bool(fine.succeeded) and np.allclose(np.linalg.norm(fine.xs, axis=-1), 1, atol=1e-5)


def test_an_overflowing_observation_is_a_failure_even_as_a_count(overflow):
    import jax.numpy as jnp

    import transformer_flows as tf

    field, x0, ts = overflow
    counted = tf.solve(
        field,
        x0,
        ts,
        solver=tf.NormalizedEuler(),
        dt0=0.1,
        throw=False,
        observe=lambda x: jnp.sum(x[:, 0] > 0),  # an integer count of NaN states is 0
    )
    assert not bool(counted.succeeded)


def test_an_overflowing_noisy_solve_is_a_failure(overflow):
    import jax

    import transformer_flows as tf

    field, x0, ts = overflow
    noisy = tf.solve(
        field,
        x0,
        ts,
        dt0=0.1,
        noise=tf.IndependentNoise(10.0),
        key=jax.random.key(1),
        throw=False,
    )
    assert not bool(noisy.succeeded)


def test_solve_batch_counts_an_overflowing_system_as_failed():
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import transformer_flows as tf

    x0s = tf.sample_sphere(jax.random.key(0), 8, 2, dtype=jnp.float32).reshape(1, 8, 2)
    x0s = jnp.concatenate([x0s, jnp.full_like(x0s, jnp.nan)])  # NaN rows: refused
    ts = jnp.linspace(0.0, 1.0, 3, dtype=jnp.float32)
    with pytest.raises(ValueError, match="x0s"):
        tf.solve_batch(tf.SelfAttention(1.0), x0s, ts)
    # Finite start, overflowing field: β = 1e30 makes the logits inf.
    batch = tf.solve_batch(
        tf.UnnormalizedSelfAttention(1e30), x0s[:1], ts, throw=False, max_steps=64
    )
    assert not bool(batch.succeeded[0])

    # A solve that reaches t1 with an observable that is NaN (log of a negative number) is
    # a failure too, not a measurement.
    def nan_observable(x):
        return jnp.log(x[0, 0] - 2)

    observed = tf.solve_batch(
        tf.SelfAttention(1.0), x0s[:1], ts, throw=False, observe=nan_observable
    )
    assert int(observed.num_steps[0]) < 64 and not bool(observed.succeeded[0])
    with pytest.raises(eqx.EquinoxRuntimeError, match="overflowed"):
        tf.solve_batch(tf.SelfAttention(1.0), x0s[:1], ts, observe=nan_observable)


def test_a_sweep_masks_and_counts_overflowing_solves_and_exits_3(tmp_path, capsys):
    raw = tiny_raw(
        model__field="USA",
        sweep={"beta": [1.0, 1000.0], "starts": 2, "seed": 3},
        solver={"name": "normalized_euler", "dt": 0.1},
    )
    config = tmp_path / "overflow.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--no-figures", "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "2 of 4 solves failed: 2 overflowed (NaN or inf states)" in err
    assert "time_rescaled" in err and "float64" in err
    dataset, _ = load_dataset(out)
    usa = dataset.squeeze()
    ok = usa["succeeded"].values.astype(bool)
    assert ok.tolist() == [[True, True], [False, False]]  # β = 1 fine, β = 1000 failed
    assert np.all(usa["cluster_count"].values[~ok] == -1)
    assert np.all(np.isnan(usa["clustered_fraction"].values[~ok]))
    assert dataset.attrs["failed_solves"] == 2


def test_mean_field_refuses_what_is_not_a_density():
    import jax.numpy as jnp

    import transformer_flows as tf

    equation = tf.MeanFieldCircle(1.0, model="USA", kappa=10.0, modes=8)
    ts = jnp.asarray([0.0, 0.1])
    uniform = jnp.full(16, 1 / (2 * jnp.pi))
    for bad, why in [
        (-uniform, "min -0.159"),
        (jnp.zeros(16), "mass 0"),
        (uniform.at[3].set(jnp.nan), "non-finite"),
        (2 * uniform, "mass 2"),
    ]:
        with pytest.raises(ValueError, match=f"density0.*{why}"):
            tf.solve_mean_field(equation, bad, ts)
    tf.solve_mean_field(equation, uniform, ts, max_steps=4, throw=False)  # accepted


def test_mean_field_honours_throw_when_max_steps_is_hit():
    import equinox as eqx
    import jax.numpy as jnp

    import transformer_flows as tf

    equation = tf.MeanFieldCircle(1.0, model="USA", kappa=1.0, modes=8)
    density = (1 + 0.5 * jnp.cos(equation.theta)) / (2 * jnp.pi)
    ts = jnp.asarray([0.0, 50.0])
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"max_steps reached.*KenCarp4"):
        tf.solve_mean_field(equation, density, ts, max_steps=4)
    failed = tf.solve_mean_field(equation, density, ts, max_steps=4, throw=False)
    assert not bool(failed.succeeded)


# --- YAML cannot blow up -----------------------------------------------------------------

LAUGHS = """
a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
"""


def test_yaml_aliases_are_refused_with_their_line(tmp_path, capsys):
    base = yaml.safe_dump(tiny_raw())
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text(base + "smoke:\n  x: &a [1, 2]\n  y: *a\n")
    with pytest.raises(ConfigError, match=r"line \d+: the alias \*a is refused"):
        load_config(laughs)
    laughs.write_text(base + "model:\n  params:" + LAUGHS.replace("\n", "\n    "))
    assert main(["run", str(laughs), "--out", str(tmp_path / "out")]) == 2
    assert "anchors and aliases are not allowed" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="alias"):
        config_from_dict(tiny_raw(), ["model.params={a: &x 1, b: *x}"])


def test_free_form_sections_are_size_capped():
    big = {f"k{i}": i for i in range(2000)}
    for section in ("model__params", "model__placement_params", "smoke"):
        with pytest.raises(ConfigError, match="more than 1000 values"):
            config_from_dict(tiny_raw(**{section: big}))
    # Shared references (possible from Python, not YAML) are counted, never expanded.
    laughs = ["lol"] * 10
    for _ in range(8):
        laughs = [laughs] * 10
    with pytest.raises(ConfigError, match="more than 1000 values"):
        config_from_dict(tiny_raw(smoke={"x": laughs}))


# --- config migration never drops a key silently -----------------------------------------


@pytest.mark.parametrize(
    "solver, refusal",
    [
        ({"name": "tsit5", "method": "normalized_euler", "dt": 0.1}, "both name a solver"),
        ({"method": "normalized_euler", "scheme": "tsit5"}, "disagree"),
        ({"method": "adaptive", "scheme": "bosh3", "dt": 0.1}, "dt = 0.1 would be ignored"),
    ],
)
def test_a_solver_migration_never_drops_a_key(solver, refusal):
    with pytest.raises(ConfigError, match=refusal):
        config_from_dict(tiny_raw(solver=solver))


def test_a_fit_migration_never_drops_a_key():
    raw = yaml.safe_load(FIT_CONFIG.read_text())
    raw["flow"] = {**raw["flow"], "solver": "bosh3"}
    raw["solver"] = {**raw.get("solver", {}), "name": "tsit5"}
    with pytest.raises(ConfigError, match="flow.solver = 'bosh3'.*disagree"):
        config_from_dict(raw)
    assert load_config(FIT_CONFIG).experiment == "fit"


# --- properties (hypothesis): random configs, field parameters, damage ---------------------
# Small max_examples, no deadline, and no compilation per example: the config properties
# compile nothing, the solve property reuses one jitted program, the damage property one
# sweep program.


PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "x", "nan", "-inf", "1e999", "[]", "{}", "SA", "tsit5", "a:b"]),
    st.lists(st.integers(-3, 10), max_size=3),
)
OVERRIDE_KEYS = [
    "model.n",
    "model.d",
    "model.field",
    "model.weights",
    "model.heads",
    "model.layers",
    "model.initial",
    "model.placement",
    "model.params.gain",
    "sweep.beta",
    "sweep.starts",
    "sweep.seed",
    "sweep.chunk_size",
    "sweep.memory_budget_mb",
    "sweep.tolerance",
    "time.t1",
    "time.num",
    "solver.name",
    "solver.dt",
    "solver.rtol",
    "solver.max_steps",
    "precision",
    "observables.delta",
    "observables.names",
    "figures",
    "name",
    "bogus.key",
]


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS), HOSTILE_VALUES), max_size=3))
def test_random_overrides_are_valid_or_refused_at_their_key(overrides):
    """A valid result plans (the sweep it would run) and round-trips; an invalid one is a
    ConfigError naming one of the keys (never another exception, never a traceback)."""
    from transformer_flows.experiment._plan import plan_sweep

    texts = [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
        for key, value in overrides
    ]
    texts = [text.removesuffix("\n...").removesuffix(" ...") for text in texts]
    try:
        config = config_from_dict(tiny_raw(), texts)
    except ConfigError as err:
        message = str(err)
        named = {key.split(".")[0] for key, _ in overrides} | {key for key, _ in overrides}
        assert "Traceback" not in message
        assert any(part in message for part in named) or "override" in message, message
        return
    plan_sweep(config)
    again = config_from_dict(config.resolved())
    assert again.numerics() == config.numerics()


@pytest.fixture(scope="module")
def jitted_solve():
    """One compiled program: SA(beta) from x0 (4, 2), float64, NormalizedEuler dt0 = 0.25."""
    import equinox as eqx
    import jax.numpy as jnp

    import transformer_flows as tf

    ts = jnp.linspace(0.0, 1.0, 3)

    @eqx.filter_jit
    def run(beta, x0):
        return tf.solve(
            tf.SelfAttention(beta), x0, ts, solver=tf.NormalizedEuler(), dt0=0.25, throw=False
        )

    return run


@PROPERTY
@given(
    beta=st.floats(allow_nan=True, allow_infinity=True),
    x0=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=8, max_size=8),
)
def test_random_field_parameters_give_a_named_refusal_or_finite_states_on_the_sphere(
    jitted_solve, beta, x0
):
    import equinox as eqx
    import jax.numpy as jnp

    import transformer_flows as tf

    points = np.asarray(x0).reshape(4, 2)
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(points, axis=1, keepdims=True)
        points = np.where(norms > 0, points / norms, points)  # on the sphere where possible
    try:
        trajectory = jitted_solve(jnp.asarray(beta), jnp.asarray(points))
    except (ValueError, eqx.EquinoxRuntimeError) as err:
        assert "beta" in str(err) or "x0" in str(err) or "`x`" in str(err), str(err)
        return
    if bool(trajectory.succeeded):
        xs = np.asarray(trajectory.xs)
        assert np.all(np.isfinite(xs))
        np.testing.assert_allclose(np.linalg.norm(xs, axis=-1), 1.0, atol=1e-12)
    else:
        assert trajectory.result == tf.RESULTS.overflow


@PROPERTY
@given(shape=st.lists(st.integers(0, 3), max_size=3), dtype=st.sampled_from(["int32", "bool"]))
def test_wrong_shapes_and_dtypes_of_x0_are_refused_before_compiling(shape, dtype):
    import transformer_flows as tf

    x0 = np.ones(shape, dtype=dtype)
    if x0.ndim == 2 and 0 not in x0.shape and dtype == "int32":
        x0 = x0.astype(np.float64) / np.sqrt(x0.shape[1])  # a valid start: not this property
        return
    with pytest.raises(ValueError, match="x0"):
        tf.solve(tf.SelfAttention(1.0), x0, [0.0, 1.0])


DAMAGE = st.sampled_from(
    [
        "truncate_chunk",
        "delete_chunk",
        "garbage_chunk",
        "symlink_chunk",
        "foreign_file_in_chunks",
        "foreign_folder",
        "delete_config",
        "truncate_config",
        "garbage_dataset",
        "symlink_lock",
        "fifo_config",
    ]
)


@PROPERTY
@given(damages=st.lists(DAMAGE, min_size=1, max_size=3, unique=True))
def test_damage_to_a_run_directory_is_recomputed_or_refused_never_trusted(finished, damages):
    """Whatever the damage, rerunning the same config either rebuilds the same numbers or is
    refused (StoreError); files the run did not write survive, links are never followed."""
    import shutil
    import tempfile
    import warnings
    from pathlib import Path

    import xarray as xr

    from transformer_flows.experiment import StoreError, StoreWarning

    config = config_from_dict(tiny_raw(figures=["phase_diagram"]))
    reference = load_dataset(finished)[0]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        shutil.copytree(finished, out, symlinks=True)
        precious = Path(folder) / "precious"
        precious.write_text("precious")
        chunk = sorted(out.glob("chunks/*/chunk_*.nc"))[0]
        kept = []
        for damage in damages:
            if damage == "truncate_chunk" and chunk.is_file() and not chunk.is_symlink():
                chunk.write_bytes(chunk.read_bytes()[:100])
            elif damage == "delete_chunk" and chunk.exists() and not chunk.is_symlink():
                chunk.unlink()
            elif damage == "garbage_chunk" and not chunk.is_symlink():
                chunk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"x" * 500)
            elif damage == "symlink_chunk":
                chunk.unlink(missing_ok=True)
                chunk.symlink_to(precious)
            elif damage == "foreign_file_in_chunks":
                kept.append(chunk.parent / "notes.tmp1")
            elif damage == "foreign_folder":
                kept.append(out / "mine" / "draft.nc.tmp-1-0123abcd")
            elif damage == "delete_config":
                (out / "config.yaml").unlink(missing_ok=True)
            elif damage == "truncate_config" and (out / "config.yaml").is_file():
                (out / "config.yaml").write_text("# fingerprint: ")
            elif damage == "garbage_dataset":
                (out / "dataset.nc").write_bytes(b"not a dataset")
            elif damage == "symlink_lock":
                (out / ".lock").unlink()
                (out / ".lock").symlink_to(precious)
            elif damage == "fifo_config":
                (out / "config.yaml").unlink(missing_ok=True)
                os.mkfifo(out / "config.yaml")
        for path in kept:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("keep")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StoreWarning)
                rebuilt = run_sweep(config, out, progress=False)
        except StoreError as err:
            assert str(out) in str(err)
        else:
            for name in ("succeeded", "clustered_fraction", "cluster_count"):
                xr.testing.assert_identical(rebuilt[name], reference[name])
        assert precious.read_text() == "precious"
        assert all(path.read_text() == "keep" for path in kept)


# --- found by the hostile pass (experiments/hostile_pass.py) -------------------------------


def test_solve_options_must_be_scalars_named_in_the_refusal():
    """A ValueError from `solve` itself (or, under the tests' runtime type checks, a type
    error naming the same argument)."""
    import jax.numpy as jnp

    import transformer_flows as tf

    x0 = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    for name, value in (("dt0", []), ("dt0", [0.1, 0.2]), ("rtol", []), ("atol", [1e-6] * 2)):
        extra = {"solver": tf.NormalizedEuler()} if name == "dt0" else {}
        with pytest.raises((ValueError, TypeError), match=name):
            tf.solve(tf.SelfAttention(1.0), x0, jnp.asarray([0.0, 1.0]), **{name: value, **extra})


def test_observables_refuse_no_tokens_and_a_delta_that_is_not_a_number():
    import jax.numpy as jnp

    import transformer_flows as tf

    x0 = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])
    for function in (tf.mean_cosine, tf.mean_radius, tf.gram, tf.order_parameter):
        with pytest.raises(ValueError, match="at least one token"):
            function(jnp.zeros((0, 2)))
    for function in (tf.count_clusters, tf.clustered_fraction):
        with pytest.raises((ValueError, TypeError), match="delta"):
            function(x0, "a")


def test_a_fit_with_a_nan_beta_is_a_failure_exit_3(tmp_path, monkeypatch, capsys):
    """Issue 20 item 9: a fit whose trained β is NaN is reported as diverged (metrics null,
    exit status 3), never as a fitted number."""
    import equinox as eqx
    import jax.numpy as jnp

    import transformer_flows as tf
    import transformer_flows.experiment as experiment
    from transformer_flows.experiment._fit_run import _diverged

    trained = eqx.tree_at(lambda f: f.beta, tf.SelfAttention(1.0), jnp.asarray(jnp.nan))
    assert _diverged(trained, np.asarray([1.0, 0.5]))
    assert _diverged(tf.SelfAttention(jnp.asarray(1.0)), np.asarray([1.0, np.inf]))
    assert not _diverged(tf.SelfAttention(jnp.asarray(1.0)), np.asarray([1.0, 0.5]))
    metrics = {"train_loss": None, "headline": "accuracy", "accuracy": None}
    metrics.update(accuracy_before=0.5, steps=3, train_seconds=1.0, wall_seconds=1.0)
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: {**metrics, "diverged": True})
    assert main(["fit", str(FIT_CONFIG), "--out", str(tmp_path / "fit")]) == 3
    assert "the fit diverged" in capsys.readouterr().err
