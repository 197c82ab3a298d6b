"""Gradients through `solve` w.r.t. Q, K, V and β against central finite differences (float64),
and the adjoints against each other.

The solve puts the state back on the sphere every step and the checkpointed adjoint
differentiates the discrete scheme itself, so for a fixed-step solver the gradient is the
exact derivative of the computed map; with tight adaptive tolerances it is also the derivative
of the flow up to ~tol.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import transformer_flows as tf

N, D, HORIZON = 4, 3, 1.0
EPS = 1e-5
TIGHT = 1e-10


def _weights(getkey, shape):
    return jax.random.normal(getkey(), shape) / jnp.sqrt(shape[-1])


def _field(kind, getkey):
    # Strongly typed leaves, so perturbed copies reuse the compiled function.
    model = _build(kind, getkey)
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype=leaf.dtype), model)


def _build(kind, getkey):
    if kind == "sa":
        return tf.SelfAttention(1.5, *(_weights(getkey, (D, D)) for _ in range(3)))
    if kind == "usa":
        return tf.UnnormalizedSelfAttention(1.5, *(_weights(getkey, (D, D)) for _ in range(3)))
    if kind == "multihead_per_layer":
        # 2 layers (switch at T/2) of 2 heads with k = 2 < d query/key rows.
        return tf.SelfAttention(
            1.5,
            _weights(getkey, (2, 2, 2, D)),
            _weights(getkey, (2, 2, 2, D)),
            _weights(getkey, (2, 2, D, D)),
            layer_duration=HORIZON / 2,
        )
    if kind == "low_rank":
        return tf.LowRankAttention(
            1.5,
            tf.LowRank(_weights(getkey, (D, 2)), _weights(getkey, (D, 2))),
            _weights(getkey, (D, D)),
            tf.LowRank(_weights(getkey, (D, 2)), _weights(getkey, (D, 2))),
        )
    raise AssertionError(kind)


def _loss(model, x0, readout, solver, dt0, adjoint):
    trajectory = tf.solve(
        tf.as_field(model),
        x0,
        jnp.array([0.0, HORIZON]),
        solver=solver,
        dt0=dt0,
        rtol=TIGHT,
        atol=TIGHT,
        adjoint=adjoint,
    )
    return jnp.sum(readout * trajectory.xs[-1])


# One compiled function per case gives the gradient and, ignoring its gradient output, the
# finite-difference evaluations (compiling is what costs time here).
_value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_loss))


def _grad(*args):
    return _value_and_grad(*args)[1]


def _problem(getkey):
    x0 = tf.sample_sphere(getkey(), N, D)
    readout = jax.random.normal(getkey(), (N, D))
    return x0, readout


def _check_against_finite_differences(model, gradient, loss, getkey):
    """For every leaf θ of `model`: <gradient, v> against (L(θ + εv) - L(θ - εv)) / 2ε along a
    random direction v, where `loss(model)` returns L."""
    leaves, treedef = jax.tree_util.tree_flatten(model)
    grad_leaves, grad_treedef = jax.tree_util.tree_flatten(gradient)
    assert grad_treedef == treedef  # so the zip below pairs each leaf with its own derivative
    for index, (leaf, grad_leaf) in enumerate(zip(leaves, grad_leaves, strict=True)):
        direction = jax.random.normal(getkey(), leaf.shape)

        def shifted(sign, index=index, leaf=leaf, direction=direction):
            moved = list(leaves)
            moved[index] = leaf + sign * EPS * direction
            return loss(jax.tree_util.tree_unflatten(treedef, moved))

        finite_difference = (shifted(1) - shifted(-1)) / (2 * EPS)
        analytic = jnp.sum(grad_leaf * direction)
        assert abs(finite_difference - analytic) <= 1e-6 * abs(analytic) + 1e-12, (
            index,
            float(finite_difference),
            float(analytic),
        )


@pytest.mark.parametrize("kind", ["sa", "usa", "multihead_per_layer", "low_rank"])
def test_fixed_step_gradient_matches_finite_differences(kind, getkey):
    """NormalizedEuler (the authors' layer update), checkpointed adjoint."""
    model = _field(kind, getkey)
    x0, readout = _problem(getkey)
    options = (tf.NormalizedEuler(), 0.05, diffrax.RecursiveCheckpointAdjoint())
    gradient = _grad(model, x0, readout, *options)
    _check_against_finite_differences(
        model, gradient, lambda m: _value_and_grad(m, x0, readout, *options)[0], getkey
    )


def test_adaptive_gradient_matches_finite_differences(getkey):
    """Renormalized Tsit5 with PID steps at rtol = atol = 1e-10."""
    model = _field("sa", getkey)
    x0, readout = _problem(getkey)
    options = (None, None, diffrax.RecursiveCheckpointAdjoint())
    gradient = _grad(model, x0, readout, *options)
    _check_against_finite_differences(
        model, gradient, lambda m: _value_and_grad(m, x0, readout, *options)[0], getkey
    )


def test_adjoints_agree(getkey):
    """Checkpointed (default, and only 3 checkpoints), direct and backsolve adjoints on the
    same adaptive solve: the first three differentiate the same discrete solve (agree to
    rounding); backsolve integrates the continuous adjoint (agrees to the tolerance)."""
    model = _field("sa", getkey)
    x0, readout = _problem(getkey)
    reference = _grad(model, x0, readout, None, None, diffrax.RecursiveCheckpointAdjoint())
    for adjoint, rtol in (
        (diffrax.RecursiveCheckpointAdjoint(checkpoints=3), 1e-11),
        (diffrax.DirectAdjoint(), 1e-11),
        (diffrax.BacksolveAdjoint(), 1e-6),
    ):
        other = _grad(model, x0, readout, None, None, adjoint)
        assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(reference)
        pairs = zip(
            jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(other), strict=True
        )
        for a, b in pairs:
            scale = float(jnp.max(jnp.abs(a)))
            assert float(jnp.max(jnp.abs(a - b))) <= rtol * scale, type(adjoint).__name__


def test_fit_compiler_options_keep_the_gradient_exact(getkey):
    """The fitting programs are compiled with dots only handed to XLA's CPU library
    (`FIT_COMPILER_OPTIONS`, a speed setting): the gradient through the solve must match the
    default compilation to rounding and central finite differences."""
    from transformer_flows._fit import FIT_COMPILER_OPTIONS

    model = _field("sa", getkey)
    x0, readout = _problem(getkey)
    options = (tf.NormalizedEuler(), 0.05, diffrax.RecursiveCheckpointAdjoint())
    fit_compiled = eqx.filter_jit(
        eqx.filter_value_and_grad(_loss), compiler_options=FIT_COMPILER_OPTIONS
    )
    gradient = fit_compiled(model, x0, readout, *options)[1]
    reference = _grad(model, x0, readout, *options)
    leaves = zip(
        jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(gradient), strict=True
    )
    for a, b in leaves:
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-12 * float(jnp.max(jnp.abs(a)))
    _check_against_finite_differences(
        model, gradient, lambda m: fit_compiled(m, x0, readout, *options)[0], getkey
    )


def test_two_save_times_are_the_ends_of_the_solve(getkey):
    """With two save times `solve` saves the start and the last step's state instead of
    interpolating at t1 (a smaller program): the same states as saving at three times."""
    field = _field("sa", getkey)
    x0 = tf.sample_sphere(getkey(), N, D)
    ends = tf.solve(field, x0, jnp.array([0.0, HORIZON]), rtol=1e-8, atol=1e-8)
    three = tf.solve(field, x0, jnp.array([0.0, HORIZON / 2, HORIZON]), rtol=1e-8, atol=1e-8)
    assert jnp.array_equal(ends.xs[0], tf.normalize(x0))
    assert int(ends.stats["num_steps"]) == int(three.stats["num_steps"])
    assert float(jnp.max(jnp.abs(ends.xs[-1] - three.xs[-1]))) <= 1e-12
