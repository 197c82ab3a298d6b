"""Sinkhorn (doubly stochastic) attention: Sinkformers (Sander, Ablin, Blondel, Peyré,
arXiv:2110.11773) on the sphere."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._attention import AbstractAttentionMethod, DenseAttention, inner_products
from .._custom_types import Particles
from .._validation import optional_float_array
from ._self_attention import AbstractAttentionField, as_beta


def sinkhorn(scores: Float[Array, "n m"], iterations: int) -> Float[Array, "n m"]:
    """`iterations` alternating normalisations of the kernel e^{scores}, rows first, in the
    log domain (Sinkformers' convention, so `iterations=1` is the row softmax):
    K⁰ = e^{scores}, K^{l+1} = N_R(K^l) for even l, N_C(K^l) for odd l, where N_R divides
    each row by its sum and N_C each column by its sum. Odd `iterations` end on rows (row
    sums exactly 1), even ones on columns. Unrolled: differentiable in forward and reverse
    mode; every step subtracts a log-sum-exp, so any finite scores (β up to 1e3 in float32)
    stay finite.
    """

    def rows(log_kernel):
        return log_kernel - jax.nn.logsumexp(log_kernel, axis=-1, keepdims=True)

    def columns(log_kernel):
        return log_kernel - jax.nn.logsumexp(log_kernel, axis=-2, keepdims=True)

    def pair(log_kernel, _):  # one column then one row normalisation
        return rows(columns(log_kernel)), None

    if iterations == 1:
        return jax.nn.softmax(scores, axis=-1)  # the softmax of `SelfAttention`, bit for bit
    log_kernel = rows(scores)
    log_kernel, _ = jax.lax.scan(pair, log_kernel, None, length=(iterations - 1) // 2)
    if iterations % 2 == 0:
        log_kernel = columns(log_kernel)
    return jnp.exp(log_kernel)


class SinkhornAttention(AbstractAttentionField):
    """Sinkformer dynamics on the sphere: ẋ_i = P^⊥_{x_i}( Σ_h Σ_j A^h_ij V_h x_j ) with
    A^h = `sinkhorn`(β<Q_h x_i, K_h x_j>, k): k alternating row/column normalisations of the
    kernel e^{β<Q_h x_i, K_h x_j>} (rows first). k = 1 is softmax attention (`SelfAttention`,
    the same numbers); as k → ∞, A^h tends to the doubly stochastic Sinkhorn scaling of the
    kernel (symmetric when Q_h = K_h, the Wasserstein gradient-flow case of the paper).

    **Arguments:** as `SelfAttention` (`beta` any finite real, `Q`, `K`, `V`,
    `layer_duration`), and
    - `iterations`: k >= 1 (static). Odd k ends on a row normalisation, so A is
      row-stochastic and the drift a convex combination of the V_h x_j, as for softmax;
      even k ends on columns. Default 3, a choice (not the paper's).
    - `attention`: `DenseAttention()` only: the column sums need the whole (n, n) matrix
      (no blockwise or fused path).
    """

    beta: Float[Array, ""] = eqx.field(converter=as_beta)
    Q: Array | None = eqx.field(default=None, converter=optional_float_array("Q"))
    K: Array | None = eqx.field(default=None, converter=optional_float_array("K"))
    V: Array | None = eqx.field(default=None, converter=optional_float_array("V"))
    layer_duration: float | None = eqx.field(default=None, static=True, kw_only=True)
    iterations: int = eqx.field(default=3, static=True, kw_only=True)
    attention: AbstractAttentionMethod = eqx.field(default=DenseAttention(), kw_only=True)

    def __check_init__(self):
        k = self.iterations
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(
                f"`iterations` must be a positive integer number of Sinkhorn normalisations "
                f"(1 is softmax), got {k!r}."
            )
        if not isinstance(self.attention, DenseAttention):
            raise ValueError(
                f"`SinkhornAttention` evaluates attention densely only (column sums need the "
                f"whole matrix): pass attention=DenseAttention(), got {self.attention!r}."
            )

    # No masks: a masked Sinkhorn scaling (doubly stochastic on the allowed pattern) is a
    # different model, not built here.
    @property
    def causal(self) -> bool:
        return False

    @property
    def window(self) -> None:
        return None

    @property
    def alibi(self) -> None:
        return None

    @property
    def length_scaling(self) -> None:
        return None

    def _normalization(self):
        return True, 0.0  # unused: `attention_matrix` and `drift` normalise by Sinkhorn

    def attention_matrix(self, t, x: Particles) -> Float[Array, "heads n n"]:
        """The Sinkhorn attention matrices A^h(t), one per head."""
        Q, K, _ = self.weights_at(t)

        def head(q, k):
            queries = x if q is None else x @ q.T
            keys = x if k is None else x @ k.T
            return sinkhorn(self.beta * inner_products(queries, keys), self.iterations)

        if Q is None and K is None:
            return head(None, None)[None]
        # A missing Q or K is the identity (square, as the weight checks guarantee).
        identity = jnp.broadcast_to(
            jnp.eye(x.shape[1], dtype=x.dtype), (Q if K is None else K).shape
        )
        return jax.vmap(head)(identity if Q is None else Q, identity if K is None else K)

    def drift(self, t, x: Particles, args: PyTree = None) -> Particles:
        _, _, V = self.weights_at(t)
        mixed = self.attention_matrix(t, x) @ x  # (heads, n, d); one head if Q = K = I
        if V is not None:
            mixed = jnp.broadcast_to(mixed, (V.shape[0],) + mixed.shape[1:])
            mixed = mixed @ jnp.swapaxes(V, -1, -2)
        return jnp.sum(mixed, axis=0)
