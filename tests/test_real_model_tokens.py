"""Tokens as the text has them, on the real all-MiniLM-L6-v2 (tests/pretrained_models.py,
`minilm`): its tokenizer.json pads to a fixed 128 and truncates there; `tokenize` must give
the text's own tokens (as transformers' tokenizer without padding or truncation), refuse a text
beyond the 512 positions unless asked to cut, and a padded batch with its mask must give each
text's hidden states. Skips when the MiniLM package is not installed."""

import os

import numpy as np
import pytest
from pretrained_models import minilm, minilm_dir  # noqa: F401  (session fixtures)

SHORT = "The quick brown fox jumps over the lazy dog."
MEDIUM = (
    "Transformers move their tokens on a sphere; trained on text, the tokens of a sentence tend "
    "to gather into a few groups as the layers go by, which is what the theory of clustering in "
    "self-attention dynamics describes, with Mr. O'Neil's café-au-lait and 3.14159 as tokens."
)
PARAGRAPH = " ".join([MEDIUM] * 4)  # 282 tokens
TEXTS = (SHORT, MEDIUM, PARAGRAPH)


@pytest.fixture(scope="module")
def reference_tokenizer(minilm_dir):  # noqa: F811
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


def test_tokens_are_transformers_tokens_unpadded_and_uncut(minilm, reference_tokenizer):  # noqa: F811
    counts = []
    for text in TEXTS:
        ids = minilm.tokenize(text)
        expected = reference_tokenizer(text, padding=False, truncation=False)["input_ids"]
        np.testing.assert_array_equal(ids, expected)
        assert ids.dtype == np.int32 and ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
        assert 0 not in ids  # no [PAD]
        counts.append(ids.shape[0])
    assert counts[0] >= 10 and 128 < counts[-1] <= 300, counts  # past the shipped 128 cut


def test_a_text_beyond_the_positions_is_refused_or_cut_when_asked(minilm, reference_tokenizer):  # noqa: F811
    text = " ".join([MEDIUM] * 10)
    full = len(reference_tokenizer(text, truncation=False)["input_ids"])
    assert full > 512
    with pytest.raises(ValueError, match=f"has {full} tokens but the model has 512 position"):
        minilm.tokenize(text)
    with pytest.raises(ValueError, match=r"texts\[1\]` has .* `truncate=True`"):
        minilm.tokenize_batch([SHORT, text])
    with pytest.warns(UserWarning, match=f"truncated from {full} to 512 tokens"):
        cut = minilm.tokenize(text, truncate=True)
    expected = reference_tokenizer(text, truncation=True, max_length=512)["input_ids"]
    np.testing.assert_array_equal(cut, expected)  # the first 510 word pieces, then [SEP]


def test_padded_batch_equals_each_text_alone(minilm):  # noqa: F811
    texts = [SHORT, MEDIUM]  # 12 and 72 tokens (the forward's cost grows with the width)
    ids, mask = minilm.tokenize_batch(texts)
    lengths = [minilm.tokenize(text).shape[0] for text in texts]
    assert ids.shape == (2, max(lengths)) and mask.sum(axis=1).tolist() == lengths
    batch = np.asarray(minilm.hidden_states(ids, mask=mask), np.float64)
    assert batch.shape == (2, 7, max(lengths), 384)
    alones = []
    for b, text in enumerate(texts):
        alone = np.asarray(minilm.hidden_states(minilm.tokenize(text)), np.float64)
        alones.append(alone)
        real = batch[b][:, : lengths[b]]
        errors = np.linalg.norm(real - alone, axis=(1, 2)) / np.linalg.norm(alone, axis=(1, 2))
        assert np.all(errors <= 1e-5), errors
    # Without the mask, the short text's tokens attend to the 60 pads and move far away.
    unmasked = np.asarray(minilm.hidden_states(ids[0]), np.float64)[:, : lengths[0]]
    short = alones[0][-1]
    assert np.linalg.norm(unmasked[-1] - short) > 0.1 * np.linalg.norm(short)
