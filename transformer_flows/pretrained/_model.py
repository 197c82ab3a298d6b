"""`PretrainedTransformer`: a loaded checkpoint, its JAX forward, and its map onto our fields."""

import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._validation import is_concrete
from . import _fields, _forward, _llama
from ._checkpoint import DEFAULT_HUB_ID, read_config, read_tensors, read_tokenizer
from ._families import convert


class _Tokenizer:
    """A `tokenizers.Tokenizer` held as a static field: hashed and compared by identity.

    Padding and truncation that tokenizer.json may carry (sentence-transformers checkpoints pad
    to a fixed 128 and cut there) are switched off: ids are the text's tokens, all of them.
    `truncating(length)` is a copy that cuts at `length` tokens (special tokens kept), for
    callers that ask for truncation."""

    def __init__(self, tokenizer, path: str):
        padding = tokenizer.padding
        self.pad_id = int(padding["pad_id"]) if padding else 0
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.path = path

    def truncating(self, length: int):
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(self.tokenizer.to_str())
        copy.enable_truncation(max_length=length)
        return copy

    def __repr__(self):
        return f"Tokenizer({self.path!r})"


class PretrainedTransformer(eqx.Module):
    """A BERT, ALBERT, GPT-2, RoBERTa, DistilBERT or LLaMA checkpoint as JAX arrays
    (`load_pretrained` builds it).

    - `family`: "bert", "albert", "gpt2", "roberta", "distilbert" or "llama"; `num_layers`:
      the trained depth L; `d_model`: the hidden size D; `num_heads`: H; `causal`: whether
      attention is causal (GPT-2, LLaMA).
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
        if "position" not in self.embeddings:  # rotary positions (LLaMA): the config's bound
            return int(self.settings["max_positions"])
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

    def tokenize(self, text: str, *, truncate: bool = False) -> np.ndarray:
        """Token ids (int32) of `text`, with the special tokens the model's tokenizer adds
        (BERT/ALBERT: [CLS] ... [SEP]; GPT-2: none). Never padded, never cut silently: a text
        of more tokens than the model's `max_positions` is refused, unless `truncate=True`,
        which keeps the first `max_positions` tokens (special tokens included) and warns."""
        return self._encode(text, truncate, "text")

    def tokenize_batch(self, texts, *, truncate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of several texts, right-padded to the longest: `(ids (B, n) int32, mask
        (B, n) bool)`, mask True on the real tokens (row b has `len(tokenize(texts[b]))` of
        them, first). Pass both to `hidden_states(ids, mask=mask)`; the real tokens' states
        equal those of each text alone. `truncate` as in `tokenize`."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
            raise ValueError(
                f"`texts` must be a non-empty list of strings, got {type(texts).__name__}; "
                "for one text use `tokenize(text)`."
            )
        rows = [self._encode(text, truncate, f"texts[{i}]") for i, text in enumerate(texts)]
        width = max(row.shape[0] for row in rows)
        pad = self.tokenizer.pad_id if 0 <= self.tokenizer.pad_id < self.vocab_size else 0
        ids = np.full((len(rows), width), pad, dtype=np.int32)
        mask = np.zeros((len(rows), width), dtype=bool)
        for b, row in enumerate(rows):
            ids[b, : row.shape[0]] = row
            mask[b, : row.shape[0]] = True
        return ids, mask

    def _encode(self, text, truncate: bool, name: str) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError(
                f"The checkpoint {self.source!r} has no tokenizer.json, so text cannot be "
                "tokenized; pass token ids to `hidden_states` instead, or put the model's "
                "tokenizer.json into the checkpoint directory (from the hub, or "
                "`transformers.AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`)."
            )
        if not isinstance(text, str):
            raise ValueError(f"`{name}` must be a string, got {type(text).__name__}.")
        ids = np.asarray(self.tokenizer.tokenizer.encode(text).ids, dtype=np.int32)
        if ids.size == 0:
            raise ValueError(f"`{name}` {text!r} gives no tokens; pass a non-empty text.")
        if ids.shape[0] > self.max_positions:
            if not truncate:
                raise ValueError(
                    f"`{name}` has {ids.shape[0]} tokens but the model has "
                    f"{self.max_positions} position embeddings ({text[:40]!r}...). Fix: a "
                    f"shorter text, or `truncate=True` to keep its first {self.max_positions} "
                    "tokens."
                )
            full = ids.shape[0]
            truncating = self.tokenizer.truncating(self.max_positions)
            ids = np.asarray(truncating.encode(text).ids, dtype=np.int32)
            warnings.warn(
                f"`{name}`: truncated from {full} to {ids.shape[0]} tokens (truncate=True; the "
                f"model has {self.max_positions} positions).",
                stacklevel=3,
            )
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

    def check_token_ids(self, token_ids, *, batch: bool = False) -> Int[Array, "*batch n"]:
        """A 1-D integer array of ids in [0, vocab) of at most `max_positions` tokens (a
        ValueError now for concrete ids; an `eqx.error_if` under jit); with `batch`, also a
        2-D (B, n) batch of such sequences."""
        if isinstance(token_ids, str):
            raise ValueError(
                "`token_ids` must be token ids, got a string; use `model.tokenize(text)`."
            )
        ids = jnp.asarray(token_ids)
        if ids.ndim not in ((1, 2) if batch else (1,)) or 0 in ids.shape:
            allowed = "1-D (one sequence) or 2-D (a padded batch)" if batch else "1-D"
            raise ValueError(
                f"`token_ids` must be a non-empty {allowed} array of token ids, got shape "
                f"{ids.shape}; for several texts, `tokenize_batch` gives padded ids and their "
                "mask for `hidden_states` (or call once per text)."
            )
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"`token_ids` must be integers, got dtype {ids.dtype}.")
        if ids.shape[-1] > self.max_positions:
            raise ValueError(
                f"`token_ids` has {ids.shape[-1]} tokens but the model has "
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

    def check_mask(self, ids, mask) -> Bool[Array, "*batch n"] | None:
        """`mask` for token ids `ids` (n,) or (B, n): None, or booleans of the same shape, True
        on the real tokens, which come first in each row (right padding), at least one."""
        if mask is None:
            return None
        mask = jnp.asarray(mask)
        if mask.shape != ids.shape or mask.dtype != jnp.bool_:
            raise ValueError(
                f"`mask` must be booleans of the shape of the token ids {ids.shape} (True on "
                f"the real tokens), got {mask.dtype} of shape {mask.shape}; "
                "`tokenize_batch` returns both."
            )
        message = (
            "`mask` must mark the real tokens first and the padding after them in each row "
            "(right padding, at least one real token), as `tokenize_batch` returns."
        )
        # A prefix of Trues: the first entry True and never False followed by True.
        bad = ~mask[..., 0] | jnp.any(mask[..., 1:] & ~mask[..., :-1], axis=-1)
        if is_concrete(mask):
            if np.any(np.asarray(bad)):
                rows = np.flatnonzero(np.atleast_1d(np.asarray(bad)))[:5].tolist()
                raise ValueError(f"{message} Rows {rows} are not.")
            return mask
        return eqx.error_if(mask, jnp.any(bad), message)

    def hidden_states(
        self,
        token_ids,
        *,
        mask=None,
        num_layers: int | None = None,
        final_norm: bool = True,
    ) -> Float[Array, "*batch layers_plus_1 n D"]:
        """The real model's hidden states by our JAX forward: the embeddings output at index 0,
        then each layer's output, as transformers' `output_hidden_states` (eval mode).

        `token_ids`: one sequence (n,), or a batch (B, n) (then (B, layers + 1, n, D)).
        `mask`: for right-padded batches (`tokenize_batch`), True on the real tokens; padded
        keys get no attention weight, so the real tokens' states equal those of the unpadded
        sequence to float32 rounding. The padded positions' own states are computed (they
        attend to the real tokens) but belong to no text: drop them, or pass `mask` to the
        statistics (`tf.hidden_state_statistics(..., mask=...)`).
        `num_layers`: how many layers (default the trained depth L); more than L only for
        ALBERT's shared layer (applied again). `final_norm`: GPT-2's last hidden state (at the
        trained depth) is passed through its final LayerNorm ln_f, as transformers does;
        False gives the residual stream there too. No effect for BERT/ALBERT.
        """
        ids = self.check_token_ids(token_ids, batch=True)
        mask = self.check_mask(ids, mask)
        num_layers = self.check_num_layers(num_layers)
        return _hidden_states(self, ids, mask, num_layers, bool(final_norm))

    def _faithful_pieces(self, faithful):
        """The pieces the faithful builder keeps (None: GLPR's map). LLaMA's fields drop
        nothing (RMSNorm gains folded, exact), so its default fields are already faithful."""
        keep = _fields.resolve_faithful(faithful)
        return None if self.family == "llama" else keep

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
        keep = self._faithful_pieces(faithful)
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
        keep = self._faithful_pieces(faithful)
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
        keep = self._faithful_pieces(faithful)
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
def _hidden_states(model: PretrainedTransformer, ids, mask, num_layers: int, final_norm: bool):
    settings = model.settings | {"d_model": model.d_model}

    def one(sequence, key_mask):
        if model.family == "llama":
            return _llama.hidden_states(
                model.embeddings, model.layers, settings, sequence, num_layers, final_norm, key_mask
            )
        if num_layers == 0:
            return _forward.embed(model.embeddings, sequence, settings)[None]
        return _forward.hidden_states(
            model.embeddings, model.layers, settings, sequence, num_layers, final_norm, key_mask
        )

    if ids.ndim == 1:
        return one(ids, mask)
    if mask is None:
        return jax.vmap(lambda sequence: one(sequence, None))(ids)
    return jax.vmap(one)(ids, mask)


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
    if model.family == "llama":  # no position embeddings: rotary positions act in attention
        return model.embeddings["word"][ids]
    return _forward.embed(model.embeddings, ids, model.settings)


def load_pretrained(directory, *, hub_id: str = DEFAULT_HUB_ID) -> PretrainedTransformer:
    """Load a Hugging Face-style checkpoint directory: config.json, model.safetensors (its
    header and bytes read by numpy, after validation) and, optionally, tokenizer.json
    (`tokenizers`). No torch; nothing in the directory is imported or executed.

    Families: BERT, ALBERT (shared layers, factorised embedding), GPT-2, and RoBERTa,
    DistilBERT, LLaMA (docs/pretrained.md, "Families"; bfloat16 weights load as float32). A
    missing directory or file raises `MissingCheckpointError` naming what to download
    (`hub_id`, default GLPR's ALBERT-xlarge-v2) and where to put it; an unsupported model type
    or a malformed, inconsistent or out-of-bounds checkpoint a `CheckpointError` (a
    ValueError) naming the file and the key or tensor.
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
