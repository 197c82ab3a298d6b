"""The hardmax limit β → ∞ of attention without normalisation on R^d, GLPR (9.5)–(9.6)
(Alcalde, Fantuzzi, Zuazua, arXiv:2407.01602)."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._attention import inner_products
from .._custom_types import Particles
from .._validation import as_float_array, check_nonnegative, optional_float_array
from ._base import AbstractEuclideanField
from ._self_attention import _check_weights


def hardmax_weights(
    scores: Float[Array, "n m"], tie_tolerance: Float[Array, ""] | float
) -> Float[Array, "n m"]:
    """Row i uniform on the argmax set C_i = {j : s_ij >= max_k s_ik - τ·max_k |s_ik|} of
    its scores (τ = `tie_tolerance`, relative to the row's largest |score|): the β → ∞
    limit of softmax_j(β s_ij) where the maximum is unique, and the uniform average over
    the tied maximisers where it is not (τ = 0: exact ties only)."""
    top = jnp.max(scores, axis=-1, keepdims=True)
    scale = jnp.max(jnp.abs(scores), axis=-1, keepdims=True)
    chosen = (scores >= top - tie_tolerance * scale).astype(scores.dtype)
    return chosen / jnp.sum(chosen, axis=-1, keepdims=True)


class HardmaxAttention(AbstractEuclideanField):
    """Hardmax attention on R^d, (9.5)–(9.6):

        ż_i = (1/|C_i|) Σ_{j∈C_i} V (z_j - z_i),   C_i = argmax_j <Q z_i, K z_j>,

    the β → ∞ limit of ż_i = Σ_j softmax_j(β<Q z_i, K z_j>) V (z_j - z_i) (9.4) (for V = I
    also of the rescaled pure self-attention (9.3): the factor e^{2t} of its scores does not
    move the argmax). The field is piecewise constant in C and jumps where C_i changes.

    Ties: C_i holds every j with <Qz_i, Kz_j> >= max_k <Qz_i, Kz_k> - τ·max_k |<Qz_i, Kz_k>|
    (`tie_tolerance` τ, relative, so that rounding does not split a tie). On a tie the
    velocity is the uniform average over the tied set: in Example 9.3 of GLPR
    (z_1 = (1, 1), z_2 = (-1, 1), z_3 = 0) it selects ż_3 = (z_1 + z_2)/2 - z_3 among the
    three Filippov solutions.

    Integration: the discrete layer `residual_layer` is z ← z + h·ż (the hardmax
    transformer of Alcalde–Fantuzzi–Zuazua with step α = h), stepped by `ResidualLayers`;
    adaptive solvers (`diffrax.Tsit5()`) stay accurate by rejecting steps at the switching
    surfaces (docs/models.md, "Hardmax", measured there).

    **Arguments:**
    - `Q`, `K`: (k, d) (None: the identity); `V`: (d, d) (None: the identity). One head,
      constant weights.
    - `tie_tolerance`: τ >= 0, a scalar (traced values allowed; default 1e-6, a few float32
      ulps; 0 keeps exact ties only).
    """

    Q: Array | None = eqx.field(default=None, converter=optional_float_array("Q"))
    K: Array | None = eqx.field(default=None, converter=optional_float_array("K"))
    V: Array | None = eqx.field(default=None, converter=optional_float_array("V"))
    tie_tolerance: Float[Array, ""] = eqx.field(
        default=1e-6, converter=lambda tau: _as_tolerance(tau), kw_only=True
    )

    def __check_init__(self):
        _check_weights(self.Q, self.K, self.V, None)
        for name, w in (("Q", self.Q), ("K", self.K), ("V", self.V)):
            if w is not None and w.ndim != 2:
                raise ValueError(
                    f"`{name}` must be a matrix ({'(d, d)' if name == 'V' else '(k, d)'}): "
                    f"HardmaxAttention has one head and constant weights, got shape {w.shape}."
                )
        if self.tie_tolerance.ndim != 0:
            raise ValueError(
                f"`tie_tolerance` must be a scalar, got shape {self.tie_tolerance.shape}."
            )

    @property
    def dim(self) -> int | None:
        return next((w.shape[-1] for w in (self.Q, self.K, self.V) if w is not None), None)

    def check_state(self, x) -> None:
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(
                f"`x0` for HardmaxAttention must be tokens of shape (n, d) in R^d with n, d >= 1, "
                f"got shape {shape}."
            )
        if self.dim is not None and shape[1] != self.dim:
            raise ValueError(
                f"`x0` has dimension d={shape[1]} but the weights Q, K, V act on d={self.dim}; "
                f"pass tokens of shape (n, {self.dim})."
            )

    def jump_times(self) -> Float[Array, " jumps"] | None:
        return None

    def attention_matrix(self, t, x: Particles) -> Float[Array, "n n"]:
        """The hardmax attention matrix: 1/|C_i| on the argmax set C_i of row i, else 0."""
        queries = x if self.Q is None else x @ self.Q.T
        keys = x if self.K is None else x @ self.K.T
        tau = self.tie_tolerance.astype(x.dtype)
        return hardmax_weights(inner_products(queries, keys), tau)

    def __call__(self, t, x: Particles, args: PyTree = None) -> Particles:
        # Σ_j A_ij (z_j - z_i) = (A z)_i - z_i, since each row of A sums to 1.
        pulled = self.attention_matrix(t, x) @ x - x
        return pulled if self.V is None else pulled @ self.V.T

    def residual_layer(self, t, x: Particles, h, args: PyTree = None) -> Particles:
        """z ← z + h·ż: the hardmax transformer layer with step α = h."""
        return x + h * self(t, x, args)


def _as_tolerance(value) -> Float[Array, ""]:
    return check_nonnegative(
        as_float_array(value, "tie_tolerance"),
        "tie_tolerance",
        "relative to the largest |score| of a row, e.g. 1e-6",
    )
