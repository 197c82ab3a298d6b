"""The one place where attention is computed.

Every field (SA, USA, multi-head, per-layer, the circle forms) evaluates its interaction term
through `attend`, so a faster evaluation only has to be added here. How the sum over keys is
evaluated is an option object (as in diffrax: options are modules, not string flags):

- `DenseAttention()`: the full (n, n) score matrix; fastest for small n.
- `BlockwiseAttention(block_size)`: online softmax over key blocks (flash-attention style),
  O(n·d + block²) memory, the same numbers as the dense path up to rounding; differentiable
  with O(n·(d + block)) backward memory (each query block is recomputed in the backward pass).
- `FusedAttention()`: `jax.nn.dot_product_attention` (cuDNN on GPU for half precision, XLA
  otherwise); softmax attention only.
- `AutoAttention(threshold, block_size)` (default): dense while n_queries·n_keys <=
  threshold², blockwise above; fused on GPU for float16/bfloat16 softmax attention.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import Particles

# Per-head weights: None (identity) or a stack over heads.
HeadWeights = Float[Array, "heads k d"] | None


class AbstractAttentionMethod(eqx.Module):
    """How Σ_j w_ij x_j is evaluated for one head: queries (nq, k), keys (nk, k), values
    (nk, d). Heads are vmapped over by `attend`."""

    @abc.abstractmethod
    def mix(
        self,
        queries: Float[Array, "nq k"],
        keys: Float[Array, "nk k"],
        values: Float[Array, "nk d"],
        *,
        beta: Float[Array, ""],
        normalized: bool,
        log_shift: Float[Array, ""] | float,
    ) -> Float[Array, "nq d"]:
        """Σ_j w_ij values_j with w from the scores s_ij = β<queries_i, keys_j>: softmax
        over j if `normalized`, else exp(s_ij - log_shift)/nk."""


def _check_block_size(block_size) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"`block_size` must be a positive integer (e.g. 512), got {block_size!r}.")


def _normalise_scores(
    scores: Float[Array, "n n"], normalized: bool, log_shift: Float[Array, ""] | float
) -> Float[Array, "n n"]:
    if normalized:
        # softmax subtracts the row maximum: finite for any β in float32.
        return jax.nn.softmax(scores, axis=-1)
    return jnp.exp(scores - log_shift) / scores.shape[-1]


# Up to this query/key width, scores are summed outer products rather than a matmul: XLA then
# fuses scores, exponentials and row sums into one loop, about 2x faster for the phase-diagram
# systems (n = 32, d = 2) on CPU. Same arithmetic, so the same numbers up to rounding.
_UNROLLED_WIDTH = 3


def inner_products(queries: Float[Array, "nq k"], keys: Float[Array, "nk k"]) -> Array:
    """<q_i, k_j> for all pairs; also the Gram matrix of the observables."""
    if queries.shape[1] > _UNROLLED_WIDTH:
        return queries @ keys.T
    products = [queries[:, None, c] * keys[None, :, c] for c in range(queries.shape[1])]
    return sum(products[1:], start=products[0])


class DenseAttention(AbstractAttentionMethod):
    """Materialise the (nq, nk) score matrix per head: O(n²) memory."""

    def mix(self, queries, keys, values, *, beta, normalized, log_shift):
        scores = beta * inner_products(queries, keys)
        return _normalise_scores(scores, normalized, log_shift) @ values


def _pad_rows(a: Array, multiple: int) -> Array:
    extra = -a.shape[0] % multiple
    return jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1)) if extra else a


def _blockwise(
    queries: Float[Array, "nq k"],
    keys: Float[Array, "nk k"],
    values: Float[Array, "nk d"],
    normalized: bool,
    log_shift,
    block_size: int,
) -> Float[Array, "nq d"]:
    num_queries, num_keys = queries.shape[0], keys.shape[0]
    query_block, key_block = min(block_size, num_queries), min(block_size, num_keys)
    key_blocks = -(-num_keys // key_block)
    # Padding keys are masked out; every key block keeps at least one real key, so the
    # running maximum is finite after the first block.
    valid = (jnp.arange(key_blocks * key_block) < num_keys).reshape(key_blocks, key_block)
    keys_blocked = _pad_rows(keys, key_block).reshape(key_blocks, key_block, -1)
    values_blocked = _pad_rows(values, key_block).reshape(key_blocks, key_block, -1)
    dtype = jnp.result_type(queries, values)

    def one_query_block(q: Float[Array, "bq k"]) -> Float[Array, "bq d"]:
        rows = q.shape[0]
        acc0 = jnp.zeros((rows, values.shape[1]), dtype)

        if normalized:

            def step(carry, block):
                running_max, total, acc = carry
                k, v, mask = block
                scores = jnp.where(mask, q @ k.T, -jnp.inf)
                # Any shift gives the same softmax, so the maximum carries no gradient.
                new_max = jax.lax.stop_gradient(jnp.maximum(running_max, jnp.max(scores, axis=-1)))
                weights = jnp.exp(scores - new_max[:, None])
                rescale = jnp.exp(running_max - new_max)
                total = total * rescale + jnp.sum(weights, axis=-1)
                acc = acc * rescale[:, None] + weights @ v
                return (new_max, total, acc), None

            init = (jnp.full((rows,), -jnp.inf, dtype), jnp.zeros((rows,), dtype), acc0)
            (_, total, acc), _ = jax.lax.scan(step, init, (keys_blocked, values_blocked, valid))
            return acc / total[:, None]

        def step(acc, block):
            k, v, mask = block
            weights = jnp.where(mask, jnp.exp(q @ k.T - log_shift), 0)
            return acc + weights @ v, None

        acc, _ = jax.lax.scan(step, acc0, (keys_blocked, values_blocked, valid))
        return acc / num_keys

    query_blocks = -(-num_queries // query_block)
    blocked = _pad_rows(queries, query_block).reshape(query_blocks, query_block, -1)
    # Checkpointing each query block keeps the backward pass at O(n·(d + block)) memory.
    mixed = jax.lax.map(jax.checkpoint(one_query_block), blocked)
    return mixed.reshape(query_blocks * query_block, -1)[:num_queries]


class BlockwiseAttention(AbstractAttentionMethod):
    """Online softmax over key blocks of `block_size` (flash-attention style), query blocks
    of the same size in sequence: O(n·d + block²) memory, exact up to rounding."""

    block_size: int = eqx.field(default=512, static=True)

    def __check_init__(self):
        _check_block_size(self.block_size)

    def mix(self, queries, keys, values, *, beta, normalized, log_shift):
        return _blockwise(beta * queries, keys, values, normalized, log_shift, self.block_size)


class FusedAttention(AbstractAttentionMethod):
    """`jax.nn.dot_product_attention`: cuDNN's fused kernel on GPU where it applies
    (float16/bfloat16, head size <= 128), XLA otherwise. Softmax (SA) attention only.
    Not measured on a GPU in this repository yet (see BENCHMARKS.md)."""

    implementation: str | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.implementation not in (None, "xla", "cudnn"):
            raise ValueError(
                f"`implementation` must be None (let JAX choose), 'xla' or 'cudnn', got "
                f"{self.implementation!r}."
            )

    def mix(self, queries, keys, values, *, beta, normalized, log_shift):
        if not normalized:
            raise ValueError(
                "`FusedAttention` computes softmax attention only; UnnormalizedSelfAttention "
                "needs `BlockwiseAttention()` or `DenseAttention()`."
            )
        # The kernel wants one head size for queries, keys and values: zero-pad to the
        # larger one (zero features change neither the scores nor the kept outputs).
        size = max(queries.shape[1], values.shape[1])

        def layout(a):  # (n, .) -> (batch 1, n, heads 1, size)
            return jnp.pad(a, ((0, 0), (0, size - a.shape[-1])))[None, :, None, :]

        out = jax.nn.dot_product_attention(
            layout(beta * queries),
            layout(keys),
            layout(values),
            scale=1.0,
            implementation=self.implementation,
        )
        return out[0, :, 0, : values.shape[1]]


class AutoAttention(AbstractAttentionMethod):
    """Dense while n_queries·n_keys <= threshold², `BlockwiseAttention(block_size)` above;
    on GPU, `FusedAttention()` for float16/bfloat16 softmax attention."""

    threshold: int = eqx.field(default=2048, static=True)
    block_size: int = eqx.field(default=512, static=True)

    def __check_init__(self):
        _check_block_size(self.block_size)
        if not isinstance(self.threshold, int) or self.threshold < 1:
            raise ValueError(
                f"`threshold` must be a positive integer number of tokens, got {self.threshold!r}."
            )

    def choose(self, num_queries: int, num_keys: int, dtype, normalized: bool):
        half = dtype in (jnp.float16, jnp.bfloat16)
        if normalized and half and jax.default_backend() == "gpu":
            return FusedAttention()
        if num_queries * num_keys <= self.threshold**2:
            return DenseAttention()
        return BlockwiseAttention(self.block_size)

    def mix(self, queries, keys, values, *, beta, normalized, log_shift):
        method = self.choose(queries.shape[0], keys.shape[0], jnp.result_type(queries), normalized)
        return method.mix(
            queries, keys, values, beta=beta, normalized=normalized, log_shift=log_shift
        )


def _num_heads(*weights: Array | None) -> int | None:
    sizes = {w.shape[0] for w in weights if w is not None}
    return sizes.pop() if sizes else None


def attention_weights(
    x: Particles,
    beta: Float[Array, ""],
    Q: HeadWeights,
    K: HeadWeights,
    *,
    normalized: bool,
    log_shift: Float[Array, ""] | float = 0.0,
) -> Float[Array, "heads n n"]:
    """Attention matrices A^h_ij, one per head (always dense: the output is n × n).

    `normalized=True`: A^h_ij = softmax_j(β<Q_h x_i, K_h x_j>) (row-stochastic, SA).
    `normalized=False`: A^h_ij = exp(β<Q_h x_i, K_h x_j> - log_shift) / n (USA).
    """

    def head(q, k):
        qx = x if q is None else x @ q.T
        kx = x if k is None else x @ k.T
        return _normalise_scores(beta * (qx @ kx.T), normalized, log_shift)

    if _num_heads(Q, K) is None:
        return head(None, None)[None]
    return jax.vmap(head)(Q, K)


def attend(
    x: Particles,
    beta: Float[Array, ""],
    Q: HeadWeights,
    K: HeadWeights,
    V: Float[Array, "heads d d"] | None,
    *,
    normalized: bool,
    log_shift: Float[Array, ""] | float = 0.0,
    method: AbstractAttentionMethod = AutoAttention(),
    keys: Float[Array, "nk d"] | None = None,
) -> Particles:
    """Σ_h Σ_j A^h_ij V_h x_j (heads summed, eq. 2.7), before tangent projection.

    `keys`: the tokens x_j summed over (default `x`); a subset of queries against all keys is
    how token-sharded evaluation splits the work. `method`: see the module docstring.
    """
    if not isinstance(method, AbstractAttentionMethod):
        raise ValueError(
            f"`method` must be an attention method such as AutoAttention(), "
            f"BlockwiseAttention(block_size=512) or DenseAttention(), got {method!r}."
        )
    keys = x if keys is None else keys

    def head(q, k, v):
        mixed = method.mix(
            x if q is None else x @ q.T,
            keys if k is None else keys @ k.T,
            keys,
            beta=beta,
            normalized=normalized,
            log_shift=log_shift,
        )
        return mixed if v is None else mixed @ v.T

    if _num_heads(Q, K, V) is None:
        return head(None, None, None)
    return jnp.sum(jax.vmap(head)(Q, K, V), axis=0)
