"""Registries: one per vocabulary of the config schema (fields, solvers, weight ensembles,
observables, figures, fit tasks). A config names an entry; the entry declares what it needs.

Built-in entries are registered in `_builtins.py` through the same calls a user makes::

    from transformer_flows.experiment import FIELDS, FieldEntry
    FIELDS.register("Scaled", FieldEntry(ScaledAttention))

`model.field` also takes an import path `module:Class` (resolved by `FIELDS.resolve`).

Trust model (docs/security.md): a config may name code, but reading one never imports it.
Validation sees an import path as a name only (`FIELDS.lookup` returns None for it) unless it
runs inside `allow_imports()`, which `run_experiment` enters after everything else validated.
`TRANSFORMER_FLOWS_NO_IMPORTS=1` refuses import paths altogether (shared machines, services).
"""

import contextlib
import contextvars
import dataclasses
import importlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, TypeVar

import numpy as np

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Names → entries of one vocabulary. Lookup errors list the registered names."""

    def __init__(self, vocabulary: str):
        self.vocabulary = vocabulary
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, entry: Entry, *, replace: bool = False) -> Entry:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.vocabulary} name must be a non-empty string, got {name!r}.")
        if name in self._entries and not replace:
            raise ValueError(
                f"{self.vocabulary} {name!r} is registered already; pass replace=True to "
                "replace it."
            )
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> Entry:
        """Remove an entry (e.g. one a test or a session registered); returns it."""
        entry = self[name]
        del self._entries[name]
        return entry

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.vocabulary} {name!r}; registered: {self.names()}."
            ) from None


NO_IMPORTS_VARIABLE = "TRANSFORMER_FLOWS_NO_IMPORTS"
# `module.sub:Name`: dotted identifiers, one colon, one identifier.
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_IMPORTS_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "transformer_flows_imports_allowed", default=False
)


def imports_refused() -> bool:
    """Whether `TRANSFORMER_FLOWS_NO_IMPORTS` is set (to anything but '', '0', 'false', 'no')."""
    value = os.environ.get(NO_IMPORTS_VARIABLE, "").strip().lower()
    return value not in ("", "0", "false", "no")


def refuse_if_imports_refused(path: str, where: str = "model.field") -> None:
    if imports_refused():
        raise ValueError(
            f"{where}: {path!r} is an import path, and {NO_IMPORTS_VARIABLE} is set, so "
            "configs may not name code here. Fix: use a registered name "
            f"({FIELDS.names()}), or unset {NO_IMPORTS_VARIABLE} on a machine where the "
            "config's author is trusted."
        )


@contextlib.contextmanager
def allow_imports() -> Iterator[None]:
    """Within the block, validators may import the `module:Class` a config names (`run`,
    `fit` enter it after the config validated without imports)."""
    token = _IMPORTS_ALLOWED.set(True)
    try:
        yield
    finally:
        _IMPORTS_ALLOWED.reset(token)


def imports_allowed() -> bool:
    return _IMPORTS_ALLOWED.get()


def import_object(path: str) -> Any:
    """`"package.module:Name"` → the object (the module must be importable, e.g. on
    PYTHONPATH). Refused when `TRANSFORMER_FLOWS_NO_IMPORTS` is set."""
    refuse_if_imports_refused(path, "import path")
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"an import path looks like `module:Class`, got {path!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import module {module_name!r} of {path!r} ({err}); put its folder on "
            "PYTHONPATH or install it."
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}.") from None


# --- fields --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldEntry:
    """A vector field class usable from configs.

    - `cls`: an `AbstractSphereField` (state: points (n, d)) or `AbstractAngleField` (state:
      angles (n,), d = 2) subclass, built as `cls(beta=..., **params[, Q=, K=, V=])`.
    - `random_values`: whether random value matrices V may be drawn for it (USA is defined
      with V = I here, so its entry says False).
    - `rotation_invariant`: with identity weights the field commutes with orthogonal maps and
      keeps span{x_i(0)}, so sweeps with d > n solve in that span (exact, cost of d = n).
    - `theory_model`: the `model=` of `transformer_flows.theory` that describes it with
      identity weights ("SA", "USA"): figures and summaries draw Γ∞,δ and ℓ*(β) from it.
    - `beta_free`: the class takes no β (`HardmaxAttention`, the β → ∞ limit): built as
      `cls(**params[, Q=, K=, V=])`, its sweeps have no `sweep.beta` (their β coordinate is
      the single value +inf) and no observable that reads β.
    """

    cls: type
    random_values: bool = True
    rotation_invariant: bool = False
    theory_model: str | None = None
    description: str = ""
    # (parameter, registry): a parameter that takes a function, named in configs by an entry
    # of the registry (Kuramoto's `interaction` by INTERACTIONS).
    named: tuple[tuple[str, "Registry"], ...] = ()
    beta_free: bool = False

    def __post_init__(self):
        if self.beta_free and "beta" in self.parameters():
            raise ValueError(
                f"FieldEntry({self.cls.__name__}, beta_free=True): the class has a parameter "
                "`beta`; a β-free entry is for classes without one (drop beta_free)"
            )

    def build(self, beta, params: dict, **extra):
        """`cls(beta=beta, **params, **extra)` with the named parameters resolved; a
        β-free class is built without β (`beta` is then ignored)."""
        kwargs = {**self.resolve_params(params), **extra}
        if not self.beta_free:
            kwargs["beta"] = beta
        return self.cls(**kwargs)

    def resolve_params(self, params: dict) -> dict:
        """`params` with every named parameter's name replaced by its registered function."""
        resolved = dict(params)
        for name, registry in self.named:
            if name in resolved:
                if not isinstance(resolved[name], str):
                    raise ValueError(
                        f"params.{name}: give a registered name ({registry.names()}), got "
                        f"{resolved[name]!r}"
                    )
                resolved[name] = registry[resolved[name]].function
        return resolved

    @property
    def state(self) -> Literal["points", "angles"]:
        from .._field._base import AbstractAngleField

        return "angles" if issubclass(self.cls, AbstractAngleField) else "points"

    @property
    def euclidean(self) -> bool:
        """Its state is tokens in R^d, not on the sphere (`AbstractEuclideanField`, e.g.
        `HardmaxAttention`): observables then see the directions x_i/|x_i| (as after a
        Euclidean placement), and no placement wraps it."""
        from .._field._base import AbstractEuclideanField

        return issubclass(self.cls, AbstractEuclideanField)

    def parameters(self) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.cls) if f.init}

    @property
    def takes_weights(self) -> bool:
        return {"Q", "K", "V"} <= set(self.parameters())

    def is_static(self, name: str) -> bool:
        return bool(self.parameters()[name].metadata.get("static", False))


class FieldRegistry(Registry[FieldEntry]):
    def is_import_path(self, name: object) -> bool:
        """A `module:Class` string that is not a registered name."""
        return isinstance(name, str) and ":" in name and name not in self

    def lookup(self, name: str) -> FieldEntry | None:
        """The entry of a registered name; for an import path, its entry inside
        `allow_imports()` and None outside (reading a config never imports)."""
        if self.is_import_path(name) and not imports_allowed():
            return None
        return self.resolve(name)

    def theory_model(self, name: str) -> str | None:
        """The theory model of a registered field; None for anything else (never imports:
        `plot` and `summarize` read stored names only)."""
        return self[name].theory_model if name in self else None

    def resolve(self, name: str) -> FieldEntry:
        """A registered name, or an import path `module:Class` of a field class."""
        if isinstance(name, str) and ":" in name and name not in self:
            from .._field._base import AbstractAngleField, AbstractSphereField

            cls = import_object(name)
            if not (
                isinstance(cls, type) and issubclass(cls, (AbstractSphereField, AbstractAngleField))
            ):
                raise ValueError(
                    f"{name!r} is not a field class: subclass "
                    "transformer_flows.AbstractSphereField (points) or AbstractAngleField (angles)."
                )
            return FieldEntry(cls)
        return self[name]


# --- Kuramoto interactions -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InteractionEntry:
    """`function(u, beta)`: the interaction h of the generalised Kuramoto model (7.5),
    θ̇_i = ω_i + (K/n) Σ_j h(θ_j − θ_i, β), of a scalar phase difference u and β."""

    function: Callable
    description: str = ""


# --- solvers -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SolverEntry:
    """`make()` returns the diffrax solver; `adaptive` solvers take rtol/atol, the others a
    fixed step `solver.dt`; `points_only`: it steps points on a sphere (not angles);
    `stochastic`: an SDE solver of noisy sweeps (`model.noise`), which need one (a noisy
    sweep takes only these, an ODE sweep never)."""

    make: Callable[[], Any]
    adaptive: bool
    points_only: bool = False
    description: str = ""
    stochastic: bool = False
    # A points_only solver that also steps states in R^d (it calls the field's own
    # residual_layer): the only fixed-step kind a Euclidean field (HardmaxAttention) takes.
    euclidean: bool = False
    # One step per layer of a layered field: with model.layers, `solver.dt: null` means the
    # step t1/L of each swept depth L, and a given solver.dt must equal it.
    layered: bool = False


# --- weight ensembles ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """`draw(key, d, dtype) -> (Q, K, V)`, each (d, d) or None (the identity); None for the
    identity ensemble (no matrices at all, one program of its own). `random_values`: draws a
    V other than the identity.

    A parameterised ensemble declares `schema`, a pydantic model of its scalar parameters
    (defaults, ranges, descriptions): it is drawn as `draw(key, d, dtype, heads=H, layers=L,
    **parameters)` for one head of one layer (H, L: each swept model.heads, model.layers, or 1),
    returning Q, K of shape (k, d) and V (d, d); its parameters are fixed under
    `model.weights_params` or swept (vmapped, traced) under `sweep.params`. It runs in a
    program of its own. `check(d, heads, layers, t1)` refuses shapes it cannot draw
    (a ValueError naming the key)."""

    draw: Callable | None
    random_values: bool = False
    description: str = ""
    schema: type | None = None
    check: Callable | None = None

    @property
    def parameters(self) -> tuple[str, ...]:
        return () if self.schema is None else tuple(self.schema.model_fields)


# --- observables ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ObservableContext:
    """What an observable may read besides the state: β and the config's observable options."""

    beta: Any
    delta: float
    harmonic: int
    field: Any = None  # the attention field, for observables that declare `field=True`


@dataclasses.dataclass(frozen=True)
class ObservableEntry:
    """`function(x, context)` of points x (n, d) on the sphere, saved per save time.

    - `dtype`, `dims`: storage dtype and trailing dimension names (`positions`: particle,
      component);
    - `inner_products`: a function of the Gram matrix only (then solving in span{x_i(0)}
      needs no map back to R^d);
    - `d`: the only dimension where it is defined (None: any);
    - `per_shape`: its shape changes with n and d (then one n and one d per config).
    """

    function: Callable
    dtype: Any = np.float64
    dims: tuple[str, ...] = ()
    inner_products: bool = False
    d: int | None = None
    per_shape: bool = False
    long_name: str = ""
    radial: bool = False  # reads states in R^d as they are (else their directions x_i/|x_i|)
    # Reads `context.field` too (an attention field with H >= 2 heads: model.heads >= 2).
    field: bool = False
    # Reads β (`context.beta`, or the field's β): β-free fields (Hardmax) refuse it.
    reads_beta: bool = False


# --- figures -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FigureEntry:
    """`draw(dataset, config, out) -> list[Path]`; `experiment`: the kind it draws;
    `observables` it reads; `d`: the only dimension it can draw (None: any); `noise`: the
    `model.noise.kind` of the noisy sweeps it draws (None: any sweep); `axes`: the `model`
    keys it draws against, each of which must hold a list of at least two values (e.g.
    ("layers",): a curve against the depth)."""

    draw: Callable
    experiment: str = "simulation"
    observables: tuple[str, ...] = ()
    d: int | None = None
    description: str = ""
    noise: str | None = None
    axes: tuple[str, ...] = ()


# --- fit tasks -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """`schema`: a pydantic model of the task's keys (besides `kind`); `build(spec, d, seed)`
    returns an `AbstractTask`."""

    schema: type
    build: Callable
    description: str = ""


# --- normalisation placements --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlacementEntry:
    """Where the layer norm sits: `wrap(field, **params)` returns the field a sweep solves
    (None: the sphere field itself, Post-LN). `euclidean`: the state lives in R^d (observables
    then see the directions x_i/|x_i|, except `radial` ones); `parameters`: the keys allowed
    under `model.placement_params`."""

    wrap: Callable | None
    euclidean: bool = False
    parameters: tuple[str, ...] = ()
    description: str = ""


FIELDS = FieldRegistry("field")
SOLVERS: Registry[SolverEntry] = Registry("solver")
WEIGHTS: Registry[WeightsEntry] = Registry("weight ensemble")
OBSERVABLES: Registry[ObservableEntry] = Registry("observable")
FIGURES: Registry[FigureEntry] = Registry("figure")
TASKS: Registry[TaskEntry] = Registry("fit task")
PLACEMENTS: Registry[PlacementEntry] = Registry("placement")
INTERACTIONS: Registry[InteractionEntry] = Registry("Kuramoto interaction")
