"""Random and trained transformers in their scaling limits (Bordelon, Chaudhry, Pehlevan,
arXiv:2405.15712): heads H, head dimension N, depth L (docs/limits.md)."""

from ._observables import (
    across_head_variance as across_head_variance,
    head_density as head_density,
    mean_offdiagonal_cosine as mean_offdiagonal_cosine,
    token_kernel as token_kernel,
)
from ._sde import BranchNoise as BranchNoise, NoDrift as NoDrift, branch_noise as branch_noise
from ._transformer import (
    AbstractRandomTransformer as AbstractRandomTransformer,
    PostLNTransformer as PostLNTransformer,
    PreLNTransformer as PreLNTransformer,
    TransformerWeights as TransformerWeights,
    random_transformer as random_transformer,
)
