"""Running a `pretrained` experiment: hidden-state statistics per layer of a local checkpoint,
for the model's own layers, our fields' discrete layer map and the continuous flow.

One chunk per text (`chunks/texts/chunk_#####.nc`, fingerprinted with the config's numerics,
the text and the checkpoint files' sha256), so an interrupted run resumes and a replaced
checkpoint is recomputed; the assembled dataset has dims (source, text, layer[, bin]).
"""

import functools
import hashlib
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from .._hidden_statistics import cosine_histogram
from .._sphere import normalize
from ._build import solver_of
from ._interrupt import reported
from ._provenance import git_commit, provenance
from ._registry import OBSERVABLES, ObservableContext
from ._run_chunks import claimed_run
from ._schema import ConfigError, PretrainedConfig
from ._store import chunk_path, fingerprint

# The files of a checkpoint that decide its numbers (their sha256 goes into the chunks).
CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
HISTOGRAM = "cosine_histogram"


def checkpoint_digest(directory: str | Path) -> str:
    """sha256 over the names and bytes of the checkpoint files that exist in `directory`."""
    digest = hashlib.sha256()
    for name in CHECKPOINT_FILES:
        path = Path(directory) / name
        if path.is_file():
            digest.update(name.encode() + b"\0")
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def depth_grid(config: PretrainedConfig, depth: int) -> np.ndarray:
    """The `layer` coordinate: 0, 1, …, depth (where every source has a state), then the
    flow's tail, `flow.tail_num` times geometrically spaced in (depth, flow.t_max]."""
    layers = np.arange(depth + 1, dtype=float)
    if config.flow.t_max is None:
        return layers
    tail = np.geomspace(depth, config.flow.t_max, config.flow.tail_num + 1)[1:]
    return np.concatenate([layers, tail])


def _checked_depth(config: PretrainedConfig, model) -> int:
    depth = config.layers or int(model.num_layers)
    shared = model.family == "albert"
    if depth > model.num_layers and not shared:
        raise ConfigError(
            f"config key `layers`: got {depth}; this {model.family} checkpoint has "
            f"{model.num_layers} layers of its own weights (only ALBERT shares one layer and "
            f"runs deeper). Fix: set layers <= {model.num_layers} or layers=null."
        )
    if config.flow.t_max is not None:
        if not shared:
            raise ConfigError(
                f"config key `flow.t_max`: the flow beyond the last layer repeats a shared "
                f"layer (ALBERT); this {model.family} checkpoint has per-layer weights. Fix: "
                "flow.t_max=null."
            )
        if config.flow.t_max <= depth:
            raise ConfigError(
                f"config key `flow.t_max`: got {config.flow.t_max}, which does not exceed the "
                f"depth {depth}. Fix: a t_max above {depth}, or flow.t_max=null."
            )
    grid = depth_grid(config, depth)
    for layer in config.plot.histogram_layers or ():
        if layer > grid[-1]:
            raise ConfigError(
                f"config key `plot.histogram_layers`: layer {layer:g} is beyond the last saved "
                f"layer {grid[-1]:g}. Fix: choose layers in [0, {grid[-1]:g}]."
            )
    return depth


def statistics_function(config: PretrainedConfig):
    """states (K, n, D) ↦ {statistic: (K,), "cosine_histogram": (K, bins)}, jitted (one
    compilation per shape, kept across runs). Non-radial observables see the directions
    θ_i = x_i/|x_i|, as in sweeps."""
    return _statistics_function(
        tuple(config.statistics), config.beta, config.delta, config.histogram.bins
    )


@functools.lru_cache(maxsize=16)
def _statistics_function(names: tuple[str, ...], beta: float, delta: float, bins: int):
    context = ObservableContext(beta, delta, 1)

    @jax.jit
    def compute(states):
        directions = normalize(states)
        values = {}
        for name in names:
            entry = OBSERVABLES[name]
            values[name] = jax.vmap(lambda x, entry=entry: entry.function(x, context))(
                states if entry.radial else directions
            )
        values[HISTOGRAM] = cosine_histogram(states, bins)
        return values

    return compute


def source_states(model, source: str, token_ids, depth: int, grid: np.ndarray, solver_config):
    """The states of one source at the layers it has: (states (K, n, D), their indices into
    `grid`); the flow is integrated as `solver_config` (a `SolverConfig`) says."""
    if source == "model":
        return model.hidden_states(token_ids, num_layers=depth), np.arange(depth + 1)
    if source == "discrete_map":
        return model.discrete_map_states(token_ids, num_layers=depth), np.arange(depth + 1)
    flow_layers = max(depth, int(np.ceil(grid[-1])))
    solver, dt0 = solver_of(solver_config)
    states = model.flow_states(
        token_ids,
        np.asarray(grid),
        num_layers=flow_layers,
        solver=solver,
        dt0=dt0,
        rtol=solver_config.rtol,
        atol=solver_config.atol,
        max_steps=solver_config.max_steps,
    )
    return states, np.arange(len(grid))


def text_token_ids(config: PretrainedConfig, model, text: str) -> np.ndarray:
    """The model's token ids of `text`, the text's own (never padded; the first `max_tokens`
    when the config sets it), at least two. A text longer than the model's positions is
    refused unless `max_tokens` asks for a cut."""
    cut = config.max_tokens is not None
    try:
        with warnings.catch_warnings():  # the cut is the config's own request
            warnings.simplefilter("ignore")
            ids = np.asarray(model.tokenize(text, truncate=cut))
    except ValueError as error:
        raise ConfigError(
            f"config key `texts`: {error} Or set `max_tokens` to keep the first tokens."
        ) from None
    if cut:
        ids = ids[: config.max_tokens]
    if ids.shape[0] < 2:
        raise ConfigError(
            f"config key `texts`: {text!r} has {ids.shape[0]} token(s); the statistics "
            "compare pairs of tokens. Fix: a longer text."
        )
    return ids


def _text_chunk(config, model, compute, token_ids, depth: int, grid: np.ndarray) -> xr.Dataset:
    sources = list(config.compare)
    bins = config.histogram.bins
    scalars = {name: np.full((1, len(sources), len(grid)), np.nan) for name in config.statistics}
    histogram = np.full((1, len(sources), len(grid), bins), np.nan)
    # All sources' states in one batch: one compilation of the statistics per token count.
    states, wheres = zip(
        *(
            source_states(model, source, token_ids, depth, grid, config.flow.solver)
            for source in sources
        ),
        strict=True,
    )
    # The statistics in the config's precision (the CLI turns on x64 for float64).
    batch = jnp.concatenate([jnp.asarray(x, dtype=config.precision) for x in states])
    values = jax.device_get(compute(batch))
    offsets = np.cumsum([0, *(len(where) for where in wheres)])
    for s, where in enumerate(wheres):
        part = slice(offsets[s], offsets[s + 1])
        for name in config.statistics:
            scalars[name][0, s, where] = np.asarray(values[name][part], dtype=float)
        histogram[0, s, where] = np.asarray(values[HISTOGRAM][part], dtype=float)
    dims = ("combo", "source", "layer")
    variables = {name: (dims, array) for name, array in scalars.items()}
    variables[HISTOGRAM] = ((*dims, "bin"), histogram)
    variables["num_tokens"] = (("combo",), np.array([token_ids.shape[0]], dtype=np.int64))
    return xr.Dataset(variables)


def run_pretrained(
    config: PretrainedConfig, out: str | Path, *, progress: bool = True, model=None
) -> xr.Dataset:
    """Run a `pretrained` config into directory `out`; resume from verified per-text chunks.

    **Arguments:**
    - `config`: a validated `PretrainedConfig`.
    - `out`: output directory, as for sweeps: a rerun with the same config resumes, another
      config is refused, a second concurrent run is refused.
    - `progress`: a progress bar over texts.
    - `model`: an already loaded `PretrainedTransformer` (default: `load_pretrained(
      config.checkpoint)`, which raises `MissingCheckpointError` naming what to download).

    **Returns:** the dataset (also `out/dataset.nc`): every statistic of `config.statistics`
    with dims (source, text, layer), `cosine_histogram` (source, text, layer, bin) (density
    over pairs i < j on fixed bins of [-1, 1]), `num_tokens` and `input_text` (text). NaN where
    a source has no state: the model and the discrete map at the flow's tail times.
    """
    texts = config.read_texts()
    if model is None:
        from ..pretrained import load_pretrained

        model = load_pretrained(config.checkpoint)
    depth = _checked_depth(config, model)
    grid = depth_grid(config, depth)
    ids = [text_token_ids(config, model, text) for text in texts]
    identity = checkpoint_digest(config.checkpoint)
    numerics = config.numerics()
    commit = git_commit()
    compute = statistics_function(config)
    with claimed_run(out, config, numerics) as run, reported(run.out, "texts") as saved:
        pieces, seconds = [], 0.0
        # Texts are done in order: those before the one in flight are on disk (at least).
        saved.total, saved.recount = len(texts), lambda: len(pieces)
        for index, text in enumerate(
            tqdm(texts, unit="text", disable=not progress, desc=config.name, dynamic_ncols=True)
        ):
            name = str(chunk_path("texts", index))
            key = fingerprint(
                {"config": numerics, "text": text, "index": index, "checkpoint": identity}
            )
            piece = run.read_chunk(name, key, 1)
            if piece is None:
                started = time.perf_counter()
                piece = _text_chunk(config, model, compute, ids[index], depth, grid)
                piece.attrs["compute_seconds"] = time.perf_counter() - started
                run.write_chunk(name, piece, key)
            seconds += float(piece.attrs.get("compute_seconds", 0.0))
            pieces.append(piece.drop_attrs())
        dataset = _assemble(config, model, pieces, texts, grid, identity)
        dataset.attrs.update(provenance(config, seconds, commit))
        run.write_dataset(dataset)
    return dataset


def _assemble(config, model, pieces, texts, grid, identity) -> xr.Dataset:
    dataset = xr.concat(pieces, dim="combo").rename({"combo": "text"})
    dataset = dataset.transpose("source", "text", "layer", "bin")
    edges = np.linspace(-1.0, 1.0, config.histogram.bins + 1)  # = histogram_edges(bins)
    dataset = dataset.assign_coords(
        source=list(config.compare),
        text=np.arange(len(texts)),
        layer=grid,
        bin=(edges[:-1] + edges[1:]) / 2,
    )
    dataset["bin_edges"] = (("bin_edge",), edges)
    dataset["input_text"] = (("text",), np.array(texts, dtype=object))
    dataset["layer"].attrs["long_name"] = "layer l (flow time t = l; layer l acts on [l, l + 1))"
    dataset["source"].attrs["long_name"] = (
        "model: hidden states of the checkpoint; discrete_map: our fields' layer map; flow: "
        "the continuous flow"
    )
    dataset["bin"].attrs["long_name"] = "centre of a bin of <θ_i, θ_j>"
    for name in config.statistics:
        text = OBSERVABLES[name].long_name
        if name in ("clustered_fraction", "cluster_count"):
            text += f", δ={config.delta:g}"
        if name == "energy":
            text += f", β={config.beta:g}"
        dataset[name].attrs["long_name"] = text
    dataset[HISTOGRAM].attrs["long_name"] = (
        "density of <θ_i, θ_j> over pairs i < j, θ_i = x_i/|x_i|"
    )
    dataset.attrs.update(
        checkpoint=str(config.checkpoint),
        checkpoint_sha256=identity,
        family=str(model.family),
        trained_layers=int(model.num_layers),
        d_model=int(model.d_model),
        num_heads=int(model.num_heads),
        causal=int(bool(model.causal)),
    )
    return dataset
