"""Reading a Hugging Face-style checkpoint directory (config.json, model.safetensors,
tokenizer.json) into one weight layout shared by the families, with numpy only (no torch).

The layout (H heads of width k = D/H, hidden width m, E the embedding width):

- layers (leading axis: the stored layers, L for BERT/GPT-2, the groups for ALBERT):
  `wq`, `wk`, `wv` (H, k, D) and `bq`, `bk`, `bv` (H, k): the per-head rows of the query, key
  and value maps, q = W x + b; `wo` (H, D, k) the output projection's columns of head h,
  `bo` (D,); `ln1_g`, `ln1_b`, `ln2_g`, `ln2_b` (D,) the two LayerNorms (after attention and
  after the feed-forward for Post-LN; before them for Pre-LN); `w1` (m, D), `b1` (m,),
  `w2` (D, m), `b2` (D,) the feed-forward f(y) = W2 σ(W1 y + b1) + b2.
- embeddings: `word` (V, E), `position` (P, E), `type` (T, E) (BERT/ALBERT), `ln_g`, `ln_b`
  (E,) (BERT/ALBERT), `proj_w` (D, E), `proj_b` (D,) (ALBERT's factorised embedding),
  `final_g`, `final_b` (D,) (GPT-2's final LayerNorm ln_f).
"""

import json
from pathlib import Path

import numpy as np

# The checkpoint GLPR's Fig. 1 uses (arXiv:2312.10794): the default named by download hints.
DEFAULT_HUB_ID = "albert/albert-xlarge-v2"

FAMILIES = ("bert", "albert", "gpt2", "roberta", "distilbert", "llama")

REQUIRED_FILES = ("config.json", "model.safetensors")


class MissingCheckpointError(FileNotFoundError):
    """A checkpoint directory or one of its files is missing; the message says what to download
    and where to put it (this library never downloads weights)."""


def download_hint(directory, hub_id: str = DEFAULT_HUB_ID) -> str:
    """How to get a checkpoint into `directory` on a machine with internet access."""
    return (
        f"Download the checkpoint on a machine with internet access, e.g. `{hub_id}` from the "
        f"Hugging Face hub:\n"
        f"    huggingface-cli download {hub_id} config.json model.safetensors tokenizer.json "
        f"--local-dir {directory}\n"
        f"(or `hf download ...` with the same arguments), then copy that directory here. "
        f"Needed: config.json and model.safetensors (weights); tokenizer.json for text input "
        f"(without it, pass token ids). Supported families: BERT, ALBERT, GPT-2, RoBERTa, "
        f"DistilBERT, LLaMA."
    )


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted as it is: malformed, inconsistent or out of
    bounds. The message names the file, the key (or tensor) and what was expected."""


# Upper bounds on what a config.json may ask for: far above every released model of the
# families (GPT-2 XL: 48 layers, D = 1600, 50257 words, 1024 positions; LLaMA-3 405B: 126
# layers, D = 16384, 128256 words, 131072 positions), far below what would exhaust memory
# before the weights are even compared with the config.
MAX_LAYERS = 1024
MAX_HIDDEN = 65536
MAX_HEADS = 1024
MAX_VOCAB = 1 << 22
MAX_POSITIONS = 1 << 20
MAX_TYPES = 1024
# Sizes of the JSON files read (config.json, the shard index, a safetensors header,
# tokenizer.json): a config of megabytes is not a config.
MAX_CONFIG_BYTES = 1 << 20
MAX_INDEX_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20
MAX_TOKENIZER_BYTES = 256 << 20


def read_config(directory: Path, hub_id: str) -> dict:
    """config.json, validated (`validate_config`): types and bounds of every key the forward
    uses, with transformers' defaults for the keys it lacks."""
    if not directory.is_dir():
        raise MissingCheckpointError(
            f"No checkpoint directory at {str(directory)!r}. " + download_hint(directory, hub_id)
        )
    missing = [name for name in REQUIRED_FILES if not _has_weights_or(directory, name)]
    if missing:
        raise MissingCheckpointError(
            f"The checkpoint directory {str(directory)!r} lacks {', '.join(missing)}. "
            + download_hint(directory, hub_id)
        )
    path = directory / "config.json"
    config = read_json(path, MAX_CONFIG_BYTES)
    family = config.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(
            f"{path} has model_type={family!r}, which is not supported; "
            f"supported model types: {list(FAMILIES)}. Use a checkpoint of "
            f"one of these, e.g. `{DEFAULT_HUB_ID}`."
        )
    return validate_config(config, path)


def _refuse_constant(name: str):
    raise ValueError(f"the non-JSON constant {name}")


def read_json(path: Path, limit: int) -> dict:
    """A JSON object from `path` (at most `limit` bytes; NaN/Infinity refused), or a
    CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file.")
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(
            f"{path} has {size} bytes, more than the {limit} a file of its kind may have."
        )
    try:
        value = json.loads(path.read_bytes(), parse_constant=_refuse_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}).") from None
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path} must hold a JSON object ({{...}}), got a {type(value).__name__}."
        )
    return value


class _Key:
    """One config.json key: its kind ("int", "float", "bool", "activation", "int_or_null"),
    default (transformers') and bounds."""

    def __init__(self, kind: str, default, low=None, high=None):
        self.kind, self.default, self.low, self.high = kind, default, low, high

    def check(self, config: dict, name: str, path: Path):
        value = config.get(name, self.default)
        if self.kind == "int_or_null" and value is None:
            return None
        where = f"{path}: key {name!r}"
        if self.kind in ("int", "int_or_null"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise CheckpointError(f"{where} must be an integer, got {value!r}.")
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CheckpointError(f"{where} must be a number, got {value!r}.")
            value = float(value)
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise CheckpointError(f"{where} must be true or false, got {value!r}.")
            return value
        elif self.kind == "activation":
            from ._forward import ACTIVATIONS

            if not isinstance(value, str) or value not in ACTIVATIONS:
                raise CheckpointError(
                    f"{where} is {value!r}, which is not a supported activation; supported: "
                    f"{sorted(ACTIVATIONS)}."
                )
            return value
        if not (self.low <= value <= self.high):
            raise CheckpointError(
                f"{where} is {value!r}, outside [{self.low}, {self.high}] (the bounds this "
                "library accepts, far beyond every released model of the family)."
            )
        return value


_EPS = _Key("float", 1e-12, 1e-30, 1.0)
_ENCODER_KEYS = {
    "vocab_size": _Key("int", 30522, 1, MAX_VOCAB),
    "hidden_size": _Key("int", 768, 1, MAX_HIDDEN),
    "num_hidden_layers": _Key("int", 12, 1, MAX_LAYERS),
    "num_attention_heads": _Key("int", 12, 1, MAX_HEADS),
    "intermediate_size": _Key("int", 3072, 1, 4 * MAX_HIDDEN),
    "max_position_embeddings": _Key("int", 512, 1, MAX_POSITIONS),
    "type_vocab_size": _Key("int", 2, 1, MAX_TYPES),
    "layer_norm_eps": _EPS,
    "hidden_act": _Key("activation", "gelu"),
    "is_decoder": _Key("bool", False),
}
CONFIG_KEYS = {
    "bert": _ENCODER_KEYS,
    "albert": _ENCODER_KEYS
    | {
        "vocab_size": _Key("int", 30000, 1, MAX_VOCAB),
        "embedding_size": _Key("int", 128, 1, MAX_HIDDEN),
        "hidden_size": _Key("int", 4096, 1, MAX_HIDDEN),
        "num_attention_heads": _Key("int", 64, 1, MAX_HEADS),
        "intermediate_size": _Key("int", 16384, 1, 4 * MAX_HIDDEN),
        "num_hidden_groups": _Key("int", 1, 1, MAX_LAYERS),
        "inner_group_num": _Key("int", 1, 1, MAX_LAYERS),
        "hidden_act": _Key("activation", "gelu_new"),
    },
    "gpt2": {
        "vocab_size": _Key("int", 50257, 1, MAX_VOCAB),
        "n_positions": _Key("int", 1024, 1, MAX_POSITIONS),
        "n_embd": _Key("int", 768, 1, MAX_HIDDEN),
        "n_layer": _Key("int", 12, 1, MAX_LAYERS),
        "n_head": _Key("int", 12, 1, MAX_HEADS),
        "n_inner": _Key("int_or_null", None, 1, 4 * MAX_HIDDEN),
        "activation_function": _Key("activation", "gelu_new"),
        "layer_norm_epsilon": _Key("float", 1e-5, 1e-30, 1.0),
        "scale_attn_weights": _Key("bool", True),
        "scale_attn_by_inverse_layer_idx": _Key("bool", False),
        "add_cross_attention": _Key("bool", False),
    },
    "roberta": _ENCODER_KEYS
    | {
        "vocab_size": _Key("int", 50265, 1, MAX_VOCAB),
        # Positions start at pad_token_id + 1 (docs/pretrained.md, "Families").
        "pad_token_id": _Key("int", 1, 0, MAX_VOCAB),
    },
    "distilbert": {
        "vocab_size": _Key("int", 30522, 1, MAX_VOCAB),
        "max_position_embeddings": _Key("int", 512, 1, MAX_POSITIONS),
        "n_layers": _Key("int", 6, 1, MAX_LAYERS),
        "n_heads": _Key("int", 12, 1, MAX_HEADS),
        "dim": _Key("int", 768, 1, MAX_HIDDEN),
        "hidden_dim": _Key("int", 3072, 1, 4 * MAX_HIDDEN),
        "activation": _Key("activation", "gelu"),
    },
    "llama": {
        "vocab_size": _Key("int", 32000, 1, MAX_VOCAB),
        "hidden_size": _Key("int", 4096, 1, MAX_HIDDEN),
        "intermediate_size": _Key("int", 11008, 1, 4 * MAX_HIDDEN),
        "num_hidden_layers": _Key("int", 32, 1, MAX_LAYERS),
        "num_attention_heads": _Key("int", 32, 1, MAX_HEADS),
        # null: as many key/value heads as query heads; the head width hidden_size / heads.
        "num_key_value_heads": _Key("int_or_null", None, 1, MAX_HEADS),
        "head_dim": _Key("int_or_null", None, 1, MAX_HIDDEN),
        # LLaMA has no position table: the bound on the token count the model was trained for.
        "max_position_embeddings": _Key("int", 2048, 1, MAX_POSITIONS),
        "rms_norm_eps": _Key("float", 1e-6, 1e-30, 1.0),
        "hidden_act": _Key("activation", "silu"),
        "attention_bias": _Key("bool", False),
        "mlp_bias": _Key("bool", False),
        "pretraining_tp": _Key("int", 1, 1, MAX_HEADS),
    },
}

# The keys of the hidden size and the head count, where they are not BERT's.
_WIDTH_HEADS = {"gpt2": ("n_embd", "n_head"), "distilbert": ("dim", "n_heads")}
_ROPE_THETA_MAX = 1e12


def validate_config(config: dict, path: Path) -> dict:
    """`config` with every key of `CONFIG_KEYS[model_type]` checked (type, bounds) and filled
    with transformers' default where absent, and the keys' relations checked (heads divide
    the hidden size, groups divide the layers, RoBERTa's table has rows after pad_token_id,
    LLaMA's in `_validate_llama`). Nothing is allocated before this passes."""
    family = config["model_type"]
    checked = dict(config)
    for name, key in CONFIG_KEYS[family].items():
        checked[name] = key.check(config, name, path)
    width, heads = _WIDTH_HEADS.get(family, ("hidden_size", "num_attention_heads"))
    if checked[width] % checked[heads]:
        raise CheckpointError(
            f"{path}: key {heads!r} = {checked[heads]} does not divide key {width!r} = "
            f"{checked[width]}; every head has width {width}/{heads}."
        )
    if family == "albert":
        if checked["num_hidden_layers"] % checked["num_hidden_groups"]:
            raise CheckpointError(
                f"{path}: key 'num_hidden_layers' = {checked['num_hidden_layers']} is not a "
                f"multiple of key 'num_hidden_groups' = {checked['num_hidden_groups']}."
            )
        if checked["inner_group_num"] != 1:
            raise CheckpointError(
                f"{path}: key 'inner_group_num' = {checked['inner_group_num']} is not "
                "supported (ALBERT's released checkpoints use 1: one shared layer per group)."
            )
    if family == "roberta" and checked["max_position_embeddings"] <= checked["pad_token_id"] + 1:
        raise CheckpointError(
            f"{path}: key 'max_position_embeddings' = {checked['max_position_embeddings']} "
            f"leaves no position after key 'pad_token_id' = {checked['pad_token_id']}: "
            "RoBERTa's positions start at pad_token_id + 1."
        )
    if family == "llama":
        _validate_llama(checked, config, path)
    bert_like = ("bert", "albert", "roberta")
    if family in bert_like and config.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"{path}: key 'position_embedding_type' = "
            f"{config['position_embedding_type']!r} is not supported; only 'absolute' "
            "position embeddings (added once at the input) are."
        )
    if checked.get("is_decoder"):
        raise CheckpointError(
            f"{path}: key 'is_decoder' is true (a {family} decoder); only the bidirectional "
            "encoder is supported."
        )
    if checked.get("add_cross_attention"):
        raise CheckpointError(
            f"{path}: key 'add_cross_attention' is true; GPT-2 checkpoints with cross-attention "
            "are not supported."
        )
    return checked


def _validate_llama(checked: dict, config: dict, path: Path) -> None:
    """LLaMA's relations (key/value heads divide the heads, even head width, no biases, no
    tensor parallelism, default rotary positions) and its filled keys: num_key_value_heads,
    head_dim, and rope_theta (from rope_parameters, transformers 5, or the top level, 4.x)."""
    heads = checked["num_attention_heads"]
    if checked["num_key_value_heads"] is None:
        checked["num_key_value_heads"] = heads
    kv_heads = checked["num_key_value_heads"]
    if heads % kv_heads:
        raise CheckpointError(
            f"{path}: key 'num_attention_heads' = {heads} is not a multiple of key "
            f"'num_key_value_heads' = {kv_heads}; each key/value head serves a group of "
            "query heads."
        )
    width = checked["hidden_size"] // heads
    if checked["head_dim"] not in (None, width):
        raise CheckpointError(
            f"{path}: key 'head_dim' = {checked['head_dim']} is not hidden_size / "
            f"num_attention_heads = {width}; only heads of that width are supported."
        )
    checked["head_dim"] = width
    if width % 2:
        raise CheckpointError(
            f"{path}: the head width hidden_size / num_attention_heads = {width} must be even "
            "(rotary positions turn pairs of coordinates)."
        )
    for flag in ("attention_bias", "mlp_bias"):
        if checked[flag]:
            raise CheckpointError(
                f"{path}: key {flag!r} is true; only LLaMA's bias-free layers are supported."
            )
    if checked["pretraining_tp"] != 1:
        raise CheckpointError(
            f"{path}: key 'pretraining_tp' = {checked['pretraining_tp']} is not supported "
            "(only 1: the weights as one matrix each)."
        )
    rope = {}
    for key in ("rope_parameters", "rope_scaling"):
        value = config.get(key)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{path}: key {key!r} must be an object or null, got {value!r}.")
        if value:
            kind = value.get("rope_type", value.get("type", "default"))
            if kind != "default":
                raise CheckpointError(
                    f"{path}: key {key!r} has rope_type={kind!r} (rotary scaling), which is not "
                    "supported; only the default rotary positions are."
                )
            rope = rope or value
    key = "rope_parameters" if "rope_theta" in rope else "rope_theta"
    base = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise CheckpointError(f"{path}: key {key!r}: rope_theta must be a number, got {base!r}.")
    if not 1 < base <= _ROPE_THETA_MAX:
        raise CheckpointError(
            f"{path}: key {key!r}: rope_theta = {base!r} is outside (1, {_ROPE_THETA_MAX:g}] "
            "(rotary frequencies base^(-2i/k) need a base above 1)."
        )
    checked["rope_theta"] = float(base)


def _has_weights_or(directory: Path, name: str) -> bool:
    if name == "model.safetensors":
        return (directory / name).is_file() or (directory / f"{name}.index.json").is_file()
    return (directory / name).is_file()


# safetensors dtypes and their numpy little-endian forms (BF16: the upper half of float32).
_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_FLOATING = ("F64", "F32", "F16", "BF16")


class _Entry:
    """One tensor of a safetensors file as its header describes it."""

    def __init__(self, path: Path, name: str, dtype: str, shape: tuple, offset: int):
        self.path, self.name, self.dtype, self.shape, self.offset = (
            path,
            name,
            dtype,
            shape,
            offset,
        )

    def load(self) -> np.ndarray:
        """The tensor's data as float32 (refused unless floating point and finite)."""
        if self.dtype not in _FLOATING:
            raise CheckpointError(
                f"{self.path}: tensor {self.name!r} has dtype {self.dtype}; a weight must be "
                f"floating point ({', '.join(_FLOATING)})."
            )
        count = int(np.prod(self.shape, dtype=np.int64))
        raw = np.fromfile(self.path, dtype=_DTYPES[self.dtype], count=count, offset=self.offset)
        if self.dtype == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        value = raw.astype(np.float32).reshape(self.shape)
        if not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise CheckpointError(
                f"{self.path}: tensor {self.name!r} has {bad} non-finite value(s) (NaN or "
                "inf); a checkpoint with them gives no trustworthy states."
            )
        return value


def read_header(path: Path) -> dict[str, _Entry]:
    """The tensors a safetensors file declares, validated against the file's size before any
    data is read: an 8-byte little-endian header length, a JSON header of
    {name: {dtype, shape, data_offsets}}, then the data; each tensor's offsets inside the data,
    its byte count that of its dtype and shape."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(
                f"{path} has {size} bytes, too few for a safetensors file (truncated?)."
            )
        length = int.from_bytes(prefix, "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path}: the safetensors header claims {length} bytes but the file has {size} "
                "(truncated, or not a safetensors file)."
            )
        text = file.read(length)
    try:
        header = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path}: the safetensors header is not valid JSON ({error})."
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header must be a JSON object.")
    data_size = size - 8 - length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise CheckpointError(f"{where} needs dtype, shape and data_offsets, got {info!r}.")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise CheckpointError(f"{where} has dtype {dtype!r}, not one of {list(_DTYPES)}.")
        if not (
            isinstance(shape, list)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise CheckpointError(f"{where} has shape {shape!r}, not a list of sizes >= 0.")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise CheckpointError(
                f"{where} has data_offsets {offsets!r}, not [begin, end] within the file's "
                f"{data_size} bytes of data (truncated file?)."
            )
        expected = int(np.prod(shape, dtype=object)) * np.dtype(_DTYPES[dtype]).itemsize
        if offsets[1] - offsets[0] != expected:
            raise CheckpointError(
                f"{where}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but a "
                f"{dtype} tensor of shape {shape} has {expected}."
            )
        entries[name] = _Entry(path, name, dtype, tuple(shape), 8 + length + offsets[0])
    return entries


def weight_files(directory: Path) -> list[Path]:
    """model.safetensors, or the shards model.safetensors.index.json names: plain file names
    inside the checkpoint directory (no absolute paths, no `..`, no symlink out of it)."""
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    path = directory / "model.safetensors.index.json"
    index = read_json(path, MAX_INDEX_BYTES)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{path}: key 'weight_map' must be a non-empty object {{tensor: shard file}}, got "
            f"{type(weight_map).__name__}."
        )
    if not all(isinstance(name, str) for name in weight_map.values()):
        raise CheckpointError(f"{path}: key 'weight_map' must map tensors to file names.")
    root = directory.resolve()
    files = []
    for shard in sorted(set(weight_map.values())):
        tensor = next(t for t, name in weight_map.items() if name == shard)
        where = f"{path}: key 'weight_map' → {tensor!r}"
        parts = Path(shard).parts
        if not shard or Path(shard).is_absolute() or ".." in parts or "\\" in shard:
            raise CheckpointError(
                f"{where} names the shard {shard!r}, which is not a relative path inside the "
                "checkpoint directory; shards are read only from the directory itself."
            )
        file = directory / shard
        if not file.resolve().is_relative_to(root):
            raise CheckpointError(
                f"{where} names the shard {shard!r}, which resolves to {file.resolve()}, outside "
                f"the checkpoint directory {root} (a symlink?); copy the shard into it."
            )
        if not file.is_file():
            raise CheckpointError(f"{where} names the shard {shard!r}, which is not a file.")
        files.append(file)
    return files


def read_tensors(directory: Path) -> dict[str, _Entry]:
    """The tensors of model.safetensors (or of the shards its index names), described by their
    validated headers and loaded only when read (`_Entry.load`, float32), with the names of
    the bare model: task-head prefixes (`bert.`, `albert.`, `transformer.`) removed and the old
    LayerNorm names gamma/beta as weight/bias."""
    tensors: dict[str, _Entry] = {}
    for path in weight_files(directory):
        for name, entry in read_header(path).items():
            bare = _bare_name(name)
            if bare in tensors:
                raise CheckpointError(
                    f"{path}: tensor {name!r} is also in {tensors[bare].path} as "
                    f"{tensors[bare].name!r} (the same weight twice)."
                )
            tensors[bare] = entry
    return tensors


_PREFIXES = ("bert.", "albert.", "transformer.")


def _bare_name(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if name.endswith(".gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith(".beta"):
        name = name[: -len("beta")] + "bias"
    return name


class _Reader:
    """Tensors by name: each checked against the shape the config implies (from its header,
    before its data is read), then loaded as float32; errors name the file and the tensor."""

    def __init__(
        self,
        tensors: dict[str, _Entry],
        directory: Path,
        config_path: Path,
        key_names: dict[str, str] | None = None,
    ):
        self.tensors = tensors
        self.directory = directory
        self.config_path = config_path
        # Keys as the family's config.json spells them (DistilBERT's `dim` for `hidden_size`).
        self.key_names = key_names or {}

    def key(self, keys: str) -> str:
        return ", ".join(self.key_names.get(key, key) for key in keys.split(", "))

    def entry(self, name: str) -> _Entry:
        if name not in self.tensors:
            some = sorted(self.tensors)[:6]
            raise CheckpointError(
                f"{self.directory / 'model.safetensors'} has no tensor {name!r} (its tensors "
                f"begin {some}); is config.json's model_type right for these weights?"
            )
        return self.tensors[name]

    def check(self, name: str, shape: tuple, keys: str) -> None:
        entry = self.entry(name)
        if entry.shape != tuple(shape):
            raise CheckpointError(
                f"{entry.path}: tensor {entry.name!r} has shape {list(entry.shape)} but "
                f"{self.config_path} ({self.key(keys)}) implies {list(shape)}: the config does "
                "not belong to these weights."
            )

    def __call__(self, name: str, shape: tuple, keys: str) -> np.ndarray:
        self.check(name, shape, keys)
        return self.entry(name).load()

    def count(self, pattern: str) -> tuple[int, int]:
        """How many consecutive indices i = 0, 1, ... have a tensor starting with
        pattern.format(i), and the largest index present + 1 (they must agree)."""
        indices = set()
        head, tail = pattern.split("{}")
        for name in self.tensors:
            if name.startswith(head):
                number = name[len(head) :].split(".", 1)[0]
                if number.isdigit() and name[len(head) + len(number) :].startswith(tail):
                    indices.add(int(number))
        return len(indices), (max(indices) + 1 if indices else 0)


def _heads_rows(weight, bias, heads):
    """A Linear (out = H·k, D) weight and (H·k,) bias as (H, k, D) and (H, k)."""
    out, d = weight.shape
    return weight.reshape(heads, out // heads, d), bias.reshape(heads, out // heads)


def _heads_columns(weight, heads):
    """A Linear (D, H·k) output weight as (H, D, k): the columns of each head."""
    d, inner = weight.shape
    return weight.reshape(d, heads, inner // heads).transpose(1, 0, 2)


def _encoder_layer(read, prefix: str, names: dict[str, str], c: dict) -> dict[str, np.ndarray]:
    """One Post-LN encoder layer (BERT/ALBERT naming given by `names`)."""
    d, m, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    dd, mm = "hidden_size", "intermediate_size"
    layer = {}
    for short in ("q", "k", "v"):
        w, b = _heads_rows(
            read(f"{prefix}{names[short]}.weight", (d, d), dd),
            read(f"{prefix}{names[short]}.bias", (d,), dd),
            heads,
        )
        layer[f"w{short}"], layer[f"b{short}"] = w, b
    layer["wo"] = _heads_columns(read(f"{prefix}{names['o']}.weight", (d, d), dd), heads)
    layer["bo"] = read(f"{prefix}{names['o']}.bias", (d,), dd)
    for short in ("ln1", "ln2"):
        layer[f"{short}_g"] = read(f"{prefix}{names[short]}.weight", (d,), dd)
        layer[f"{short}_b"] = read(f"{prefix}{names[short]}.bias", (d,), dd)
    layer["w1"] = read(f"{prefix}{names['ff1']}.weight", (m, d), f"{mm}, {dd}")
    layer["b1"] = read(f"{prefix}{names['ff1']}.bias", (m,), mm)
    layer["w2"] = read(f"{prefix}{names['ff2']}.weight", (d, m), f"{dd}, {mm}")
    layer["b2"] = read(f"{prefix}{names['ff2']}.bias", (d,), dd)
    return layer


_BERT_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ln1": "attention.output.LayerNorm",
    "ff1": "intermediate.dense",
    "ff2": "output.dense",
    "ln2": "output.LayerNorm",
}

_ALBERT_NAMES = {
    "q": "attention.query",
    "k": "attention.key",
    "v": "attention.value",
    "o": "attention.dense",
    "ln1": "attention.LayerNorm",
    "ff1": "ffn",
    "ff2": "ffn_output",
    "ln2": "full_layer_layer_norm",
}


def _gpt2_layer(read, i: int, c: dict) -> dict[str, np.ndarray]:
    # GPT-2's Conv1D stores (in, out) weights, y = x W + b: transpose to the Linear layout.
    d, heads = c["n_embd"], c["n_head"]
    m = c["n_inner"] or 4 * d
    dd, mm = "n_embd", "n_inner (default 4·n_embd), n_embd"
    prefix = f"h.{i}."
    qkv_w = read(prefix + "attn.c_attn.weight", (d, 3 * d), dd).T  # (3D, D)
    qkv_b = read(prefix + "attn.c_attn.bias", (3 * d,), dd)
    layer = {}
    for j, short in enumerate(("q", "k", "v")):
        w, b = _heads_rows(qkv_w[j * d : (j + 1) * d], qkv_b[j * d : (j + 1) * d], heads)
        layer[f"w{short}"], layer[f"b{short}"] = w, b
    layer["wo"] = _heads_columns(read(prefix + "attn.c_proj.weight", (d, d), dd).T, heads)
    layer["bo"] = read(prefix + "attn.c_proj.bias", (d,), dd)
    for short in ("1", "2"):
        layer[f"ln{short}_g"] = read(f"{prefix}ln_{short}.weight", (d,), dd)
        layer[f"ln{short}_b"] = read(f"{prefix}ln_{short}.bias", (d,), dd)
    layer["w1"] = read(prefix + "mlp.c_fc.weight", (d, m), mm).T
    layer["b1"] = read(prefix + "mlp.c_fc.bias", (m,), mm)
    layer["w2"] = read(prefix + "mlp.c_proj.weight", (m, d), mm).T
    layer["b2"] = read(prefix + "mlp.c_proj.bias", (d,), dd)
    return layer


def _stack(layers: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([layer[name] for layer in layers]) for name in layers[0]}


def _check_count(read, pattern: str, expected: int, key: str) -> None:
    """The weights hold exactly `expected` stored layers (pattern.format(i), i < expected)."""
    present, top = read.count(pattern)
    if present != expected or top != expected:
        raise CheckpointError(
            f"{read.config_path}: key {read.key(key)!r} = {expected}, but "
            f"{read.directory / 'model.safetensors'} has tensors for {present} of them "
            f"({pattern.format('i')}, i up to {top - 1}): the config does not belong to these "
            "weights."
        )


def convert(config: dict, tensors: dict[str, _Entry], directory: Path, *, key_names=None) -> dict:
    """BERT's, ALBERT's or GPT-2's weights in the shared layout and the settings the forward
    needs (the other families: `_families.convert`, which reads some of them into BERT's
    layout through this function). `config` is validated (`validate_config`); every tensor's
    shape is checked against it from the headers (the embeddings and the layer count before
    any data is read). `key_names`: the config keys as a family read into BERT's layout spells
    them, for the messages; a `type_vocab_size` of None means no token-type embeddings
    (DistilBERT)."""
    c = config
    family = c["model_type"]
    read = _Reader(tensors, directory, directory / "config.json", key_names)
    if family == "gpt2":
        d, heads, num_layers = c["n_embd"], c["n_head"], c["n_layer"]
        shapes = {
            "wte.weight": ((c["vocab_size"], d), "vocab_size, n_embd"),
            "wpe.weight": ((c["n_positions"], d), "n_positions, n_embd"),
            "ln_f.weight": ((d,), "n_embd"),
            "ln_f.bias": ((d,), "n_embd"),
        }
        for name, (shape, keys) in shapes.items():
            read.check(name, shape, keys)
        _check_count(read, "h.{}.", num_layers, "n_layer")
        layers = _stack([_gpt2_layer(read, i, c) for i in range(num_layers)])
        embeddings = {
            short: read(name, *shapes[name])
            for short, name in (
                ("word", "wte.weight"),
                ("position", "wpe.weight"),
                ("final_g", "ln_f.weight"),
                ("final_b", "ln_f.bias"),
            )
        }
        settings = {
            "activation": c["activation_function"],
            "eps": c["layer_norm_epsilon"],
            "placement": "pre",
            "causal": True,
            "groups": num_layers,
            "scale_attention": c["scale_attn_weights"],
            "scale_by_layer": c["scale_attn_by_inverse_layer_idx"],
        }
    else:
        d, heads, num_layers = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
        e = c["embedding_size"] if family == "albert" else d
        width = "embedding_size" if family == "albert" else "hidden_size"
        shapes = {
            "embeddings.word_embeddings.weight": ((c["vocab_size"], e), f"vocab_size, {width}"),
            "embeddings.position_embeddings.weight": (
                (c["max_position_embeddings"], e),
                f"max_position_embeddings, {width}",
            ),
            "embeddings.LayerNorm.weight": ((e,), width),
            "embeddings.LayerNorm.bias": ((e,), width),
        }
        if c["type_vocab_size"] is not None:
            shapes["embeddings.token_type_embeddings.weight"] = (
                (c["type_vocab_size"], e),
                f"type_vocab_size, {width}",
            )
        if family == "albert":
            shapes["encoder.embedding_hidden_mapping_in.weight"] = (
                (d, e),
                "hidden_size, embedding_size",
            )
            shapes["encoder.embedding_hidden_mapping_in.bias"] = ((d,), "hidden_size")
        for name, (shape, keys) in shapes.items():
            read.check(name, shape, keys)
        if family == "bert":
            groups = num_layers
            _check_count(read, "encoder.layer.{}.", num_layers, "num_hidden_layers")
            layers = _stack(
                [
                    _encoder_layer(read, f"encoder.layer.{i}.", _BERT_NAMES, c)
                    for i in range(num_layers)
                ]
            )
        else:
            groups = c["num_hidden_groups"]
            _check_count(read, "encoder.albert_layer_groups.{}.", groups, "num_hidden_groups")
            layers = _stack(
                [
                    _encoder_layer(
                        read, f"encoder.albert_layer_groups.{g}.albert_layers.0.", _ALBERT_NAMES, c
                    )
                    for g in range(groups)
                ]
            )
        embeddings = {
            short: read(name, *shapes[name])
            for short, name in (
                ("word", "embeddings.word_embeddings.weight"),
                ("position", "embeddings.position_embeddings.weight"),
                ("type", "embeddings.token_type_embeddings.weight"),
                ("ln_g", "embeddings.LayerNorm.weight"),
                ("ln_b", "embeddings.LayerNorm.bias"),
            )
            if name in shapes
        }
        if family == "albert":
            for short, name in (
                ("proj_w", "encoder.embedding_hidden_mapping_in.weight"),
                ("proj_b", "encoder.embedding_hidden_mapping_in.bias"),
            ):
                embeddings[short] = read(name, *shapes[name])
        settings = {
            "activation": c["hidden_act"],
            "eps": c["layer_norm_eps"],
            "placement": "post",
            "causal": False,
            "groups": groups,
            "scale_attention": True,
            "scale_by_layer": False,
        }
    settings |= {"num_layers": int(num_layers), "num_heads": int(heads)}
    return {"layers": layers, "embeddings": embeddings, "settings": settings}


def read_tokenizer(directory: Path):
    """The `tokenizers.Tokenizer` of tokenizer.json, or None if the directory has none (a
    CheckpointError naming the file if it cannot be read)."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(
            f"{path} has {size} bytes, more than the {MAX_TOKENIZER_BYTES} a tokenizer may have."
        )
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as error:  # tokenizers raises its own exception type
        raise CheckpointError(
            f"{path} is not a tokenizers tokenizer.json ({str(error)[:200]}); remove it to "
            "pass token ids, or replace it with the model's own."
        ) from None
