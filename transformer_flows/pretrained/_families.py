"""The families beyond BERT, ALBERT and GPT-2, read into the shared weight layout of
`_checkpoint` (docs/pretrained.md, "Families"):

- RoBERTa: BERT's layout and forward; its positions start at padding_idx + 1 (transformers
  gives token i the position padding_idx + 1 + i, and the padding token the position
  padding_idx), so the position table is stored from row padding_idx + 1 on.
- DistilBERT: renamed into BERT's layout (`transformer.layer.N.attention.q_lin` →
  `encoder.layer.N.attention.self.query`, `sa_layer_norm` → `attention.output.LayerNorm`,
  `ffn.lin1/lin2`, `output_layer_norm`); no token-type embeddings.
- LLaMA: its own layout (Pre-RMSNorm, rotary positions, grouped-query attention, SwiGLU):
  `wq` (L, H, k, D), `wk`, `wv` (L, H_kv, k, D), `wo` (L, H, D, k), `ln1_g`, `ln2_g` (L, D) the
  RMSNorm gains before attention and before the MLP, `w_gate`, `w_up` (L, m, D), `w_down`
  (L, D, m); embeddings `word` (V, D) and `final_g` (D,) (the final RMSNorm). No biases.

Each converter gets a config that `_checkpoint.validate_config` has checked (types, bounds and
relations of the family's `CONFIG_KEYS`) and the lazy tensors of `_checkpoint.read_tensors`;
every tensor's shape is checked against the config (`_Reader.check`) before its data is read.
"""

from pathlib import Path

import numpy as np

from . import _checkpoint
from ._checkpoint import CheckpointError, _check_count, _Reader

# Families read into another's layout and run by its forward and map.
LAYOUT_FAMILY = {"roberta": "bert", "distilbert": "bert"}

_DISTILBERT_NAMES = {
    "attention.q_lin": "attention.self.query",
    "attention.k_lin": "attention.self.key",
    "attention.v_lin": "attention.self.value",
    "attention.out_lin": "attention.output.dense",
    "sa_layer_norm": "attention.output.LayerNorm",
    "ffn.lin1": "intermediate.dense",
    "ffn.lin2": "output.dense",
    "output_layer_norm": "output.LayerNorm",
}

# DistilBERT's config keys for BERT's (in the shape-check messages).
_DISTILBERT_KEYS = {
    "hidden_size": "dim",
    "intermediate_size": "hidden_dim",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
}


def _renamed(tensors: dict, rename) -> dict:
    """`tensors` under the names `rename` gives; two tensors of one name are refused."""
    renamed = {}
    for name, entry in tensors.items():
        new = rename(name)
        if new in renamed:
            other = renamed[new]
            raise CheckpointError(
                f"{entry.path}: tensor {entry.name!r} and tensor {other.name!r} (in "
                f"{other.path}) are the same weight {new!r} twice."
            )
        renamed[new] = entry
    return renamed


def _strip(tensors: dict, prefix: str) -> dict:
    return _renamed(tensors, lambda k: k[len(prefix) :] if k.startswith(prefix) else k)


def convert_roberta(config: dict, tensors: dict, directory: Path) -> dict:
    """BERT's conversion; the position table from row pad_token_id + 1 on (validate_config
    checked that it has rows there)."""
    converted = _checkpoint.convert(
        config | {"model_type": "bert"}, _strip(tensors, "roberta."), directory
    )
    pad = config["pad_token_id"]
    converted["embeddings"]["position"] = converted["embeddings"]["position"][pad + 1 :]
    return converted


def _distilbert_name(name: str) -> str:
    name = name[len("transformer.") :] if name.startswith("transformer.") else name
    if not name.startswith("layer."):
        return name
    _, number, rest = name.split(".", 2)
    for old, new in _DISTILBERT_NAMES.items():
        if rest.startswith(old + "."):
            rest = new + rest[len(old) :]
            break
    return f"encoder.layer.{number}.{rest}"


def convert_distilbert(config: dict, tensors: dict, directory: Path) -> dict:
    """Renamed into BERT's layout and converted as BERT with DistilBERT's keys, its fixed
    LayerNorm ε = 1e-12 and no token-type embeddings."""
    renamed = _renamed(_strip(tensors, "distilbert."), _distilbert_name)
    bert_config = {
        "model_type": "bert",
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_position_embeddings"],
        "type_vocab_size": None,
        "layer_norm_eps": 1e-12,
        "hidden_act": config["activation"],
    } | {ours: config[theirs] for ours, theirs in _DISTILBERT_KEYS.items()}
    return _checkpoint.convert(bert_config, renamed, directory, key_names=_DISTILBERT_KEYS)


def convert_llama(config: dict, tensors: dict, directory: Path) -> dict:
    """LLaMA's layout (module docstring); every tensor's shape checked against the config
    before any data is read (the embeddings and the layer count first)."""
    c = config
    read = _Reader(_strip(tensors, "model."), directory, directory / "config.json")
    d, m, num_layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv_heads, width = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    dd = "hidden_size"
    q_rows, kv_rows = "num_attention_heads × head_dim", "num_key_value_heads × head_dim"
    embedding_shapes = {
        "embed_tokens.weight": ((c["vocab_size"], d), f"vocab_size, {dd}"),
        "norm.weight": ((d,), dd),
    }
    for name, (shape, keys) in embedding_shapes.items():
        read.check(name, shape, keys)
    _check_count(read, "layers.{}.", num_layers, "num_hidden_layers")
    layer_shapes = {
        "self_attn.q_proj.weight": ((heads * width, d), f"{q_rows}, {dd}"),
        "self_attn.k_proj.weight": ((kv_heads * width, d), f"{kv_rows}, {dd}"),
        "self_attn.v_proj.weight": ((kv_heads * width, d), f"{kv_rows}, {dd}"),
        "self_attn.o_proj.weight": ((d, heads * width), f"{dd}, {q_rows}"),
        "input_layernorm.weight": ((d,), dd),
        "post_attention_layernorm.weight": ((d,), dd),
        "mlp.gate_proj.weight": ((m, d), f"intermediate_size, {dd}"),
        "mlp.up_proj.weight": ((m, d), f"intermediate_size, {dd}"),
        "mlp.down_proj.weight": ((d, m), f"{dd}, intermediate_size"),
    }
    for i in range(num_layers):
        for name, (shape, keys) in layer_shapes.items():
            read.check(f"layers.{i}.{name}", shape, keys)
    layers = []
    for i in range(num_layers):
        w = {name: read(f"layers.{i}.{name}", *spec) for name, spec in layer_shapes.items()}
        layers.append(
            {
                "wq": w["self_attn.q_proj.weight"].reshape(heads, width, d),
                "wk": w["self_attn.k_proj.weight"].reshape(kv_heads, width, d),
                "wv": w["self_attn.v_proj.weight"].reshape(kv_heads, width, d),
                "wo": w["self_attn.o_proj.weight"].reshape(d, heads, width).transpose(1, 0, 2),
                "ln1_g": w["input_layernorm.weight"],
                "ln2_g": w["post_attention_layernorm.weight"],
                "w_gate": w["mlp.gate_proj.weight"],
                "w_up": w["mlp.up_proj.weight"],
                "w_down": w["mlp.down_proj.weight"],
            }
        )
    stacked = {name: np.stack([layer[name] for layer in layers]) for name in layers[0]}
    settings = {
        "activation": c["hidden_act"],
        "eps": c["rms_norm_eps"],
        "placement": "pre",
        "causal": True,
        "groups": num_layers,
        "scale_attention": True,
        "scale_by_layer": False,
        "rope_theta": c["rope_theta"],
        "num_kv_heads": kv_heads,
        "max_positions": c["max_position_embeddings"],
        "num_layers": num_layers,
        "num_heads": heads,
    }
    embeddings = {
        short: read(name, *embedding_shapes[name])
        for short, name in (("word", "embed_tokens.weight"), ("final_g", "norm.weight"))
    }
    return {"layers": stacked, "embeddings": embeddings, "settings": settings}


CONVERTERS = {
    "roberta": convert_roberta,
    "distilbert": convert_distilbert,
    "llama": convert_llama,
}


def convert(config: dict, tensors: dict, directory: Path) -> dict:
    """Any family's weights in the shared layout and the settings the forward needs:
    RoBERTa, DistilBERT and LLaMA here, BERT, ALBERT and GPT-2 in `_checkpoint.convert`."""
    family = config["model_type"]
    if family in CONVERTERS:
        return CONVERTERS[family](config, tensors, directory)
    return _checkpoint.convert(config, tensors, directory)
