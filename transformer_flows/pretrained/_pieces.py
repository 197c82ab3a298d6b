"""The pieces of a trained layer that the GLPR map approximates (`APPROXIMATIONS`) or keeps
exactly (`EXACT`), by name: the switches of the faithful fields (`_fields`) and of the
error measurements (`_approximations`), below both."""

# name: (families it applies to, what it is). "exact" ones are kept by the map: switching them
# on must leave the gap at rounding level.
APPROXIMATIONS = {
    "layer_norm_affine": (
        ("bert", "albert", "gpt2"),
        "LayerNorm gain γ and shift β (all LayerNorms) are not modelled",
    ),
    "layer_norm_centring": (
        ("bert", "albert", "gpt2"),
        "LayerNorm subtracts the mean over the D coordinates; x/|x| does not (outputs into "
        "the residual stream and embeddings not centred)",
    ),
    "layer_norm_eps": (("bert", "albert", "gpt2"), "LayerNorm's ε in √(var + ε) is dropped"),
    "query_bias": (("bert", "albert", "gpt2"), "the query bias b_Q is dropped"),
    "value_output_bias": (
        ("bert", "albert", "gpt2"),
        "the value and attention-output biases (a constant W_O b_V + b_O added to every token) "
        "are dropped",
    ),
    "feed_forward_output_bias": (
        ("bert", "albert", "gpt2"),
        "the feed-forward output bias b2 is dropped",
    ),
    "embedding_projection": (
        ("albert",),
        "ALBERT's projection E → D of the embeddings gives tokens of norm ≠ √D; the map starts "
        "from their directions",
    ),
}

EXACT = {
    "key_bias": "the key bias b_K (a per-query constant in the scores; softmax removes it)",
    "feed_forward_inner_bias": "the feed-forward inner bias b1 (FeedForward's b)",
}
