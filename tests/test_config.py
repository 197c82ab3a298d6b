"""Config validation: every error names the key path and the allowed values; overrides."""

import numpy as np
import pytest

from transformer_flows._config import ConfigError, config_from_dict, load_config

from helpers import SWEEP_CONFIGS as CONFIGS


def minimal(**sections):
    raw = {
        "model": {"n": 4, "d": 2},
        "sweep": {"beta": [0.0, 1.0], "starts": 2},
        "time": {"t1": 1.0, "num": 3},
    }
    raw.update(sections)
    return raw


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("smoke", [False, True])
def test_shipped_configs_validate(path, smoke):
    config = load_config(path, smoke=smoke)
    assert config.smoke is smoke
    assert config.figures, "every shipped config draws at least one figure"
    # The resolved config re-validates to the same experiment (it is saved with the data).
    again = config_from_dict(config.raw)
    assert again.raw == {k: v for k, v in config.raw.items()}


def test_smoke_section_shrinks_the_run():
    full = load_config(CONFIGS[0].parent / "figure3.yaml")
    smoke = load_config(CONFIGS[0].parent / "figure3.yaml", smoke=True)
    assert full.sweep.starts == 1024 and full.model.d == (2, 8, 32, 128, 512, 1024)
    assert smoke.sweep.starts < full.sweep.starts and len(smoke.sweep.beta) < len(full.sweep.beta)
    assert smoke.figures == full.figures and smoke.observables == full.observables


def test_defaults_and_grid():
    config = config_from_dict(
        minimal(sweep={"beta": {"start": 0.1, "stop": 9, "num": 90}, "starts": 3})
    )
    np.testing.assert_allclose(config.sweep.beta, np.linspace(0.1, 9, 90))
    assert config.solver.method == "adaptive" and config.solver.rtol == 1e-6
    assert config.solver.dt == 0.1  # the authors' step, used with normalized_euler
    assert config.solver.scheme == "tsit5"
    assert config.solver.describe() == "Renormalized(Tsit5) adaptive PID, rtol=1e-06, atol=1e-06"
    assert config.observables.delta == 1e-3
    np.testing.assert_allclose(config.times, [0.0, 0.5, 1.0])
    assert config.model.weights[0].label == "identity"
    assert config.precision == "float64"


@pytest.mark.parametrize(
    "sections, path, allowed",
    [
        ({"model": {"n": 4, "d": 2, "feild": "SA"}}, "model.feild", "['field', 'n', 'd'"),
        ({"solver": {"method": "euler"}}, "solver.method", "['adaptive', 'normalized_euler']"),
        ({"solver": {"scheme": "rk45"}}, "solver.scheme", "['tsit5', 'bosh3', 'dopri5'"),
        (
            {"solver": {"method": "normalized_euler", "scheme": "bosh3"}},
            "solver.scheme",
            "method 'adaptive'",
        ),
        ({"model": {"n": 4, "d": 2, "field": "sa"}}, "model.field", "['SA', 'USA']"),
        (
            {"model": {"n": 4, "d": 2, "weights": ["ginibre:psd"]}},
            "model.weights[0]",
            "'goe:wishart'",
        ),
        (
            {"observables": {"names": ["energy", "clusters"]}},
            "observables.names[1]",
            "'cluster_count'",
        ),
        ({"sweep": {"beta": {"start": 0, "stop": 9}, "starts": 2}}, "sweep.beta.num", "required"),
        ({"sweep": {"beta": [0.0, -1.0], "starts": 2}}, "sweep.beta[1]", ">= 0"),
        ({"sweep": {"beta": [1.0], "starts": 0}}, "sweep.starts", "integer >= 1"),
        ({"sweep": {"beta": [1.0], "starts": 2.5}}, "sweep.starts", "integer >= 1"),
        ({"model": {"n": 4, "d": [2, 1]}}, "model.d[1]", "integer >= 2"),
        ({"time": {"t1": "soon", "num": 3}}, "time.t1", "must be a number"),
        ({"precision": "float16"}, "precision", "['float64', 'float32']"),
        ({"figures": ["landscape"]}, "figures[0]", "'phase_diagram'"),
        ({"model": {"d": 2}}, "model.n", "required"),
    ],
)
def test_errors_name_key_path_and_allowed_values(sections, path, allowed):
    with pytest.raises(ConfigError) as error:
        config_from_dict(minimal(**sections))
    message = str(error.value)
    assert f"`{path}`" in message and allowed in message


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="`sweeps`: unknown key; allowed keys here: .*'sweep'"):
        config_from_dict({**minimal(), "sweeps": {}})


@pytest.mark.parametrize(
    "sections, path, fix",
    [
        (
            {"figures": ["phase_diagram"], "observables": {"names": ["energy"]}},
            "observables.names",
            "needs observable 'clustered_fraction'",
        ),
        (
            {"model": {"n": 4, "d": [2, 3]}, "observables": {"names": ["positions"]}},
            "observables.names",
            "single `model.n` and `model.d`",
        ),
        (
            {"solver": {"method": "normalized_euler", "dt": 0.1, "max_steps": 5}},
            "solver.max_steps",
            "needs 10 steps",
        ),
        (
            {
                "sweep": {"beta": [1.0], "starts": 2, "tolerance": [1e-4]},
                "solver": {"method": "normalized_euler"},
            },
            "sweep.tolerance",
            "adaptive",
        ),
        ({"figures": ["movie"], "observables": {"names": ["positions"]}}, "figures", "d = 3"),
    ],
)
def test_cross_checks_name_the_key(sections, path, fix):
    with pytest.raises(ConfigError, match=f"`{path}`.*{fix}"):
        config_from_dict(minimal(**sections))


def test_overrides_change_values_and_reject_typos():
    config = config_from_dict(
        minimal(),
        [
            "solver.method=normalized_euler",
            "sweep.starts=8",
            "solver.rtol=1e-9",
            "sweep.beta=[2, 4]",
            "model.weights=[goe:qk]",
        ],
    )
    assert config.solver.method == "normalized_euler" and config.sweep.starts == 8
    assert config.solver.rtol == 1e-9  # YAML reads "1e-9" as a string; it is accepted
    assert config.sweep.beta == (2.0, 4.0)
    assert config.model.weights[0].query_key == "goe" and config.model.weights[0].value == "qk"
    # Keys absent from the file but part of the schema can be overridden too.
    assert config_from_dict(minimal(), ["solver.dt=0.05"]).solver.dt == 0.05
    # Top-level keys the file leaves out can be overridden too.
    assert config_from_dict(minimal(), ["precision=float32"]).precision == "float32"
    with pytest.raises(ValueError, match="unknown key 'solver.mthod'.*'method'"):
        config_from_dict(minimal(), ["solver.mthod=adaptive"])
    with pytest.raises(ConfigError, match="`solver.method`.*'normalized_euler'"):
        config_from_dict(minimal(), ["solver.method=rk4"])


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
    assert config.raw["smoke"] == {"sweep.starts": 2, "time.num": 2}


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("model: {n: 4, d: 2}\nsmoke: [1]\n")
    with pytest.raises(ConfigError, match="`smoke`"):
        load_config(bad)
