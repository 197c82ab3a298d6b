"""The families beyond BERT, ALBERT and GPT-2 (docs/pretrained.md, "Families"): RoBERTa,
DistilBERT and LLaMA checkpoints against transformers, LLaMA's exact fields (Pre-RMSNorm,
rotary attention, SwiGLU), the rotary field's relative-position invariance and the folding of
RMSNorm's gain, and bfloat16 weights. Tiny random models built offline (tests/family_models.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_models import FAMILIES, family_checkpoints
from pretrained_models import TEXT, reference_hidden_states

import transformer_flows as tf
from transformer_flows.pretrained import load_pretrained


def relative_errors(ours, reference) -> np.ndarray:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(ours - reference, axis=(1, 2)) / np.linalg.norm(reference, axis=(1, 2))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny checkpoints, built once (tests/family_models.py)."""
    return family_checkpoints(tmp_path_factory.mktemp("family_checkpoints"))


@pytest.fixture(scope="module")
def models(checkpoints):
    return {name: load_pretrained(path) for name, path in checkpoints.items()}


@pytest.fixture(scope="module")
def references(checkpoints, models):
    """transformers' hidden states of TEXT for every checkpoint (computed once)."""
    return {
        name: reference_hidden_states(path, models[name].tokenize(TEXT))
        for name, path in checkpoints.items()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_equal_transformers(family, models, references):
    model = models[family]
    ids = model.tokenize(TEXT)
    ours = model.hidden_states(ids)
    reference = references[family]
    assert ours.shape == (3, ids.shape[0], 32) == reference.shape
    assert ours.dtype == jnp.float32
    errors = relative_errors(ours, reference)
    assert np.all(errors <= 1e-5), errors
    assert relative_errors(ours[1:], reference[:-1]).min() > 0.1  # the layers move the tokens


def test_family_layouts(checkpoints, models):
    """RoBERTa's position table starts at pad + 1; DistilBERT has no token types; LLaMA has
    rotary positions (no table; the config's bound) and 2 key/value heads for 4 query heads."""
    from safetensors.numpy import load_file

    roberta, distilbert, llama = models["roberta"], models["distilbert"], models["llama"]
    table = load_file(checkpoints["roberta"] / "model.safetensors")[
        "embeddings.position_embeddings.weight"
    ]
    np.testing.assert_array_equal(roberta.embeddings["position"], table[1:])  # pad_token_id 0
    assert roberta.max_positions == 63 and roberta.family == "roberta"
    assert "type" not in distilbert.embeddings and distilbert.settings["placement"] == "post"
    assert (llama.family, llama.num_heads, llama.causal, llama.max_positions) == (
        "llama",
        4,
        True,
        64,
    )
    assert llama.layers["wq"].shape == (2, 4, 8, 32) and llama.layers["wk"].shape == (2, 2, 8, 32)
    with pytest.raises(ValueError, match="64 position"):
        llama.hidden_states(np.zeros(65, np.int32))
    # RoBERTa and DistilBERT have BERT's approximations; LLaMA's map drops nothing.
    for model in (roberta, distilbert):
        assert "layer_norm_centring" in tf.pretrained.applicable(model)
        assert "embedding_projection" not in tf.pretrained.applicable(model)
    with pytest.raises(ValueError, match="nothing to idealise"):
        tf.pretrained.idealized(llama)


@pytest.mark.parametrize(("family", "prefix"), [("distilbert", "distilbert."), ("llama", "model.")])
def test_task_head_prefixes_are_stripped(family, prefix, checkpoints, models, tmp_path):
    """Checkpoints of a task model (DistilBertForMaskedLM: `distilbert.transformer.layer.N...`;
    LlamaForCausalLM: `model.layers.N...`) load to the same weights as the bare model's."""
    import shutil

    from safetensors.numpy import load_file, save_file

    source = checkpoints[family]
    shutil.copy(source / "config.json", tmp_path / "config.json")
    tensors = load_file(source / "model.safetensors")
    save_file({prefix + k: v for k, v in tensors.items()}, tmp_path / "model.safetensors")
    loaded = load_pretrained(tmp_path)
    for store in ("layers", "embeddings"):
        for name, value in getattr(models[family], store).items():
            np.testing.assert_array_equal(getattr(loaded, store)[name], value, err_msg=name)


def test_llama_padded_batch_with_mask_equals_each_text_alone(models):
    """A right-padded LLaMA batch with its mask: each text's real tokens (causal attention,
    rotary positions 0..n_b − 1, final RMSNorm) equal the text alone, whatever the pads are;
    the mask reaches LLaMA's attention (the pads' own states differ without it)."""
    model = models["llama"]
    texts = [TEXT, "the cat sat"]
    ids, mask = model.tokenize_batch(texts)
    lengths = mask.sum(axis=1)
    assert lengths[0] == ids.shape[1] > lengths[1]
    ids[~mask] = 7  # any id in the vocabulary
    batch = model.hidden_states(ids, mask=mask)
    assert batch.shape == (2, model.num_layers + 1, ids.shape[1], model.d_model)
    assert np.all(np.isfinite(batch))
    for b, text in enumerate(texts):
        alone = model.hidden_states(model.tokenize(text))
        errors = relative_errors(batch[b][:, : lengths[b]], alone)
        assert np.all(errors <= 1e-5), (text, errors)
    unmasked = model.hidden_states(ids[1])  # the pads attend to the pads
    pads = np.s_[1:, lengths[1] :]
    assert relative_errors(batch[1][pads], unmasked[pads]).min() > 1e-2
    np.testing.assert_allclose(batch[1][:, : lengths[1]], unmasked[:, : lengths[1]], atol=1e-5)


def test_llama_exact_map_and_fields(models, references):
    """LLaMA's layers as our fields (Pre-RMSNorm, rotary attention, SwiGLU, gains folded, ε
    kept): the discrete map with h = 1 equals transformers' layers; `flow_states` solves the
    same fields, and their residual layers of step h converge at first order as h → 0
    (Richardson: successive differences halve with h)."""
    model = models["llama"]
    ids = model.tokenize(TEXT)
    mapped = model.discrete_map_states(ids)
    errors = relative_errors(mapped, references["llama"])
    assert np.all(errors <= 1e-5), errors
    field = model.layer_fields()
    assert isinstance(field, tf.pretrained.SequentialBlock)
    attention, feed_forward = (part.field for part in field.parts)
    assert isinstance(attention, tf.RotarySelfAttention) and attention.causal
    assert isinstance(feed_forward, tf.GatedFeedForward)
    assert all(isinstance(part, tf.PreRMSNorm) and part.eps == 1e-6 for part in field.parts)
    times = np.arange(3.0)

    def layers(h):  # traced step: one compilation for every h
        states = model.flow_states(ids, times, solver=tf.ResidualLayers(), dt0=jnp.float32(h))
        return np.asarray(states, np.float64)

    np.testing.assert_allclose(layers(1.0), mapped, rtol=2e-5, atol=2e-5)
    # The random layers move the tokens far (the map at h = 1 is ~1.6 away from the flow), so
    # the asymptotic regime needs small steps: h = 1/256, 1/512, 1/1024.
    coarse_h, mid_h, fine_h = layers(1 / 256), layers(1 / 512), layers(1 / 1024)
    coarse = relative_errors(coarse_h, mid_h)[1:]
    fine = relative_errors(mid_h, fine_h)[1:]
    assert np.all((fine / coarse > 0.4) & (fine / coarse < 0.6)), (coarse, fine)
    assert np.all(relative_errors(layers(1.0), fine_h)[1:] > 0.5)  # h = 1 is not a small step


@pytest.fixture(scope="module")
def rotary_setup():
    """Random float64 weights: 2 heads of width 4 on d = 6, 5 tokens."""
    rng = np.random.default_rng(0)
    n, d, heads, k = 5, 6, 2, 4
    weights = {
        "Q": rng.normal(size=(heads, k, d)),
        "K": rng.normal(size=(heads, k, d)),
        "V": rng.normal(size=(heads, d, d)) / d,
    }
    x = rng.normal(size=(n, d))
    return weights, jnp.asarray(x), rng


def test_rotation_is_orthogonal_and_relative(rotary_setup):
    """|R(p)z| = |z|, and <R(p)q, R(p')k> = <q, R(p' − p)k> (the rotation group law)."""
    _, _, rng = rotary_setup
    q, k = jnp.asarray(rng.normal(size=(2, 7, 8)))
    p, p2 = jnp.asarray(rng.uniform(-50, 50, size=(2, 7)))
    base = 100.0
    rotated = tf.apply_rotary(q, p, base)
    np.testing.assert_allclose(
        jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-13
    )
    left = jnp.sum(rotated * tf.apply_rotary(k, p2, base), axis=-1)
    right = jnp.sum(q * tf.apply_rotary(k, p2 - p, base), axis=-1)
    np.testing.assert_allclose(left, right, rtol=1e-11, atol=1e-11)
    assert not np.allclose(rotated, q)  # it does turn


def test_rotary_attention_depends_on_relative_positions_only(rotary_setup):
    """Shifting every position by one constant leaves the attention weights (and the field)
    unchanged; moving one token's position changes them."""
    weights, x, _ = rotary_setup
    positions = jnp.asarray([0.0, 1.0, 2.0, 3.0, 4.0])

    def field(p):
        return tf.RotarySelfAttention(1.0, **weights, positions=p, base=10.0, causal=True)

    shifted = jnp.stack([positions, positions + 17.0, positions - 3.5, positions.at[2].set(7.0)])

    @jax.jit  # one compilation for every position vector
    @jax.vmap
    def evaluate(p):
        return field(p).attention_matrix(0.0, x), field(p)(0.0, x)

    matrices, velocities = evaluate(shifted)
    reference = matrices[0]
    np.testing.assert_allclose(reference.sum(-1), 1.0, rtol=1e-13)
    np.testing.assert_allclose(np.triu(reference[0], 1), 0.0)  # causal
    for i in (1, 2):
        np.testing.assert_allclose(matrices[i], reference, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(velocities[i], velocities[0], rtol=1e-10, atol=1e-12)
    assert np.abs(np.asarray(matrices[3] - reference)).max() > 1e-3  # p_2 moved
    np.testing.assert_array_equal(field(None).token_positions(x), positions)  # default 0..n-1


def test_rms_norm_gain_folds_into_the_weights(rotary_setup):
    """Pre-LN: PreRMSNorm(field(W), gain=g) equals PreRMSNorm(field(W diag g)) exactly (every
    weight reading the normalised state absorbs g), for the rotary attention and the gated
    feed-forward; with ε = 0, PreRMSNorm(field(W)) is PreLN(field(√d W)) (RMSNorm = √d x/|x|)."""
    weights, x, rng = rotary_setup
    d = x.shape[1]
    gain = 1 + 0.3 * rng.normal(size=d)
    eps = 1e-3
    w, a, u = rng.normal(size=(d, 12)), rng.normal(size=(12, d)), rng.normal(size=(12, d))

    @jax.jit  # everything in one compilation
    def evaluate(x):
        folded = {name: value * gain for name, value in weights.items()}
        attention = tf.RotarySelfAttention(0.5, **weights, base=10.0)
        attention_folded = tf.RotarySelfAttention(0.5, **folded, base=10.0)
        mlp = tf.GatedFeedForward(w, a, u)
        mlp_folded = tf.GatedFeedForward(w, a * gain, u * gain)
        pairs = []
        for plain, absorbed in ((attention, attention_folded), (mlp, mlp_folded)):
            with_gain = tf.PreRMSNorm(plain, gain, eps=eps)
            pairs.append((with_gain(0.0, x), tf.PreRMSNorm(absorbed, eps=eps)(0.0, x)))
            pairs.append(
                (
                    with_gain.residual_layer(0.0, x, 0.3),
                    x + 0.3 * plain.drift(0.0, with_gain.normalize(0.0, x)),
                )
            )
        scaled = tf.RotarySelfAttention(
            0.5, **{name: np.sqrt(d) * value for name, value in weights.items()}, base=10.0
        )
        pairs.append((tf.PreRMSNorm(attention)(0.0, x), tf.PreLN(scaled)(0.0, x)))
        extra = (mlp.drift(0.0, x), tf.PreRMSNorm(mlp)(0.0, x), pairs[2][0])
        return pairs, extra

    pairs, (swiglu, without_gain, with_gain) = evaluate(x)
    for ours, expected in pairs:
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    # SwiGLU: w (silu(a x) ⊙ u x), against numpy.
    xn = np.asarray(x)
    gate = xn @ a.T
    np.testing.assert_allclose(swiglu, (gate / (1 + np.exp(-gate)) * (xn @ u.T)) @ w.T, rtol=1e-12)
    assert np.abs(np.asarray(with_gain - without_gain)).max() > 1e-2  # the gain matters
    # Per-layer gains: layer l's gain on [l, l+1), a jump at t = 1.
    gains = np.stack([gain, 2 * gain])
    mlp_plain = tf.GatedFeedForward(w, a, u)
    layered = tf.PreRMSNorm(mlp_plain, gains, layer_duration=1.0)
    np.testing.assert_allclose(
        layered.normalize(1.5, x), tf.PreRMSNorm(mlp_plain, 2 * gain).normalize(0.0, x), rtol=1e-13
    )
    np.testing.assert_allclose(layered.jump_times(), [1.0])


def test_fields_refuse_bad_input(rotary_setup):
    weights, x, _ = rotary_setup
    with pytest.raises(ValueError, match="must be even"):
        tf.RotarySelfAttention(1.0, Q=np.ones((3, 6)), K=np.ones((3, 6)), V=np.eye(6))
    with pytest.raises(ValueError, match="same shape"):
        tf.RotarySelfAttention(1.0, Q=weights["Q"], K=weights["Q"][:1], V=weights["V"])
    field = tf.RotarySelfAttention(1.0, **weights, positions=np.arange(4.0))
    with pytest.raises(ValueError, match="one position per token"):
        field.check_state(x)
    with pytest.raises(ValueError, match="`base` must be"):
        tf.RotarySelfAttention(1.0, **weights, base=1.0)
    with pytest.raises(ValueError, match="`eps` must be"):
        tf.PreRMSNorm(tf.RotarySelfAttention(1.0, **weights), eps=-1.0)
    with pytest.raises(ValueError, match="`gain` has 5 entries"):
        tf.PreRMSNorm(tf.RotarySelfAttention(1.0, **weights), np.ones(5))
    with pytest.raises(ValueError, match="shape of `a`"):
        tf.GatedFeedForward(np.ones((6, 4)), np.ones((4, 6)), np.ones((3, 6)))
    with pytest.raises(ValueError, match="zero-norm tokens"):
        tf.PreRMSNorm(tf.RotarySelfAttention(1.0, **weights)).check_state(np.zeros((2, 6)))


def test_llama_config_is_checked(checkpoints, tmp_path):
    import json
    import shutil

    from transformer_flows.pretrained import CheckpointError

    source = checkpoints["llama"]
    shutil.copy(source / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    for change, message in (
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type='linear'"),
        ({"num_key_value_heads": 3}, "not a multiple of key 'num_key_value_heads' = 3"),
        ({"attention_bias": True}, "key 'attention_bias' is true"),
        ({"num_attention_heads": 0}, "key 'num_attention_heads' is 0, outside"),
    ):
        (tmp_path / "config.json").write_text(json.dumps(config | change))
        with pytest.raises(CheckpointError, match=message) as error:
            load_pretrained(tmp_path)
        assert "config.json" in str(error.value)


def test_bfloat16_weights_load_as_float32(checkpoints, models, references):
    """A checkpoint saved in bfloat16 loads as float32 (widening is exact: the bf16 values
    themselves), its forward equals transformers' float32 forward of the same weights; the
    checkpoint reader (bit patterns widened by hand) gives safetensors' own bfloat16 arrays
    (numpy with ml_dtypes) widened to float32."""
    from safetensors.numpy import load_file

    from transformer_flows.pretrained._checkpoint import read_tensors

    model, full = models["llama_bf16"], models["llama"]
    assert all(w.dtype == jnp.float32 for w in jax.tree.leaves((model.layers, model.embeddings)))
    word, word_full = np.asarray(model.embeddings["word"]), np.asarray(full.embeddings["word"])
    assert not np.array_equal(word, word_full)  # rounded to bfloat16 ...
    np.testing.assert_allclose(word, word_full, rtol=2**-8)  # ... to 8 significant bits
    bits = word.view(np.uint32)
    assert np.all(bits & 0xFFFF == 0)  # exactly bfloat16 values
    errors = relative_errors(model.hidden_states(model.tokenize(TEXT)), references["llama_bf16"])
    assert np.all(errors <= 1e-5), errors
    path = checkpoints["llama_bf16"] / "model.safetensors"
    by_library, by_reader = load_file(path), read_tensors(path.parent)
    assert by_library.keys() == by_reader.keys()
    for name, value in by_library.items():
        assert value.dtype.name == "bfloat16" and by_reader[name].dtype == "BF16"
        np.testing.assert_array_equal(by_reader[name].load(), value.astype(np.float32))
