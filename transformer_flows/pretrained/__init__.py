"""Pretrained transformers (BERT, ALBERT, GPT-2; RoBERTa, DistilBERT, LLaMA) read from local
Hugging Face-style checkpoints, run by our JAX forward and mapped onto the library's fields,
GLPR's map or the faithful fields of the exact layers (docs/pretrained.md). No torch: the
weights are read from the safetensors format with numpy (headers validated first), the text
with `tokenizers`."""

from ._approximations import (
    APPROXIMATIONS as APPROXIMATIONS,
    EXACT as EXACT,
    applicable as applicable,
    approximation_errors as approximation_errors,
    continuum_errors as continuum_errors,
    convergence_order as convergence_order,
    direction_errors as direction_errors,
    idealization_errors as idealization_errors,
    idealized as idealized,
    relative_errors as relative_errors,
    three_way_errors as three_way_errors,
)
from ._checkpoint import (
    DEFAULT_HUB_ID as DEFAULT_HUB_ID,
    FAMILIES as FAMILIES,
    CheckpointError as CheckpointError,
    MissingCheckpointError as MissingCheckpointError,
    download_hint as download_hint,
)
from ._fields import SequentialBlock as SequentialBlock
from ._model import (
    PretrainedTransformer as PretrainedTransformer,
    load_pretrained as load_pretrained,
)
