"""Exact span reduction: solve d > n systems in an orthonormal basis of span{x_i(0)}.

With identity weights, or any Q, K and a V that maps S = span{x_i(0)} into itself, every term
of the attention field (Σ_j A_ij V x_j, its tangent projection, the renormalisation) stays in
S, so x_i(t) ∈ S for all t. With U (d × n) an orthonormal basis of a space containing S,
y_i = Uᵀx_i follows the same kind of field with weights Q U, K U, UᵀV U (inner products and
norms are preserved because UᵀU = I), and x_i(t) = U y_i(t). The reduced system has dimension
n whatever d is, so d = 1024 costs what d = n costs. U has the static shape (d, n), so the
reduction composes with `jit`, `vmap` and `grad`.
"""

import dataclasses

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._custom_types import Particles
from ._field._self_attention import AbstractAttentionField
from ._solve import Trajectory, solve
from ._validation import check_condition


def _span_coordinates(x0: Particles) -> tuple[Float[Array, "n n"], Float[Array, "d n"]]:
    """(y0, U): an orthonormal basis U (d × n) of span{x_i(0)} and the tokens in it, y0 = x0 U.

    Classical Gram–Schmidt with re-orthogonalisation ("twice is enough"), scanned over the
    n tokens: pure XLA matmuls, orthonormal to rounding. It replaces a Householder QR and a
    Cholesky-based QR; both call LAPACK on CPU, and either made the whole jitted sweep 2–5x
    slower on the loaded 2-core benchmark machine (BENCHMARKS.md §4). A token whose
    component outside the span of the previous ones is below sqrt(eps) is rejected.
    """
    tolerance = float(np.sqrt(jnp.finfo(x0.dtype).eps))

    def add_token(rows, i):
        v = x0[i]
        for _ in range(2):
            v = v - rows.T @ (rows @ v)
        norm = jnp.linalg.norm(v)
        independent = norm / jnp.linalg.norm(x0[i])
        return rows.at[i].set(v / jnp.where(norm > 0, norm, 1)), independent

    rows, independent = jax.lax.scan(add_token, jnp.zeros_like(x0), jnp.arange(x0.shape[0]))
    y0 = check_condition(
        x0 @ rows.T,
        jnp.min(independent) < tolerance,
        "The tokens of `x0` are (numerically) linearly dependent, so span reduction cannot "
        "build its basis; use `transformer_flows.solve` directly for this start.",
    )
    return y0, rows.T


def span_basis(x0: Particles) -> Float[Array, "d n"]:
    """Orthonormal columns U (d × n) spanning the tokens x_i(0) (linearly independent, d > n)."""
    return _span_coordinates(x0)[1]


def reduce_to_span(
    field: AbstractAttentionField, basis: Float[Array, "d r"], *, check: bool = True
):
    """The field in the coordinates y = Uᵀx: weights Q U, K U, UᵀV U (None stays None).

    `check=True` verifies that V maps span(U) into itself (now when V is concrete, at run time
    under jit), because otherwise the reduction is not exact.
    """
    if not isinstance(field, AbstractAttentionField):
        raise ValueError(
            f"`field` must be SelfAttention or UnnormalizedSelfAttention for span reduction, "
            f"got {type(field).__name__}; angle fields (Kuramoto) already have d = 2."
        )
    V = field.V
    reduced_V = None
    if V is not None:
        image = V @ basis
        reduced_V = basis.T @ image
        if check:
            leak = jnp.max(jnp.abs(image - basis @ reduced_V))
            tolerance = float(np.sqrt(jnp.finfo(image.dtype).eps)) * (1 + jnp.max(jnp.abs(V)))
            reduced_V = check_condition(
                reduced_V,
                leak > tolerance,
                "`V` does not keep span{x_i(0)} invariant, so the flow leaves the span and "
                "span reduction would be wrong; use `transformer_flows.solve` directly.",
            )
    return dataclasses.replace(
        field,
        Q=None if field.Q is None else field.Q @ basis,
        K=None if field.K is None else field.K @ basis,
        V=reduced_V,
    )


def solve_in_span(
    field: AbstractAttentionField,
    x0: Particles,
    ts,
    *,
    check: bool = True,
    observe_in_span: bool = False,
    **solve_kwargs,
) -> Trajectory:
    """`solve(field, x0, ts, **solve_kwargs)`, computed in an orthonormal basis of span{x_i(0)}
    when d > n (exact when V keeps that span invariant, e.g. V = None; see `reduce_to_span`).

    The returned `Trajectory` is in the original coordinates: `xs` has shape (T, n, d), and
    `observe` and the conditions of `stop_when` (if given) see points in R^d. With
    `observe_in_span=True`, `observe` and the conditions get the
    span coordinates (rows y_i = Uᵀx_i, shape (n, n)) instead, which skips the n·n·d map
    back at every save: correct for observables of inner products only (Gram matrix, energies,
    cluster fractions), since <y_i, y_j> = <x_i, x_j>. For d <= n this is `solve` unchanged.
    """
    shape = getattr(x0, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"`x0` must be points of shape (n, d), got shape {shape}.")
    n, d = shape
    if d <= n:
        return solve(field, x0, ts, **solve_kwargs)
    y0, basis = _span_coordinates(jnp.asarray(x0))
    observe = solve_kwargs.pop("observe", None)
    if observe is not None:
        solve_kwargs["observe"] = observe if observe_in_span else lambda y: observe(y @ basis.T)
    stop_when = solve_kwargs.pop("stop_when", None)
    if stop_when is not None:
        solve_kwargs["stop_when"] = (
            stop_when if observe_in_span else _conditions_in_original(stop_when, basis)
        )
    trajectory = solve(reduce_to_span(field, basis, check=check), y0, ts, **solve_kwargs)
    if trajectory.xs is None:
        return trajectory
    return dataclasses.replace(trajectory, xs=trajectory.xs @ basis.T)


def _conditions_in_original(stop_when, basis):
    """`stop_when` (functions, a tuple/list of them, or a `diffrax.Event`) with every
    condition reading the original coordinates x_i = U y_i instead of the span's y_i."""

    def lift(cond):
        return lambda t, y, args, **kwargs: cond(t, y @ basis.T, args, **kwargs)

    if isinstance(stop_when, diffrax.Event):
        cond_fn = jax.tree_util.tree_map(lift, stop_when.cond_fn, is_leaf=callable)
        return diffrax.Event(cond_fn, stop_when.root_finder, stop_when.direction)
    if isinstance(stop_when, (tuple, list)):
        return type(stop_when)(lift(cond) for cond in stop_when)
    return lift(stop_when)
