"""Fixed-step integrators for convergence studies and for the authors' layer update."""

import abc
from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .._field._base import AbstractEuclideanField, AbstractSphereField
from .._sphere import exp_map, normalize


def inside(t, toward, ulps: int = 4):
    """`t` moved a few ulps towards `toward`. Stage times of a step [t0, t1] are read at
    t0⁺ and t1⁻ so that a field piecewise constant in time (per-layer weights, layer l on
    [l·τ, (l+1)·τ)) is read on the step's own piece, even when the constant-step grid
    t0 + k·h is off by a rounding error; smooth time dependence moves by ~1e-15 only."""
    for _ in range(ulps):
        t = jnp.nextafter(t, toward)
    return t


class AbstractFixedStepSolver(diffrax.AbstractSolver):
    """A one-step method without an error estimate: use it with a constant step `dt0`."""

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation
    # Backsolve integrates an augmented state; these methods step particles only.
    supports_backsolve: ClassVar[bool] = False

    @abc.abstractmethod
    def advance(self, terms, t0, t1, y0: PyTree, args: PyTree) -> PyTree:
        """The new state after one step from t0 to t1."""

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1 = self.advance(terms, t0, t1, y0, args)
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def _field_of(terms, solver: str, kinds=(AbstractSphereField,)):
    """The transformer_flows field inside diffrax's terms: layer solvers call its methods."""
    # diffeqsolve wraps terms (for the time direction); `solve` only integrates forward.
    while not isinstance(terms, diffrax.ODETerm) and hasattr(terms, "term"):
        terms = terms.term
    field = getattr(terms, "vector_field", None)
    if not isinstance(terms, diffrax.ODETerm) or not isinstance(field, kinds):
        raise ValueError(
            f"`{solver}` needs the field's own layer map, so it only runs `transformer_flows` "
            f"fields ({' or '.join(k.__name__ for k in kinds)}) with the default "
            f"RecursiveCheckpointAdjoint; got terms {type(terms).__name__} with vector field "
            f"{type(field).__name__}."
        )
    return field


class NormalizedEuler(AbstractFixedStepSolver):
    """x ← (x + h a(x)) / ‖x + h a(x)‖, with a(x) the attention term before projection.

    This is the discrete post-LN Transformer layer and the authors' simulation scheme
    (step η = h, no explicit P^⊥; their row tokens times V give Vᵀ here, the same for
    symmetric V: see `random_weights(value_convention=...)`). First order; one step equals a
    tangent Euler step of size h/(1 + h<x_i, a_i>).
    """

    def order(self, terms):
        return 1

    def advance(self, terms, t0, t1, y0, args):
        drift = _field_of(terms, "NormalizedEuler").drift(inside(t0, t1), y0, args)
        return normalize(y0 + (t1 - t0) * drift)


class ResidualLayers(AbstractFixedStepSolver):
    """One step of size h is the field's own discrete residual layer, `field.residual_layer`:
    Post-LN x ← LN(x + h·Attn(x)) for sphere fields (equal to `NormalizedEuler`), Pre-LN
    x ← x + h·Attn(LN(x)), Peri-LN, nGPT, ... for the placements. Its h → 0 limit is the
    field's ODE; first order in h.
    """

    def order(self, terms):
        return 1

    def advance(self, terms, t0, t1, y0, args):
        field = _field_of(terms, "ResidualLayers", (AbstractSphereField, AbstractEuclideanField))
        return field.residual_layer(inside(t0, t1), y0, t1 - t0, args)


class GeodesicEuler(AbstractFixedStepSolver):
    """x ← exp_x(h v(x)): Euler along great circles with the projected velocity v. First order."""

    def order(self, terms):
        return 1

    def advance(self, terms, t0, t1, y0, args):
        return exp_map(y0, terms.vf_prod(inside(t0, t1), y0, args, terms.contr(t0, t1)))


class RK4(AbstractFixedStepSolver):
    """The classical fourth-order Runge–Kutta method (fixed step, no error estimate).
    Combine with `Renormalized(RK4())` on the sphere."""

    supports_backsolve: ClassVar[bool] = True

    def order(self, terms):
        return 4

    def advance(self, terms, t0, t1, y0, args):
        control = terms.contr(t0, t1)
        half = 0.5 * (t1 - t0)
        tmid = t0 + half

        def shifted(y, k, scale):
            return jax.tree_util.tree_map(lambda a, b: a + scale * b, y, k)

        k1 = terms.vf_prod(inside(t0, t1), y0, args, control)
        k2 = terms.vf_prod(tmid, shifted(y0, k1, 0.5), args, control)
        k3 = terms.vf_prod(tmid, shifted(y0, k2, 0.5), args, control)
        k4 = terms.vf_prod(inside(t1, t0), shifted(y0, k3, 1.0), args, control)
        return jax.tree_util.tree_map(
            lambda y, a, b, c, d: y + (a + 2 * b + 2 * c + d) / 6, y0, k1, k2, k3, k4
        )
