"""The fitting loop: frozen leaves stay frozen, resuming continues exactly, the loss goes down,
the step does not recompile, β stays >= 0, and the `fit` command runs end to end."""

import argparse
import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

import transformer_flows as tf
from transformer_flows import _fit_command

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Two fixed Euler layers (the authors' scheme): cheap to compile, exact discrete gradients.
FLOW = tf.FlowOptions(horizon=2.0, solver=tf.NormalizedEuler(), dt0=0.5)
TASK = tf.LabeledTargets(tf.LabeledInputs([[0, 0, 1.0], [0, 0, -1.0]], n=6),
                         [[1.0, 0, 0], [-1.0, 0, 0]])


def _model(getkey, **kwargs):
    weights = [jax.random.normal(getkey(), (3, 3)) / jnp.sqrt(3.0) for _ in range(3)]
    # A strongly typed β, as `fit` makes it (the bare step would retrace on a weak type).
    return tf.SelfAttention(jnp.asarray(1.0, dtype=jnp.result_type(float)), *weights, **kwargs)


def _fit(model, num_steps, key, **kwargs):
    kwargs.setdefault("optimizer", optax.adam(0.05))
    return tf.fit(model, TASK, kwargs.pop("optimizer"), key=key, num_steps=num_steps, flow=FLOW,
                  batch_size=4, eval_size=8, **kwargs)


def test_frozen_parameters_stay_exactly_frozen(getkey):
    model = _model(getkey)
    spec = tf.trainable_spec(model, ["V"])
    fitted = _fit(model, 3, getkey(), filter_spec=spec).model
    for name in ("Q", "K", "beta"):
        assert np.array_equal(getattr(fitted, name), getattr(model, name)), name
    assert not np.allclose(fitted.V, model.V)


def test_low_rank_factors_train_and_others_stay(getkey):
    d, r = 3, 2
    model = tf.LowRankAttention(
        jnp.asarray(1.0),
        tf.LowRank(jax.random.normal(getkey(), (d, r)), jax.random.normal(getkey(), (d, r))),
        jax.random.normal(getkey(), (d, d)),
        jax.random.normal(getkey(), (d, d)),
    )
    assert np.allclose(model.field().Q, model.Q.left @ model.Q.right.T)
    fitted = _fit(model, 2, getkey(), filter_spec=tf.trainable_spec(model, ["Q", "beta"])).model
    assert not np.allclose(fitted.Q.left, model.Q.left)
    assert not np.allclose(fitted.Q.right, model.Q.right)
    assert np.array_equal(fitted.K, model.K) and np.array_equal(fitted.V, model.V)


def test_checkpoint_resume_continues_identically(getkey, tmp_path):
    model, key = _model(getkey), getkey()
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adam(optax.cosine_decay_schedule(0.05, 4)))
    straight = _fit(model, 4, key, optimizer=optimizer)
    path = tmp_path / "run" / "checkpoint.eqx"
    first = _fit(model, 2, key, optimizer=optimizer, checkpoint=path, checkpoint_every=1)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    resumed = _fit(model, 4, key, optimizer=optimizer, checkpoint=path)
    np.testing.assert_array_equal(resumed.loss_history[:2], first.loss_history)
    np.testing.assert_array_equal(resumed.loss_history, straight.loss_history)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.model),
                    jax.tree_util.tree_leaves(straight.model)):
        np.testing.assert_array_equal(a, b)
    assert resumed.evaluations[-1] == straight.evaluations[-1]


def test_loss_decreases_on_a_tiny_problem(getkey):
    result = _fit(_model(getkey), 40, getkey(), eval_every=20)
    before, after = result.evaluations[0], result.evaluations[-1]
    assert [e["step"] for e in result.evaluations] == [0, 20, 40]
    assert after["heldout_loss"] < 0.5 * before["heldout_loss"]
    assert np.mean(result.loss_history[-5:]) < 0.5 * np.mean(result.loss_history[:5])


def test_step_refuses_to_retrace(getkey):
    """`fit` runs many steps of one `make_step` (the fits above would raise on a retrace);
    here a changed dtype, which would recompile, raises instead."""
    model = _model(getkey)
    optimizer = optax.sgd(1e-2)
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, model)
    step = tf.make_step(TASK, optimizer, FLOW, spec, 2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step.lower(model, opt_state, jax.random.key(0))  # the one allowed trace
    float32 = jax.tree_util.tree_map(lambda leaf: leaf.astype(jnp.float32), model)
    with pytest.raises(RuntimeError, match="traced"):
        step(float32, opt_state, jax.random.key(0))


def test_beta_projection_keeps_beta_nonnegative(getkey):
    model = eqx.tree_at(lambda m: m.beta, _model(getkey), jnp.asarray(-0.3))
    assert float(tf.project_beta(model).beta) == 0.0
    kept = _model(getkey)
    assert np.array_equal(tf.project_beta(kept).beta, kept.beta)


def test_trainable_spec_rejects_identity_and_unknown_names(getkey):
    with pytest.raises(ValueError, match="`V` is None"):
        tf.trainable_spec(tf.SelfAttention(1.0, Q=jnp.eye(3)), ["V"])
    with pytest.raises(ValueError, match="not an attribute"):
        tf.trainable_spec(_model(getkey), ["W"])


def test_adjusted_rand_index_known_values():
    # Values from the Hubert–Arabie formula (as scikit-learn's adjusted_rand_score).
    assert tf.adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert np.isclose(tf.adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]), 4 / 7)
    assert tf.adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert np.isclose(tf.adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]), 8 / 33)


def test_losses_vanish_at_their_targets(getkey):
    x0, labels = TASK.sample(getkey())
    at_targets = TASK.targets[labels]
    assert float(TASK.loss(at_targets, labels)) == pytest.approx(0.0, abs=1e-15)
    batch = np.asarray(at_targets)[None], np.asarray(labels)[None]
    assert TASK.metrics(*batch) == {"heldout_accuracy": 1.0}
    partition = tf.TargetPartition(TASK.inputs, margin=0.0, delta=1e-3)
    assert float(partition.loss(at_targets, labels)) == pytest.approx(0.0, abs=1e-15)
    assert partition.metrics(*batch) == {"heldout_ari": 1.0}
    assert tf.adjusted_rand_index(labels, tf.cluster_labels(at_targets, 1e-3)) == 1.0
    y = tf.sample_sphere(getkey(), 5, 3)
    assert float(tf.sphere_mmd2(y, y, 4.0)) == pytest.approx(0.0, abs=1e-14)
    assert float(tf.sphere_mmd2(y, -y, 4.0)) > 0


def test_fit_command_smoke_end_to_end(tmp_path):
    config = tmp_path / "config.yaml"
    base = yaml.safe_load((ROOT / "configs" / "fit_two_clusters.yaml").read_text())
    config.write_text(yaml.safe_dump(base))
    parser = argparse.ArgumentParser()
    _fit_command.register(parser.add_subparsers())
    out = tmp_path / "out"
    args = parser.parse_args(["fit", str(config), "--out", str(out), "--smoke", "--quiet",
                              "task.n=4", "flow.solver=normalized_euler", "flow.dt0=2.5"])
    assert args.func(args) == 0
    for name in ("params.eqx", "metrics.json", "config.yaml", "loss.png",
                 "trajectories_before.png", "trajectories_after.png", "checkpoint.eqx"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and len(metrics["loss_history"]) == 2
    assert 0 <= metrics["heldout_accuracy"] <= 1 and np.isfinite(metrics["train_loss"])
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["task"]["n"] == 4 and written["flow"]["solver"] == "normalized_euler"
    model = _fit_command.load_fitted_model(written, out / "params.eqx")
    assert float(model.beta) == pytest.approx(metrics["beta"])
