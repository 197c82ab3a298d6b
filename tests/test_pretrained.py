"""Pretrained checkpoints: loading, our JAX forward against transformers (the reference), and
the map onto our fields. Tiny random models built offline (tests/pretrained_models.py)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pretrained_models import (  # noqa: F401  (session fixtures)
    FAMILIES,
    TEXT,
    WORDS,
    exact_checkpoints,
    reference_hidden_states,
    tiny_checkpoint,
    tiny_checkpoints,
)

import transformer_flows as tf
from transformer_flows.pretrained import MissingCheckpointError, load_pretrained


def relative_errors(ours, reference) -> np.ndarray:
    """|ours_l - ref_l|_F / |ref_l|_F for each layer l."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.linalg.norm(ours - reference, axis=(1, 2)) / np.linalg.norm(reference, axis=(1, 2))


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    return {family: load_pretrained(path) for family, path in tiny_checkpoints.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_equal_transformers(family, tiny_checkpoints, models):
    model = models[family]
    ids = model.tokenize(TEXT)
    ours = model.hidden_states(ids)
    reference = reference_hidden_states(tiny_checkpoints[family], ids)
    assert ours.shape == (model.num_layers + 1, ids.shape[0], model.d_model) == reference.shape
    assert ours.dtype == jnp.float32
    errors = relative_errors(ours, reference)
    assert np.all(errors <= 1e-5), errors
    # The states move: a forward that returned its input would not pass by accident.
    assert relative_errors(ours[1:], reference[:-1]).min() > 0.1


def test_attributes_and_tokens(models):
    bert, albert, gpt2 = models["bert"], models["albert"], models["gpt2"]
    assert (bert.family, bert.num_layers, bert.d_model, bert.num_heads, bert.causal) == (
        "bert",
        3,
        32,
        4,
        False,
    )
    assert (albert.num_heads, albert.causal, gpt2.num_heads, gpt2.causal) == (2, False, 4, True)
    words = TEXT.lower().split()
    for model in (bert, albert):
        ids = model.tokenize(TEXT)
        assert ids.dtype == np.int32 and ids.shape == (len(words) + 2,)
        assert (ids[0], ids[-1]) == (2, 3)  # [CLS] ... [SEP]
    ids = gpt2.tokenize(TEXT)
    assert ids.shape == (len(words),)  # GPT-2 adds no special tokens
    assert ids[0] == 2 + WORDS.index("the") and ids[1] == 2 + WORDS.index("quick")


def test_albert_runs_its_shared_layer_beyond_the_trained_depth(tiny_checkpoints, models):
    """ALBERT's one shared layer applied 6 times equals transformers' ALBERT with
    num_hidden_layers=6 and the same weights; the first 3 + 1 states are the trained model's."""
    import transformers

    model = models["albert"]
    ids = model.tokenize(TEXT)
    deep = model.hidden_states(ids, num_layers=6)
    assert deep.shape == (7, ids.shape[0], 32)
    np.testing.assert_allclose(deep[:4], model.hidden_states(ids), rtol=1e-5, atol=1e-5)
    reference = transformers.AlbertModel.from_pretrained(
        tiny_checkpoints["albert"], num_hidden_layers=6
    ).eval()
    import torch

    with torch.no_grad():
        output = reference(
            input_ids=torch.as_tensor(ids[None].astype(np.int64)), output_hidden_states=True
        )
    expected = np.stack([h[0].numpy() for h in output.hidden_states])
    assert np.all(relative_errors(deep, expected) <= 1e-5)


def test_num_layers_and_final_norm(models):
    bert, gpt2 = models["bert"], models["gpt2"]
    ids = bert.tokenize(TEXT)
    np.testing.assert_allclose(
        bert.hidden_states(ids, num_layers=1), bert.hidden_states(ids)[:2], rtol=1e-5, atol=1e-5
    )
    assert bert.hidden_states(ids, num_layers=0).shape == (1, ids.shape[0], 32)
    for model in (bert, gpt2):
        with pytest.raises(ValueError, match="exceeds the trained depth 3"):
            model.hidden_states(ids, num_layers=4)
    with pytest.raises(ValueError, match="num_layers"):
        bert.hidden_states(ids, num_layers=-1)
    # GPT-2's last hidden state is ln_f of the residual stream (transformers' convention).
    ids = gpt2.tokenize(TEXT)
    stream = gpt2.hidden_states(ids, final_norm=False)
    read_out = gpt2.hidden_states(ids)
    np.testing.assert_allclose(stream[:-1], read_out[:-1], rtol=1e-5, atol=1e-5)
    x = np.asarray(stream[-1], np.float64)
    centred = x - x.mean(-1, keepdims=True)
    expected = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + 1e-5)
    expected = expected * np.asarray(gpt2.embeddings["final_g"]) + np.asarray(
        gpt2.embeddings["final_b"]
    )
    np.testing.assert_allclose(read_out[-1], expected, rtol=1e-5, atol=1e-5)
    # Layers before the last keep the stream when fewer layers are asked for.
    np.testing.assert_allclose(
        gpt2.hidden_states(ids, num_layers=2), stream[:3], rtol=1e-5, atol=1e-5
    )


def test_token_ids_under_jit_and_vmap(models):
    model = models["bert"]
    ids = model.tokenize(TEXT)
    eager = model.hidden_states(ids)
    batch = jnp.stack([ids, ids[::-1]])
    batched = jax.jit(jax.vmap(lambda i: model.hidden_states(i)))(batch)  # traced ids
    np.testing.assert_allclose(batched[0], eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batched[1], model.hidden_states(ids[::-1]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        model.hidden_states(np.array([2, 100, 3]))
    with pytest.raises(Exception, match=r"\[0, 100\)"):
        jax.jit(lambda i: model.hidden_states(i))(jnp.array([2, -1, 3]))
    with pytest.raises(ValueError, match="tokenize"):
        model.hidden_states(TEXT)
    with pytest.raises(ValueError, match="1-D"):
        model.hidden_states(batch[None])  # a batch is (B, n); (1, B, n) is refused
    with pytest.raises(ValueError, match="64 position embeddings"):
        model.hidden_states(np.full(65, 5))


def test_missing_checkpoint_says_what_to_download(tmp_path, tiny_checkpoints):
    missing = tmp_path / "albert-xlarge-v2"
    with pytest.raises(MissingCheckpointError) as info:
        load_pretrained(missing)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    for part in ("albert/albert-xlarge-v2", "model.safetensors", "tokenizer.json", str(missing)):
        assert part in message
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(MissingCheckpointError, match="lacks model.safetensors"):
        load_pretrained(partial, hub_id="google-bert/bert-base-uncased")
    with pytest.raises(MissingCheckpointError, match="google-bert/bert-base-uncased"):
        load_pretrained(partial, hub_id="google-bert/bert-base-uncased")
    (partial / "model.safetensors").write_bytes(
        (tiny_checkpoints["bert"] / "model.safetensors").read_bytes()
    )
    (partial / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match="model_type='t5'.*supported"):
        load_pretrained(partial)


def test_without_tokenizer_token_ids_still_work(tmp_path, tiny_checkpoints, models):
    directory = tmp_path / "no_tokenizer"
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_bytes((tiny_checkpoints["gpt2"] / name).read_bytes())
    model = load_pretrained(directory)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        model.tokenize(TEXT)
    ids = models["gpt2"].tokenize(TEXT)
    np.testing.assert_array_equal(model.hidden_states(ids), models["gpt2"].hidden_states(ids))


def test_the_library_never_imports_torch(tiny_checkpoints):
    code = (
        "import sys, transformer_flows as tf\n"
        f"m = tf.pretrained.load_pretrained({str(tiny_checkpoints['albert'])!r})\n"
        "m.tokenize('the cat'), m.layer_fields(), tf.pretrained.idealized(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- The map onto our fields ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_discrete_map_equals_the_real_layers_where_the_map_is_exact(
    family, exact_checkpoints, tiny_checkpoints, models
):
    """On weights with LayerNorm γ = 1, β = 0, ε = 1e-12, no query/value/output biases and
    outputs centred (random key and feed-forward inner biases kept: both exact), each real
    layer is our field's residual layer with h = 1: LN(z) = √D z/|z| for centred z, the
    scores <W_Q x, W_K x>/√k = β<Q θ, K θ> with Q = √D W_Q, K = √D W_K, β = 1/√k, and
    Σ_h W_O^h W_V^h = Σ_h V_h. Checked against transformers itself."""
    exact = load_pretrained(exact_checkpoints[family])
    ids = exact.tokenize(TEXT)
    reference = reference_hidden_states(exact_checkpoints[family], ids)
    errors = relative_errors(exact.discrete_map_states(ids), reference)
    assert np.all(errors <= 1e-5), errors
    # (Its ALBERT has 2 layer groups, its GPT-2 the 1/(l+1) score scaling: the forward too.)
    assert np.all(relative_errors(exact.hidden_states(ids), reference) <= 1e-5)
    # On the tiny random model as loaded, the dropped pieces make a real gap.
    loaded = models[family]
    gap = relative_errors(loaded.discrete_map_states(ids), loaded.hidden_states(ids))
    assert gap[1:].min() > 0.1, gap


def test_library_idealization_and_exact_pieces(models):
    """`idealized` removes exactly the approximations: the map then equals the real forward;
    switching on the key bias or the feed-forward inner bias keeps it exact (softmax is
    invariant to a per-query constant; FeedForward carries b1), the query bias does not."""
    model = models["albert"]
    ids = model.tokenize(TEXT)

    def gap(variant):
        real = variant.hidden_states(ids, num_layers=5)
        return relative_errors(variant.discrete_map_states(ids, num_layers=5), real)

    assert gap(tf.pretrained.idealized(model)).max() <= 1e-5
    for exact in ("key_bias", "feed_forward_inner_bias"):
        assert gap(tf.pretrained.idealized(model, keep=(exact,))).max() <= 1e-5, exact
    assert gap(tf.pretrained.idealized(model, keep=("query_bias",)))[1:].min() > 1e-3
    with pytest.raises(ValueError, match="unknown approximations"):
        tf.pretrained.idealized(model, keep=("dropout",))


def test_layer_fields_carry_the_weights(models):
    bert, albert, gpt2 = models["bert"], models["albert"], models["gpt2"]
    field = bert.layer_fields()
    assert isinstance(field, tf.TransformerBlock)
    attention, feed_forward = field.attention, field.feed_forward
    assert isinstance(attention, tf.SelfAttention) and not attention.causal
    assert attention.Q.shape == (3, 4, 8, 32) and attention.V.shape == (3, 4, 32, 32)
    assert attention.layer_duration == feed_forward.layer_duration == 1.0
    np.testing.assert_allclose(attention.beta, 1 / np.sqrt(8), rtol=1e-7)
    # V_h = W_O^h W_V^h has rank <= k = 8 (the folding), Q_h = √D W_Q^h.
    assert np.linalg.matrix_rank(np.asarray(attention.V[1, 2], np.float64), tol=1e-4) == 8
    np.testing.assert_allclose(
        attention.Q[2], np.sqrt(32) * np.asarray(bert.layers["wq"][2]), rtol=1e-6
    )
    assert bert.layer_fields(num_layers=2).attention.Q.shape[0] == 2
    shared = albert.layer_fields(num_layers=48)
    assert shared.attention.layer_duration is None and shared.attention.Q.shape == (2, 16, 32)
    block = gpt2.layer_fields()
    assert isinstance(block, tf.pretrained.SequentialBlock)
    assert all(isinstance(part, tf.PreLN) for part in block.parts)
    assert block.parts[0].field.causal
    with pytest.raises(ValueError, match="exceeds the trained depth"):
        gpt2.layer_fields(num_layers=4)


@pytest.mark.parametrize("family", ["albert", "gpt2"])
def test_flow_is_the_limit_of_layers_of_step_h(family, models):
    """`flow_states` solves the fields' ODE: the residual layers of step h (ResidualLayers,
    the same weights) are the discrete map at h = 1 and converge to the flow at first order
    as h → 0 (the error halves with h). ALBERT: Post-LN on the sphere, one shared layer for
    all t (run to t = 48); GPT-2: Pre-LN in R^D, per-layer weights, causal."""
    model = models[family]
    ids = model.tokenize(TEXT)
    times = np.arange(4.0)
    options = {"final_norm": False, "rtol": 1e-7, "atol": 1e-7}
    flow = model.flow_states(ids, times, **options)
    field = model.layer_fields()
    start = np.asarray(model.discrete_map_states(ids, num_layers=0)[0])
    scale = 1.0
    if family == "albert":  # sphere states: the real ones divided by √D
        scale = np.linalg.norm(start, axis=-1, keepdims=True)
        start = start / scale

    def layers(h):
        step = jnp.float32(h)  # traced: one compilation for every h
        xs = tf.solve(field, start, times.astype(np.float32), solver=tf.ResidualLayers(), dt0=step)
        return np.asarray(xs.xs) * (np.sqrt(32) if family == "albert" else 1.0)

    mapped = model.discrete_map_states(ids, final_norm=False)
    np.testing.assert_allclose(layers(1.0), mapped, rtol=2e-5, atol=2e-5)
    coarse = relative_errors(layers(1 / 8), flow)[1:]
    fine = relative_errors(layers(1 / 16), flow)[1:]
    assert np.all((fine / coarse > 0.4) & (fine / coarse < 0.6)), (coarse, fine)
    if family == "albert":  # the shared layer to t = 48; the solve always starts at t = 0
        far = model.flow_states(ids, np.array([0.0, 1.0, 2.0, 48.0]), **options)
        later = model.flow_states(ids, np.array([1.0, 2.0, 48.0]), **options)
        np.testing.assert_allclose(far[:3], flow[:3], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(later, far[1:], rtol=1e-5, atol=1e-5)
        norms = np.linalg.norm(np.asarray(far), axis=-1)
        np.testing.assert_allclose(norms, np.sqrt(32), rtol=1e-5)  # Post-LN: |x| = √D


def test_flow_times_are_checked(models):
    bert = models["bert"]
    ids = bert.tokenize(TEXT)
    with pytest.raises(ValueError, match="times <= 3"):
        bert.flow_states(ids, np.array([0.0, 4.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        bert.flow_states(ids, np.array([1.0, 1.0]))


def test_tokens_ignore_shipped_padding_and_batches_are_masked(tmp_path, tiny_checkpoints, models):
    """A tokenizer.json that pads to a fixed length and truncates (as sentence-transformers
    ship them) still gives the text's own tokens; a text beyond the positions is refused or cut
    on request; a right-padded batch with its mask equals each sequence alone (BERT: every key;
    GPT-2: causal, and ln_f on the last state), the pads' values irrelevant."""
    import shutil

    directory = tmp_path / "padded"
    shutil.copytree(tiny_checkpoints["bert"], directory)
    path = directory / "tokenizer.json"
    shipped = json.loads(path.read_text())
    shipped["padding"] = {
        "strategy": {"Fixed": 40},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    shipped["truncation"] = {"max_length": 6, "strategy": "LongestFirst", "stride": 0}
    path.write_text(json.dumps(shipped))
    padded = load_pretrained(directory)
    np.testing.assert_array_equal(padded.tokenize(TEXT), models["bert"].tokenize(TEXT))
    long_text = " ".join(["the cat"] * 40)  # 80 words + 2 > 64 positions
    with pytest.raises(ValueError, match="has 82 tokens but the model has 64 .*truncate=True"):
        padded.tokenize(long_text)
    with pytest.warns(UserWarning, match="truncated from 82 to 64"):
        cut = padded.tokenize(long_text, truncate=True)
    assert cut.shape == (64,) and cut[-1] == 3  # ends with [SEP]
    texts = [TEXT, "the cat sat"]
    for family in ("bert", "gpt2"):
        model = models[family]
        ids, mask = model.tokenize_batch(texts)
        lengths = [model.tokenize(t).shape[0] for t in texts]
        assert mask.sum(axis=1).tolist() == lengths and ids.shape == (2, max(lengths))
        ids[~mask] = 7  # any id in the vocabulary: the pads do not matter
        batch = model.hidden_states(ids, mask=mask)
        for b, text in enumerate(texts):
            alone = model.hidden_states(model.tokenize(text))
            errors = relative_errors(batch[b][:, : lengths[b]], alone)
            assert np.all(errors <= 1e-5), (family, errors)
        # Without the mask: BERT's real tokens attend to the pads; GPT-2's cannot (causal).
        unmasked = model.hidden_states(ids[1])[:, : lengths[1]]
        gap = relative_errors(unmasked, model.hidden_states(ids[1, : lengths[1]]))[-1]
        assert gap > 1e-2 if family == "bert" else gap <= 1e-5, (family, gap)
    bert = models["bert"]
    with pytest.raises(ValueError, match="right padding"):
        bert.hidden_states(ids, mask=mask[:, ::-1])
    with pytest.raises(ValueError, match="`mask` must be booleans of the shape"):
        bert.hidden_states(ids, mask=mask.astype(int))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        bert.tokenize_batch(TEXT)


# --- The faithful fields (issue 18) ----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_faithful_map_is_the_real_model(family, tiny_checkpoints, models):
    """On the tiny random models as loaded (LayerNorm gains and shifts, every bias, uncentred
    outputs: every approximation present), the discrete map of the faithful fields equals
    transformers' hidden states to float32 rounding, GPT-2's final LayerNorm included; with
    every switch off (`faithful=()`) it is GLPR's map, which is far from the real layers. A
    right-padded text with its key mask gives the unpadded text's states on its tokens."""
    model = models[family]
    ids = model.tokenize(TEXT)
    reference = reference_hidden_states(tiny_checkpoints[family], ids)
    faithful = model.discrete_map_states(ids, faithful=True)
    assert np.all(relative_errors(faithful, reference) <= 1e-5)
    glpr = model.discrete_map_states(ids)
    assert relative_errors(model.discrete_map_states(ids, faithful=()), glpr).max() <= 1e-5
    assert relative_errors(glpr, reference)[1:].min() > 0.1
    n = ids.shape[0]
    padded = np.concatenate([ids, np.full(5, ids[1], dtype=ids.dtype)])
    mask = np.arange(n + 5) < n
    states = model.discrete_map_states(padded, faithful=True, key_mask=mask)
    assert relative_errors(states[:, :n], faithful).max() <= 1e-5
    if not model.causal:  # the padded keys matter without the mask: the check is not vacuous
        unmasked = model.discrete_map_states(padded, faithful=True)
        assert relative_errors(unmasked[:, :n], faithful)[1:].min() > 1e-3


def test_faithful_fields_carry_every_piece(models):
    bert, albert, gpt2 = models["bert"], models["albert"], models["gpt2"]
    field = bert.layer_fields(faithful=True)
    assert isinstance(field, tf.TransformerBlock)
    attention, feed_forward = field.attention, field.feed_forward
    assert isinstance(attention, tf.PostLN) and isinstance(feed_forward, tf.PostLN)
    assert attention.field.q_bias.shape == (3, 4, 8) and attention.field.k_bias.shape == (3, 4, 8)
    assert attention.field.out_bias.shape == (3, 32) and feed_forward.field.out_bias.shape == (
        3,
        32,
    )
    np.testing.assert_allclose(attention.field.Q, bert.layers["wq"])  # model units: no √D
    # Layer l reads its state through the LayerNorm that closed layer l - 1 (the embedding
    # LayerNorm for l = 0); the feed-forward through the layer's first LayerNorm.
    np.testing.assert_allclose(attention.norm.gain[0], bert.embeddings["ln_g"])
    np.testing.assert_allclose(attention.norm.gain[2], bert.layers["ln2_g"][1])
    np.testing.assert_allclose(feed_forward.norm.shift[1], bert.layers["ln1_b"][1])
    assert attention.norm.eps == 1e-12 and attention.norm.centre
    np.testing.assert_allclose(field.jump_times(), [1.0, 2.0])
    # One idealisation switched: the query bias gone, the rest kept.
    names = [n for n in tf.pretrained.applicable(bert) if n in tf.pretrained.APPROXIMATIONS]
    partial = bert.layer_fields(faithful=[n for n in names if n != "query_bias"])
    assert partial.attention.field.q_bias is None and partial.attention.field.k_bias is not None
    # ALBERT's shared layer: constant weights, per-layer LayerNorms (identity read at l = 0).
    shared = albert.layer_fields(num_layers=6, faithful=True)
    assert shared.attention.field.layer_duration is None
    assert shared.attention.norm.gain.shape == (6, 32)
    np.testing.assert_allclose(shared.attention.norm.gain[0], 1.0)
    # GPT-2: Pre-LN with the LayerNorm's centring and ε; γ folded into the weights.
    block = gpt2.layer_fields(faithful=True)
    assert isinstance(block, tf.pretrained.SequentialBlock)
    norm = block.parts[0].norm
    assert norm.gain is None and norm.eps == 1e-5 and norm.centre
    np.testing.assert_allclose(
        block.parts[0].field.Q, gpt2.layers["wq"] * gpt2.layers["ln1_g"][:, None, None, :]
    )
    for bad, match in (("query_bias", "collection"), (["dropout"], "unknown pieces")):
        with pytest.raises(ValueError, match=match):
            bert.layer_fields(faithful=bad)
    ids = bert.tokenize(TEXT)
    with pytest.raises(ValueError, match="faithful=True"):
        bert.discrete_map_states(ids, substeps=2)
    with pytest.raises(ValueError, match="key_mask"):
        bert.discrete_map_states(ids, faithful=True, key_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="real tokens first"):
        bert.discrete_map_states(ids, faithful=True, key_mask=np.arange(ids.shape[0]) > 0)


def test_albert_faithful_beyond_the_trained_depth(models):
    """ALBERT's shared layer run to 6 layers: the faithful map is our forward (itself equal to
    transformers' ALBERT with 6 layers, tested above)."""
    model = models["albert"]
    ids = model.tokenize(TEXT)
    errors = relative_errors(
        model.discrete_map_states(ids, num_layers=6, faithful=True),
        model.hidden_states(ids, num_layers=6),
    )
    assert np.all(errors <= 1e-5), errors


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_faithful_flow_is_the_limit_of_the_sub_stepped_layers(family, models):
    """The faithful flow is the continuous limit of the real layers: each layer as k residual
    steps of h = 1/k of its field (k = 1 the real layer) converges to the flow at first order
    (the error halves with h); the direction errors too."""
    model = models[family]
    ids = model.tokenize(TEXT)
    result = tf.pretrained.continuum_errors(model, ids, substeps=(8, 16), rtol=1e-8, atol=1e-8)
    for name in ("relative", "direction"):
        coarse, fine = result[name][:, 1:]
        assert np.all((fine / coarse > 0.4) & (fine / coarse < 0.6)), (name, coarse, fine)
        assert np.all(np.abs(result["order"][name][1:] - 1) < 0.3), result["order"]
    one = model.discrete_map_states(ids, faithful=True, substeps=1, final_norm=False)
    np.testing.assert_allclose(
        one, model.hidden_states(ids, final_norm=False), rtol=1e-4, atol=1e-5
    )


def test_statistics_separate_radius_and_direction(models):
    """`direction_errors` sees only directions: a rescaled state has direction error 0 and a
    relative error of the rescaling; `idealization_errors` switches one idealisation at a time
    on the real model ("none" rounding, "all" GLPR's map); `three_way_errors` gives both."""
    model = models["bert"]
    ids = model.tokenize(TEXT)
    states = np.asarray(model.hidden_states(ids))
    scaled = states * np.linspace(1, 2, states.shape[1])[None, :, None]
    assert np.all(tf.pretrained.direction_errors(scaled, states) < 1e-12)
    assert np.all(tf.pretrained.relative_errors(scaled, states) > 0.1)
    rotated = states.copy()
    rotated[..., [0, 1]] = rotated[..., [1, 0]]
    assert np.all(tf.pretrained.direction_errors(rotated, states) > 0)
    errors = tf.pretrained.idealization_errors(model, ids)
    assert set(errors) == {"none", "all"} | {
        n for n in tf.pretrained.applicable(model) if n in tf.pretrained.APPROXIMATIONS
    }
    assert max(errors["none"]["relative"].max(), errors["none"]["direction"].max()) <= 1e-5
    glpr = model.discrete_map_states(ids, final_norm=False)
    np.testing.assert_allclose(
        errors["all"]["relative"], tf.pretrained.relative_errors(glpr, states), rtol=1e-6
    )
    assert errors["query_bias"]["direction"][1:].min() > 1e-3
    three = tf.pretrained.three_way_errors(
        model, ids, num_layers=1, faithful=True, rtol=1e-7, atol=1e-7
    )
    assert three["map_vs_real"]["relative"].max() <= 1e-5
    assert three["flow_vs_map"]["direction"][1] > 0.01
