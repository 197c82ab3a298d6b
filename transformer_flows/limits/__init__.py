"""Random and trained transformers in their scaling limits (Bordelon, Chaudhry, Pehlevan,
arXiv:2405.15712): docs/limits_training.md."""

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
from ._score_gradient import score_gradient as score_gradient
