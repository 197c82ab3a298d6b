"""Angle form on the circle (d = 2): (7.1), its softmax analogue, Kuramoto (7.2) and the
generalised Kuramoto model (7.5) with a user interaction h."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._attention import AttentionMask, as_masses, attend
from .._custom_types import Angles
from .._sphere import angles_to_points
from .._validation import as_float_array, check_finite, optional_float_array
from ._base import AbstractAngleField
from ._self_attention import as_beta

# Up to this many oscillators the field is evaluated from the (n, n) angle differences.
_PAIRWISE_MAX_TOKENS = 2048


class Kuramoto(AbstractAngleField):
    """θ̇_i = ω_i + K Σ_j w_ij sin(θ_j - θ_i) on the torus, where
    - `normalized=False`: w_ij = e^{β cos(θ_i-θ_j)}/n, i.e. (USA) in angles, (7.1);
    - `normalized=True`: w_ij = softmax_j(β cos(θ_i-θ_j)), i.e. (SA) in angles.
    At β = 0, `normalized=False` is the classical Kuramoto model (7.2) with coupling K.

    With `interaction=h` it is the generalised Kuramoto model (7.5),
    θ̇_i = ω_i + (K/n) Σ_j h(θ_j - θ_i, β): (7.1) is h(u, β) = e^{β cos u} sin u and the
    classical model h(u, β) = sin u. `h` maps a scalar difference u and the scalar β to a
    scalar (it is vmapped over the n² pairs); a plain function (static: a new function
    compiles anew) or an equinox module whose arrays are parameters (traced, differentiable).
    β is handed to h so that sweeps over β work; an h that does not depend on β ignores it.

    **Arguments:** `beta` (any finite real; β < 0 is the repulsive softmax), `normalized`,
    `coupling` K, `frequencies` ω of shape (n,) (None means ω = 0), `interaction` h (None:
    the attention forms above; needs `normalized=False`), `masses` m of shape (n,) (None:
    all 1): oscillator j counts m_j times, w_ij ∝ m_j e^{β cos(θ_i-θ_j)} (normalised by
    M = Σ_j m_j in place of n), so coincident oscillators merge into one exactly.
    """

    beta: Float[Array, ""] = eqx.field(converter=as_beta)
    normalized: bool = eqx.field(default=False, static=True)
    coupling: Float[Array, ""] = eqx.field(
        default=1.0, converter=lambda c: check_finite(as_float_array(c, "coupling"), "coupling")
    )
    frequencies: Float[Array, " n"] | None = eqx.field(
        default=None, converter=optional_float_array("frequencies")
    )
    interaction: Callable | None = eqx.field(default=None, kw_only=True)
    masses: Float[Array, " n"] | None = eqx.field(default=None, converter=as_masses, kw_only=True)

    def __check_init__(self):
        # Finiteness of `coupling` and `frequencies` is checked by their converters, which
        # return the checked arrays (a check here would be dropped under jit).
        if self.coupling.ndim != 0:
            raise ValueError(f"`coupling` must be a scalar, got shape {self.coupling.shape}.")
        if self.frequencies is not None and self.frequencies.ndim != 1:
            raise ValueError(f"`frequencies` must have shape (n,), got {self.frequencies.shape}.")
        if self.interaction is not None:
            if not callable(self.interaction):
                raise ValueError(
                    f"`interaction` must be a function h(u, beta) of a phase difference and β "
                    f"(e.g. `lambda u, beta: jnp.sin(u)`), got {self.interaction!r}."
                )
            if self.normalized:
                raise ValueError(
                    "`interaction` defines the generalised Kuramoto model (7.5), normalised by "
                    "1/n; `normalized=True` (the softmax weights) does not apply to it: pass "
                    "normalized=False, or fold a normalisation into h."
                )

    def check_state(self, theta) -> None:
        shape = getattr(theta, "shape", None)
        if shape is None or len(shape) != 1:
            raise ValueError(
                f"`x0` for Kuramoto must be angles of shape (n,), got shape {shape}. "
                "Points on the circle convert with `transformer_flows.points_to_angles(x)`; "
                "points on a sphere go to `SelfAttention`/`UnnormalizedSelfAttention`."
            )
        if shape[0] < 1:
            raise ValueError(
                f"`x0` has no oscillators (shape {shape}); pass at least one angle, e.g. "
                "`transformer_flows.uniform_angles(key, n)` with n >= 1."
            )
        if self.frequencies is not None and self.frequencies.shape != shape:
            raise ValueError(
                f"`frequencies` has shape {self.frequencies.shape} but `x0` has {shape}."
            )
        if self.masses is not None and self.masses.shape != shape:
            raise ValueError(
                f"`masses` has shape {self.masses.shape} but `x0` has {shape}; give one "
                "positive mass per oscillator (e.g. jnp.ones(n))."
            )

    def __call__(self, t, theta: Angles, args: PyTree = None) -> Angles:
        if self.interaction is None and theta.shape[0] > _PAIRWISE_MAX_TOKENS:
            # Many tokens: the blockwise evaluation of `attend` keeps memory O(n), at the cost
            # of the cancellation below. <e_θ_i, Σ_j w_ij x_j>, e_θ = (-sin θ, cos θ).
            mask = None if self.masses is None else AttentionMask(masses=self.masses)
            mixed = attend(
                angles_to_points(theta),
                self.beta,
                None,
                None,
                None,
                normalized=self.normalized,
                mask=mask,
            )
            interacting = jnp.cos(theta) * mixed[:, 1] - jnp.sin(theta) * mixed[:, 0]
        else:
            differences = theta[None, :] - theta[:, None]  # u_ij = θ_j - θ_i
            beta = self.beta.astype(theta.dtype)
            if self.interaction is None:
                # Σ_j w_ij sin(θ_j - θ_i) from the differences themselves: sin(0) = 0 exactly
                # for a token and its cluster. Projecting Σ_j w_ij x_j onto e_θ instead cancels
                # terms of size e^{β} to leave O(θ_j - θ_i): rounding noise that stalls
                # implicit solvers in metastable phases (Kvaerno5, β = 50: τ = 7e5 against
                # 1.6e21 in 20 000 steps).
                scores = beta * jnp.cos(differences)
                if self.masses is None:
                    if self.normalized:
                        weights = jax.nn.softmax(scores, axis=1)
                    else:
                        weights = jnp.exp(scores) / theta.shape[0]
                else:
                    masses = self.masses.astype(theta.dtype)
                    if self.normalized:
                        weights = jax.nn.softmax(scores + jnp.log(masses)[None, :], axis=1)
                    else:
                        weights = jnp.exp(scores) * (masses / jnp.sum(masses))[None, :]
                interacting = jnp.sum(weights * jnp.sin(differences), axis=1)
            else:
                h = jax.vmap(jax.vmap(self.interaction, in_axes=(0, None)), in_axes=(0, None))
                pairs = h(differences, beta)
                if self.masses is None:
                    interacting = jnp.mean(pairs, axis=1)
                else:
                    masses = self.masses.astype(theta.dtype)
                    interacting = pairs @ masses / jnp.sum(masses)
        velocity = self.coupling * interacting
        return velocity if self.frequencies is None else velocity + self.frequencies
