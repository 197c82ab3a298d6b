"""Tiny random RoBERTa, DistilBERT and LLaMA checkpoints built offline with `transformers`
(torch CPU), for tests/test_families.py; the pattern of tests/pretrained_models.py (whose
perturbation and word-level tokenizer they reuse). Nothing is downloaded.

- `family_checkpoint(family, directory, seed=0, bfloat16=False)` writes config.json,
  model.safetensors and tokenizer.json. Weights: transformers' random initialisation (std
  `INIT_STD`) with random LayerNorm/RMSNorm gains (1 + 0.2·N(0, 1)) and shifts and biases, so
  that folding and every bias has a size. LLaMA: 2 layers, 4 query heads sharing 2 key/value
  heads (grouped-query attention), rms_norm_eps 1e-6. `bfloat16=True` saves the weights in
  bfloat16 (the dtype of released LLaMA checkpoints).
- `family_checkpoints(root)`: one directory per family ("roberta", "distilbert", "llama") and
  "llama_bf16" (tests/test_families.py builds them once, in a module fixture).
"""

import os
from pathlib import Path

from pretrained_models import (
    BIAS_STD,
    D_MODEL,
    GAIN_STD,
    INIT_STD,
    VOCAB_SIZE,
    _perturb,
    _tokenizer as word_tokenizer,
)

FAMILIES = ("roberta", "distilbert", "llama")


def _config(family: str):
    import transformers

    if family == "roberta":
        return transformers.RobertaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=D_MODEL,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=INIT_STD,
            layer_norm_eps=1e-12,
            type_vocab_size=1,
            # [PAD] of the word-level tokenizer: real tokens get positions 1, 2, ...
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=VOCAB_SIZE,
            dim=D_MODEL,
            hidden_dim=64,
            n_layers=2,
            n_heads=4,
            max_position_embeddings=64,
            initializer_range=INIT_STD,
            activation="gelu",
            pad_token_id=0,
        )
    if family == "llama":
        return transformers.LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=D_MODEL,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=INIT_STD,
            rms_norm_eps=1e-6,
            bos_token_id=0,
            eos_token_id=0,
        )
    raise ValueError(f"family {family!r} not among {FAMILIES}")


def _model_class(family: str):
    import transformers

    return {
        "roberta": transformers.RobertaModel,
        "distilbert": transformers.DistilBertModel,
        "llama": transformers.LlamaModel,
    }[family]


def _perturb_rms_gains(model, generator) -> None:
    import torch

    for name, param in model.named_parameters():
        if name.endswith("layernorm.weight") or name == "norm.weight":
            param.copy_(1 + GAIN_STD * torch.randn(param.shape, generator=generator))


def family_checkpoint(family: str, directory, *, seed: int = 0, bfloat16: bool = False) -> Path:
    """Build a tiny random `family` model and save it as a Hugging Face checkpoint directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    assert BIAS_STD > 0  # the perturbation below gives every bias a size
    directory = Path(directory)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _model_class(family)(_config(family)).eval()
    with torch.no_grad():
        _perturb(model, generator)
        if family == "llama":
            _perturb_rms_gains(model, generator)
    if bfloat16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(directory)
    word_tokenizer("gpt2" if family == "llama" else "bert").save(str(directory / "tokenizer.json"))
    return directory


def family_checkpoints(root: Path) -> dict[str, Path]:
    """One checkpoint per family under `root`, and "llama_bf16"."""
    paths = {family: family_checkpoint(family, root / family) for family in FAMILIES}
    paths["llama_bf16"] = family_checkpoint("llama", root / "llama_bf16", bfloat16=True)
    return paths
