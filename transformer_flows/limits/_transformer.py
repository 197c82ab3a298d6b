"""Random deep multi-head transformers in the parameterisation of Bordelon, Chaudhry and
Pehlevan (arXiv:2405.15712), as flows on the sphere (docs/limits.md).

H heads of key/query dimension N, d_model D = N·H, depth L. Tokens are unit vectors (the
residual stream in units where |x| = 1, i.e. u = √D·x has O(1) entries as in the authors'
RMS-1 stream). Layer l of the branch, at unit tokens θ (n, D):

    q_h = W^Q_{l,h} θ,  k_h = W^K_{l,h} θ,  v_h = W^V_{l,h} θ        (each N entries, O(1))
    A_h,ij = N^{−α_A} ⟨q_h,i, k_h,j⟩,  a_h = softmax_j(A_h)
    branch_i = (1/D) Σ_h W^O_{l,h} Σ_j a_h,ij v_h,j,

all weight entries i.i.d. N(0, 1) and no biases. 1/D = (1/√D)·(1/√(HN)): the value and
output maps carry 1/√fan-in as in the authors' code, so the head sum is normalised by 1/√H.
The residual layer is x ← LN(x + β₀ L^{−α_L} branch(x)) (Post-LN) or
x ← x + β₀ L^{−α_L} branch(LN x) (Pre-LN), LN(x) = x/|x|.
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._custom_types import Particles
from .._field._base import AbstractEuclideanField, AbstractSphereField, check_points
from .._field._layers import layer_index, layer_jump_times
from .._field._placements import directions
from .._sphere import normalize

PLACEMENTS = ("post", "pre")


class TransformerWeights(eqx.Module):
    """The weights of an L-layer, H-head transformer with head dimension N and d_model D = N·H.

    **Arguments:**
    - `query`, `key`, `value`: (L, H, N, D) arrays, entries N(0, 1) at initialisation.
    - `output`: (L, H, D, N), entries N(0, 1).
    - `alpha_A`: the logit exponent α_A (logits N^{−α_A}⟨q, k⟩), a positive float.
    """

    query: Float[Array, "L H N D"]
    key: Float[Array, "L H N D"]
    value: Float[Array, "L H N D"]
    output: Float[Array, "L H D N"]
    alpha_A: float = eqx.field(static=True)

    def __check_init__(self):
        shape = self.query.shape
        if len(shape) != 4:
            raise ValueError(f"`query` must have shape (L, H, N, D), got {shape}.")
        depth, heads, head_dim, dim = shape
        if dim != heads * head_dim:
            raise ValueError(
                f"d_model D = {dim} must equal heads·head_dim = {heads}·{head_dim}; draw the "
                "weights with `transformer_flows.limits.random_transformer`."
            )
        for name in ("key", "value"):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"`{name}` must have the shape of `query` {shape}, got "
                    f"{getattr(self, name).shape}."
                )
        if self.output.shape != (depth, heads, dim, head_dim):
            raise ValueError(
                f"`output` must have shape (L, H, D, N) = {(depth, heads, dim, head_dim)}, got "
                f"{self.output.shape}."
            )

    @property
    def depth(self) -> int:
        return self.query.shape[0]

    @property
    def heads(self) -> int:
        return self.query.shape[1]

    @property
    def head_dim(self) -> int:
        return self.query.shape[2]

    @property
    def dim(self) -> int:
        return self.query.shape[3]

    def logits(self, layer, theta: Particles) -> Float[Array, "H n n"]:
        """A_h,ij = N^{−α_A}⟨W^Q_h θ_i, W^K_h θ_j⟩ of layer `layer` at unit tokens θ."""
        q = jnp.einsum("hkd,nd->hnk", self.query[layer], theta)
        k = jnp.einsum("hkd,nd->hnk", self.key[layer], theta)
        scale = jnp.asarray(self.head_dim ** (-self.alpha_A), theta.dtype)
        return scale * jnp.einsum("hik,hjk->hij", q, k)

    def attention(self, layer, theta: Particles) -> Float[Array, "H n n"]:
        """The attention weights a_h = softmax_j(A_h) (log-sum-exp stable)."""
        return jax.nn.softmax(self.logits(layer, theta), axis=-1)

    def branch(self, layer, theta: Particles) -> Particles:
        """The attention branch of layer `layer` at unit tokens θ, (n, D), O(1) norm."""
        a = self.attention(layer, theta)
        v = jnp.einsum("hkd,nd->hnk", self.value[layer], theta)
        heads_out = jnp.einsum("hij,hjk->hik", a, v)
        return jnp.einsum("hdk,hik->id", self.output[layer], heads_out) / self.dim


class AbstractRandomTransformer(eqx.Module):
    """A transformer of `TransformerWeights` as a flow in depth t ∈ [0, 1] (layer l on
    [l/L, (l+1)/L)): the branch scale, the layer lookup, logits and attention matrices and
    the explicit layer map. Final subclasses fix the placement."""

    weights: eqx.AbstractVar[TransformerWeights]
    beta0: eqx.AbstractVar[float]
    alpha_L: eqx.AbstractVar[float]

    @abc.abstractmethod
    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        """One residual layer of step h (h = 1/L: the network's layer)."""

    @property
    def depth(self) -> int:
        return self.weights.depth

    @property
    def layer_duration(self) -> float:
        return 1.0 / self.depth

    @property
    def branch_scale(self) -> float:
        """β₀ L^{1−α_L}: the velocity's factor, so one Euler step h = 1/L multiplies the branch
        by β₀ L^{−α_L}, the authors' residual scale."""
        return self.beta0 * self.depth ** (1.0 - self.alpha_L)

    def layer_at(self, t):
        return layer_index(t, self.layer_duration, self.depth)

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return layer_jump_times(self.layer_duration, self.depth)

    def logits(self, t, x: Particles) -> Float[Array, "H n n"]:
        """The logits A_h (heads, n, n) of the layer active at t, at the directions of x."""
        return self.weights.logits(self.layer_at(t), normalize(x))

    def attention_matrix(self, t, x: Particles) -> Float[Array, "H n n"]:
        """The attention matrices (heads, n, n) of the layer active at t."""
        return self.weights.attention(self.layer_at(t), normalize(x))

    def _velocity(self, t, theta: Particles) -> Particles:
        scale = jnp.asarray(self.branch_scale, theta.dtype)
        return scale * self.weights.branch(self.layer_at(t), theta)

    def layer_states(self, x0: Particles) -> Float[Array, "layers n D"]:
        """The residual stream after each layer, x^0 = x0, ..., x^L (a `lax.scan` over the
        layers; the same map as `solve(..., solver=ResidualLayers(), dt0=1/L)`)."""
        tau = self.layer_duration

        def step(x, layer):
            t = (layer + 0.5) * tau
            x = self.residual_layer(t, x, jnp.asarray(tau, x.dtype))
            return x, x

        _, states = jax.lax.scan(step, x0, jnp.arange(self.depth, dtype=x0.dtype))
        return jnp.concatenate([x0[None], states])

    def _check(self, x) -> None:
        check_points(x, "random_transformer")
        if x.shape[1] != self.weights.dim:
            raise ValueError(
                f"`x0` has dimension {x.shape[1]} but the transformer has d_model "
                f"D = heads·head_dim = {self.weights.dim}; pass tokens of shape (n, "
                f"{self.weights.dim})."
            )


class PostLNTransformer(AbstractRandomTransformer, AbstractSphereField):
    """Post-LN: x ← LN(x + β₀ L^{−α_L} branch_l(x)) on the sphere; ẋ = P_x(β₀ L^{1−α_L}
    branch_{l(t)}(x)). With `ResidualLayers` and dt0 = 1/L, exactly the L-layer network."""

    weights: TransformerWeights
    beta0: float = eqx.field(static=True)
    alpha_L: float = eqx.field(static=True)

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        return self._velocity(t, x)

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        return normalize(x + h * self.drift(t, x, args))

    def check_state(self, x) -> None:
        self._check(x)


class PreLNTransformer(AbstractRandomTransformer, AbstractEuclideanField):
    """Pre-LN: x ← x + β₀ L^{−α_L} branch_l(LN x) in R^D; ẋ = β₀ L^{1−α_L} branch_{l(t)}(x/|x|).
    With `ResidualLayers` and dt0 = 1/L, exactly the L-layer network."""

    weights: TransformerWeights
    beta0: float = eqx.field(static=True)
    alpha_L: float = eqx.field(static=True)

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        return self._velocity(t, directions(x, "Pre-LN"))

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        return x + h * self(t, x, args)

    def check_state(self, x) -> None:
        self._check(x)


def _positive_int(value, name: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}; e.g. {example}.")
    return value


def _exponent(value, name: str, allowed: str, positive: bool) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "a positive" if positive else "a non-negative"
        raise ValueError(f"`{name}` must be {bound} finite number ({allowed}), got {value!r}.")
    return float(value)


def random_transformer(
    key: PRNGKeyArray,
    *,
    depth: int,
    heads: int,
    head_dim: int,
    alpha_A: float,
    alpha_L: float,
    beta0: float = 1.0,
    placement: str = "post",
    dtype=None,
) -> PostLNTransformer | PreLNTransformer:
    """Draw a random L-layer, H-head transformer (docs/limits.md) and return it as a field.

    **Arguments:**
    - `key`: a JAX PRNG key; the same key gives the same weights.
    - `depth`: L >= 1 layers; layer l acts on [l/L, (l+1)/L), so `solve(field, x0, ts,
      solver=ResidualLayers(), dt0=1/L)` on t ∈ [0, 1] is exactly the network.
    - `heads`: H >= 1; `head_dim`: N >= 1 (key/query/value dimension per head). The tokens
      live in d_model D = H·N.
    - `alpha_A`: logits N^{−α_A}⟨q, k⟩; 1 is μP (heads alike at initialisation), ½ the standard
      1/√N. Any positive float is accepted.
    - `alpha_L`: residual branches scaled by β₀ L^{−α_L}; 1 (depth-μP, an ODE), ½ (a diffusion,
      docs/limits.md "The SDE limit"); 0 (no depth scaling) is accepted for the rank-collapse
      comparison.
    - `beta0`: β₀ > 0, the branch strength.
    - `placement`: "post" (x ← LN(x + branch), a sphere field) or "pre" (x ← x + branch(LN x),
      a field on R^D).
    - `dtype`: of the weights (default: JAX's default float).
    """
    depth = _positive_int(depth, "depth", "depth=8")
    heads = _positive_int(heads, "heads", "heads=4")
    head_dim = _positive_int(head_dim, "head_dim", "head_dim=16")
    alpha_A = _exponent(alpha_A, "alpha_A", "1 for μP, 0.5 for 1/√N logits", positive=True)
    alpha_L = _exponent(alpha_L, "alpha_L", "1 for depth-μP, 0.5 for the diffusion", False)
    if isinstance(beta0, bool) or not isinstance(beta0, (int, float)) or not beta0 > 0:
        raise ValueError(f"`beta0` must be a positive number (the branch strength), got {beta0!r}.")
    if not math.isfinite(beta0):
        raise ValueError(f"`beta0` must be finite, got {beta0!r}.")
    if placement not in PLACEMENTS:
        raise ValueError(
            f"`placement` must be 'post' (x ← LN(x + branch)) or 'pre' (x ← x + branch(LN x)), "
            f"got {placement!r}."
        )
    dtype = jnp.result_type(float) if dtype is None else dtype
    dim = heads * head_dim
    kq, kk, kv, ko = jax.random.split(key, 4)
    shape = (depth, heads, head_dim, dim)
    weights = TransformerWeights(
        query=jax.random.normal(kq, shape, dtype),
        key=jax.random.normal(kk, shape, dtype),
        value=jax.random.normal(kv, shape, dtype),
        output=jax.random.normal(ko, (depth, heads, dim, head_dim), dtype),
        alpha_A=alpha_A,
    )
    cls = PostLNTransformer if placement == "post" else PreLNTransformer
    return cls(weights=weights, beta0=float(beta0), alpha_L=alpha_L)
