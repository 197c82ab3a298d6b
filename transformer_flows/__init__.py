"""transformer-flows: the dynamics of self-attention as interacting particles on the sphere."""

import importlib.metadata

from . import limits as limits, theory as theory
from ._attention import (
    AbstractAttentionMethod as AbstractAttentionMethod,
    AttentionMask as AttentionMask,
    AutoAttention as AutoAttention,
    BlockwiseAttention as BlockwiseAttention,
    DenseAttention as DenseAttention,
    FusedAttention as FusedAttention,
    attend as attend,
    attention_weights as attention_weights,
)
from ._attention_kernel import use_attention_kernel as use_attention_kernel
from ._attention_vjp import AnalyticVJPAttention as AnalyticVJPAttention
from ._compilation_cache import (
    default_cache_dir as default_cache_dir,
    enable_compilation_cache as enable_compilation_cache,
)
from ._energy import (
    energy as energy,
    modified_metric_energy as modified_metric_energy,
    torus_energy as torus_energy,
)
from ._ensembles import (
    ginibre as ginibre,
    ginibre_query_key as ginibre_query_key,
    goe_query_key as goe_query_key,
    random_weights as random_weights,
    wishart as wishart,
)
from ._events import (
    LevelCrossing as LevelCrossing,
    all_clustered as all_clustered,
    min_cosine as min_cosine,
    reaches as reaches,
)
from ._field._base import (
    AbstractAngleField as AbstractAngleField,
    AbstractEuclideanField as AbstractEuclideanField,
    AbstractSphereField as AbstractSphereField,
)
from ._field._feed_forward import (
    FeedForward as FeedForward,
    TransformerBlock as TransformerBlock,
)
from ._field._gated_feed_forward import GatedFeedForward as GatedFeedForward
from ._field._hardmax import HardmaxAttention as HardmaxAttention
from ._field._kuramoto import Kuramoto as Kuramoto
from ._field._layer_norm import LayerNorm as LayerNorm, PostLN as PostLN
from ._field._placements import (
    NGPT as NGPT,
    MixLN as MixLN,
    NoNorm as NoNorm,
    PeriLN as PeriLN,
    PreLN as PreLN,
)
from ._field._rms_norm import PreRMSNorm as PreRMSNorm
from ._field._rotary import RotarySelfAttention as RotarySelfAttention, apply_rotary as apply_rotary
from ._field._self_attention import (
    AbstractAttentionField as AbstractAttentionField,
    SelfAttention as SelfAttention,
    UnnormalizedSelfAttention as UnnormalizedSelfAttention,
)
from ._field._sinkhorn import SinkhornAttention as SinkhornAttention, sinkhorn as sinkhorn
from ._field_models import (
    AbstractFieldModel as AbstractFieldModel,
    LowRank as LowRank,
    LowRankAttention as LowRankAttention,
    as_field as as_field,
)
from ._fit import (
    FitInterrupted as FitInterrupted,
    FitResult as FitResult,
    FlowOptions as FlowOptions,
    batch_loss as batch_loss,
    evaluate as evaluate,
    fit as fit,
    load_checkpoint as load_checkpoint,
    make_step as make_step,
    project_beta as project_beta,
    save_checkpoint as save_checkpoint,
    trainable_spec as trainable_spec,
)
from ._hidden_statistics import (
    centred_cosine as centred_cosine,
    cluster_count as cluster_count,
    cosine_histogram as cosine_histogram,
    direction_energy as direction_energy,
    effective_rank as effective_rank,
    hidden_state_statistics as hidden_state_statistics,
    histogram_edges as histogram_edges,
    pairwise_cosine as pairwise_cosine,
)
from ._initial import (
    orthonormal_tokens as orthonormal_tokens,
    sample_hemisphere as sample_hemisphere,
    sample_sphere as sample_sphere,
    uniform_angles as uniform_angles,
)
from ._lipschitz import local_lipschitz as local_lipschitz
from ._losses import (
    AbstractTask as AbstractTask,
    CapMixture as CapMixture,
    LabeledInputs as LabeledInputs,
    LabeledTargets as LabeledTargets,
    TargetMeasure as TargetMeasure,
    TargetPartition as TargetPartition,
    adjusted_rand_index as adjusted_rand_index,
    nearest_target_accuracy as nearest_target_accuracy,
    sphere_mmd2 as sphere_mmd2,
)
from ._mean_field import (
    MeanFieldCircle as MeanFieldCircle,
    MeanFieldSolution as MeanFieldSolution,
    solve_mean_field as solve_mean_field,
)
from ._noise import (
    AbstractNoise as AbstractNoise,
    CommonNoise as CommonNoise,
    IndependentNoise as IndependentNoise,
    NoiseSum as NoiseSum,
)
from ._observables import (
    cluster_labels as cluster_labels,
    cluster_sizes as cluster_sizes,
    clustered_fraction as clustered_fraction,
    count_clusters as count_clusters,
    first_crossing_time as first_crossing_time,
    gram as gram,
    inner_product_histogram as inner_product_histogram,
    mean_cosine as mean_cosine,
    mean_radius as mean_radius,
    min_projection as min_projection,
    order_parameter as order_parameter,
)
from ._reduction import (
    ReducedTrajectory as ReducedTrajectory,
    merge_particles as merge_particles,
    solve_reduced as solve_reduced,
)
from ._sharding import (
    TokenSharded as TokenSharded,
    device_mesh as device_mesh,
    shard_tokens as shard_tokens,
    sharded_map as sharded_map,
)
from ._solve import RESULTS as RESULTS, Trajectory as Trajectory, solve as solve
from ._solve_batch import BatchTrajectory as BatchTrajectory, solve_batch as solve_batch
from ._solver._fixed_step import (
    RK4 as RK4,
    AbstractFixedStepSolver as AbstractFixedStepSolver,
    GeodesicEuler as GeodesicEuler,
    NormalizedEuler as NormalizedEuler,
    ResidualLayers as ResidualLayers,
)
from ._solver._renormalized import Renormalized as Renormalized
from ._span import (
    reduce_to_span as reduce_to_span,
    solve_in_span as solve_in_span,
    span_basis as span_basis,
)
from ._sphere import (
    angles_to_points as angles_to_points,
    exp_map as exp_map,
    normalize as normalize,
    points_to_angles as points_to_angles,
    project_tangent as project_tangent,
    sphere_drift as sphere_drift,
)
from ._stored_adjoint import StoredAdjoint as StoredAdjoint

__version__ = importlib.metadata.version("transformer-flows")

# The experiment layer (configs, datasets: pydantic, xarray, yaml, h5netcdf) and the checkpoint
# reader (tokenizers) load on first use, `tf.experiment` or `tf.pretrained`, so that
# a script that only solves does not pay for them (`import transformer_flows` took ~4 s of CPU
# and 280 MB with them).
_LAZY_SUBPACKAGES = ("experiment", "pretrained")


def __getattr__(name: str):
    if name in _LAZY_SUBPACKAGES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))
