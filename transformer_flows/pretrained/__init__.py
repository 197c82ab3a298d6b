"""Pretrained transformers (BERT, ALBERT, GPT-2) read from local Hugging Face-style checkpoints,
run by our JAX forward and mapped onto the library's fields (docs/pretrained.md). No torch: the
weights are read with `safetensors`, the text with `tokenizers`."""

from ._checkpoint import (
    DEFAULT_HUB_ID as DEFAULT_HUB_ID,
    FAMILIES as FAMILIES,
    MissingCheckpointError as MissingCheckpointError,
    download_hint as download_hint,
)
from ._model import (
    PretrainedTransformer as PretrainedTransformer,
    load_pretrained as load_pretrained,
)
