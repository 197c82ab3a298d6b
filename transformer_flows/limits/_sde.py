"""The depth → ∞ limit of a random Post-LN transformer with α_L = ½: an SDE on the sphere driven
by common matrix noise (docs/limits.md, "The SDE limit").

With branch scale β₀ L^{−1/2}, each layer adds √h·branch_l(x) (h = 1/L) with fresh i.i.d.
weights. Given x, branch_l(x) has mean 0 (W^O is symmetric in law) and covariance

    E[branch_i,a branch_k,b] = δ_ab κ_ik(x)/D,   κ(x) = E_{W^Q, W^K}[a(x) x xᵀ a(x)ᵀ],

a the attention matrix of one random head (W^O, W^V integrated out exactly). Summing the
layers of a depth interval dt gives, by the central limit theorem, a Gaussian increment of
covariance dt·κ ⊗ I_D/D, so the network converges to the Itô SDE

    dX = P_X(β₀ D^{−1/2} κ(X)^{1/2} dB),   B an n×D matrix Brownian motion,

kept on the sphere (the normalisation's radial Itô drift). Equivalently dX_i = P(β₀ Σ_m
dW^m (a_m X)_i/√(MD)) for M heads each with its own D×D matrix Brownian motion W^m: common
matrix noise acting on the attention outputs. `BranchNoise` evaluates κ with a fixed bank of M
heads (exact as M → ∞; all heads alike for α_A = 1, N → ∞). The network is the Euler scheme of
this Itô SDE, so solve it with `diffrax.Euler()` (projected Itô Euler), not a Stratonovich
scheme: κ depends on X through the attention, so the two calculi differ by a tangent drift.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._custom_types import Particles
from .._field._base import AbstractSphereField, check_points
from .._noise import AbstractNoise
from .._sphere import project_tangent
from ._transformer import _exponent, _positive_int


class NoDrift(AbstractSphereField):
    """The zero vector field on the sphere: `solve(NoDrift(), x0, ts, noise=...)` is the pure
    diffusion of the noise."""

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        return jnp.zeros_like(x)

    def jump_times(self) -> None:
        return None

    def check_state(self, x) -> None:
        check_points(x, "NoDrift")


class BranchNoise(AbstractNoise):
    """The α_L = ½ limit noise of a random Post-LN transformer: increment
    P_X(β₀ D^{−1/2} κ(X)^{1/2} dB), κ(X) = (1/M) Σ_m a_m(X) X Xᵀ a_m(X)ᵀ over a bank of M random
    heads (a_m = softmax(N^{−α_A}(W^Q_m X)ᵀ... ), see the module docstring). Itô: solve with
    `diffrax.Euler()`.

    **Arguments:**
    - `query`, `key`: (M, N, D) banks of head weights, entries N(0, 1).
    - `alpha_A`: the logit exponent; `beta0`: the branch strength β₀.
    """

    query: Float[Array, "M N D"]
    key: Float[Array, "M N D"]
    alpha_A: float = eqx.field(static=True)
    beta0: float = eqx.field(static=True)

    def __check_init__(self):
        if self.query.ndim != 3 or self.query.shape != self.key.shape:
            raise ValueError(
                f"`query` and `key` must both have shape (M, N, D), got {self.query.shape} and "
                f"{self.key.shape}."
            )

    def brownian_shape(self, x: Particles) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    def kappa(self, x: Particles) -> Float[Array, "n n"]:
        """κ(x) = E_heads[a x xᵀ aᵀ], averaged over the bank."""
        q = jnp.einsum("mkd,nd->mnk", self.query, x)
        k = jnp.einsum("mkd,nd->mnk", self.key, x)
        scale = jnp.asarray(self.query.shape[1] ** (-self.alpha_A), x.dtype)
        a = jax.nn.softmax(scale * jnp.einsum("mik,mjk->mij", q, k), axis=-1)
        ax = jnp.einsum("mij,jd->mid", a, x)
        return jnp.einsum("mid,mkd->ik", ax, ax) / self.query.shape[0]

    def increment(self, x: Particles, dw: PyTree[Array]) -> Particles:
        w, v = jnp.linalg.eigh(self.kappa(x))
        root = (v * jnp.sqrt(jnp.clip(w, 0.0))[None, :]) @ v.T
        scale = jnp.asarray(self.beta0 / jnp.sqrt(x.shape[-1]), x.dtype)
        return project_tangent(x, scale * (root @ dw))


def branch_noise(
    key: PRNGKeyArray,
    *,
    bank: int,
    heads: int,
    head_dim: int,
    alpha_A: float,
    beta0: float = 1.0,
    dtype=None,
) -> BranchNoise:
    """The limit noise of `random_transformer(..., heads=heads, head_dim=head_dim, alpha_A=...,
    alpha_L=0.5, beta0=..., placement="post")` as depth → ∞, with κ from `bank` random heads
    (tokens in D = heads·head_dim)."""
    bank = _positive_int(bank, "bank", "bank=512")
    heads = _positive_int(heads, "heads", "heads=4")
    head_dim = _positive_int(head_dim, "head_dim", "head_dim=16")
    alpha_A = _exponent(alpha_A, "alpha_A", "1 for μP, 0.5 for 1/√N logits", positive=True)
    beta0 = _exponent(beta0, "beta0", "the branch strength", positive=True)
    dtype = jnp.result_type(float) if dtype is None else dtype
    kq, kk = jax.random.split(key)
    shape = (bank, head_dim, heads * head_dim)
    return BranchNoise(
        query=jax.random.normal(kq, shape, dtype),
        key=jax.random.normal(kk, shape, dtype),
        alpha_A=alpha_A,
        beta0=beta0,
    )
