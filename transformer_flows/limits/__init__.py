"""Random and trained transformers in their scaling limits (Bordelon, Chaudhry, Pehlevan,
arXiv:2405.15712): heads H, head dimension N, depth L (docs/limits.md;
training, the DMFT and the score-gradient identity: docs/limits_training.md)."""

from ._dmft import (
    GatingMoments as GatingMoments,
    GatingNetwork as GatingNetwork,
    GatingProblem as GatingProblem,
    dmft_initial_moments as dmft_initial_moments,
    gating_attention as gating_attention,
    gating_dmft as gating_dmft,
    gating_moments as gating_moments,
    gating_output as gating_output,
    init_gating_network as init_gating_network,
    train_gating_network as train_gating_network,
    xor_gating_problem as xor_gating_problem,
)
from ._observables import (
    across_head_variance as across_head_variance,
    head_density as head_density,
    mean_offdiagonal_cosine as mean_offdiagonal_cosine,
    token_kernel as token_kernel,
)
from ._score_gradient import score_gradient as score_gradient
from ._sde import BranchNoise as BranchNoise, NoDrift as NoDrift, branch_noise as branch_noise
from ._training import (
    ReadoutModel as ReadoutModel,
    TrainResult as TrainResult,
    adam_learning_rate as adam_learning_rate,
    centred_output as centred_output,
    init_readout_model as init_readout_model,
    learning_rate_factors as learning_rate_factors,
    sgd_learning_rate as sgd_learning_rate,
    train_readout_model as train_readout_model,
)
from ._transformer import (
    AbstractRandomTransformer as AbstractRandomTransformer,
    PostLNTransformer as PostLNTransformer,
    PreLNTransformer as PreLNTransformer,
    TransformerWeights as TransformerWeights,
    random_transformer as random_transformer,
)
