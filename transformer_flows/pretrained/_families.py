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
"""

from pathlib import Path

import numpy as np

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


def _strip(tensors: dict, prefix: str) -> dict:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in tensors.items()}


def _config_error(directory: Path, message: str) -> ValueError:
    return ValueError(f"{directory / 'config.json'}: {message}")


def convert_roberta(config: dict, tensors: dict, directory: Path) -> dict:
    from ._checkpoint import convert

    pad = config.get("pad_token_id", 1)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise _config_error(directory, f"pad_token_id={pad!r} must be an integer >= 0.")
    converted = convert(config | {"model_type": "bert"}, _strip(tensors, "roberta."), directory)
    table = converted["embeddings"]["position"]
    if table.shape[0] <= pad + 1:
        raise _config_error(
            directory,
            f"the position table has {table.shape[0]} rows, but RoBERTa's positions start at "
            f"pad_token_id + 1 = {pad + 1}.",
        )
    converted["embeddings"]["position"] = table[pad + 1 :]
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
    from ._checkpoint import convert

    renamed = {_distilbert_name(k): v for k, v in _strip(tensors, "distilbert.").items()}
    word = renamed.get("embeddings.word_embeddings.weight")
    # BERT's layout with a zero token-type embedding (adds nothing), removed again below.
    if word is not None:
        renamed["embeddings.token_type_embeddings.weight"] = np.zeros(
            (1, word.shape[1]), np.float32
        )
    bert_config = {"model_type": "bert", "layer_norm_eps": 1e-12}  # DistilBERT's fixed ε
    for ours, theirs in (
        ("num_attention_heads", "n_heads"),
        ("num_hidden_layers", "n_layers"),
        ("hidden_act", "activation"),
    ):
        if theirs not in config:
            raise _config_error(directory, f"lacks {theirs!r}, which a DistilBERT needs.")
        bert_config[ours] = config[theirs]
    converted = convert(bert_config, renamed, directory)
    del converted["embeddings"]["type"]
    return converted


def _positive_int(config: dict, name: str, directory: Path, default=None) -> int:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _config_error(directory, f"{name}={value!r} must be an integer >= 1.")
    return value


def _rope_base(config: dict, directory: Path) -> float:
    """rope_theta from `rope_parameters` (transformers 5) or the top level (4.x); only the
    default rotary type (no scaling) is supported."""
    parameters = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    kind = parameters.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise _config_error(
            directory,
            f"rope_type={kind!r} (rotary scaling) is not supported; only the default rotary "
            "positions are.",
        )
    base = parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise _config_error(directory, f"rope_theta={base!r} must be a number > 1.")
    return float(base)


def convert_llama(config: dict, tensors: dict, directory: Path) -> dict:
    from ._checkpoint import _Reader

    read = _Reader(_strip(tensors, "model."), directory)
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag, False):
            raise _config_error(directory, f"{flag}=true is not supported (LLaMA has no biases).")
    if config.get("pretraining_tp", 1) != 1:
        raise _config_error(directory, "pretraining_tp != 1 is not supported.")
    heads = _positive_int(config, "num_attention_heads", directory)
    kv_heads = _positive_int(config, "num_key_value_heads", directory, heads)
    num_layers = _positive_int(config, "num_hidden_layers", directory)
    if heads % kv_heads:
        raise _config_error(
            directory,
            f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}.",
        )
    layers = []
    for i in range(num_layers):
        prefix = f"layers.{i}."
        q = read(prefix + "self_attn.q_proj.weight")
        k = read(prefix + "self_attn.k_proj.weight")
        v = read(prefix + "self_attn.v_proj.weight")
        o = read(prefix + "self_attn.o_proj.weight")
        d = q.shape[1]
        width = q.shape[0] // heads
        if q.shape != (heads * width, d) or k.shape != (kv_heads * width, d) or k.shape != v.shape:
            raise ValueError(
                f"{directory / 'model.safetensors'}: {prefix}self_attn q/k/v_proj shapes "
                f"{q.shape}, {k.shape}, {v.shape} do not fit {heads} query heads and {kv_heads} "
                "key/value heads of one width."
            )
        layers.append(
            {
                "wq": q.reshape(heads, width, d),
                "wk": k.reshape(kv_heads, width, d),
                "wv": v.reshape(kv_heads, width, d),
                "wo": o.reshape(d, heads, width).transpose(1, 0, 2),
                "ln1_g": read(prefix + "input_layernorm.weight"),
                "ln2_g": read(prefix + "post_attention_layernorm.weight"),
                "w_gate": read(prefix + "mlp.gate_proj.weight"),
                "w_up": read(prefix + "mlp.up_proj.weight"),
                "w_down": read(prefix + "mlp.down_proj.weight"),
            }
        )
    stacked = {name: np.stack([layer[name] for layer in layers]) for name in layers[0]}
    if stacked["wq"].shape[2] % 2:
        raise _config_error(
            directory, f"the head width {stacked['wq'].shape[2]} must be even (rotary pairs)."
        )
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise _config_error(directory, f"rms_norm_eps={eps!r} must be a number >= 0.")
    settings = {
        "activation": config.get("hidden_act", "silu"),
        "eps": float(eps),
        "placement": "pre",
        "causal": True,
        "groups": num_layers,
        "scale_attention": True,
        "scale_by_layer": False,
        "rope_theta": _rope_base(config, directory),
        "num_kv_heads": kv_heads,
        "max_positions": _positive_int(config, "max_position_embeddings", directory, 2048),
        "num_layers": num_layers,
        "num_heads": heads,
    }
    embeddings = {"word": read("embed_tokens.weight"), "final_g": read("norm.weight")}
    return {"layers": stacked, "embeddings": embeddings, "settings": settings}


CONVERTERS = {
    "roberta": convert_roberta,
    "distilbert": convert_distilbert,
    "llama": convert_llama,
}
