"""The pieces of a real Transformer layer as fields: a general LayerNorm (centring, γ, β, ε), the
Post-LN layer built on it (`PostLN`), Pre-LN with a LayerNorm, attention with query, key and
output biases, the feed-forward output bias, and key-padding masks (issue 18, item 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import transformer_flows as tf

N, D, H, K, M = 7, 12, 3, 4, 20


def _layer_norm_reference(x, gain, shift, eps):
    x = np.asarray(x, np.float64)
    centred = x - x.mean(-1, keepdims=True)
    normal = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
    return normal * np.asarray(gain) + np.asarray(shift)


@pytest.fixture
def weights(getkey):
    def normal(*shape, scale=1.0):
        return scale * jax.random.normal(getkey(), shape)

    return {
        "wq": normal(H, K, D, scale=D**-0.5),
        "wk": normal(H, K, D, scale=D**-0.5),
        "wv": normal(H, K, D, scale=D**-0.5),
        "wo": normal(H, D, K, scale=K**-0.5),
        "bq": normal(H, K, scale=0.3),
        "bk": normal(H, K, scale=0.3),
        "bv": normal(H, K, scale=0.3),
        "bo": normal(D, scale=0.3),
        "w1": normal(M, D, scale=D**-0.5),
        "b1": normal(M, scale=0.3),
        "w2": normal(D, M, scale=M**-0.5),
        "b2": normal(D, scale=0.3),
        "g": 1 + normal(2, D, scale=0.3),
        "b": normal(2, D, scale=0.3),
        "x": normal(N, D, scale=2.0),
    }


def _real_attention(w, x, mask=None):
    """A real model's multi-head attention with biases (as transformers computes it)."""
    q = jnp.einsum("hkd,nd->hnk", w["wq"], x) + w["bq"][:, None]
    k = jnp.einsum("hkd,nd->hnk", w["wk"], x) + w["bk"][:, None]
    v = jnp.einsum("hkd,nd->hnk", w["wv"], x) + w["bv"][:, None]
    scores = jnp.einsum("hik,hjk->hij", q, k) / np.sqrt(K)
    if mask is not None:
        scores = jnp.where(mask[None, None, :], scores, -jnp.inf)
    context = jnp.einsum("hij,hjk->hik", jax.nn.softmax(scores, axis=-1), v)
    return jnp.einsum("hdk,hik->id", w["wo"], context) + w["bo"][None]


def _attention_field(w, **options):
    return tf.SelfAttention(
        beta=1 / np.sqrt(K),
        Q=w["wq"],
        K=w["wk"],
        V=jnp.einsum("hdk,hke->hde", w["wo"], w["wv"]),
        q_bias=w["bq"],
        k_bias=w["bk"],
        out_bias=jnp.einsum("hdk,hk->d", w["wo"], w["bv"]) + w["bo"],
        **options,
    )


def test_layer_norm_is_pytorchs(weights):
    x, g, b = weights["x"], weights["g"][0], weights["b"][0]
    for eps in (0.0, 1e-5, 0.5):
        norm = tf.LayerNorm(g, b, eps=eps)
        np.testing.assert_allclose(
            norm(0.0, x), _layer_norm_reference(x, g, b, eps), rtol=1e-12, atol=1e-12
        )
    # RMSNorm, and GLPR's normalisation: √D x/|x| for γ = 1, β = 0, ε = 0 without centring.
    rms = tf.LayerNorm(g, None, eps=1e-6, centre=False)
    xn = np.asarray(x)
    expected = xn / np.sqrt((xn**2).mean(-1, keepdims=True) + 1e-6) * np.asarray(g)
    np.testing.assert_allclose(rms(0.0, x), expected, rtol=1e-12)
    glpr = tf.LayerNorm(centre=False)
    np.testing.assert_allclose(
        glpr(0.0, x), np.sqrt(D) * x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-12
    )
    # Per-layer γ, β: layer l on [l, l+1), the last one afterwards; jumps at the boundaries.
    layered = tf.LayerNorm(weights["g"], weights["b"], eps=1e-5, layer_duration=1.0)
    for t, layer in ((0.3, 0), (1.0, 1), (7.0, 1)):
        np.testing.assert_allclose(
            layered(t, x),
            _layer_norm_reference(x, weights["g"][layer], weights["b"][layer], 1e-5),
            rtol=1e-12,
        )
    np.testing.assert_allclose(layered.jump_times(), [1.0])
    # The zero vector stays finite for ε = 0.
    assert np.all(np.isfinite(tf.LayerNorm()(0.0, jnp.zeros((2, D)))))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=-1.0), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(gain=np.ones((2, D))), "layer_duration"),
        (dict(gain=np.ones(D), layer_duration=1.0), r"\(L, D\)"),
        (dict(layer_duration=1.0), "per-layer"),
        (dict(gain=np.ones(D), shift=np.ones(D + 1)), "same shape"),
    ],
)
def test_layer_norm_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tf.LayerNorm(**kwargs)


def test_attention_biases_and_out_bias(weights):
    """q_bias, k_bias and out_bias give a real model's attention with its four biases
    (W_O b_V + b_O as the out_bias: softmax rows sum to 1), also per layer and with heads;
    the key bias alone changes nothing (a per-query constant in the scores)."""
    x = weights["x"]
    field = _attention_field(weights)
    np.testing.assert_allclose(
        field.drift(0.0, x), _real_attention(weights, x), rtol=1e-10, atol=1e-10
    )
    for method in (tf.DenseAttention(), tf.BlockwiseAttention(3)):
        other = _attention_field(weights, attention=method)
        np.testing.assert_allclose(other.drift(0.0, x), field.drift(0.0, x), rtol=1e-10)
    rows = field.attention_matrix(0.0, x)
    np.testing.assert_allclose(rows.sum(-1), 1.0, rtol=1e-12)
    # The key bias is a per-query constant: removing it leaves the drift as it is.
    no_key_bias = tf.SelfAttention(
        beta=field.beta, Q=field.Q, K=field.K, V=field.V, q_bias=field.q_bias,
        out_bias=field.out_bias,
    )  # fmt: skip
    np.testing.assert_allclose(no_key_bias.drift(0.0, x), field.drift(0.0, x), rtol=1e-10)
    # Per layer: layer 1 on [1, 2) uses the second set.
    stack = jax.tree.map(lambda a: jnp.stack([0.5 * a, a]), weights)
    layered = tf.SelfAttention(
        beta=field.beta,
        Q=stack["wq"],
        K=stack["wk"],
        V=jnp.einsum("lhdk,lhke->lhde", stack["wo"], stack["wv"]),
        q_bias=stack["bq"],
        k_bias=stack["bk"],
        out_bias=jnp.einsum("lhdk,lhk->ld", stack["wo"], stack["bv"]) + stack["bo"],
        layer_duration=1.0,
    )
    np.testing.assert_allclose(layered.drift(1.5, x), field.drift(0.0, x), rtol=1e-10)


def test_bias_shapes_are_checked(weights):
    w = weights
    with pytest.raises(ValueError, match=r"`q_bias` must have shape \(3, 4\)"):
        tf.SelfAttention(1.0, w["wq"], w["wk"], q_bias=w["bq"][:, :2])
    with pytest.raises(ValueError, match="`K` is None"):
        tf.SelfAttention(1.0, None, None, k_bias=w["bk"])
    with pytest.raises(ValueError, match="out_bias"):
        tf.SelfAttention(1.0, w["wq"], w["wk"], out_bias=np.zeros(D + 1))
    with pytest.raises(ValueError, match="out_bias"):
        tf.FeedForward(w["w2"], w["w1"], w["b1"], out_bias=np.zeros((2, D)))
    with pytest.raises(ValueError, match="unsharded"):
        tf.TokenSharded(_attention_field(w), tf.device_mesh())


def test_feed_forward_out_bias(weights):
    x = weights["x"]
    ff = tf.FeedForward(
        weights["w2"], weights["w1"], weights["b1"], activation="gelu", out_bias=weights["b2"]
    )
    hidden = jax.nn.gelu(x @ weights["w1"].T + weights["b1"][None])
    expected = hidden @ weights["w2"].T + weights["b2"][None]
    np.testing.assert_allclose(ff.drift(0.0, x), expected, rtol=1e-12)


@pytest.mark.parametrize("normalized", [True, False])
def test_key_mask_equals_the_unpadded_tokens(weights, normalized):
    """A key mask makes the padded keys invisible: the real tokens' drift equals that of the
    unpadded sequence, for every attention method and with the causal mask and a window;
    padded queries still get finite values."""
    x = weights["x"]
    real = 5
    mask = jnp.arange(N) < real
    cls = tf.SelfAttention if normalized else tf.UnnormalizedSelfAttention
    methods = [tf.DenseAttention(), tf.BlockwiseAttention(2)]
    if normalized:
        methods.append(tf.FusedAttention(implementation="xla"))
    V = jnp.einsum("hdk,hke->hde", weights["wo"], weights["wv"])
    for options in (dict(), dict(causal=True), dict(window=3, length_scaling="log")):
        alone = cls(0.7, weights["wq"], weights["wk"], V, **options).drift(0.0, x[:real])
        for method in methods:
            fused = isinstance(method, tf.FusedAttention)  # float32 (its logits' dtype)
            if fused and "length_scaling" in options:
                continue
            dtype = jnp.float32 if fused else x.dtype
            field = cls(
                jnp.asarray(0.7, dtype),
                *(w.astype(dtype) for w in (weights["wq"], weights["wk"], V)),
                attention=method,
                key_mask=mask,
                **options,
            )
            padded = field.drift(0.0, x.astype(dtype))
            tolerance = 1e-5 if fused else 1e-9
            np.testing.assert_allclose(padded[:real], alone, rtol=tolerance, atol=tolerance)
            assert np.all(np.isfinite(padded))
    # A key-masked field vmaps over a batch of masks (an array leaf).
    masks = jnp.stack([mask, jnp.arange(N) < 3])
    batched = jax.vmap(lambda m: tf.SelfAttention(0.7, key_mask=m).drift(0.0, x))(masks)
    np.testing.assert_allclose(
        batched[1, :3], tf.SelfAttention(0.7).drift(0.0, x[:3]), rtol=1e-10, atol=1e-12
    )
    with pytest.raises(ValueError, match="key_mask"):
        tf.SelfAttention(0.7, key_mask=np.ones(N))
    with pytest.raises(ValueError, match="one entry per token"):
        tf.solve(
            tf.SelfAttention(0.7, key_mask=mask[:4]),
            tf.sample_sphere(jax.random.key(0), N, D),
            jnp.arange(2.0),
        )


def _post_ln_reference(w, x, g_in, b_in, g_out, b_out, eps, mask=None):
    """The real Post-LN sublayer LN(x + Attn x) with x = G_in(u), as transformers has it."""
    read = jnp.asarray(np.asarray(x) * np.asarray(g_in) + np.asarray(b_in))
    out = read + _real_attention(w, read, mask)
    return _layer_norm_reference(out, g_out, b_out, eps)


def test_post_ln_is_the_real_sublayer_and_has_a_limit(weights):
    """`PostLN(attention, LayerNorm(γ_in, β_in, ε))`: one step of h = 1 is the real sublayer
    N(G(u) + A(G(u))) on u = √D θ; it keeps θ in the centred unit sphere; its steps of h → 0
    converge to its flow at first order; with γ = 1, β = 0, ε = 0 and no centring it is GLPR's
    Post-LN layer (the field's own residual layer at θ, weights scaled by √D)."""
    w = weights
    eps = 1e-5
    g, b = w["g"][0], w["b"][0]
    theta = tf.LayerNorm(eps=0.0).normalize(w["x"]) / np.sqrt(D)
    field = tf.PostLN(_attention_field(w), tf.LayerNorm(g, b, eps=eps))
    u = np.sqrt(D) * theta
    out = field.residual_layer(0.0, theta, 1.0)
    expected = _post_ln_reference(w, u, g, b, 1.0, 0.0, eps)
    np.testing.assert_allclose(np.sqrt(D) * out, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-12)  # centred
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1, atol=1e-4)  # ε: slightly < 1
    # The flow stays centred and on the sphere; the layers of step h converge at first order.
    start = tf.LayerNorm().normalize(w["x"]) / np.sqrt(D)
    exact = tf.solve(field, start, jnp.array([0.0, 1.0]), rtol=1e-10, atol=1e-10).xs[-1]
    np.testing.assert_allclose(exact.mean(-1), 0, atol=1e-9)

    def layers(k):
        x = start
        for s in range(k):
            x = field.residual_layer(s / k, x, 1.0 / k)
        return x

    errors = [np.linalg.norm(layers(k) - exact) for k in (16, 32, 64)]
    assert 1.8 < errors[0] / errors[1] < 2.2 and 1.8 < errors[1] / errors[2] < 2.2, errors
    # All off: GLPR's Post-LN layer with Q = √D W_Q, V = W_O W_V.
    plain = tf.SelfAttention(
        1 / np.sqrt(K), w["wq"], w["wk"], jnp.einsum("hdk,hke->hde", w["wo"], w["wv"])
    )
    glpr = tf.SelfAttention(plain.beta, np.sqrt(D) * plain.Q, np.sqrt(D) * plain.K, plain.V)
    x = tf.sample_sphere(jax.random.key(1), N, D)
    np.testing.assert_allclose(
        tf.PostLN(plain, tf.LayerNorm(centre=False)).residual_layer(0.0, x, 0.3),
        glpr.residual_layer(0.0, x, 0.3),
        rtol=1e-10,
        atol=1e-12,
    )


def test_post_ln_block_is_the_real_bert_layer(weights):
    """`TransformerBlock(PostLN(attention, LN read by it), PostLN(feed_forward, ...))` with
    per-layer γ, β: two real BERT layers, y = LN1(x + Attn x), x' = LN2(y + FF y), with the
    states read through the LayerNorm that closed the previous sublayer; a key mask leaves the
    real tokens as without padding."""
    w = weights
    eps = 1e-12
    g, b = w["g"], w["b"]  # g[0]: the embedding LN (read by layer 0); g[1]: LN1 = LN2 here
    ff = tf.FeedForward(w["w2"], w["w1"], w["b1"], activation="gelu", out_bias=w["b2"])

    def block(mask=None):
        attention = _attention_field(w, key_mask=mask)
        return tf.TransformerBlock(
            tf.PostLN(attention, tf.LayerNorm(g, b, eps=eps, layer_duration=1.0)),
            tf.PostLN(ff, tf.LayerNorm(g[1], b[1], eps=eps)),
        )

    def real_layer(x, g_in, b_in, mask=None):
        a = x + _real_attention(w, x, mask)
        y = _layer_norm_reference(a, g[1], b[1], eps)
        f = y + jax.nn.gelu(y @ w["w1"].T + w["b1"][None]) @ w["w2"].T + w["b2"][None]
        return _layer_norm_reference(f, g[1], b[1], eps)

    x0 = _layer_norm_reference(w["x"], g[0], b[0], eps)  # an embedding LayerNorm's output
    theta = tf.LayerNorm(eps=eps).normalize(w["x"]) / np.sqrt(D)
    field = block()
    x1 = real_layer(x0, g[0], b[0])
    x2 = real_layer(x1, g[1], b[1])
    t1 = field.residual_layer(0.0, theta, 1.0)
    t2 = field.residual_layer(1.0, t1, 1.0)
    for t, x in ((t1, x1), (t2, x2)):  # read through LN2 (= g[1], b[1] here)
        read = np.sqrt(D) * np.asarray(t) * np.asarray(g[1]) + np.asarray(b[1])
        np.testing.assert_allclose(read, x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(field.jump_times(), [1.0])
    mask = jnp.arange(N) < 4
    padded = block(mask).residual_layer(0.0, theta, 1.0)
    short = block().residual_layer(0.0, theta[:4], 1.0)
    np.testing.assert_allclose(padded[:4], short, rtol=1e-10, atol=1e-12)


def test_pre_ln_with_a_layer_norm_and_folding(weights):
    """`PreLN(attention, norm=LayerNorm(γ, β, ε))` reads the attention at LN(x): GPT-2's
    x + Attn(LN x). Folding γ into the weights the norm feeds (Q diag γ, K diag γ,
    V diag γ) and β into the biases (W β + b) gives the same layer exactly, with the norm
    reduced to its centring and ε."""
    w = weights
    x = w["x"]
    g, b, eps = w["g"][0], w["b"][0], 1e-5
    unfolded = tf.PreLN(_attention_field(w), norm=tf.LayerNorm(g, b, eps=eps))
    expected = x + _real_attention(w, _layer_norm_reference(x, g, b, eps))
    np.testing.assert_allclose(unfolded.residual_layer(0.0, x, 1.0), expected, rtol=1e-10)
    V = jnp.einsum("hdk,hke->hde", w["wo"], w["wv"])
    folded = tf.SelfAttention(
        beta=1 / np.sqrt(K),
        Q=w["wq"] * g[None, None, :],
        K=w["wk"] * g[None, None, :],
        V=V * g[None, None, :],
        q_bias=w["bq"] + jnp.einsum("hkd,d->hk", w["wq"], b),
        k_bias=w["bk"] + jnp.einsum("hkd,d->hk", w["wk"], b),
        out_bias=jnp.einsum("hdk,hk->d", w["wo"], w["bv"]) + w["bo"] + V.sum(0) @ b,
    )
    field = tf.PreLN(folded, norm=tf.LayerNorm(eps=eps))
    np.testing.assert_allclose(field.residual_layer(0.0, x, 1.0), expected, rtol=1e-10)
    np.testing.assert_allclose(field(0.0, x), unfolded(0.0, x), rtol=1e-10)
    # Without a norm: the directions, as before.
    plain = tf.PreLN(tf.SelfAttention(1.0))
    np.testing.assert_allclose(
        plain(0.0, x),
        tf.SelfAttention(1.0).drift(0.0, x / jnp.linalg.norm(x, axis=-1, keepdims=True)),
    )
