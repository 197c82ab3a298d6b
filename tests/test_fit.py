"""The fitting loop: frozen leaves stay frozen, resuming (after a stop or a kill, from any
checkpoint name) continues exactly with the same loss history and held-out evaluations, the loss
and the held-out accuracy improve, the step does not recompile, β stays >= 0, empty weights are
refused, the held-out metrics give known values on hand-made configurations, and the `fit`
command runs end to end."""

import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pytest
import yaml

import transformer_flows as tf
from transformer_flows import _fit as fit_module
from transformer_flows.cli import main
from transformer_flows.experiment import load_config, load_fitted_model

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Two fixed Euler layers (the authors' scheme): cheap to compile, exact discrete gradients.
FLOW = tf.FlowOptions(horizon=2.0, solver=tf.NormalizedEuler(), dt0=0.5)
TASK = tf.LabeledTargets(
    tf.LabeledInputs([[0, 0, 1.0], [0, 0, -1.0]], n=6), [[1.0, 0, 0], [-1.0, 0, 0]]
)


def _model(getkey, **kwargs):
    weights = [jax.random.normal(getkey(), (3, 3)) / jnp.sqrt(3.0) for _ in range(3)]
    # A strongly typed β, as `fit` makes it (the bare step would retrace on a weak type).
    return tf.SelfAttention(jnp.asarray(1.0, dtype=jnp.result_type(float)), *weights, **kwargs)


def _fit(model, num_steps, key, **kwargs):
    kwargs.setdefault("optimizer", optax.adam(0.05))
    return tf.fit(
        model,
        TASK,
        kwargs.pop("optimizer"),
        key=key,
        num_steps=num_steps,
        flow=FLOW,
        batch_size=4,
        eval_size=8,
        **kwargs,
    )


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
    # W = left @ rightᵀ with r = 2 < d = 3 factors: a rank-2 matrix (generic factors).
    assert np.linalg.matrix_rank(np.asarray(model.field().Q)) == r
    fitted = _fit(model, 2, getkey(), filter_spec=tf.trainable_spec(model, ["Q", "beta"])).model
    assert not np.allclose(fitted.Q.left, model.Q.left)
    assert not np.allclose(fitted.Q.right, model.Q.right)
    assert np.array_equal(fitted.K, model.K) and np.array_equal(fitted.V, model.V)


class _Killed(Exception):
    pass


def test_resume_after_stop_and_kill_matches_an_uninterrupted_run(getkey, tmp_path, monkeypatch):
    """6 steps straight vs: stop at step 3 (off the evaluation schedule), resume and get killed
    during step 6, resume again, each from the extension-less checkpoint path "ckpt". The
    resumes start from a different initial model, so agreeing with the straight run shows
    they continued from the checkpoint rather than starting afresh."""
    model, other, key = _model(getkey), _model(getkey), getkey()
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(0.05, 6))
    )
    options = dict(optimizer=optimizer, eval_every=2)
    straight = _fit(model, 6, key, **options)
    assert [e["step"] for e in straight.evaluations] == [0, 2, 4, 6]

    path = tmp_path / "run" / "ckpt"
    stopped = _fit(model, 3, key, checkpoint=path, checkpoint_every=1, **options)
    assert [e["step"] for e in stopped.evaluations] == [0, 2, 3]
    assert path.is_file() and not path.with_suffix(".eqx").exists()

    make_step = fit_module.make_step

    def dying_make_step(*args):
        step, steps_run = make_step(*args), []

        def dying_step(*step_args):
            if len(steps_run) == 2:  # resumed at step 3: runs steps 4 and 5, dies in step 6
                raise _Killed
            steps_run.append(True)
            return step(*step_args)

        return dying_step

    monkeypatch.setattr(fit_module, "make_step", dying_make_step)
    with pytest.raises(_Killed):
        _fit(other, 6, key, checkpoint=path, checkpoint_every=1, **options)
    monkeypatch.undo()
    assert tf.load_checkpoint(path, model, stopped.opt_state)[2] == 5
    resumed = _fit(other, 6, key, checkpoint=path, **options)

    assert sorted(p.name for p in path.parent.iterdir()) == [
        "ckpt",
        "ckpt.evaluations.json",
        "ckpt.history.npy",
    ]
    np.testing.assert_array_equal(resumed.loss_history[:3], stopped.loss_history)
    np.testing.assert_array_equal(resumed.loss_history, straight.loss_history)
    assert resumed.evaluations == straight.evaluations  # same steps, same values
    for a, b in zip(
        jax.tree_util.tree_leaves(resumed.model),
        jax.tree_util.tree_leaves(straight.model),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # A finished run resumed again does nothing and returns the same record.
    again = tf.load_checkpoint(path, model, resumed.opt_state)
    assert again[2] == 6 and again[4] == straight.evaluations


def test_loss_and_heldout_accuracy_improve_on_a_tiny_problem(getkey, capsys):
    result = _fit(_model(getkey), 40, getkey(), eval_every=20, progress=True)
    before, after = result.evaluations[0], result.evaluations[-1]
    assert [e["step"] for e in result.evaluations] == [0, 20, 40]
    assert after["heldout_loss"] < 0.5 * before["heldout_loss"]
    assert np.mean(result.loss_history[-5:]) < 0.5 * np.mean(result.loss_history[:5])
    # Labels follow x_3 and the targets sit on the x_1 axis: about 1/2 correct at the start
    # (0.38-0.54 over seeds 0-2), 0.88-1.0 after 40 steps; demand a gain of 1/4.
    assert after["heldout_accuracy"] >= before["heldout_accuracy"] + 0.25
    bar = capsys.readouterr().err  # tqdm, with the last loss in the postfix
    assert "40/40" in bar and f"loss={result.loss_history[-1]:.4g}" in bar


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


def test_empty_weights_are_refused(getkey):
    """rank 0 or H = 0 heads would give a zero field that trains silently to nothing."""
    d = 3
    with pytest.raises(ValueError, match="rank r = 0"):
        tf.LowRank(jnp.ones((d, 0)), jnp.ones((d, 0)))
    with pytest.raises(ValueError, match="`left` has an empty axis"):
        tf.LowRank(jnp.ones((0, d, 1)), jnp.ones((0, d, 1)))
    with pytest.raises(ValueError, match="`V` has an empty axis"):
        tf.LowRankAttention(1.0, V=jnp.ones((0, d, d)))
    # The field itself refuses it, so `fit` never sees one.
    with pytest.raises(ValueError, match="`V` has an empty axis"):
        tf.SelfAttention(1.0, V=jnp.ones((0, d, d)))


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
    # Two orthogonal points: k(x, x) = k(y, y) = 1, k(x, y) = e^{-κ}, MMD² = 2 - 2 e^{-κ}.
    e1, e2 = jnp.eye(3)[:1], jnp.eye(3)[1:2]
    assert float(tf.sphere_mmd2(e1, e2, 4.0)) == pytest.approx(2 - 2 * np.exp(-4.0), rel=1e-14)


def test_heldout_metrics_on_hand_made_configurations():
    """Tokens placed near the targets ±e1 (each tilted by the same offset, so its nearest
    target is the one it sits at) with 3 of 10 labels wrong: accuracy exactly 7/10. For the
    partition metric: [0,0,0,1,1,1] found as [0,0,1,1,1,1] has ARI 12/37 (pair counts: 4
    agreeing, 6 and 7 per side, 15 in all), a correct partition 1, and everything merged into
    one cluster 0; the metric is their mean."""
    targets = np.asarray(TASK.targets)
    tilt = np.array([0.0, 0.6, -0.4])
    at = np.array([[0, 0, 1, 1, 1], [0, 1, 0, 1, 0]])
    labels = np.array([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0]])  # (0, 1), (1, 2), (1, 3) wrong
    xs = np.asarray(tf.normalize(jnp.asarray(targets[at] + tilt)))
    assert TASK.metrics(xs, labels) == {"heldout_accuracy": pytest.approx(0.7, abs=1e-15)}
    assert tf.nearest_target_accuracy(xs, at, targets) == 1.0

    partition = tf.TargetPartition(TASK.inputs, delta=1e-3)
    true = np.array([[0, 0, 0, 1, 1, 1]] * 3)
    at = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    expected = (12 / 37 + 1 + 0) / 3
    assert partition.metrics(targets[at], true) == {"heldout_ari": pytest.approx(expected)}


def test_fit_command_smoke_end_to_end(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    base = yaml.safe_load((ROOT / "configs" / "fit_two_clusters.yaml").read_text())
    config.write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    argv = [
        "fit",
        str(config),
        "--out",
        str(out),
        "--smoke",
        "--no-progress",
        "task.n=4",
        "solver.name=normalized_euler",
        "solver.dt=2.5",
    ]
    assert main(argv) == 0
    for name in (
        "params.eqx",
        "metrics.json",
        "config.yaml",
        "loss.png",
        "trajectories.png",  # one panel: before and after fitting
        "checkpoint.eqx",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and len(metrics["loss_history"]) == 2
    # Smoke: 2 steps evaluated after each (eval_every 1) on eval_size 4 inputs of n = 4 tokens;
    # the reported accuracy is the last evaluation's, a fraction of 16 tokens.
    assert [e["step"] for e in metrics["evaluations"]] == [0, 1, 2]
    accuracy = metrics["heldout_accuracy"]
    assert accuracy == metrics["evaluations"][-1]["heldout_accuracy"]
    assert accuracy * 16 == pytest.approx(round(accuracy * 16), abs=1e-12)
    assert metrics["train_loss"] == pytest.approx(metrics["loss_history"][-1])
    written = load_config(out / "config.yaml")
    assert written.task.spec().n == 4 and written.solver.name == "normalized_euler"
    model = load_fitted_model(written, out / "params.eqx")
    assert float(model.beta) == pytest.approx(metrics["beta"])
    # A rerun with a changed config is refused (nothing overwritten); the same config resumes.
    capsys.readouterr()
    before = (out / "metrics.json").read_bytes()
    assert main([*argv, "train.learning_rate=0.5"]) == 2
    err = capsys.readouterr().err
    assert "holds a run of a different config" in err
    assert "It differs in: train.learning_rate: 0.05 → 0.5." in err
    assert (out / "metrics.json").read_bytes() == before
    assert main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["loss_history"] == metrics["loss_history"]
    assert again["evaluations"] == metrics["evaluations"]  # held-out scores survive a resume
    # `summarize` and `plot` read a fit directory (it has no dataset.nc).
    capsys.readouterr()
    assert main(["summarize", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["heldout_accuracy"] == metrics["heldout_accuracy"]
    assert summary["train_loss"] == metrics["train_loss"]
    parameters = {row["parameter"]: row for row in summary["parameters"]}
    assert parameters["beta"]["before"] == 1.0
    assert parameters["beta"]["after"] == pytest.approx(metrics["beta"])
    assert parameters["Q"]["after"] == pytest.approx(float(np.linalg.norm(np.asarray(model.Q))))
    assert main(["summarize", str(out), "--format", "table"]) == 0
    table = capsys.readouterr().out
    assert f"heldout_accuracy: {metrics['heldout_accuracy']:.4g}" in table
    redraw = tmp_path / "redraw"
    assert main(["plot", str(out), "--figures-dir", str(redraw)]) == 0
    assert sorted(p.name for p in redraw.iterdir()) == ["loss.png", "trajectories.png"]
    # The same held-out input, model and flow: the redrawn panel is the one the fit drew.
    assert np.array_equal(
        plt.imread(redraw / "trajectories.png"), plt.imread(out / "trajectories.png")
    )
