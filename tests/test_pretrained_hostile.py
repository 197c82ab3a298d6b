"""Hostile checkpoints: a damaged or malicious checkpoint directory is refused before anything
big is allocated, with a message that names the file and the key (or tensor), and reading it
never imports or executes anything. One case each: a copy of the tiny random BERT of
tests/pretrained_models.py, damaged in one way (cheap: no compilation)."""

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
from pretrained_models import tiny_checkpoints  # noqa: F401  (session fixture)

from transformer_flows.pretrained import CheckpointError, load_pretrained


def _edit_config(**changes):
    def edit(directory):
        path = directory / "config.json"
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if value is _DELETE:
                del config[key]
            else:
                config[key] = value
        path.write_text(json.dumps(config))

    return edit


_DELETE = object()


def _write(name: str, data: bytes):
    def edit(directory):
        (directory / name).write_bytes(data)

    return edit


def _edit_tensors(change):
    """Rewrite model.safetensors after `change(tensors)` edits the dict of numpy arrays."""

    def edit(directory):
        from safetensors.numpy import load_file, save_file

        tensors = load_file(directory / "model.safetensors")
        change(tensors)
        save_file(tensors, directory / "model.safetensors")

    return edit


def _truncate(directory):
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def _header(edit_entry):
    """Rewrite the safetensors header (same data) after `edit_entry(header)`."""

    def edit(directory):
        path = directory / "model.safetensors"
        data = path.read_bytes()
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + length])
        edit_entry(header)
        text = json.dumps(header).encode()
        path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length :])

    return edit


def _sharded(shard_name, *, link_outside=False):
    """model.safetensors moved behind an index naming `shard_name` as its shard."""

    def edit(directory):
        weights = directory / "model.safetensors"
        if link_outside:  # a shard inside the directory that is a symlink to a file outside
            outside = directory.parent / f"{directory.name}-outside.safetensors"
            weights.rename(outside)
            (directory / shard_name).symlink_to(outside)
        else:
            weights.unlink()
        if isinstance(shard_name, list):  # a malformed weight_map
            index = {"weight_map": shard_name}
        else:
            index = {"weight_map": {"embeddings.word_embeddings.weight": shard_name}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))

    return edit


def _set(name, value):
    def change(tensors):
        tensors[name] = value(tensors[name])

    return change


def _delete(name):
    def change(tensors):
        del tensors[name]

    return change


def _nan(x):
    x = x.copy()
    x.flat[3] = np.nan
    return x


LAYER = "encoder.layer.0.attention.self.query.weight"
WORD = "embeddings.word_embeddings.weight"

# (case id, damage, file the message names, pattern the message matches)
CASES = [
    (
        "config-not-json",
        _write("config.json", b"{model_type: bert"),
        "config.json",
        "not valid JSON",
    ),
    ("config-not-object", _write("config.json", b"[1, 2]"), "config.json", "JSON object"),
    (
        "config-nan-constant",
        _write("config.json", b'{"model_type": "bert", "layer_norm_eps": NaN}'),
        "config.json",
        "non-JSON constant NaN",
    ),
    ("model-type-missing", _edit_config(model_type=_DELETE), "config.json", "model_type=None"),
    (
        "layers-1e9",
        _edit_config(num_hidden_layers=10**9),
        "config.json",
        "'num_hidden_layers' is 1000000000, outside",
    ),
    (
        "layers-a-string",
        _edit_config(num_hidden_layers="3"),
        "config.json",
        "'num_hidden_layers' must be an integer, got '3'",
    ),
    ("layers-bool", _edit_config(num_hidden_layers=True), "config.json", "must be an integer"),
    ("heads-zero", _edit_config(num_attention_heads=0), "config.json", "'num_attention_heads'"),
    (
        "heads-not-dividing",
        _edit_config(num_attention_heads=5),
        "config.json",
        "'num_attention_heads' = 5 does not divide key 'hidden_size' = 32",
    ),
    ("vocab-huge", _edit_config(vocab_size=10**12), "config.json", "'vocab_size' is"),
    (
        "positions-negative",
        _edit_config(max_position_embeddings=-1),
        "config.json",
        "'max_position_embeddings' is -1",
    ),
    ("eps-negative", _edit_config(layer_norm_eps=-1.0), "config.json", "'layer_norm_eps' is -1"),
    ("eps-a-string", _edit_config(layer_norm_eps="1e-12"), "config.json", "must be a number"),
    (
        "activation-unknown",
        _edit_config(hidden_act="evil"),
        "config.json",
        "'hidden_act' is 'evil'",
    ),
    ("activation-a-list", _edit_config(hidden_act=["gelu"]), "config.json", "'hidden_act'"),
    ("decoder-a-string", _edit_config(is_decoder="yes"), "config.json", "must be true or false"),
    (
        "hidden-size-not-the-weights",
        _edit_config(hidden_size=64, num_attention_heads=4),
        "model.safetensors",
        "has shape \\[100, 32\\] but .*config.json \\(vocab_size, hidden_size\\) implies "
        "\\[100, 64\\]",
    ),
    (
        "vocab-not-the-weights",
        _edit_config(vocab_size=101),
        "model.safetensors",
        f"'{WORD}' has shape \\[100, 32\\]",
    ),
    (
        "intermediate-not-the-weights",
        _edit_config(intermediate_size=65),
        "model.safetensors",
        "intermediate.dense.weight' has shape \\[64, 32\\]",
    ),
    (
        "fewer-layers-than-the-weights",
        _edit_config(num_hidden_layers=2),
        "config.json",
        "'num_hidden_layers' = 2, but .*model.safetensors has tensors for 3",
    ),
    (
        "more-layers-than-the-weights",
        _edit_config(num_hidden_layers=4),
        "config.json",
        "'num_hidden_layers' = 4, but .*has tensors for 3",
    ),
    ("tensor-missing", _edit_tensors(_delete(LAYER)), "model.safetensors", f"no tensor '{LAYER}'"),
    (
        "tensor-wrong-shape",
        _edit_tensors(_set(LAYER, lambda x: x[:, :16].copy())),
        "model.safetensors",
        f"'{LAYER}' has shape \\[32, 16\\]",
    ),
    (
        "tensor-integer",
        _edit_tensors(_set(LAYER, lambda x: x.astype(np.int32))),
        "model.safetensors",
        f"'{LAYER}' has dtype I32; a weight must be floating",
    ),
    (
        "tensor-nan",
        _edit_tensors(_set(LAYER, _nan)),
        "model.safetensors",
        f"'{LAYER}' has 1 non-finite",
    ),
    (
        "safetensors-truncated",
        _truncate,
        "model.safetensors",
        "data_offsets .*within the file.s \\d+ bytes of data \\(truncated file",
    ),
    ("safetensors-empty", _write("model.safetensors", b"\0\0"), "model.safetensors", "too few"),
    (
        "safetensors-header-length",
        _write("model.safetensors", (10**15).to_bytes(8, "little") + b"{}"),
        "model.safetensors",
        "header claims 1000000000000000 bytes",
    ),
    (
        "safetensors-header-not-json",
        _write("model.safetensors", (4).to_bytes(8, "little") + b"{{{{"),
        "model.safetensors",
        "header is not valid JSON",
    ),
    (
        "safetensors-sizes-disagree",
        _header(lambda h: h[LAYER].update(shape=[32, 33])),
        "model.safetensors",
        f"'{LAYER}': data_offsets .* span 4096 bytes but a F32 tensor of shape \\[32, 33\\]",
    ),
    (
        "safetensors-dtype-unknown",
        _header(lambda h: h[LAYER].update(dtype="F128")),
        "model.safetensors",
        f"'{LAYER}' has dtype 'F128'",
    ),
    (
        "shard-absolute",
        _sharded("/etc/passwd"),
        "model.safetensors.index.json",
        "'weight_map' → .* names the shard '/etc/passwd', which is not a relative path",
    ),
    (
        "shard-dotdot",
        _sharded("../outside.safetensors"),
        "model.safetensors.index.json",
        "'../outside.safetensors', which is not a relative path",
    ),
    (
        "shard-symlink-outside",
        _sharded("model-00001.safetensors", link_outside=True),
        "model.safetensors.index.json",
        "resolves to .*outside the checkpoint directory",
    ),
    (
        "shard-index-not-a-map",
        _sharded(["model.safetensors"]),
        "model.safetensors.index.json",
        "'weight_map' must be a non-empty object",
    ),
    (
        "tokenizer-not-json",
        _write("tokenizer.json", b"not a tokenizer"),
        "tokenizer.json",
        "not a tokenizers tokenizer.json",
    ),
]


@pytest.fixture
def damaged(tmp_path, tiny_checkpoints):
    directory = tmp_path / "bert"
    shutil.copytree(tiny_checkpoints["bert"], directory)
    return directory


@pytest.mark.parametrize(
    "damage, file, pattern", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_damaged_checkpoint_is_refused_naming_file_and_key(damaged, damage, file, pattern):
    damage(damaged)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(damaged)
    message = str(info.value)
    assert f"{damaged}{os.sep}{file}" in message or f"{damaged / file}" in message, message
    assert re.search(pattern, message, re.S), message
    assert isinstance(info.value, ValueError)


def test_the_undamaged_copy_loads(damaged):
    """The cases above fail by their damage, not by the copying."""
    model = load_pretrained(damaged)
    assert (model.num_layers, model.d_model, model.vocab_size) == (3, 32, 100)


def test_reading_a_checkpoint_never_runs_its_code(damaged, tmp_path):
    """config.json may name code (transformers' `auto_map` with trust_remote_code); a
    checkpoint directory may hold Python files. Loading reads data only: nothing is imported
    or executed, also with the directory on sys.path."""
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("modeling_evil.py", "configuration_evil.py", "__init__.py", "tokenizer.py"):
        (damaged / name).write_text(code)
    _edit_config(
        auto_map={"AutoModel": "modeling_evil.Model", "AutoConfig": "configuration_evil.Config"},
        trust_remote_code=True,
    )(damaged)
    sys.path.insert(0, str(damaged))
    try:
        model = load_pretrained(damaged)
        model.tokenize("the cat")
    finally:
        sys.path.remove(str(damaged))
    assert not marker.exists()
    assert not any("evil" in name for name in sys.modules)


def test_bfloat16_weights_load_as_float32(damaged, tiny_checkpoints):  # noqa: F811
    """A checkpoint stored in bfloat16 (the upper 16 bits of each float32) loads as float32:
    each weight equals the float32 one with its lower 16 bits cleared, exactly."""
    from safetensors.numpy import load_file

    tensors = load_file(damaged / "model.safetensors")
    header, chunks, offset = {}, [], 0
    for name, value in sorted(tensors.items()):
        if value.dtype == np.float32:
            data, dtype = (value.view(np.uint32) >> 16).astype("<u2").tobytes(), "BF16"
        else:
            data, dtype = value.tobytes(), {np.dtype(np.int64): "I64"}[value.dtype]
        header[name] = {"dtype": dtype, "shape": list(value.shape)}
        header[name]["data_offsets"] = [offset, offset + len(data)]
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    (damaged / "model.safetensors").write_bytes(
        len(text).to_bytes(8, "little") + text + b"".join(chunks)
    )
    model = load_pretrained(damaged)
    full = load_pretrained(tiny_checkpoints["bert"])
    word = np.asarray(full.embeddings["word"])
    cleared = (word.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    np.testing.assert_array_equal(model.embeddings["word"], cleared)
    assert model.embeddings["word"].dtype == np.float32
    assert not np.array_equal(cleared, word)  # the rounding is real, so the test can fail


# The families read through BERT's or their own layout, built from the tiny BERT without torch:
# RoBERTa is its config with model_type "roberta"; DistilBERT its tensors renamed (no token
# types); LLaMA random float32 tensors of LLaMA's names (4 heads, 2 key/value heads, width 8).
_DISTILBERT_NAMES = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}


def _to_distilbert(name: str) -> str:
    if not name.startswith("encoder.layer."):
        return name
    number, rest = name[len("encoder.layer.") :].split(".", 1)
    for bert, distil in _DISTILBERT_NAMES.items():
        if rest.startswith(bert + "."):
            return f"transformer.layer.{number}.{distil}{rest[len(bert) :]}"
    raise AssertionError(name)


def _family_directory(family: str, bert: "os.PathLike", directory):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(bert, directory)
    config = json.loads((directory / "config.json").read_text())
    if family == "roberta":
        config |= {"model_type": "roberta", "pad_token_id": 0}
    elif family == "distilbert":
        tensors = load_file(directory / "model.safetensors")
        del tensors["embeddings.token_type_embeddings.weight"]
        tensors = {_to_distilbert(k): v for k, v in tensors.items()}
        save_file(tensors, directory / "model.safetensors")
        config = {
            "model_type": "distilbert",
            "vocab_size": 100,
            "max_position_embeddings": config["max_position_embeddings"],
            "dim": 32,
            "n_heads": 4,
            "n_layers": 3,
            "hidden_dim": 64,
            "activation": "gelu",
        }
    else:
        rng = np.random.default_rng(0)
        shapes = {"embed_tokens.weight": (100, 32), "norm.weight": (32,)}
        for i in range(2):
            shapes |= {
                f"layers.{i}.self_attn.q_proj.weight": (32, 32),
                f"layers.{i}.self_attn.k_proj.weight": (16, 32),
                f"layers.{i}.self_attn.v_proj.weight": (16, 32),
                f"layers.{i}.self_attn.o_proj.weight": (32, 32),
                f"layers.{i}.input_layernorm.weight": (32,),
                f"layers.{i}.post_attention_layernorm.weight": (32,),
                f"layers.{i}.mlp.gate_proj.weight": (64, 32),
                f"layers.{i}.mlp.up_proj.weight": (64, 32),
                f"layers.{i}.mlp.down_proj.weight": (32, 64),
            }
        tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        save_file(tensors, directory / "model.safetensors")
        config = {
            "model_type": "llama",
            "vocab_size": 100,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def family_directories(tmp_path_factory, tiny_checkpoints):
    root = tmp_path_factory.mktemp("hostile_families")
    return {
        family: _family_directory(family, tiny_checkpoints["bert"], root / family)
        for family in ("roberta", "distilbert", "llama")
    }


def _duplicate(name, copy):
    def change(tensors):
        tensors[copy] = tensors[name]

    return change


KV = "layers.0.self_attn.k_proj.weight"
# (case id, family, damage, file the message names, pattern the message matches)
FAMILY_CASES = [
    (
        "roberta-pad-beyond-positions",
        "roberta",
        _edit_config(pad_token_id=63),
        "config.json",
        "'max_position_embeddings' = 64 leaves no position after key 'pad_token_id' = 63",
    ),
    ("roberta-pad-negative", "roberta", _edit_config(pad_token_id=-1), "config.json", "is -1"),
    (
        "roberta-same-weight-twice",
        "roberta",
        _edit_tensors(_duplicate(WORD, "roberta." + WORD)),
        "model.safetensors",
        f"'roberta.{WORD}' and tensor '{WORD}' .* the same weight",
    ),
    (
        "distilbert-layers-1e9",
        "distilbert",
        _edit_config(n_layers=10**9),
        "config.json",
        "'n_layers' is 1000000000, outside",
    ),
    (
        "distilbert-heads-not-dividing",
        "distilbert",
        _edit_config(n_heads=5),
        "config.json",
        "'n_heads' = 5 does not divide key 'dim' = 32",
    ),
    (
        "distilbert-dim-not-the-weights",
        "distilbert",
        _edit_config(dim=64),
        "model.safetensors",
        "has shape \\[100, 32\\] but .*config.json \\(vocab_size, dim\\) implies \\[100, 64\\]",
    ),
    (
        "distilbert-fewer-layers-than-the-weights",
        "distilbert",
        _edit_config(n_layers=2),
        "config.json",
        "'n_layers' = 2, but .*has tensors for 3",
    ),
    (
        "distilbert-activation-unknown",
        "distilbert",
        _edit_config(activation="evil"),
        "config.json",
        "'activation' is 'evil'",
    ),
    (
        "llama-kv-heads-not-dividing",
        "llama",
        _edit_config(num_key_value_heads=3),
        "config.json",
        "'num_attention_heads' = 4 is not a multiple of key 'num_key_value_heads' = 3",
    ),
    (
        "llama-kv-heads-not-the-weights",
        "llama",
        _edit_config(num_key_value_heads=1),
        "model.safetensors",
        f"'{KV}' has shape \\[16, 32\\] but .*\\(num_key_value_heads × head_dim, hidden_size\\) "
        "implies \\[8, 32\\]",
    ),
    ("llama-layers-1e9", "llama", _edit_config(num_hidden_layers=10**9), "config.json", "outside"),
    (
        "llama-more-layers-than-the-weights",
        "llama",
        _edit_config(num_hidden_layers=3),
        "config.json",
        "'num_hidden_layers' = 3, but .*has tensors for 2",
    ),
    ("llama-head-dim", "llama", _edit_config(head_dim=16), "config.json", "'head_dim' = 16"),
    (
        "llama-odd-head-width",
        "llama",
        _edit_config(num_attention_heads=32, num_key_value_heads=32),
        "config.json",
        "head width .* = 1 must be even",
    ),
    (
        "llama-rope-theta-a-string",
        "llama",
        _edit_config(rope_parameters={"rope_theta": "1e4"}),
        "config.json",
        "'rope_parameters': rope_theta must be a number",
    ),
    (
        "llama-rope-theta-one",
        "llama",
        _edit_config(rope_parameters=_DELETE, rope_theta=1.0),
        "config.json",
        "'rope_theta': rope_theta = 1.0 is outside",
    ),
    (
        "llama-rope-parameters-a-list",
        "llama",
        _edit_config(rope_parameters=[1]),
        "config.json",
        "'rope_parameters' must be an object",
    ),
    (
        "llama-rope-scaling",
        "llama",
        _edit_config(rope_scaling={"type": "dynamic", "factor": 2.0}),
        "config.json",
        "'rope_scaling' has rope_type='dynamic'",
    ),
    ("llama-mlp-bias", "llama", _edit_config(mlp_bias=True), "config.json", "'mlp_bias' is true"),
    ("llama-eps-zero", "llama", _edit_config(rms_norm_eps=0), "config.json", "'rms_norm_eps' is"),
]


def test_family_copies_load(family_directories, tiny_checkpoints):
    """The families' undamaged copies load (so the cases below fail by their damage), into
    the weights they were built from (DistilBERT: BERT's, renamed back)."""
    bert = load_pretrained(tiny_checkpoints["bert"])
    models = {family: load_pretrained(path) for family, path in family_directories.items()}
    for name, value in bert.layers.items():
        np.testing.assert_array_equal(models["distilbert"].layers[name], value, err_msg=name)
    assert "type" not in models["distilbert"].embeddings
    np.testing.assert_array_equal(
        models["roberta"].embeddings["position"], bert.embeddings["position"][1:]
    )
    llama = models["llama"]
    assert llama.layers["wk"].shape == (2, 2, 8, 32) and llama.max_positions == 64
    assert llama.settings["rope_theta"] == 10000.0


@pytest.mark.parametrize(
    "family, damage, file, pattern",
    [case[1:] for case in FAMILY_CASES],
    ids=[case[0] for case in FAMILY_CASES],
)
def test_damaged_family_checkpoint_is_refused(
    tmp_path, family_directories, family, damage, file, pattern
):
    directory = tmp_path / family
    shutil.copytree(family_directories[family], directory)
    damage(directory)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(directory)
    message = str(info.value)
    assert f"{directory / file}" in message, message
    assert re.search(pattern, message, re.S), message
