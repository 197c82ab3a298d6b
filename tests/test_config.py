"""The config schema: every error names the key path, the value, what is allowed and the fix;
defaults, overrides, smoke sections, legacy keys and the JSON Schema derive from one
declaration."""

import json

import numpy as np
import pytest
import yaml

from transformer_flows.experiment import (
    FIELDS,
    SOLVERS,
    ConfigError,
    FitConfig,
    SimulationConfig,
    config_from_dict,
    import_fields,
    json_schema,
    load_config,
)

from helpers import CONFIGS, FIT_CONFIGS


def minimal(**sections):
    raw = {
        "model": {"n": 4, "d": 2},
        "sweep": {"beta": [0.0, 1.0], "starts": 2},
        "time": {"t1": 1.0, "num": 3},
    }
    raw.update(sections)
    return raw


def minimal_fit(**sections):
    raw = yaml.safe_load(FIT_CONFIGS[0].read_text())
    raw.pop("smoke")
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            raw[section] = {**raw[section], name: value}
        else:
            raw[section] = value
    return raw


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("smoke", [False, True])
def test_shipped_configs_validate_and_round_trip(path, smoke):
    config = load_config(path, smoke=smoke)
    assert config.smoke_run is smoke
    assert config.name == path.stem
    if config.experiment != "fit":
        assert config.figures, "every shipped sweep or theory config draws a figure"
    # The resolved config (saved with the data) re-validates to the same experiment.
    again = config_from_dict(config.resolved())
    assert again.resolved() == config.resolved() and again.numerics() == config.numerics()
    assert yaml.safe_load(config.to_yaml()) == config.resolved()


def test_smoke_section_shrinks_the_run():
    path = CONFIGS[0].parent / "figure3.yaml"
    full, smoke = load_config(path), load_config(path, smoke=True)
    assert full.sweep.starts == 1024 and full.model.d == [2, 8, 32, 128, 512, 1024]
    assert smoke.sweep.starts < full.sweep.starts and len(smoke.sweep.beta) < len(full.sweep.beta)
    assert smoke.figures == full.figures and smoke.observables == full.observables
    # The smoke section changes numbers, so the two runs never share an output directory.
    assert smoke.numerics() != full.numerics()


def test_smoke_section_of_fit_configs():
    path = FIT_CONFIGS[0]
    full, smoke = load_config(path), load_config(path, smoke=True)
    assert smoke.train.steps == 2 < full.train.steps
    assert smoke.model == full.model and smoke.task == full.task


def test_defaults_and_grid():
    config = config_from_dict(
        minimal(sweep={"beta": {"start": 0.1, "stop": 9, "num": 90}, "starts": 3})
    )
    assert isinstance(config, SimulationConfig) and config.experiment == "simulation"
    np.testing.assert_allclose(config.sweep.beta, np.linspace(0.1, 9, 90))
    assert config.solver.name == "tsit5" and config.solver.rtol == 1e-6
    assert config.solver.dt is None and config.solver.adaptive
    assert config.solver.describe() == "Renormalized(tsit5) adaptive PID, rtol=1e-06, atol=1e-06"
    assert config.observables.delta == 1e-3 and config.observables.names == ["clustered_fraction"]
    np.testing.assert_allclose(config.times, [0.0, 0.5, 1.0])
    assert config.model.weights == ["identity"] and config.model.field == "SA"
    assert config.precision == "float64" and config.name == "experiment"
    assert not config.solver.allow_failures


@pytest.mark.parametrize(
    "sections, path, allowed",
    [
        ({"model": {"n": 4, "d": 2, "feild": "SA"}}, "model.feild", "'field'"),
        ({"solver": {"name": "euler"}}, "solver.name", "'normalized_euler'"),
        ({"model": {"n": 4, "d": 2, "field": "sa"}}, "model.field", "'SA', 'USA', 'Kuramoto'"),
        ({"model": {"n": 4, "d": 2, "weights": ["ginibre:psd"]}}, "model.weights", "'goe:wishart'"),
        (
            {"observables": {"names": ["energy", "clusters"]}},
            "observables.names",
            "'cluster_count'",
        ),
        (
            {"sweep": {"beta": {"start": 0, "stop": 9}, "starts": 2}},
            "sweep.beta",
            "start, stop, num",
        ),
        ({"sweep": {"beta": [0.0, -1.0], "starts": 2}}, "sweep.beta", "outside the theory"),
        ({"sweep": {"beta": [1.0, 1.0], "starts": 2}}, "sweep.beta", "repeated values"),
        ({"sweep": {"beta": [1.0], "starts": 0}}, "sweep.starts", "greater than or equal to 1"),
        ({"sweep": {"beta": [1.0], "starts": 2.5}}, "sweep.starts", "valid integer"),
        ({"sweep": {"beta": [1.0], "starts": True}}, "sweep.starts", "valid integer"),
        (
            {"sweep": {"beta": [1.0], "starts": 2, "seed": 2**63}},
            "sweep.seed",
            "less than or equal to 9223372036854775807",
        ),
        ({"sweep": {"beta": [], "starts": 2}}, "sweep.beta", "at least 1"),
        ({"model": {"n": [], "d": 2}}, "model.n", "at least 1"),
        ({"model": {"n": 4, "d": [2, 1]}}, "model.d[1]", "greater than or equal to 2"),
        ({"time": {"t1": "soon", "num": 3}}, "time.t1", "must be a number"),
        ({"time": {"t1": float("nan"), "num": 3}}, "time.t1", "finite"),
        ({"solver": {"rtol": -1e-3}}, "solver.rtol", "greater than 0"),
        ({"precision": "float16"}, "precision", "'float64' or 'float32'"),
        ({"name": "a/b"}, "name", "cannot be empty or hold '/'"),
        ({"model": {"d": 2}}, "model.n", "is required"),
    ],
)
def test_errors_name_key_path_value_allowed_and_fix(sections, path, allowed):
    with pytest.raises(ConfigError) as error:
        config_from_dict(minimal(**sections))
    message = str(error.value)
    assert f"`{path}`" in message and allowed in message, message
    assert "Fix:" in message


def test_unknown_keys_are_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"`sweeps`: unknown key. Allowed keys here: .*'sweep'"):
        config_from_dict({**minimal(), "sweeps": {}})
    with pytest.raises(ConfigError, match=r"`train.clip`: unknown key.*'clip_norm'"):
        config_from_dict(minimal_fit(train__clip=1.0))


@pytest.mark.parametrize(
    "sections, fix",
    [
        (
            {"figures": ["phase_diagram"], "observables": {"names": ["energy"]}},
            "needs observable 'clustered_fraction'",
        ),
        (
            {"model": {"n": 4, "d": [2, 3]}, "observables": {"names": ["positions"]}},
            "one model.n and one model.d",
        ),
        (
            {"solver": {"name": "normalized_euler", "dt": 0.1, "max_steps": 5}},
            "needs 10 steps",
        ),
        ({"solver": {"name": "rk4"}}, "set solver.dt"),
        ({"solver": {"dt": 0.1}}, "remove solver.dt"),
        (
            {
                "sweep": {"beta": [1.0], "starts": 2, "tolerance": [1e-4]},
                "solver": {"name": "normalized_euler", "dt": 0.1},
            },
            "sweep.tolerance is an axis of adaptive solvers",
        ),
        ({"figures": ["movie"], "observables": {"names": ["positions"]}}, "needs model.d = 3"),
        ({"figures": ["landscape"]}, "a simulation experiment draws"),
        (
            {"model": {"n": 4, "d": 2, "field": "USA", "weights": ["ginibre:wishart"]}},
            "defined with V = I",
        ),
        ({"model": {"n": 4, "d": 3, "field": "Kuramoto"}}, "needs model.d = 2"),
        ({"model": {"n": 4, "d": 2, "heads": 2}}, "stack random weights"),
        ({"model": {"n": 4, "d": 2, "params": {"gian": 1.0}}}, "has no parameter 'gian'"),
        (
            {"sweep": {"beta": [1.0], "starts": 2, "params": {"attention": [1.0]}}},
            "must be an attention method",
        ),
    ],
)
def test_cross_checks_name_the_keys_and_the_fix(sections, fix, without_type_checker):
    with pytest.raises(ConfigError, match=fix):
        config_from_dict(minimal(**sections))


@pytest.mark.parametrize(
    "sections, path, allowed",
    [
        ({"train__clip_norm": -1}, "train.clip_norm", "greater than 0"),
        ({"model__heads": 0}, "model.heads", "greater than or equal to 1"),
        ({"model__rank": 0}, "model.rank", "greater than or equal to 1"),
        ({"train__learning_rate": "fast"}, "train.learning_rate", "must be a number"),
        ({"train__steps": None}, "train.steps", "valid integer"),
        ({"task__n": 1}, "task.n", "greater than or equal to 2"),
        ({"task": {"kind": "clusters"}}, "task.kind", "registered: ['labeled'"),
        ({"train__parameters": ["W"]}, "train.parameters", "'W' is not a parameter"),
        (
            {"model__identity": ["V"], "train__parameters": ["V"]},
            "train.parameters",
            "cannot be trained",
        ),
    ],
)
def test_fit_config_errors(sections, path, allowed):
    with pytest.raises(ConfigError) as error:
        config_from_dict(minimal_fit(**sections))
    message = str(error.value)
    assert f"`{path}" in message and allowed in message, message


def test_fit_config_missing_section_is_named():
    raw = minimal_fit()
    del raw["train"]
    with pytest.raises(ConfigError, match=r"`train`: is required"):
        config_from_dict(raw)


def test_overrides_change_values_and_reject_typos():
    config = config_from_dict(
        minimal(),
        [
            "solver.name=normalized_euler",
            "solver.dt=0.1",
            "sweep.starts=8",
            "sweep.beta=[2, 4]",
            "model.weights=[goe:qk]",
        ],
    )
    assert config.solver.name == "normalized_euler" and config.sweep.starts == 8
    assert config.solver.dt == 0.1 and config.sweep.beta == [2.0, 4.0]
    assert config.model.weights == ["goe:qk"]
    # YAML 1.1 reads "1e-9" (no dot) as a string; it is accepted as a number.
    assert config_from_dict(minimal(), ["solver.rtol=1e-9"]).solver.rtol == 1e-9
    # Keys and sections absent from the file but declared in the schema can be overridden.
    assert config_from_dict(minimal(), ["precision=float32"]).precision == "float32"
    assert config_from_dict(minimal(), ["observables.delta=0.01"]).observables.delta == 0.01
    rescaled = config_from_dict(minimal(), ["model.field=USA", "model.params.time_rescaled=true"])
    assert rescaled.model.params == {"time_rescaled": True}
    with pytest.raises(ConfigError, match="unknown key 'solver.nmae'.*'name'"):
        config_from_dict(minimal(), ["solver.nmae=rk4"])
    with pytest.raises(ConfigError, match="'sweep.starts' is a value, not a section"):
        config_from_dict(minimal(), ["sweep.starts.x=1"])


def test_empty_override_is_refused_and_null_restores_the_default():
    with pytest.raises(ConfigError, match=r"'solver.rtol=' has no value.*solver.rtol=null"):
        config_from_dict(minimal(solver={"rtol": 1e-3}), ["solver.rtol="])
    config = config_from_dict(minimal(solver={"rtol": 1e-3}), ["solver.rtol=null"])
    assert config.solver.rtol == SimulationConfig.model_fields["solver"].default.rtol == 1e-6


def test_cli_overrides_apply_after_smoke(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "model: {n: 4, d: 2}\nsweep: {beta: [1.0], starts: 100}\ntime: {t1: 1.0, num: 3}\n"
        "smoke: {sweep.starts: 2, time.num: 2}\n"
    )
    assert load_config(path).sweep.starts == 100
    assert load_config(path, smoke=True).sweep.starts == 2
    config = load_config(path, ["sweep.starts=5"], smoke=True)
    assert config.sweep.starts == 5 and len(config.times) == 2
    assert config.smoke == {"sweep.starts": 2, "time.num": 2}
    bad = tmp_path / "bad_smoke.yaml"
    bad.write_text(path.read_text().replace("sweep.starts: 2", "sweep.strats: 2"))
    with pytest.raises(ConfigError, match="unknown key 'sweep.strats'"):
        load_config(bad, smoke=True)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path)  # a directory
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model: {n: 4, d: 2}\nsmoke: [1]\n")
    with pytest.raises(ConfigError, match="`smoke`"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)
    bad.write_text("experiment: sweep\n")
    with pytest.raises(ConfigError, match="`experiment`: must be one of"):
        load_config(bad)


def test_legacy_keys_are_migrated():
    """Configs written before the shared vocabulary still load, to the same experiment."""
    old = minimal(solver={"method": "adaptive", "scheme": "bosh3", "rtol": 1e-4})
    assert (
        config_from_dict(old).solver
        == config_from_dict(minimal(solver={"name": "bosh3", "rtol": 1e-4})).solver
    )
    euler = config_from_dict(minimal(solver={"method": "normalized_euler", "dt": 0.1}))
    assert euler.solver.name == "normalized_euler" and euler.solver.dt == 0.1
    new = minimal_fit()
    old = json.loads(json.dumps(new))
    old["model"] = {
        "kind": "sa",
        "dim": 3,
        "beta": new["model"]["params"]["beta"],
        **{k: v for k, v in new["model"].items() if k not in ("field", "d", "params")},
    }
    solver = old.pop("solver")
    old["flow"] = {
        **old["flow"],
        "solver": solver["name"],
        "dt0": None,
        **{k: solver[k] for k in ("rtol", "atol", "max_steps")},
    }
    assert config_from_dict(old) == config_from_dict(new)


def test_import_path_fields_are_resolved_and_checked():
    assert FIELDS.resolve("transformer_flows:SelfAttention").cls is FIELDS["SA"].cls
    # Reading a config checks an import path's form only; run_experiment imports it
    # (import_fields), after everything else validated.
    missing = config_from_dict(minimal(model={"n": 4, "d": 2, "field": "no_such_module:Field"}))
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        import_fields(missing)
    not_a_field = config_from_dict(
        minimal(model={"n": 4, "d": 2, "field": "transformer_flows:solve"})
    )
    with pytest.raises(ConfigError, match="is not a field class"):
        import_fields(not_a_field)


def test_json_schema_lists_every_kind_and_registered_name():
    schema = json_schema()
    assert len(schema["oneOf"]) == 5
    assert {
        "SimulationConfig",
        "TheoryConfig",
        "FitConfig",
        "PretrainedConfig",
        "MeanFieldConfig",
    } <= set(schema["$defs"])
    assert schema["x-registered-names"]["solvers"] == SOLVERS.names()
    json.dumps(schema)  # plain JSON
    fit = schema["$defs"]["FitConfig"]
    assert {"model", "task", "train", "flow"} <= set(fit["required"])
    assert isinstance(config_from_dict(minimal_fit()), FitConfig)
