"""The experiment layer: one declared config schema, open registries, trustworthy runs.

- `_schema`: pydantic models of the experiment kinds (simulation sweep, theory figure, fit);
  `load_config`, `config_from_dict`, `json_schema`.
- `_registry` / `_builtins`: one registry per vocabulary (FIELDS, SOLVERS, WEIGHTS,
  OBSERVABLES, FIGURES, TASKS); built-ins register like a user's entries.
- `_plan`: how a sweep is cut into programs and chunks; `_build`: where names become objects;
  `_program`: the compiled solve of a chunk (solve_batch's work queue, or a vmapped solve).
- `_store`: the output directory (lock, fingerprinted chunks, atomic writes).
  `RunDirectory` composes `_run_lock` (the flock on OUT/.lock), `_run_claim` (fingerprints,
  config.yaml's claim) and `_chunk_store` (chunks and chunk claims) over `_run_files`.
- `_run`: sweeps and theory datasets into a directory; `_fit_run`: fits; `_pretrained_run`:
  hidden-state statistics of a local checkpoint (figures in `_pretrained_plot`).
- `_summarize`, `_plot`: read datasets only (they import no simulator).
"""

from . import _builtins as _builtins  # registers the built-in entries
from ._build import build_field as build_field
from ._errors import SolveFailures as SolveFailures
from ._fit_run import (
    fit_summary as fit_summary,
    load_fit as load_fit,
    load_fitted_model as load_fitted_model,
    redraw_fit as redraw_fit,
    run_fit as run_fit,
)
from ._interrupt import FiguresInterrupted as FiguresInterrupted, RunInterrupted as RunInterrupted
from ._mean_field_run import run_mean_field as run_mean_field
from ._overrides import apply_overrides as apply_overrides, parse_override as parse_override
from ._plan import Plan as Plan, Shape as Shape, plan_sweep as plan_sweep
from ._pretrained_run import run_pretrained as run_pretrained
from ._registry import (
    FIELDS as FIELDS,
    FIGURES as FIGURES,
    INTERACTIONS as INTERACTIONS,
    OBSERVABLES as OBSERVABLES,
    PLACEMENTS as PLACEMENTS,
    SOLVERS as SOLVERS,
    TASKS as TASKS,
    WEIGHTS as WEIGHTS,
    FieldEntry as FieldEntry,
    FigureEntry as FigureEntry,
    InteractionEntry as InteractionEntry,
    ObservableContext as ObservableContext,
    ObservableEntry as ObservableEntry,
    PlacementEntry as PlacementEntry,
    Registry as Registry,
    SolverEntry as SolverEntry,
    TaskEntry as TaskEntry,
    WeightsEntry as WeightsEntry,
    allow_imports as allow_imports,
    import_object as import_object,
)
from ._run import (
    FAILED_INTEGER as FAILED_INTEGER,
    load_dataset as load_dataset,
    run_experiment as run_experiment,
    run_sweep as run_sweep,
    run_theory as run_theory,
)
from ._schedule import initialize_distributed as initialize_distributed
from ._schema import (
    ConfigError as ConfigError,
    FitConfig as FitConfig,
    MeanFieldConfig as MeanFieldConfig,
    PretrainedConfig as PretrainedConfig,
    SimulationConfig as SimulationConfig,
    TheoryConfig as TheoryConfig,
    config_from_dict as config_from_dict,
    import_fields as import_fields,
    json_schema as json_schema,
    load_config as load_config,
)
from ._store import (
    RunDirectory as RunDirectory,
    StoreError as StoreError,
    StoreWarning as StoreWarning,
    allow_nonempty_out as allow_nonempty_out,
    fingerprint as fingerprint,
)
from ._summarize import (
    crossing_interval as crossing_interval,
    level_crossing as level_crossing,
    summary as summary,
    summary_table as summary_table,
)


def draw_figures(dataset, config, out):
    """Draw the config's figures from a dataset into `out` (imports matplotlib)."""
    from ._plot import draw_figures as draw

    return draw(dataset, config, out)
