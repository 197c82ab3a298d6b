"""Theory overlays: exact reductions, thresholds and rates from docs/mathematics.md §4.

- `equiangular_cosine`, `clustering_time`, `phase_boundary`: Thm 6.8 and the curve Γ_{∞,δ}
  (JAX + diffrax; jit/vmap-able in β, δ).
- `wendel_probability` (Thm 6.7), `critical_angle`, `large_beta_threshold`, `landscape_g`
  (App. B), `uniform_energy`, `growth_rate`, `selected_mode` (the uniform state): numpy/scipy,
  float64.
- `two_cluster_merge_time`: the exact merge time of two tight clusters on the circle (and its
  Laplace estimate), in log space for any β: numpy/scipy, float64.
- `long_context_cosine`, `long_context_limit`, `long_context_correction`, `critical_gamma`:
  one attention layer at β = γ log n on equiangular tokens (Chen–Lin–Polyanskiy–Rigollet,
  arXiv:2510.05554): numpy/scipy, float64.

`model` is "SA" (softmax attention) or "USA" (unnormalised attention).
"""

from ._equiangular import (
    clustering_time as clustering_time,
    equiangular_cosine as equiangular_cosine,
    equiangular_gap as equiangular_gap,
    phase_boundary as phase_boundary,
)
from ._hemisphere import wendel_probability as wendel_probability
from ._landscape import (
    critical_angle as critical_angle,
    landscape_g as landscape_g,
    large_beta_threshold as large_beta_threshold,
)
from ._long_context import (
    critical_gamma as critical_gamma,
    long_context_correction as long_context_correction,
    long_context_cosine as long_context_cosine,
    long_context_limit as long_context_limit,
)
from ._lost_in_middle import (
    retrieval_modes as retrieval_modes,
    retrieval_profile as retrieval_profile,
    retrieval_t_crit as retrieval_t_crit,
)
from ._merge import two_cluster_merge_time as two_cluster_merge_time
from ._noise import (
    noise_threshold as noise_threshold,
    stationary_order_parameter as stationary_order_parameter,
)
from ._placements import (
    equiangular_terms as equiangular_terms,
    gaussian_moments as gaussian_moments,
    placement_equiangular as placement_equiangular,
    pre_ln_limit_constant as pre_ln_limit_constant,
)
from ._selectivity import (
    poisson_intensity as poisson_intensity,
    sample_largest_weight as sample_largest_weight,
    selectivity_limit as selectivity_limit,
)
from ._uniform import (
    growth_rate as growth_rate,
    selected_mode as selected_mode,
    uniform_energy as uniform_energy,
)
