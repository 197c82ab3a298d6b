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

Which keys a query sees and how token positions enter the scores is an `AttentionMask`
(causal, sliding window, key padding, ALiBi bias, log-length scaling of β, token masses);
every method honours it, and the blockwise method skips key blocks the causal or windowed
mask removes entirely.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._attention_kernel import one_pass_mix
from ._custom_types import Particles
from ._scores import _normalise_scores, inner_products
from ._validation import as_float_array, check_finite, check_positive

# Per-head weights: None (identity) or a stack over heads; per-head biases likewise.
HeadWeights = Float[Array, "heads k d"] | None
HeadBiases = Float[Array, "heads k"] | None


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
        mask: "AttentionMask | None" = None,
    ) -> Float[Array, "nq d"]:
        """Σ_j w_ij values_j with w from the scores s_ij = β<queries_i, keys_j>: softmax
        over j if `normalized`, else exp(s_ij - log_shift)/nk. A non-trivial `mask` (needs
        nq = nk: token i is row i) restricts j, adds its bias and sets β_i; USA then divides
        by n_i, the number of keys query i attends to."""


def _check_block_size(block_size) -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"`block_size` must be a positive integer (e.g. 512), got {block_size!r}.")


def as_key_mask(value) -> Bool[Array, " n"] | None:
    """Converter for a key-padding mask: None (every key) or a 1-D boolean array, True on the
    real tokens (an array leaf: a batch of padded texts vmaps over it)."""
    if value is None:
        return None
    mask = jnp.asarray(value)
    if mask.dtype != jnp.bool_ or mask.ndim != 1:
        raise ValueError(
            f"`key_mask` must be a 1-D boolean array (True on the real tokens, False on "
            f"padding), got dtype {mask.dtype} and shape {mask.shape}."
        )
    return mask


def as_masses(value) -> Float[Array, " n"] | None:
    """Converter for token masses: None (every token has mass 1) or a 1-D array of finite
    positive weights m_j (checked now, or at run time when traced); an array leaf."""
    if value is None:
        return None
    masses = as_float_array(value, "masses")
    if masses.ndim != 1 or masses.shape[0] < 1:
        raise ValueError(
            f"`masses` must be a 1-D array with one positive weight per token (e.g. "
            f"jnp.ones(n)), got shape {masses.shape}."
        )
    return check_positive(masses, "masses")


def as_alibi(value) -> Float[Array, ""] | None:
    """Converter for the ALiBi slope λ: None (no bias) or a finite real scalar (checked now, or
    at run time when traced); an array leaf, so sweeps and gradients can vary it."""
    if value is None:
        return None
    slope = as_float_array(value, "alibi")
    if slope.ndim != 0:
        raise ValueError(
            f"`alibi` must be a scalar slope λ (e.g. alibi=1.0), got shape {slope.shape}."
        )
    return check_finite(slope, "alibi", "Pass a finite slope λ, e.g. alibi=1.0, or None.")


class AttentionMask(eqx.Module):
    """Token positions in the scores: which keys query i sees and how its score is shifted.

    Token order is row order (token i is row i, 0-based here, 1-based in the docs). With n
    tokens, query i attends to the keys j with

    - `causal`: j <= i;
    - `window=w`: |i - j| < w (with `causal`: i - w < j <= i; without it the symmetric
      window of local attention);
    - `key_mask` (n,) booleans: key_mask[j] (padding: the keys of a padded batch that are no
      token of the text get no weight; the padded rows themselves still attend, to the real
      keys, and are to be ignored by the caller);

    and its scores are s_ij = β_i <q_i, k_j> - λ|i - j|/n (`alibi=λ`; with `causal`
    |i - j| = i - j, the ALiBi bias; without it the symmetric bias of bidirectional ALiBi),
    where β_i = β, or β·log n_i with `length_scaling="log"`, n_i the number of keys query i
    attends to. Without `key_mask` every query attends to itself, so no row is empty; with
    it, a row is empty only if the mask removes every key it would see (right padding with at
    least one real token never does).

    `masses` (n,) positive weights m_j: key j stands for m_j coincident tokens (a cluster
    merged into one weighted particle). Its score gets log m_j added, so softmax gives
    m_j e^{s_ij} / Σ_k m_k e^{s_ik} and USA m_j e^{s_ij} / M with M = Σ_k m_k (not n): with
    all masses 1 both are the plain forms, and k coincident tokens of mass 1 equal one token
    of mass k exactly. Masses carry no position, so they exclude the positional options
    (causal, window, key_mask, alibi, length_scaling).
    """

    causal: bool = eqx.field(default=False, static=True)
    window: int | None = eqx.field(default=None, static=True)
    alibi: Float[Array, ""] | None = eqx.field(default=None, converter=as_alibi)
    length_scaling: str | None = eqx.field(default=None, static=True)
    key_mask: Bool[Array, " n"] | None = eqx.field(default=None, converter=as_key_mask)
    masses: Float[Array, " n"] | None = eqx.field(default=None, converter=as_masses, kw_only=True)

    def __check_init__(self):
        if self.masses is not None:
            positional = [
                name
                for name, on in (
                    ("causal", self.causal),
                    ("window", self.window is not None),
                    ("key_mask", self.key_mask is not None),
                    ("alibi", self.alibi is not None),
                    ("length_scaling", self.length_scaling is not None),
                )
                if on
            ]
            if positional:
                raise ValueError(
                    f"`masses` merge coincident tokens into one weighted particle, which has "
                    f"no single position; they cannot be combined with {positional}. Pass "
                    f"masses=None, or drop the positional options."
                )
        if not isinstance(self.causal, bool):
            raise ValueError(f"`causal` must be True or False, got {self.causal!r}.")
        if self.window is not None and (
            not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1
        ):
            raise ValueError(
                f"`window` must be None (no window) or a positive integer number of tokens "
                f"(query i sees keys with |i - j| < window; window=1 is the token itself), "
                f"got {self.window!r}."
            )
        if self.length_scaling not in (None, "log"):
            raise ValueError(
                f"`length_scaling` must be None or 'log' (β_i = β·log n_i, n_i the number of "
                f"keys query i attends to), got {self.length_scaling!r}."
            )

    @property
    def is_trivial(self) -> bool:
        """No position enters: plain attention over all keys."""
        return (
            self.alibi is None
            and self.length_scaling is None
            and self.masses is None
            and not self.restricts
        )

    @property
    def restricts(self) -> bool:
        """Some keys are removed for some queries."""
        return self.causal or self.window is not None or self.key_mask is not None

    @property
    def by_position(self) -> bool:
        """Which keys are removed depends on positions only (causal, window): whole key
        blocks can be skipped by their indices."""
        return self.causal or self.window is not None

    def allowed(self, i: Int[Array, "a 1"], j: Int[Array, "1 b"]) -> Bool[Array, "a b"] | None:
        """Whether query i attends to key j (None: every key). Key positions j beyond the
        mask (the padding of blockwise evaluation) count as removed by `key_mask`."""
        ok = None
        if self.causal:
            ok = j <= i
        if self.window is not None:
            near = jnp.abs(i - j) < self.window
            ok = near if ok is None else ok & near
        if self.key_mask is not None:
            real = self.key_mask.at[j].get(mode="fill", fill_value=False)
            real = jnp.broadcast_to(real, (i.shape[0], j.shape[1]))
            ok = real if ok is None else ok & real
        return ok

    def counts(self, i: Int[Array, " a"], n: int) -> Int[Array, " a"]:
        """n_i, the number of keys query i attends to (>= 1; also for padding rows i >= n)."""
        if self.key_mask is not None:
            # Real keys in the range [lo, hi] that the position mask leaves: a cumulative sum.
            real = jnp.concatenate(
                [jnp.zeros(1, jnp.int32), jnp.cumsum(self.key_mask.astype(jnp.int32))]
            )
            lo = jnp.zeros_like(i)
            hi = jnp.full_like(i, n - 1)
            if self.causal:
                hi = jnp.minimum(i, n - 1)
            if self.window is not None:
                lo = jnp.maximum(i - (self.window - 1), 0)
                if not self.causal:
                    hi = jnp.minimum(i + (self.window - 1), n - 1)
            count = real[jnp.clip(hi, -1, n - 1) + 1] - real[jnp.clip(lo, 0, n)]
            return jnp.maximum(count, 1)
        if self.window is None:
            count = i + 1 if self.causal else jnp.full_like(i, n)
        else:
            before = jnp.minimum(i, self.window - 1)
            after = 0 if self.causal else jnp.minimum(n - 1 - i, self.window - 1)
            count = before + after + 1
        return jnp.maximum(count, 1)

    def blocks_meet(self, i_lo, i_hi, j_lo, j_hi) -> Bool[Array, ""] | bool:
        """Whether some query in [i_lo, i_hi] attends to some key in [j_lo, j_hi]."""
        meet = True
        if self.causal:
            meet = j_lo <= i_hi
        if self.window is not None:
            near = (i_lo - j_hi < self.window) & (j_lo - i_hi < self.window)
            meet = near if meet is True else meet & near
        return meet

    def scale_queries(self, queries: Float[Array, "nq k"], beta, n: int) -> Float[Array, "nq k"]:
        """β_i q_i: the inverse temperature of each query folded into it."""
        beta = jnp.asarray(beta).astype(queries.dtype)
        if self.length_scaling is None:
            return beta * queries
        counts = self.counts(jnp.arange(queries.shape[0]), n).astype(queries.dtype)
        return (beta * jnp.log(counts))[:, None] * queries

    def total_mass(self, n: int, dtype) -> Float[Array, ""] | int:
        """USA's divisor without a restricting mask: n, or M = Σ_j m_j with masses."""
        return n if self.masses is None else jnp.sum(self.masses.astype(dtype))

    def tile(
        self, queries: Float[Array, "a k"], keys: Float[Array, "b k"], i, j, n: int
    ) -> tuple[Float[Array, "a b"], Bool[Array, "a b"] | None]:
        """Scores <q_i, k_j> - λ|i - j|/n of (already β-scaled) queries at positions i against
        keys at positions j, and the allowed set (None: all)."""
        scores = inner_products(queries, keys)
        if self.masses is not None:
            # Blockwise padding keys (j >= n) get log 1 = 0 here; they are masked out anyway.
            log_masses = jnp.log(self.masses.astype(scores.dtype))
            scores = scores + log_masses.at[j].get(mode="fill", fill_value=0)[None, :]
        if self.alibi is not None:
            distance = jnp.abs(i[:, None] - j[None, :]).astype(scores.dtype)
            scores = scores - self.alibi.astype(scores.dtype) * distance / n
        return scores, self.allowed(i[:, None], j[None, :])


NO_MASK = AttentionMask()


def _weights(
    queries: Float[Array, "nq k"],
    keys: Float[Array, "nk k"],
    mask: AttentionMask,
    normalized: bool,
    log_shift,
) -> Float[Array, "nq nk"]:
    """The dense attention matrix of (β-scaled) queries: the masked softmax (SA), or
    e^{s_ij - log_shift}/n_i on the allowed keys and 0 off them (USA)."""
    n = keys.shape[0]
    i, j = jnp.arange(queries.shape[0]), jnp.arange(n)
    scores, allowed = mask.tile(queries, keys, i, j, n)
    if allowed is None and mask.masses is not None and not normalized:
        return jnp.exp(scores - log_shift) / mask.total_mass(n, scores.dtype)
    if allowed is None:
        return _normalise_scores(scores, normalized, log_shift)
    if normalized:
        # Every row keeps its diagonal (or, with a key mask, a real key), so the row maximum
        # is finite; masked entries get weight exp(-inf) = 0 and, through `where`, a zero
        # gradient.
        return jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
    # `where` inside too: e^{s} of a masked entry may overflow, and inf·0 would be NaN.
    weights = jnp.where(allowed, jnp.exp(jnp.where(allowed, scores, 0) - log_shift), 0)
    return weights / mask.counts(i, n)[:, None].astype(weights.dtype)


class DenseAttention(AbstractAttentionMethod):
    """Materialise the (nq, nk) score matrix per head: O(n²) memory."""

    def mix(self, queries, keys, values, *, beta, normalized, log_shift, mask=None):
        mask = NO_MASK if mask is None else mask
        scaled = mask.scale_queries(queries, beta, keys.shape[0])
        if mask.is_trivial:
            # One pass per row on CPU where the kernel is on (`use_attention_kernel`), else
            # the same formula in JAX.
            return one_pass_mix(scaled, keys, values, log_shift, normalized)
        return _weights(scaled, keys, mask, normalized, log_shift) @ values


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
    mask: AttentionMask = NO_MASK,
    skip: bool = True,
) -> Float[Array, "nq d"]:
    """Queries are β-scaled already. `skip`: jump over key blocks the mask removes for a
    whole query block (`lax.cond` on block indices, which no user vmap batches)."""
    num_queries, num_keys = queries.shape[0], keys.shape[0]
    query_block, key_block = min(block_size, num_queries), min(block_size, num_keys)
    key_blocks = -(-num_keys // key_block)
    positions = jnp.arange(key_blocks * key_block)
    # Padding keys are masked out; every row attends to at least its own key, and rows that
    # have met no allowed key yet (running maximum -inf) are shifted by 0, not by -inf.
    valid = (positions < num_keys).reshape(key_blocks, key_block)
    key_positions = positions.reshape(key_blocks, key_block)
    keys_blocked = _pad_rows(keys, key_block).reshape(key_blocks, key_block, -1)
    values_blocked = _pad_rows(values, key_block).reshape(key_blocks, key_block, -1)
    dtype = jnp.result_type(queries, values)
    skipping = skip and mask.by_position

    def one_query_block(block) -> Float[Array, "bq d"]:
        q, first = block
        rows = q.shape[0]
        i = first + jnp.arange(rows)
        acc0 = jnp.zeros((rows, values.shape[1]), dtype)

        def tile(k, j, mask_valid):
            scores, allowed = mask.tile(q, k, i, j, num_keys)
            ok = mask_valid[None, :] if allowed is None else allowed & mask_valid[None, :]
            return scores, ok

        def maybe(update, carry, j):
            if not skipping:
                return update(carry)
            meet = mask.blocks_meet(i[0], i[-1], j[0], j[-1])
            return jax.lax.cond(meet, update, lambda c: c, carry)

        if normalized:

            def step(carry, block):
                k, v, mask_valid, j = block

                def update(carry):
                    running_max, total, acc = carry
                    scores, ok = tile(k, j, mask_valid)
                    scores = jnp.where(ok, scores, -jnp.inf)
                    # Any shift gives the same softmax, so the maximum carries no gradient.
                    new_max = jax.lax.stop_gradient(
                        jnp.maximum(running_max, jnp.max(scores, axis=-1))
                    )
                    shift = jnp.where(jnp.isfinite(new_max), new_max, 0)
                    weights = jnp.exp(scores - shift[:, None])
                    rescale = jnp.exp(running_max - shift)
                    total = total * rescale + jnp.sum(weights, axis=-1)
                    acc = acc * rescale[:, None] + weights @ v
                    return new_max, total, acc

                return maybe(update, carry, j), None

            init = (jnp.full((rows,), -jnp.inf, dtype), jnp.zeros((rows,), dtype), acc0)
            blocks = (keys_blocked, values_blocked, valid, key_positions)
            (_, total, acc), _ = jax.lax.scan(step, init, blocks)
            # Padding query rows may have met no key: divide by 1 there, not by 0.
            return acc / jnp.where(total > 0, total, 1)[:, None]

        def step(acc, block):
            k, v, mask_valid, j = block

            def update(acc):
                scores, ok = tile(k, j, mask_valid)
                weights = jnp.where(ok, jnp.exp(jnp.where(ok, scores, 0) - log_shift), 0)
                return acc + weights @ v

            return maybe(update, acc, j), None

        blocks = (keys_blocked, values_blocked, valid, key_positions)
        acc, _ = jax.lax.scan(step, acc0, blocks)
        if not mask.restricts:
            return acc / mask.total_mass(num_keys, acc.dtype)
        return acc / mask.counts(i, num_keys)[:, None].astype(acc.dtype)

    query_blocks = -(-num_queries // query_block)
    blocked = _pad_rows(queries, query_block).reshape(query_blocks, query_block, -1)
    firsts = query_block * jnp.arange(query_blocks)
    # Checkpointing each query block keeps the backward pass at O(n·(d + block)) memory.
    mixed = jax.lax.map(jax.checkpoint(one_query_block), (blocked, firsts))
    return mixed.reshape(query_blocks * query_block, -1)[:num_queries]


class BlockwiseAttention(AbstractAttentionMethod):
    """Online softmax over key blocks of `block_size` (flash-attention style), query blocks
    of the same size in sequence: O(n·d + block²) memory, exact up to rounding. Under a
    causal or windowed mask, key blocks that no query of a query block attends to are
    skipped (`skip_masked=False` computes them and masks every entry, for comparison)."""

    block_size: int = eqx.field(default=512, static=True)
    skip_masked: bool = eqx.field(default=True, static=True, kw_only=True)

    def __check_init__(self):
        _check_block_size(self.block_size)

    def mix(self, queries, keys, values, *, beta, normalized, log_shift, mask=None):
        mask = NO_MASK if mask is None else mask
        scaled = mask.scale_queries(queries, beta, keys.shape[0])
        return _blockwise(
            scaled, keys, values, normalized, log_shift, self.block_size, mask, self.skip_masked
        )


class FusedAttention(AbstractAttentionMethod):
    """`jax.nn.dot_product_attention`: cuDNN's fused kernel on GPU where it applies
    (float16/bfloat16, head size <= 128), XLA otherwise. Softmax (SA) attention only.
    Masks go in as its `is_causal`, `local_window_size` and `bias` (ALiBi, an (n, n) array).
    Not measured on a GPU in this repository yet (see BENCHMARKS.md)."""

    implementation: str | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.implementation not in (None, "xla", "cudnn"):
            raise ValueError(
                f"`implementation` must be None (let JAX choose), 'xla' or 'cudnn', got "
                f"{self.implementation!r}."
            )

    def mix(self, queries, keys, values, *, beta, normalized, log_shift, mask=None):
        if not normalized:
            raise ValueError(
                "`FusedAttention` computes softmax attention only; UnnormalizedSelfAttention "
                "needs `BlockwiseAttention()` or `DenseAttention()`."
            )
        mask = NO_MASK if mask is None else mask
        n = keys.shape[0]
        # The kernel wants one head size for queries, keys and values: zero-pad to the
        # larger one (zero features change neither the scores nor the kept outputs).
        size = max(queries.shape[1], values.shape[1])

        def layout(a):  # (n, .) -> (batch 1, n, heads 1, size)
            return jnp.pad(a, ((0, 0), (0, size - a.shape[-1])))[None, :, None, :]

        bias = None
        if mask.alibi is not None:
            positions = jnp.arange(n)
            distance = jnp.abs(positions[:, None] - positions[None, :]).astype(queries.dtype)
            bias = (-mask.alibi.astype(queries.dtype) * distance / n)[None, None]
        if mask.masses is not None:
            log_masses = jnp.log(mask.masses.astype(queries.dtype))
            bias = jnp.broadcast_to(log_masses, (n, n))[None, None]
        window = None
        if mask.window is not None:
            window = (mask.window - 1, 0 if mask.causal else mask.window - 1)
        keep = None if mask.key_mask is None else mask.key_mask[None, None, None, :]
        out = jax.nn.dot_product_attention(
            layout(mask.scale_queries(queries, beta, n)),
            layout(keys),
            layout(values),
            bias=bias,
            mask=keep,
            scale=1.0,
            is_causal=mask.causal,
            local_window_size=window,
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

    def mix(self, queries, keys, values, *, beta, normalized, log_shift, mask=None):
        method = self.choose(queries.shape[0], keys.shape[0], jnp.result_type(queries), normalized)
        return method.mix(
            queries, keys, values, beta=beta, normalized=normalized, log_shift=log_shift, mask=mask
        )


def _num_heads(*weights: Array | None) -> int | None:
    sizes = {w.shape[0] for w in weights if w is not None}
    return sizes.pop() if sizes else None


def _project(x, w, bias):
    """x Wᵀ + b (rows), W None the identity and b None zero."""
    out = x if w is None else x @ w.T
    return out if bias is None else out + bias[None, :]


def attention_weights(
    x: Particles,
    beta: Float[Array, ""],
    Q: HeadWeights,
    K: HeadWeights,
    *,
    normalized: bool,
    log_shift: Float[Array, ""] | float = 0.0,
    mask: AttentionMask | None = None,
    q_bias: HeadBiases = None,
    k_bias: HeadBiases = None,
) -> Float[Array, "heads n n"]:
    """Attention matrices A^h_ij, one per head (always dense: the output is n × n).

    `normalized=True`: A^h_ij = softmax_j(β<Q_h x_i + q_h, K_h x_j + k_h>) (row-stochastic,
    SA). `normalized=False`: A^h_ij = exp(β<Q_h x_i + q_h, K_h x_j + k_h> - log_shift) / n
    (USA). `q_bias`, `k_bias` (heads, k): the query and key biases q_h, k_h (None: zero).
    `mask`: see `AttentionMask`; masked entries are exactly 0.
    """
    mask = NO_MASK if mask is None else mask

    def head(q, k, qb, kb):
        scaled = mask.scale_queries(_project(x, q, qb), beta, x.shape[0])
        return _weights(scaled, _project(x, k, kb), mask, normalized, log_shift)

    if _num_heads(Q, K, q_bias, k_bias) is None:
        return head(None, None, None, None)[None]
    return jax.vmap(head)(Q, K, q_bias, k_bias)


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
    mask: AttentionMask | None = None,
    q_bias: HeadBiases = None,
    k_bias: HeadBiases = None,
) -> Particles:
    """Σ_h Σ_j A^h_ij V_h x_j (heads summed, eq. 2.7), before tangent projection.

    `keys`: the tokens x_j summed over (default `x`); a subset of queries against all keys is
    how token-sharded evaluation splits the work. `method`: see the module docstring.
    `mask`: causal / window / key padding / ALiBi / log-length scaling (`AttentionMask`),
    token i = row i. `q_bias`, `k_bias` (heads, k): query and key biases, the scores then
    β<Q_h x_i + q_h, K_h x_j + k_h> (`attention_weights`).
    """
    if not isinstance(method, AbstractAttentionMethod):
        raise ValueError(
            f"`method` must be an attention method such as AutoAttention(), "
            f"BlockwiseAttention(block_size=512) or DenseAttention(), got {method!r}."
        )
    if mask is not None and not isinstance(mask, AttentionMask):
        raise ValueError(f"`mask` must be None or an AttentionMask, got {mask!r}.")
    if mask is not None and not mask.is_trivial and keys is not None:
        raise ValueError(
            "`mask` sets positions by row (token i is row i), which a separate `keys` set "
            "(token sharding) does not carry; masked attention needs keys=None, i.e. an "
            "unsharded field."
        )
    keys = x if keys is None else keys

    def head(q, k, v, qb, kb):
        mixed = method.mix(
            _project(x, q, qb),
            _project(keys, k, kb),
            keys,
            beta=beta,
            normalized=normalized,
            log_shift=log_shift,
            mask=mask,
        )
        return mixed if v is None else mixed @ v.T

    if _num_heads(Q, K, V, q_bias, k_bias) is None:
        return head(None, None, None, None, None)
    return jnp.sum(jax.vmap(head)(Q, K, V, q_bias, k_bias), axis=0)
