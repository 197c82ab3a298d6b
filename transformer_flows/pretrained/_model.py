"""`PretrainedTransformer`: a loaded checkpoint, its JAX forward, and its map onto our fields."""

from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._validation import is_concrete
from . import _fields, _forward
from ._checkpoint import DEFAULT_HUB_ID, convert, read_config, read_tensors, read_tokenizer


class _Tokenizer:
    """A `tokenizers.Tokenizer` held as a static field: hashed and compared by identity."""

    def __init__(self, tokenizer, path: str):
        self.tokenizer = tokenizer
        self.path = path

    def __repr__(self):
        return f"Tokenizer({self.path!r})"


class PretrainedTransformer(eqx.Module):
    """A BERT, ALBERT or GPT-2 checkpoint as JAX arrays (`load_pretrained` builds it).

    - `family`: "bert", "albert" or "gpt2"; `num_layers`: the trained depth L; `d_model`: the
      hidden size D; `num_heads`: H; `causal`: whether attention is causal (GPT-2).
    - `embeddings`, `layers`: the weights (layout in `transformer_flows.pretrained._checkpoint`;
      `layers` has a leading axis over the stored layers: L, or ALBERT's groups).
    - `hidden_states`: our forward of the real model; `layer_fields`, `discrete_map_states`,
      `flow_states`: the map onto our fields (docs/pretrained.md).
    """

    embeddings: dict[str, Array]
    layers: dict[str, Array]
    family: str = eqx.field(static=True)
    num_layers: int = eqx.field(static=True)
    d_model: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    # Static settings of the forward (activation name, ε, placement, groups, ...) as a tuple of
    # pairs (hashable).
    settings_items: tuple = eqx.field(static=True)
    source: str = eqx.field(static=True, default="")
    tokenizer: _Tokenizer | None = eqx.field(static=True, default=None)

    @property
    def settings(self) -> dict:
        return dict(self.settings_items)

    @property
    def max_positions(self) -> int:
        return int(self.embeddings["position"].shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.embeddings["word"].shape[0])

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def extends_beyond_depth(self) -> bool:
        """Whether layers past the trained depth are defined: ALBERT with one shared layer."""
        return self.family == "albert" and self.settings["groups"] == 1

    def tokenize(self, text: str) -> np.ndarray:
        """Token ids (int32) of `text`, with the special tokens the model's tokenizer adds
        (BERT/ALBERT: [CLS] ... [SEP]; GPT-2: none)."""
        if self.tokenizer is None:
            raise ValueError(
                f"The checkpoint {self.source!r} has no tokenizer.json, so text cannot be "
                "tokenized; pass token ids to `hidden_states` instead, or put the model's "
                "tokenizer.json into the checkpoint directory (from the hub, or "
                "`transformers.AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`)."
            )
        if not isinstance(text, str):
            raise ValueError(f"`text` must be a string, got {type(text).__name__}.")
        ids = np.asarray(self.tokenizer.tokenizer.encode(text).ids, dtype=np.int32)
        if ids.size == 0:
            raise ValueError(f"`text` {text!r} gives no tokens; pass a non-empty text.")
        if ids.max() >= self.vocab_size:
            raise ValueError(
                f"The tokenizer gives id {ids.max()} but the model has {self.vocab_size} "
                "embeddings: tokenizer.json does not belong to these weights."
            )
        return ids

    def check_num_layers(self, num_layers) -> int:
        """`num_layers` (None: the trained depth) as an int; beyond the trained depth only for
        ALBERT's shared layer."""
        if num_layers is None:
            return self.num_layers
        if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)):
            raise ValueError(f"`num_layers` must be an integer >= 0, got {num_layers!r}.")
        if num_layers < 0:
            raise ValueError(f"`num_layers` must be an integer >= 0, got {num_layers}.")
        if num_layers > self.num_layers and not self.extends_beyond_depth:
            detail = (
                f"ALBERT with {self.settings['groups']} layer groups"
                if self.family == "albert"
                else f"{self.family} has different weights per layer"
            )
            raise ValueError(
                f"`num_layers`={num_layers} exceeds the trained depth {self.num_layers} and "
                f"{detail}, so later layers do not exist; pass num_layers <= "
                f"{self.num_layers}. (ALBERT with one shared layer can be run deeper.)"
            )
        return int(num_layers)

    def check_token_ids(self, token_ids) -> Int[Array, " n"]:
        """A 1-D integer array of ids in [0, vocab) of at most `max_positions` tokens (a
        ValueError now for concrete ids; an `eqx.error_if` under jit)."""
        if isinstance(token_ids, str):
            raise ValueError(
                "`token_ids` must be token ids, got a string; use `model.tokenize(text)`."
            )
        ids = jnp.asarray(token_ids)
        if ids.ndim != 1 or ids.shape[0] == 0:
            raise ValueError(
                f"`token_ids` must be a non-empty 1-D array of token ids (one sequence), got "
                f"shape {ids.shape}; for several texts call once per text (or jax.vmap)."
            )
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"`token_ids` must be integers, got dtype {ids.dtype}.")
        if ids.shape[0] > self.max_positions:
            raise ValueError(
                f"`token_ids` has {ids.shape[0]} tokens but the model has "
                f"{self.max_positions} position embeddings; pass at most {self.max_positions}."
            )
        message = f"`token_ids` must lie in [0, {self.vocab_size}), the model's vocabulary."
        if is_concrete(ids):
            values = np.asarray(ids)
            if values.min() < 0 or values.max() >= self.vocab_size:
                raise ValueError(f"{message} Got ids from {values.min()} to {values.max()}.")
            return ids
        bad = jnp.any((ids < 0) | (ids >= self.vocab_size))
        return eqx.error_if(ids, bad, message)

    def hidden_states(
        self, token_ids, *, num_layers: int | None = None, final_norm: bool = True
    ) -> Float[Array, "layers_plus_1 n D"]:
        """The real model's hidden states by our JAX forward: the embeddings output at index 0,
        then each layer's output, as transformers' `output_hidden_states` (eval mode).

        `num_layers`: how many layers (default the trained depth L); more than L only for
        ALBERT's shared layer (applied again). `final_norm`: GPT-2's last hidden state (at the
        trained depth) is passed through its final LayerNorm ln_f, as transformers does;
        False gives the residual stream there too. No effect for BERT/ALBERT.
        """
        ids = self.check_token_ids(token_ids)
        num_layers = self.check_num_layers(num_layers)
        return _hidden_states(self, ids, num_layers, bool(final_norm))

    def layer_fields(self, *, num_layers: int | None = None, faithful=False, key_mask=None):
        """Our fields with the checkpoint's weights.

        `faithful=False` (GLPR's map): `TransformerBlock(SelfAttention(...), FeedForward(...))`
        (Post-LN: BERT, ALBERT) or `SequentialBlock((PreLN(SelfAttention(..., causal=True)),
        PreLN(FeedForward(...))))` (Pre-LN: GPT-2), heads with β = 1/√k, the output
        projection folded into V, layer l acting on [l, l+1) (`layer_duration=1`), ALBERT's
        shared layer constant in time. Sphere states are the real states divided by √D
        (docs/pretrained.md, "The mapping").

        `faithful=True`: the exact layers, `TransformerBlock(PostLN(SelfAttention(..., biases),
        LayerNorm(γ, β, ε)), PostLN(FeedForward(..., biases), LayerNorm(...)))` (Post-LN) or
        `SequentialBlock((PreLN(SelfAttention(...), norm=LayerNorm(ε)), PreLN(FeedForward(...),
        norm=...)))` (Pre-LN, γ and β folded into the weights); a collection of names from
        `tf.pretrained.APPROXIMATIONS`/`EXACT` keeps those pieces and puts the others in
        GLPR's form (docs/pretrained.md, "The faithful fields"). `key_mask` (n,) booleans:
        the real tokens of a right-padded sequence (padded keys get no weight)."""
        depth = self.check_num_layers(num_layers)
        keep = _fields.resolve_faithful(faithful)
        key_mask = _check_key_mask(key_mask)
        if keep is None:
            return _fields.layer_fields(self, depth, key_mask)
        return _fields.faithful_fields(self, depth, keep, key_mask)

    def discrete_map_states(
        self,
        token_ids,
        *,
        num_layers: int | None = None,
        final_norm: bool = True,
        faithful=False,
        key_mask=None,
        substeps: int = 1,
    ) -> Float[Array, "layers_plus_1 n D"]:
        """The discrete layer map of `layer_fields`: each layer the field's `residual_layer`
        with h = 1, in the units of `hidden_states`.

        `faithful=False` (GLPR's map): from the real embeddings output (its direction for
        Post-LN; Post-LN states times √D). `final_norm`: GPT-2's ln_f as the map models it
        (√D·x/|x|) at the trained depth, as `hidden_states` does.
        `faithful=True`: the exact layers, equal to `hidden_states` to float32 rounding; or a
        collection of the pieces kept (see `layer_fields`). `substeps=k` (faithful only): each
        layer as k residual steps of h = 1/k of its field (k = 1 is the layer itself; k → ∞
        the flow). `key_mask` (n,): the real tokens of a right-padded sequence; their states
        equal those of the unpadded sequence."""
        ids = self.check_token_ids(token_ids)
        num_layers = self.check_num_layers(num_layers)
        keep = _fields.resolve_faithful(faithful)
        key_mask = _check_key_mask(key_mask, ids)
        if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
            raise ValueError(f"`substeps` must be an integer >= 1, got {substeps!r}.")
        if keep is None:
            if substeps != 1:
                raise ValueError(
                    "`substeps` sub-steps the faithful fields; pass faithful=True (or use "
                    "`tf.solve(model.layer_fields(), ..., solver=tf.ResidualLayers(), dt0=h)`)."
                )
            return _discrete_map_states(self, ids, num_layers, bool(final_norm), key_mask)
        return _faithful_map_states(
            self, ids, num_layers, bool(final_norm), keep, key_mask, substeps
        )

    def flow_states(
        self,
        token_ids,
        times,
        *,
        num_layers: int | None = None,
        solver=None,
        final_norm: bool = True,
        faithful=False,
        key_mask=None,
        **solve_options,
    ) -> Float[Array, "times n D"]:
        """The continuous flow of `layer_fields` (`tf.solve`, per-layer weights piecewise
        constant: layer l on [l, l+1); ALBERT's shared layer for all t) from the real
        embeddings, saved at `times` (>= 0, increasing; the solve starts at t = 0), in the
        units of `hidden_states`. Up to the trained depth, except for ALBERT's shared layer.

        `faithful`: the fields' kind, as in `layer_fields`; `faithful=True` is the
        continuous-time flow of the real model, the limit of its layers sub-stepped
        (`discrete_map_states(..., faithful=True, substeps=k)`, k → ∞). Its states are read
        out through the LayerNorm that closed the last completed layer (Post-LN).
        `solver`: a diffrax solver for `tf.solve` (default its `Renormalized(Tsit5())`);
        `solve_options`: more keywords for `tf.solve` (rtol, atol, max_steps, ...).
        `final_norm`: GPT-2's states at t = L pass through the map's ln_f (√D·x/|x|; the real
        ln_f when faithful). `key_mask` (n,): the real tokens of a right-padded sequence.
        """
        from .._solve import solve

        ids = self.check_token_ids(token_ids)
        times, prepend = self._check_times(times, num_layers)
        depth = self.check_num_layers(num_layers)
        keep = _fields.resolve_faithful(faithful)
        key_mask = _check_key_mask(key_mask, ids)
        field = self.layer_fields(num_layers=depth, faithful=faithful, key_mask=key_mask)
        if keep is None:
            x0 = _fields.start(self, _embeddings(self, ids))
        else:
            x0 = _fields.faithful_start(self, ids, keep, flow=True)
        ts = jnp.asarray(times, dtype=x0.dtype)
        if prepend:
            ts = jnp.concatenate([jnp.zeros(1, dtype=x0.dtype), ts])
        states = solve(field, x0, ts, solver=solver, **solve_options).xs
        states, ts = (states[1:], ts[1:]) if prepend else (states, ts)
        if keep is not None:
            return _fields.faithful_readout(self, states, ts, keep, depth, bool(final_norm))
        states = _fields.to_model_units(self, states)
        if final_norm and "final_g" in self.embeddings and depth == self.num_layers:
            at_end = ts == depth
            read_out = _fields.mapped_final_norm(self, states)
            states = jnp.where(at_end[:, None, None], read_out, states)
        return states

    def _check_times(self, times, num_layers) -> tuple[Array, bool]:
        times = jnp.asarray(times)
        if times.ndim != 1 or times.shape[0] == 0:
            raise ValueError(
                f"`times` must be a non-empty 1-D array of times (layer l acts on [l, l+1)), "
                f"got shape {times.shape}; e.g. jnp.arange({self.num_layers} + 1.0)."
            )
        if not is_concrete(times):
            return times, False  # traced: the solve starts at times[0]
        values = np.asarray(times, dtype=np.float64)
        if values[0] < 0 or np.any(np.diff(values) <= 0):
            raise ValueError(
                f"`times` must be >= 0 and strictly increasing, got {values.tolist()[:8]}."
            )
        limit = self.num_layers if num_layers is None else num_layers
        if values[-1] > limit and not self.extends_beyond_depth:
            raise ValueError(
                f"`times` reach t = {values[-1]} but the model has {limit} layers (layer l acts "
                f"on [l, l+1)); pass times <= {limit}. Only ALBERT's shared layer runs longer."
            )
        return times, bool(values[0] > 0)


@eqx.filter_jit
def _hidden_states(model: PretrainedTransformer, ids, num_layers: int, final_norm: bool):
    settings = model.settings | {"d_model": model.d_model}
    if num_layers == 0:
        return _forward.embed(model.embeddings, ids, settings)[None]
    return _forward.hidden_states(
        model.embeddings, model.layers, settings, ids, num_layers, final_norm
    )


@eqx.filter_jit
def _discrete_map_states(
    model: PretrainedTransformer, ids, num_layers: int, final_norm: bool, key_mask=None
):
    return _fields.discrete_map(model, _embeddings(model, ids), num_layers, final_norm, key_mask)


@eqx.filter_jit
def _faithful_map_states(
    model: PretrainedTransformer, ids, num_layers, final_norm, keep, key_mask, substeps
):
    return _fields.faithful_map(model, ids, num_layers, final_norm, keep, key_mask, substeps)


def _check_key_mask(key_mask, ids=None):
    """None, or 1-D booleans (one per token of `ids`), True on the real tokens: first, at
    least one (right padding)."""
    if key_mask is None:
        return None
    mask = jnp.asarray(key_mask)
    if mask.dtype != jnp.bool_ or mask.ndim != 1 or (ids is not None and mask.shape != ids.shape):
        expected = "" if ids is None else f" of shape {ids.shape}"
        raise ValueError(
            f"`key_mask` must be 1-D booleans{expected} (True on the real tokens), got "
            f"{mask.dtype} of shape {mask.shape}."
        )
    if is_concrete(mask):
        values = np.asarray(mask)
        if not values[0] or np.any(values[1:] & ~values[:-1]):
            raise ValueError(
                "`key_mask` must mark the real tokens first and the padding after them (right "
                "padding, at least one real token)."
            )
    return mask


def _embeddings(model: PretrainedTransformer, ids) -> Array:
    return _forward.embed(model.embeddings, ids, model.settings)


def load_pretrained(directory, *, hub_id: str = DEFAULT_HUB_ID) -> PretrainedTransformer:
    """Load a Hugging Face-style checkpoint directory: config.json, model.safetensors (read
    with `safetensors.numpy`) and, optionally, tokenizer.json (`tokenizers`). No torch.

    Families: BERT, ALBERT (shared layers, factorised embedding), GPT-2. A missing directory or
    file raises `MissingCheckpointError` naming what to download (`hub_id`, default GLPR's
    ALBERT-xlarge-v2) and where to put it; an unsupported model type a ValueError.
    """
    directory = Path(directory).expanduser()
    config = read_config(directory, hub_id)
    converted = convert(config, read_tensors(directory), directory)
    settings = converted["settings"]
    tokenizer = read_tokenizer(directory)
    return PretrainedTransformer(
        embeddings={k: jnp.asarray(v) for k, v in converted["embeddings"].items()},
        layers={k: jnp.asarray(v) for k, v in converted["layers"].items()},
        family=config["model_type"],
        num_layers=settings["num_layers"],
        d_model=int(converted["layers"]["wo"].shape[2]),
        num_heads=settings["num_heads"],
        causal=settings["causal"],
        settings_items=tuple(sorted(settings.items())),
        source=str(directory),
        tokenizer=None if tokenizer is None else _Tokenizer(tokenizer, str(directory)),
    )
