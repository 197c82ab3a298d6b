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

from . import _families

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


def read_config(directory: Path, hub_id: str) -> dict:
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
    with open(directory / "config.json") as file:
        config = json.load(file)
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ValueError(
            f"{directory / 'config.json'} has model_type={family!r}, which is not supported; "
            f"supported model types: {list(FAMILIES)}. Use a checkpoint of "
            f"one of these, e.g. `{DEFAULT_HUB_ID}`."
        )
    return config


def _has_weights_or(directory: Path, name: str) -> bool:
    if name == "model.safetensors":
        return (directory / name).is_file() or (directory / f"{name}.index.json").is_file()
    return (directory / name).is_file()


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors (or of the shards its index names), as float32 numpy
    arrays, with the names of the bare model: task-head prefixes (`bert.`, `albert.`,
    `transformer.`) removed and the old LayerNorm names gamma/beta as weight/bias."""
    from ._safetensors import load_file  # safetensors.numpy, and bfloat16 as float32

    single = directory / "model.safetensors"
    if single.is_file():
        files = [single]
    else:
        with open(directory / "model.safetensors.index.json") as file:
            index = json.load(file)
        files = [directory / name for name in sorted(set(index["weight_map"].values()))]
    tensors = {}
    for path in files:
        try:
            loaded = load_file(path)
        except Exception as error:  # safetensors raises its own error types
            raise ValueError(
                f"Could not read {path} with safetensors.numpy ({error}). Checkpoints in "
                "bfloat16 need converting to float32 first (transformers: "
                "`model.float().save_pretrained(DIR)`)."
            ) from error
        for name, value in loaded.items():
            tensors[_bare_name(name)] = value
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
    """Tensors by name, float32, with a clear error naming a missing tensor."""

    def __init__(self, tensors: dict[str, np.ndarray], directory: Path):
        self.tensors = tensors
        self.directory = directory

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            some = sorted(self.tensors)[:6]
            raise ValueError(
                f"{self.directory / 'model.safetensors'} has no tensor {name!r} (its tensors "
                f"begin {some}); is config.json's model_type right for these weights?"
            )
        value = self.tensors[name]
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"Tensor {name!r} has dtype {value.dtype}, expected floating point.")
        return np.asarray(value, dtype=np.float32)


def _heads_rows(weight, bias, heads):
    """A Linear (out = H·k, D) weight and (H·k,) bias as (H, k, D) and (H, k)."""
    out, d = weight.shape
    return weight.reshape(heads, out // heads, d), bias.reshape(heads, out // heads)


def _heads_columns(weight, heads):
    """A Linear (D, H·k) output weight as (H, D, k): the columns of each head."""
    d, inner = weight.shape
    return weight.reshape(d, heads, inner // heads).transpose(1, 0, 2)


def _encoder_layer(read, prefix: str, names: dict[str, str], heads: int) -> dict[str, np.ndarray]:
    """One Post-LN encoder layer (BERT/ALBERT naming given by `names`)."""
    layer = {}
    for short in ("q", "k", "v"):
        w, b = _heads_rows(
            read(f"{prefix}{names[short]}.weight"), read(f"{prefix}{names[short]}.bias"), heads
        )
        layer[f"w{short}"], layer[f"b{short}"] = w, b
    layer["wo"] = _heads_columns(read(f"{prefix}{names['o']}.weight"), heads)
    layer["bo"] = read(f"{prefix}{names['o']}.bias")
    for short in ("ln1", "ln2"):
        layer[f"{short}_g"] = read(f"{prefix}{names[short]}.weight")
        layer[f"{short}_b"] = read(f"{prefix}{names[short]}.bias")
    for short in ("1", "2"):
        layer[f"w{short}"] = read(f"{prefix}{names['ff' + short]}.weight")
        layer[f"b{short}"] = read(f"{prefix}{names['ff' + short]}.bias")
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


def _gpt2_layer(read, i: int, heads: int) -> dict[str, np.ndarray]:
    # GPT-2's Conv1D stores (in, out) weights, y = x W + b: transpose to the Linear layout.
    prefix = f"h.{i}."
    qkv_w = read(prefix + "attn.c_attn.weight").T  # (3D, D)
    qkv_b = read(prefix + "attn.c_attn.bias")
    d = qkv_w.shape[1]
    layer = {}
    for j, short in enumerate(("q", "k", "v")):
        w, b = _heads_rows(qkv_w[j * d : (j + 1) * d], qkv_b[j * d : (j + 1) * d], heads)
        layer[f"w{short}"], layer[f"b{short}"] = w, b
    layer["wo"] = _heads_columns(read(prefix + "attn.c_proj.weight").T, heads)
    layer["bo"] = read(prefix + "attn.c_proj.bias")
    layer["ln1_g"], layer["ln1_b"] = read(prefix + "ln_1.weight"), read(prefix + "ln_1.bias")
    layer["ln2_g"], layer["ln2_b"] = read(prefix + "ln_2.weight"), read(prefix + "ln_2.bias")
    layer["w1"], layer["b1"] = read(prefix + "mlp.c_fc.weight").T, read(prefix + "mlp.c_fc.bias")
    layer["w2"] = read(prefix + "mlp.c_proj.weight").T
    layer["b2"] = read(prefix + "mlp.c_proj.bias")
    return layer


def _stack(layers: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([layer[name] for layer in layers]) for name in layers[0]}


def _config_value(config: dict, name: str, directory: Path, default=None):
    if name in config:
        return config[name]
    if default is not None:
        return default
    raise ValueError(f"{directory / 'config.json'} lacks {name!r}, which a checkpoint needs.")


def convert(config: dict, tensors: dict[str, np.ndarray], directory: Path) -> dict:
    """The family's weights in the shared layout and the settings the forward needs."""
    family = config["model_type"]
    if family in _families.CONVERTERS:  # RoBERTa, DistilBERT, LLaMA
        return _families.CONVERTERS[family](config, tensors, directory)
    read = _Reader(tensors, directory)

    def get(name, default=None):
        return _config_value(config, name, directory, default)

    if family == "gpt2":
        heads, num_layers = get("n_head"), get("n_layer")
        layers = _stack([_gpt2_layer(read, i, heads) for i in range(num_layers)])
        embeddings = {
            "word": read("wte.weight"),
            "position": read("wpe.weight"),
            "final_g": read("ln_f.weight"),
            "final_b": read("ln_f.bias"),
        }
        settings = {
            "activation": get("activation_function", "gelu_new"),
            "eps": float(get("layer_norm_epsilon", 1e-5)),
            "placement": "pre",
            "causal": True,
            "groups": num_layers,
            "scale_attention": bool(config.get("scale_attn_weights", True)),
            "scale_by_layer": bool(config.get("scale_attn_by_inverse_layer_idx", False)),
        }
        if config.get("add_cross_attention", False):
            raise ValueError("GPT-2 checkpoints with cross-attention are not supported.")
    else:
        heads, num_layers = get("num_attention_heads"), get("num_hidden_layers")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"{directory / 'config.json'}: position_embedding_type="
                f"{config['position_embedding_type']!r} is not supported; only 'absolute' "
                "position embeddings (added once at the input) are."
            )
        if config.get("is_decoder", False):
            raise ValueError(
                f"{directory / 'config.json'} is a {family} decoder (is_decoder=true); only "
                "the bidirectional encoder is supported."
            )
        embeddings = {
            "word": read("embeddings.word_embeddings.weight"),
            "position": read("embeddings.position_embeddings.weight"),
            "type": read("embeddings.token_type_embeddings.weight"),
            "ln_g": read("embeddings.LayerNorm.weight"),
            "ln_b": read("embeddings.LayerNorm.bias"),
        }
        if family == "bert":
            groups = num_layers
            layers = _stack(
                [
                    _encoder_layer(read, f"encoder.layer.{i}.", _BERT_NAMES, heads)
                    for i in range(num_layers)
                ]
            )
        else:
            groups = get("num_hidden_groups", 1)
            inner = get("inner_group_num", 1)
            if inner != 1:
                raise ValueError(
                    f"{directory / 'config.json'}: inner_group_num={inner} is not supported "
                    "(ALBERT's released checkpoints use 1: one shared layer per group)."
                )
            if num_layers % groups:
                raise ValueError(
                    f"{directory / 'config.json'}: num_hidden_layers={num_layers} is not a "
                    f"multiple of num_hidden_groups={groups}."
                )
            layers = _stack(
                [
                    _encoder_layer(
                        read,
                        f"encoder.albert_layer_groups.{g}.albert_layers.0.",
                        _ALBERT_NAMES,
                        heads,
                    )
                    for g in range(groups)
                ]
            )
            embeddings["proj_w"] = read("encoder.embedding_hidden_mapping_in.weight")
            embeddings["proj_b"] = read("encoder.embedding_hidden_mapping_in.bias")
        settings = {
            "activation": get("hidden_act", "gelu"),
            "eps": float(get("layer_norm_eps", 1e-12)),
            "placement": "post",
            "causal": False,
            "groups": groups,
            "scale_attention": True,
            "scale_by_layer": False,
        }
    d_model = layers["wo"].shape[2]
    if layers["wq"].shape[2] * heads != d_model:
        raise ValueError(
            f"{directory / 'config.json'}: {heads} heads of width {layers['wq'].shape[2]} do "
            f"not make the hidden size {d_model}; only attention width = hidden size is "
            "supported."
        )
    settings |= {"num_layers": int(num_layers), "num_heads": int(heads)}
    return {"layers": layers, "embeddings": embeddings, "settings": settings}


def read_tokenizer(directory: Path):
    """The `tokenizers.Tokenizer` of tokenizer.json, or None if the directory has none."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))
