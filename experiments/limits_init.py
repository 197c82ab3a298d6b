"""Random deep transformers at initialisation in their scaling limits (docs/limits.md).

Bordelon, Chaudhry, Pehlevan (arXiv:2405.15712) parameterisation, `tf.limits.random_transformer`
(Post-LN unless said; β₀ = 1). Five measurements, each with a figure in docs/figures/ and its
numbers in docs/figures/limits_init.json:

1. kernel error ε(H) = (1/n²) Σ_ij Var_draws K_ij(final layer) against H (N = 2, L = 2,
   α_A = ½, α_L = 1): slope of log ε on log H (prediction −1);
2. across-head variance of the logit A_h,ij against N (H = 2, one layer; independent pairs of
   orthonormal tokens), α_A ∈ {½, 1}: slope (prediction 1 − 2α_A); KS tests of normality of
   A_h at N = 1 and N = 256 (standardised by the predicted variance N^{1−2α_A});
3. Var over draws of the final mean cosine against L (H = N = 2, n = 4), α_L ∈ {1, ½}:
   slope (prediction −1 for α_L = 1, 0 for α_L = ½);
4. α_L = ½: the law of the network's final cosine (two tokens) and final mean cosine (four
   tokens) against the SDE limit (`branch_noise`, κ from 1024 heads, Euler–Maruyama h = 1/256):
   Wasserstein-1 and KS distances against L, with the two-sample floor;
4b. α_L = ½, the rate: the weak error E_net[c] − E_SDE[c] (and for c²) against L with 25 000
   network draws per depth and 5000 SDE paths (256-head bank, h = 1/128), 95% bootstrap
   intervals, the slope over the depths where the error exceeds 2 standard errors;
5. token alignment (mean cosine) layer by layer, L = 64, with β₀ L^{−1/2} against no scale.

Slopes: least squares on log-log with a 95% bootstrap interval (resampling the draws).
Run: PYTHONPATH=. python experiments/limits_init.py [--smoke] [--only PARTS] [--out DIR]
"""

import argparse
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import scipy.stats

import transformer_flows as tf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "figures"
F32 = jnp.float32
BOOT = 400


def slope(xs, ys):
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def bootstrap_slope(xs, samples, statistic, rng):
    """Slope of log statistic(samples[k]) on log xs, and its 95% bootstrap interval."""
    point = slope(xs, [statistic(s) for s in samples])
    boots = []
    for _ in range(BOOT):
        values = [statistic(s[rng.integers(0, len(s), len(s))]) for s in samples]
        boots.append(slope(xs, values))
    low, high = np.percentile(boots, [2.5, 97.5])
    return point, float(low), float(high)


def tokens_with_gram(n, dim, rho):
    """n unit tokens in R^dim with ⟨x_i, x_j⟩ = rho (i ≠ j): the Cholesky factor, padded."""
    gram = (1 - rho) * np.eye(n) + rho
    chol = np.linalg.cholesky(gram)
    x = np.zeros((n, dim))
    x[:, :n] = chol
    return jnp.asarray(x, F32)


def _layer(key, layer, heads, head_dim, alpha_A, scale, x):
    """Layer `layer` of the network of `key`: its weights are `random_transformer(depth=1)` of
    fold_in(key, layer), so a network of any depth has the law of `random_transformer(depth=L)`
    (i.i.d. layers) and one compiled program serves every depth."""
    weights = tf.limits.random_transformer(
        jax.random.fold_in(key, layer),
        depth=1,
        heads=heads,
        head_dim=head_dim,
        alpha_A=alpha_A,
        alpha_L=1.0,
        dtype=F32,
    ).weights
    return tf.normalize(x + scale * weights.branch(0, x))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _finals(heads, head_dim, alpha_A, depth, scale, x0, keys):
    def one(key):
        body = functools.partial(
            _layer, key, heads=heads, head_dim=head_dim, alpha_A=alpha_A, scale=scale
        )
        return jax.lax.fori_loop(0, depth, lambda layer, x: body(layer, x=x), x0)

    return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _all_states(heads, head_dim, alpha_A, depth, scale, x0, keys):
    def one(key):
        def step(x, layer):
            x = _layer(key, layer, heads, head_dim, alpha_A, scale, x)
            return x, x

        return jax.lax.scan(step, x0, jnp.arange(depth))[1]

    return jax.vmap(one)(keys)


def network_finals(heads, head_dim, depth, alpha_A, scale, x0, keys, keep_states=False, chunk=None):
    """Final (or all) states of the Post-LN network x ← LN(x + scale·branch_l(x)) per key
    (the layer map of `random_transformer(...)` with the branch scale given directly), in
    chunks of `chunk` keys so that large widths fit in memory (one compilation per width)."""
    chunk = chunk or len(keys)
    scale = jnp.asarray(scale, F32)
    parts = []
    for i in range(0, len(keys), chunk):
        if keep_states:
            parts.append(
                _all_states(heads, head_dim, alpha_A, depth, scale, x0, keys[i : i + chunk])
            )
        else:
            parts.append(
                _finals(
                    heads, head_dim, alpha_A, jnp.asarray(depth), scale, x0, keys[i : i + chunk]
                )
            )
    return jnp.concatenate(parts)


def kernel_vs_heads(rng, smoke):
    heads_list = [4, 8, 16] if smoke else [4, 8, 16, 32, 64, 128, 256]
    draws = 64 if smoke else 200
    n, head_dim, depth = 4, 2, 2
    samples = []
    for heads in heads_list:
        x0 = tokens_with_gram(n, heads * head_dim, 0.3)
        finals = network_finals(
            heads,
            head_dim,
            depth,
            0.5,
            depth**-1.0,
            x0,
            jax.random.split(jax.random.key(heads), draws),
        )
        samples.append(np.asarray(tf.limits.token_kernel(finals), np.float64).reshape(draws, -1))

    def error(s):
        return float(np.mean(np.var(s, axis=0, ddof=1)))

    errors = [error(s) for s in samples]
    fit = bootstrap_slope(heads_list, samples, error, rng)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.loglog(
        heads_list, errors, "o-", label=f"measured, slope {fit[0]:.2f} [{fit[1]:.2f}, {fit[2]:.2f}]"
    )
    ax.loglog(heads_list, errors[0] * heads_list[0] / np.array(heads_list), "k--", label="1/H")
    ax.set(xlabel="heads H (N = 2)", ylabel="kernel error ε(H)", title="Residual kernel vs heads")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "limits_kernel_heads.png", dpi=120)
    plt.close(fig)
    return {"H": heads_list, "draws": draws, "kernel_error": errors, "slope": fit}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logit_samples(heads, head_dim, x0, keys):
    """A_h,ij (α_A = ½) of one layer for the pairs (0, 1), (2, 3), ... of orthonormal tokens:
    disjoint q and k vectors, so every sample is independent."""

    def one(key):
        weights = tf.limits.random_transformer(
            key, depth=1, heads=heads, head_dim=head_dim, alpha_A=0.5, alpha_L=1.0, dtype=F32
        ).weights
        logits = weights.logits(0, x0)
        even = jnp.arange(0, x0.shape[0] - 1, 2)
        return logits[:, even, even + 1].ravel()

    return jax.vmap(one)(keys)


def head_variance_vs_N(rng, smoke):
    dims = [1, 4, 16] if smoke else [1, 2, 4, 8, 16, 32, 64, 128, 256]
    heads, n = 2, 16
    result = {"N": dims}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.5))
    for alpha_A in (0.5, 1.0):
        samples = []
        for head_dim in dims:
            dim = heads * head_dim
            x0 = jnp.asarray(np.eye(min(n, dim - dim % 2), dim), F32)
            draws = max(64, 2048 // x0.shape[0])
            keys = jax.random.split(jax.random.key(1000 * head_dim + int(4 * alpha_A)), draws)
            raw = jnp.concatenate(
                [_logit_samples(heads, head_dim, x0, keys[i : i + 16]) for i in range(0, draws, 16)]
            )
            # A_h(α_A) = N^{½ − α_A}·A_h(½) draw by draw: one program serves both α_A.
            samples.append(np.asarray(raw, np.float64).ravel() * head_dim ** (0.5 - alpha_A))
        variance = [float(np.var(s, ddof=1)) for s in samples]
        fit = bootstrap_slope(dims, samples, lambda s: np.var(s, ddof=1), rng)
        ks = {
            str(d): float(scipy.stats.kstest(s / np.sqrt(d ** (1 - 2 * alpha_A)), "norm").pvalue)
            for d, s in zip(dims, samples, strict=True)
            if d in (1, dims[-1])
        }
        result[f"alpha_A={alpha_A}"] = {
            "variance": variance,
            "samples": [len(s) for s in samples],
            "slope": fit,
            "predicted_slope": 1 - 2 * alpha_A,
            "ks_pvalue_vs_normal": ks,
        }
        ax.loglog(
            dims,
            variance,
            "o-",
            label=f"α_A={alpha_A}: slope {fit[0]:.2f} [{fit[1]:.2f}, {fit[2]:.2f}]",
        )
        ax.loglog(dims, np.array(dims, float) ** (1 - 2 * alpha_A), "k:", lw=1)
        if alpha_A == 0.5:
            edges = np.linspace(-4, 4, 61)
            for d, s in zip(dims, samples, strict=True):
                if d in (1, dims[-1]):
                    bx.plot(
                        0.5 * (edges[1:] + edges[:-1]),
                        tf.limits.head_density(jnp.asarray(s), jnp.asarray(edges)),
                        label=f"N = {d}",
                    )
            grid = np.linspace(-4, 4, 200)
            bx.plot(grid, scipy.stats.norm.pdf(grid), "k--", label="N(0, 1)")
    ax.set(
        xlabel="head dimension N",
        ylabel="Var over heads of A_h,ij",
        title="Logit variance across heads",
    )
    ax.legend(fontsize=7)
    bx.set(
        xlabel="A_h,ij (α_A = ½)", ylabel="density over heads", title="Logit density across heads"
    )
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "limits_head_variance.png", dpi=120)
    plt.close(fig)
    return result


def depth_variance(rng, smoke):
    depths = [4, 8, 16] if smoke else [4, 8, 16, 32, 64, 128]
    draws = 400 if smoke else 2000
    heads, head_dim, n = 2, 2, 4
    x0 = tokens_with_gram(n, heads * head_dim, 0.3)
    result = {"L": depths, "draws": draws}
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for alpha_L in (1.0, 0.5):
        samples = []
        for depth in depths:
            keys = jax.random.split(jax.random.key(depth + int(10 * alpha_L)), draws)
            finals = network_finals(heads, head_dim, depth, 0.5, depth**-alpha_L, x0, keys)
            samples.append(
                np.asarray(jax.vmap(tf.limits.mean_offdiagonal_cosine)(finals), np.float64)
            )
        variance = [float(np.var(s, ddof=1)) for s in samples]
        fit = bootstrap_slope(depths, samples, lambda s: np.var(s, ddof=1), rng)
        result[f"alpha_L={alpha_L}"] = {"variance": variance, "slope": fit}
        ax.loglog(
            depths,
            variance,
            "o-",
            label=f"α_L={alpha_L}: slope {fit[0]:.2f} [{fit[1]:.2f}, {fit[2]:.2f}]",
        )
    ax.loglog(
        depths,
        result["alpha_L=1.0"]["variance"][0] * depths[0] / np.array(depths),
        "k--",
        label="1/L",
    )
    ax.set(
        xlabel="depth L", ylabel="Var over draws of final mean cosine", title="Depth: α_L = 1 vs ½"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "limits_depth_variance.png", dpi=120)
    plt.close(fig)
    return result


@functools.partial(jax.jit, static_argnums=(3,))
def sde_finals(noise, x0, keys, steps):
    """Euler–Maruyama of the limit SDE, projected back to the sphere: the scheme of
    `solve(NoDrift(), x0, ts, noise=noise, solver=diffrax.Euler(), dt0=1/steps)`."""
    root_h = jnp.asarray(1.0 / np.sqrt(steps), F32)

    def one(key):
        def step(x, k):
            dw = root_h * jax.random.normal(k, x.shape, F32)
            return tf.normalize(x + noise.increment(x, dw)), None

        return jax.lax.scan(step, x0, jax.random.split(key, steps))[0]

    return jax.vmap(one)(keys)


def sde_convergence(rng, smoke):
    depths = [1, 2, 4, 8] if smoke else [1, 2, 4, 8, 16, 32, 64]
    draws = 300 if smoke else 1500
    steps = 64 if smoke else 256
    heads, head_dim = 2, 2
    result = {"L": depths, "draws": draws, "sde_steps": steps}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, n, rho, label in ((axes[0], 2, 0.0, "two tokens"), (axes[1], 4, 0.3, "four tokens")):
        x0 = tokens_with_gram(n, heads * head_dim, rho)
        noise = tf.limits.branch_noise(
            jax.random.key(5), bank=1024, heads=heads, head_dim=head_dim, alpha_A=0.5, dtype=F32
        )
        reference = np.asarray(
            jax.vmap(tf.limits.mean_offdiagonal_cosine)(
                sde_finals(noise, x0, jax.random.split(jax.random.key(6), draws), steps)
            )
        )
        floor_sample = np.asarray(
            jax.vmap(tf.limits.mean_offdiagonal_cosine)(
                sde_finals(noise, x0, jax.random.split(jax.random.key(7), draws), steps)
            )
        )
        floor = scipy.stats.wasserstein_distance(reference, floor_sample)
        w1, ks, ci, network = [], [], [], []
        for depth in depths:
            keys = jax.random.split(jax.random.key(100 + depth), draws)
            finals = network_finals(heads, head_dim, depth, 0.5, depth**-0.5, x0, keys)
            cos = np.asarray(jax.vmap(tf.limits.mean_offdiagonal_cosine)(finals))
            network.append(cos)
            w1.append(float(scipy.stats.wasserstein_distance(cos, reference)))
            ks.append(float(scipy.stats.ks_2samp(cos, reference).statistic))
        boots = np.array(
            [
                [
                    scipy.stats.wasserstein_distance(
                        cos[rng.integers(0, draws, draws)], reference[rng.integers(0, draws, draws)]
                    )
                    for cos in network
                ]
                for _ in range(200)
            ]
        )
        ci = [
            [float(v) for v in np.percentile(boots[:, k], [2.5, 97.5])] for k in range(len(depths))
        ]
        # Slope of W1 against L over the depths where W1 is above twice the two-sample floor
        # (below it W1 measures the sampling noise of `draws` samples, not the law).
        above = [i for i, w in enumerate(w1) if w > 2 * floor]
        fit = None
        if len(above) >= 2:
            xs = np.array(depths)[above]
            slopes = [slope(xs, boots[b, above]) for b in range(len(boots))]
            fit = [slope(xs, np.array(w1)[above]), *map(float, np.percentile(slopes, [2.5, 97.5]))]
        critical = 1.36 * np.sqrt(2 / draws)  # two-sample KS at the 5% level
        result[label] = {
            "W1": w1,
            "W1_ci95": ci,
            "KS": ks,
            "KS_critical_5pct": float(critical),
            "W1_floor_two_SDE_samples": float(floor),
            "slope_W1_above_2x_floor": fit,
            "depths_in_fit": [depths[i] for i in above],
        }
        ax.loglog(depths, w1, "o-", label="W1(network, SDE)")
        ax.fill_between(depths, [c[0] for c in ci], [c[1] for c in ci], alpha=0.3)
        ax.loglog(depths, ks, "s-", label="KS statistic")
        ax.axhline(floor, color="k", ls=":", label="W1 floor (two SDE samples)")
        ax.axhline(critical, color="gray", ls="--", lw=1, label="KS 5% critical value")
        ax.set(
            xlabel="depth L (α_L = ½)",
            ylabel="distance in law",
            title=f"Final mean cosine, {label}",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "limits_sde_convergence.png", dpi=120)
    plt.close(fig)
    return result


def sde_rate(rng, smoke):
    """The weak error of the depth-L network against the SDE: e(L) = E_net[c] − E_SDE[c] for
    the final mean cosine c (and for c²), with many draws so that the rate is resolved. The SDE
    reference uses a 256-head bank and h = 1/128 (its own bias is checked against a 1024-head
    bank with the same Brownian paths); 95% intervals by bootstrap over both samples."""
    depths = [1, 2, 4] if smoke else [1, 2, 4, 8, 16, 32]
    draws = 2000 if smoke else 25000
    sde_draws = 500 if smoke else 5000
    steps = 32 if smoke else 128
    heads, head_dim = 2, 2
    result = {"L": depths, "draws": draws, "sde_draws": sde_draws, "sde_steps": steps}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, n, rho, label in ((axes[0], 2, 0.0, "two tokens"), (axes[1], 4, 0.3, "four tokens")):
        x0 = tokens_with_gram(n, heads * head_dim, rho)
        cosine = jax.vmap(tf.limits.mean_offdiagonal_cosine)
        sde_keys = jax.random.split(jax.random.key(16), sde_draws)
        refs = {}
        for bank in (256, 1024):
            noise = tf.limits.branch_noise(
                jax.random.key(15),
                bank=bank,
                heads=heads,
                head_dim=head_dim,
                alpha_A=0.5,
                dtype=F32,
            )
            keys = sde_keys if bank == 256 else sde_keys[: sde_draws // 8]
            refs[bank] = np.asarray(cosine(sde_finals(noise, x0, keys, steps)), np.float64)
        reference = refs[256]
        bank_bias = float(refs[1024].mean() - reference[: sde_draws // 8].mean())
        nets = []
        for depth in depths:
            keys = jax.random.split(jax.random.key(300 + depth), draws)
            finals = network_finals(heads, head_dim, depth, 0.5, depth**-0.5, x0, keys)
            nets.append(np.asarray(cosine(finals), np.float64))
        entry = {"sde_bank_bias_1024_minus_256": bank_bias}
        boot_n = 400
        for name, f in (("mean", lambda c: c), ("second_moment", lambda c: c**2)):
            err = np.array([f(c).mean() - f(reference).mean() for c in nets])
            se = np.array(
                [np.sqrt(f(c).var() / len(c) + f(reference).var() / len(reference)) for c in nets]
            )
            boots = np.array(
                [
                    [
                        f(c[rng.integers(0, len(c), len(c))]).mean()
                        - f(reference[rng.integers(0, len(reference), len(reference))]).mean()
                        for c in nets
                    ]
                    for _ in range(boot_n)
                ]
            )
            resolved = [i for i in range(len(depths)) if abs(err[i]) > 2 * se[i]]
            fit = None
            if len(resolved) >= 2:
                xs = np.array(depths)[resolved]
                slopes = [slope(xs, np.abs(b[resolved])) for b in boots]
                fit = [
                    slope(xs, np.abs(err[resolved])),
                    *map(float, np.percentile(slopes, [2.5, 97.5])),
                ]
            entry[name] = {
                "weak_error": err.tolist(),
                "standard_error": se.tolist(),
                "ci95": np.percentile(boots, [2.5, 97.5], axis=0).T.tolist(),
                "depths_resolved": [depths[i] for i in resolved],
                "slope_abs_error": fit,
            }
            if name == "mean":
                ax.errorbar(depths, np.abs(err), yerr=2 * se, fmt="o-", label="|E c_L − E c_SDE|")
            else:
                ax.errorbar(
                    depths, np.abs(err), yerr=2 * se, fmt="s--", label="|E c²_L − E c²_SDE|"
                )
        ax.loglog(
            depths,
            abs(entry["second_moment"]["weak_error"][0]) / np.array(depths),
            "k:",
            label="∝ 1/L",
        )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="depth L (α_L = ½)",
            ylabel="weak error",
            title=f"{label}: network vs SDE",
        )
        ax.legend(fontsize=7)
        result[label] = entry
    fig.tight_layout()
    fig.savefig(OUT / "limits_sde_rate.png", dpi=120)
    plt.close(fig)
    return result


def rank_collapse(rng, smoke):
    depth = 16 if smoke else 64
    draws = 64 if smoke else 256
    heads, head_dim, n = 4, 4, 8
    x0 = tokens_with_gram(n, heads * head_dim, 0.0)
    result = {"L": depth, "draws": draws}
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for name, scale in (("beta0 L^-1/2", depth**-0.5), ("no scale", 1.0)):
        keys = jax.random.split(jax.random.key(11), draws)
        states = network_finals(heads, head_dim, depth, 0.5, scale, x0, keys, keep_states=True)
        cos = np.asarray(jax.vmap(jax.vmap(tf.limits.mean_offdiagonal_cosine))(states))
        mean, se = cos.mean(0), cos.std(0, ddof=1) / np.sqrt(draws)
        result[name] = {
            "mean_cosine_final": float(mean[-1]),
            "se_final": float(se[-1]),
            "mean_cosine_by_layer": [float(v) for v in mean],
        }
        layers = np.arange(1, depth + 1)
        ax.plot(layers, mean, label=name)
        ax.fill_between(layers, mean - 2 * se, mean + 2 * se, alpha=0.3)
    ax.set(
        xlabel="layer",
        ylabel="mean cosine between tokens",
        title=f"Token alignment at init, L = {depth}",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "limits_rank_collapse.png", dpi=120)
    plt.close(fig)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated parts to run")
    parser.add_argument("--out", default=None, help="folder of the PNGs and JSON (docs/figures)")
    args = parser.parse_args()
    global OUT
    OUT = pathlib.Path(args.out) if args.out else OUT
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    parts = {
        "kernel_vs_heads": kernel_vs_heads,
        "head_variance_vs_N": head_variance_vs_N,
        "depth_variance": depth_variance,
        "sde_convergence": sde_convergence,
        "sde_rate": sde_rate,
        "rank_collapse": rank_collapse,
    }
    path = OUT / "limits_init.json"
    results = {}
    for name, run in parts.items():
        if args.only and name not in args.only.split(","):
            continue
        start = time.perf_counter()
        results[name] = run(rng, args.smoke)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(results[name])[:600], flush=True)
    if not args.smoke:  # merge with the parts other runs wrote
        merged = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(merged | results, indent=1))


if __name__ == "__main__":
    main()
