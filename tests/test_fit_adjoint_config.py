"""The fit config's choice of gradient: `flow.adjoint: stored` (StoredAdjoint, with
`flow.stored_max_steps`) and `flow.attention_vjp: analytic` (AnalyticVJPAttention).

- Both together give the default's first-step gradient to float64 rounding (the same computed
  solve, differentiated without recomputation and with the hand-written attention backward);
  each choice builds its adjoint and attention from the config.
- A stored solve that needs more steps than `flow.stored_max_steps` stops the fit with an error
  naming the key (exit status 3 from the command line); no metrics are written.
- Bad values are refused with the key, the value and the fix; configs without the new keys keep
  their saved form and fingerprint.
"""

from pathlib import Path

import diffrax
import equinox as eqx
import jax
import numpy as np
import pytest
import yaml

import transformer_flows as tf
from transformer_flows.cli import main
from transformer_flows.experiment import (
    ConfigError,
    config_from_dict,
    fingerprint,
    load_config,
)
from transformer_flows.experiment._build import build_fit_model, build_flow, build_task

ROOT = Path(__file__).resolve().parents[1]

# A tiny float64 fit: SA, d = 3, n = 4 tokens, two inputs per batch.
TINY = {
    "experiment": "fit",
    "precision": "float64",
    "model": {"d": 3, "params": {"beta": 1.5}},
    "task": {
        "kind": "labeled",
        "n": 4,
        "anchors": [[0, 0, 1], [0, 0, -1]],
        "targets": [[1, 0, 0], [-1, 0, 0]],
    },
    "train": {"steps": 2, "batch_size": 2, "learning_rate": 0.05, "eval_size": 2},
    "flow": {"horizon": 1.0},
    "solver": {"name": "tsit5", "rtol": 1e-4, "atol": 1e-4},
}
FAST = {"adjoint": "stored", "stored_max_steps": 8, "attention_vjp": "analytic"}
# Tiny programs compiled once each: XLA's optimisation passes cost more than they save here.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _config(flow=(), model=(), solver=None):
    return config_from_dict(
        {
            **TINY,
            "flow": {**TINY["flow"], **dict(flow)},
            "model": {**TINY["model"], **dict(model)},
            "solver": solver or TINY["solver"],
        }
    )


def _first_step_loss_and_gradient(config):
    """The initial model of `config`, and the function of a model giving the loss of the fit's
    first training batch (drawn as `fit` draws step 0) and its gradient in β, Q, K, V."""
    model, task, flow = build_fit_model(config), build_task(config), build_flow(config)
    key = jax.random.fold_in(jax.random.split(jax.random.key(config.seed))[0], 0)
    return model, eqx.filter_value_and_grad(lambda m: tf.batch_loss(m, task, flow, key, 2))


def test_stored_adjoint_and_analytic_attention_give_the_default_gradient():
    """Both choices together against the default adjoint and autodiff attention, through the
    same fixed-step solve (one compiled program holds both; each choice alone, and adaptive
    Tsit5 steps, are compared in tests/test_stored_adjoint.py)."""
    euler = {"name": "normalized_euler", "dt": 0.25}  # 4 steps to T = 1
    default, default_fn = _first_step_loss_and_gradient(_config(solver=euler))
    fast, fast_fn = _first_step_loss_and_gradient(
        _config({**FAST, "stored_max_steps": 4}, solver=euler)
    )
    assert isinstance(tf.as_field(fast).attention, tf.AnalyticVJPAttention)

    def both(a, b):
        return default_fn(a), fast_fn(b)

    compiled = jax.jit(both).trace(default, fast).lower().compile(compiler_options=FAST_COMPILE)
    (loss, grads), (fast_loss, fast_grads) = compiled(default, fast)
    flat, fast_flat = (
        np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(g)])
        for g in (grads, fast_grads)
    )
    # The same computed solve, differentiated two ways: equal to float64 rounding (measured
    # about 2e-16 relative). A nonzero gradient is compared.
    assert float(fast_loss) == pytest.approx(float(loss), rel=1e-14)
    error = np.linalg.norm(fast_flat - flat) / np.linalg.norm(flat)
    assert error < 1e-13, error
    assert np.linalg.norm(flat) > 1e-2


@pytest.mark.parametrize(
    "flow, model",
    [
        ({"adjoint": "stored", "stored_max_steps": 8}, {}),
        ({"attention_vjp": "analytic"}, {}),
        (FAST, {"field": "USA", "heads": 2, "feed_forward": {"width": 4}}),
    ],
    ids=["stored", "analytic", "both-usa-heads-feed-forward"],
)
def test_each_choice_builds_its_adjoint_and_attention(flow, model):
    """The config builds what it names, and its saved form reloads to the same config."""
    config = _config(flow, model)
    built, field = build_flow(config), tf.as_field(build_fit_model(config))
    attention = field.attention if isinstance(field, tf.TransformerBlock) else field
    stored = flow.get("adjoint") == "stored"
    assert isinstance(
        built.adjoint, tf.StoredAdjoint if stored else diffrax.RecursiveCheckpointAdjoint
    )
    assert built.max_steps == (8 if stored else config.solver.max_steps)
    analytic = flow.get("attention_vjp") == "analytic"
    assert isinstance(
        attention.attention, tf.AnalyticVJPAttention if analytic else tf.AutoAttention
    )
    again = config_from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config and fingerprint(again.numerics()) == fingerprint(config.numerics())


@pytest.mark.parametrize("on_error", ["raise", "nan"])
def test_a_too_small_bound_fails_the_fit_loudly(tmp_path, capsys, monkeypatch, on_error):
    """2 fixed steps of 0.5 reach T = 1; a bound of 1 cannot: the fit stops with the key, its
    value and the fix (exit status 3, as for failed solves), and writes no metrics. Also where
    this process made run-time checks return NaN (as `transformer-flows run` does for its
    sweeps, also before a fit run by the same process): without the fit forcing them to raise,
    the failed solve became NaN weights, reported as a non-finite β (exit status 2)."""
    from equinox import _errors

    monkeypatch.setattr(_errors, "EQX_ON_ERROR", on_error)
    raw = {
        **TINY,
        "flow": {**TINY["flow"], "adjoint": "stored", "stored_max_steps": 1},
        "solver": {"name": "normalized_euler", "dt": 0.5},
    }
    path, out = tmp_path / "config.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(raw))
    assert main(["fit", str(path), "--out", str(out), "--no-progress", "--no-cache"]) == 3
    err = capsys.readouterr().err
    assert "the fit failed: a solve" in err
    assert "needed more than flow.stored_max_steps = 1 steps" in err
    assert "Fix: rerun with a larger flow.stored_max_steps" in err
    assert "diverged" not in err and "non-finite" not in err
    assert not (out / "metrics.json").exists()
    assert _errors.EQX_ON_ERROR == on_error  # the process's mode is restored after the fit


@pytest.mark.parametrize(
    "flow, sections, match",
    [
        (
            {"adjoint": "stored"},
            {},
            r"`flow.stored_max_steps`: adjoint 'stored' .*set flow.stored_max_steps just above",
        ),
        (
            {"adjoint": "stored", "stored_max_steps": 0},
            {},
            r"`flow.stored_max_steps`: got 0; .*greater than or equal to 1",
        ),
        ({"adjoint": "stored", "stored_max_steps": 2.5}, {}, r"stored_max_steps.*integer"),
        (
            {"adjoint": "stored", "stored_max_steps": 65_537},
            {},
            r"`flow.stored_max_steps`: got 65537; above its cap 65536: .*recursive_checkpoint",
        ),
        (
            # At the cap, but 65536 steps x 4096 inputs x 4 tokens x d = 3 float64 values is
            # 24.0 GiB of states: above the 16 GiB limit.
            {"adjoint": "stored", "stored_max_steps": 65_536},
            {"train": {"batch_size": 4096}},
            r"`flow.stored_max_steps`: got 65536; too many steps to store: .* x train.batch_size "
            r"4096 x task.n 4 x model.d 3 float64 values = 24.0 GiB .*smaller train.batch_size",
        ),
        (
            # The bound is the field's business only through n and d: it holds for a field
            # given by import path too.
            {"adjoint": "stored", "stored_max_steps": 65_536},
            {"train": {"batch_size": 4096}, "model": {"field": "mypackage.fields:MyField"}},
            r"`flow.stored_max_steps`: got 65536; too many steps to store: .* = 24.0 GiB",
        ),
        ({"stored_max_steps": 16}, {}, r"stored_max_steps = 16 .*Remove flow.stored_max_steps"),
        (
            {"adjoint": "stored", "stored_max_steps": 16, "checkpoints": 4},
            {},
            r"checkpoints = 4 .*Remove flow.checkpoints",
        ),
        ({"adjoint": "store"}, {}, r"flow.adjoint.*'store'.*'stored'"),
        ({"attention_vjp": "fast"}, {}, r"flow.attention_vjp.*'fast'.*'analytic'"),
        (
            {"attention_vjp": "analytic"},
            {"model": {"field": "Hardmax", "params": {}}, "train": {"parameters": ["Q"]}},
            r"`flow.attention_vjp`: got 'analytic'; .*'Hardmax'.*Use flow.attention_vjp: autodiff",
        ),
        (
            {"attention_vjp": "analytic"},
            {"model": {"field": "mypackage.fields:MyField"}},
            r"`flow.attention_vjp`: got 'analytic'; .*'mypackage.fields:MyField'.*autodiff",
        ),
    ],
)
def test_bad_choices_are_refused(flow, sections, match):
    raw = {**TINY, "flow": {**TINY["flow"], **flow}}
    for name, keys in sections.items():
        raw[name] = {**TINY[name], **keys}
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_stored_steps_up_to_the_limits_are_accepted():
    """The bounds refuse only what exceeds them: the cap of steps with a tiny fit, and 16 GiB
    of float32 states (2048 steps x 2048 inputs x n = 256 x d = 4 x 4 bytes) exactly."""
    assert _config({"adjoint": "stored", "stored_max_steps": 65_536}).flow.stored_max_steps
    raw = {
        **TINY,
        "precision": "float32",
        "model": {"d": 4},
        "task": {**TINY["task"], "n": 256, "anchors": [[0, 0, 0, 1]], "targets": [[1, 0, 0, 0]]},
        "train": {**TINY["train"], "batch_size": 2048},
        "flow": {**TINY["flow"], "adjoint": "stored", "stored_max_steps": 2048},
    }
    assert config_from_dict(raw).flow.stored_max_steps == 2048
    raw["flow"] = {**raw["flow"], "stored_max_steps": 2049}
    with pytest.raises(ConfigError, match=r"16.0 GiB before"):
        config_from_dict(raw)


# The fingerprints of the shipped fit configs before these keys existed (computed on 98d9f35
# with `fingerprint(load_config(path).numerics())`): new keys at their defaults must not change
# them, or no stored fit would resume.
FIT_FINGERPRINTS = {
    "fit_beta_only": "1f240b98de71b17b7422885975dc6a188429b04604437c82ea9782ece695660e",
    "fit_k_clusters_d8": "4a26eeb0b7100b0afb8edec9726dd39d3da07df81c8cd3eaf19d8341f50fa31d",
    "fit_measure": "5b2c64b1c3e341742376adaf225b642635525ba3a69a677857b20c9538edbb76",
    "fit_measure_feed_forward": "6199622e2b35d41b08ddecfa0d29bdbeccb9e57fa161bbff11ac34cf483ccd08",
    "fit_per_layer": "45777f156844ebaa4e1ba967b3b120c8b690785ea5c01c67faded91ebf826c8d",
    "fit_two_clusters": "e47ec706b4252efb3d80dcfe2228d7a2f0f2b2bcf8662eba32886da85ed8c200",
}


@pytest.mark.parametrize("name", sorted(FIT_FINGERPRINTS))
def test_existing_fits_keep_their_fingerprints(name):
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    assert fingerprint(config.numerics()) == FIT_FINGERPRINTS[name]
    assert not {"stored_max_steps", "attention_vjp"} & set(config.resolved()["flow"])
    changed = load_config(ROOT / "configs" / f"{name}.yaml", ["flow.attention_vjp=analytic"])
    assert fingerprint(changed.numerics()) != FIT_FINGERPRINTS[name]
