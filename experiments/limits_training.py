"""Training random transformers under the Bordelon–Chaudhry–Pehlevan parameterisation
(issue 19, item 3; docs/limits_training.md): centred output (f − f₀)/γ₀, SGD at
η·N·H·γ₀²·L^{2α_L−1}, full-batch on a toy sequence task.

Task: P = 16 sequences of n = 4 tokens z ∈ R^4 (standard normal), embedded in d_model D = N·H by a
fixed Gaussian matrix and put on the sphere; target y = 2 cos(z_1, z_2) (needs the tokens to
interact). Post-LN `random_transformer`, read-out wᵀ x̄^L/√D.

    python experiments/limits_training.py heads --out out/limits_training   (≈ 4 CPU min)
    python experiments/limits_training.py depth --out out/limits_training   (≈ 3 CPU min)
    python experiments/limits_training.py trajectories --out out/limits_training   (≈ 1 CPU min)

`heads`: across-head variance of the attention logits after training against N (α_A = 1, ½),
H = 4, L = 2: of A_h(T) and of the learned part A_h(T) − A_h(0); loss curves across N.
`trajectories`: the token trajectories through depth recorded at steps 0, 100 and 1000
(N = 16, H = 4, L = 8): the mean token cosine and the distance travelled, layer by layer.
`depth`: relative movement |W(T) − W(0)|_F/|W(0)|_F of the key/query weights against L
(α_L = 1, ½), N = 8, H = 2. Slopes are least-squares log-log fits with 95% bootstrap intervals
over seeds.
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import transformer_flows as tf
from transformer_flows.limits import _training as tr


def toy_task(key, dim, sequences=16, tokens=4, d_in=4):
    kz, ke = jax.random.split(key)
    z = jax.random.normal(kz, (sequences, tokens, d_in))
    embed = jax.random.normal(ke, (dim, d_in))
    x0 = tf.normalize(z @ embed.T)
    unit = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    return x0, 2.0 * jnp.sum(unit[:, 0] * unit[:, 1], axis=-1)


def train(
    seed,
    *,
    heads,
    head_dim,
    depth,
    alpha_A,
    alpha_L,
    eta,
    gamma0,
    steps,
    optimizer="sgd",
    momentum=0.0,
):
    transformer = tf.limits.random_transformer(
        jax.random.key(100 + seed),
        depth=depth,
        heads=heads,
        head_dim=head_dim,
        alpha_A=alpha_A,
        alpha_L=alpha_L,
        dtype=jnp.float32,
    )
    model = tr.init_readout_model(jax.random.key(200 + seed), transformer)
    x0, y = toy_task(jax.random.key(seed), heads * head_dim)
    if optimizer == "sgd":
        lr = tr.sgd_learning_rate(
            eta, heads=heads, head_dim=head_dim, depth=depth, gamma0=gamma0, alpha_L=alpha_L
        )
    else:
        lr = tr.adam_learning_rate(eta, heads=heads, head_dim=head_dim)
    # faithful=True (the default): the authors' per-parameter rates (`learning_rate_factors`).
    result = tr.train_readout_model(
        model,
        x0,
        y,
        gamma0=gamma0,
        learning_rate=lr,
        steps=steps,
        optimizer=optimizer,
        momentum=momentum,
    )
    return model, result, x0


def logits(model, x0):
    """A_h,ij per layer and input: (P, L, H, n, n)."""
    t = model.transformer
    mids = (jnp.arange(t.depth) + 0.5) / t.depth
    return jax.vmap(lambda x: jax.vmap(lambda s: t.logits(s, x))(mids))(x0)


def fit_slope(xs, values):
    """values (len(xs), seeds): slope of log mean-over-seeds, and a 95% bootstrap interval."""
    values = np.asarray(values)
    slope = np.polyfit(np.log(xs), np.log(values.mean(1)), 1)[0]
    rng = np.random.default_rng(0)
    seeds = values.shape[1]
    boot = [
        np.polyfit(np.log(xs), np.log(values[:, rng.integers(0, seeds, seeds)].mean(1)), 1)[0]
        for _ in range(2000)
    ]
    return float(slope), [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]


def heads_part(args, plt):
    widths = args.widths
    out, curves = {}, {}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for alpha_A in args.alpha_A:
        stats = {"var_final": [], "var_learned": [], "var_initial": [], "var_weights": []}
        for n in widths:
            rows = {k: [] for k in stats}
            for seed in range(args.seeds):
                start = time.perf_counter()
                model, result, x0 = train(
                    seed,
                    heads=4,
                    head_dim=n,
                    depth=2,
                    alpha_A=alpha_A,
                    alpha_L=1.0,
                    eta=args.eta,
                    gamma0=args.gamma0,
                    steps=args.steps,
                    momentum=args.momentum,
                )
                a0, a1 = logits(model, x0), logits(result.model, x0)
                # var over heads (axis 2 of (P, L, H, n, n)), mean over inputs, layers, pairs.
                rows["var_final"].append(float(jnp.mean(jnp.var(a1, axis=2, ddof=1))))
                rows["var_learned"].append(float(jnp.mean(jnp.var(a1 - a0, axis=2, ddof=1))))
                rows["var_initial"].append(float(jnp.mean(jnp.var(a0, axis=2, ddof=1))))
                weights = jax.nn.softmax(a1, axis=-1)
                rows["var_weights"].append(float(jnp.mean(jnp.var(weights, axis=2, ddof=1))))
                curves[("sgd", alpha_A, n, seed)] = np.asarray(result.losses)
                print(
                    f"alpha_A={alpha_A} N={n} seed={seed}: var {rows['var_final'][-1]:.3g} "
                    f"learned {rows['var_learned'][-1]:.3g} loss "
                    f"{curves[('sgd', alpha_A, n, seed)][-1]:.4f} "
                    f"({time.perf_counter() - start:.1f} s)",
                    flush=True,
                )
            for k in stats:
                stats[k].append(rows[k])
        key = f"alpha_A={alpha_A}"
        out[key] = {"widths": widths}
        for k, v in stats.items():
            out[key][k] = np.mean(v, 1).tolist()
            out[key]["slope_" + k.removeprefix("var_")] = fit_slope(widths, v)
        out[key]["slope_learned_last3"] = fit_slope(widths[-3:], stats["var_learned"][-3:])
        ax = axes[0] if alpha_A == 1.0 else axes[1]
        for k, marker, label in (
            ("var_final", "o-", "var$_h$ A(T)"),
            ("var_initial", "^:", "var$_h$ A(0)"),
            ("var_learned", "s-", "var$_h$ [A(T) − A(0)]"),
        ):
            ax.loglog(widths, np.mean(stats[k], 1), marker, label=label)
        ax.set_title(
            f"α_A = {alpha_A}: slopes {out[key]['slope_final'][0]:.2f}, "
            f"{out[key]['slope_learned'][0]:.2f}",
            fontsize=10,
        )
        ax.set_xlabel("head dimension N (H = 4)")
        ax.legend(fontsize=8)
    if args.skip_adam or 1.0 not in args.alpha_A:
        fig.tight_layout()
        return out, fig
    # Loss curves across widths at fixed γ₀ (α_A = 1), SGD and Adam: sup distance to the widest.
    for seed in range(args.seeds):
        for n in widths:
            result = train(
                seed,
                heads=4,
                head_dim=n,
                depth=2,
                alpha_A=1.0,
                alpha_L=1.0,
                eta=args.adam_eta,
                gamma0=args.gamma0,
                steps=args.steps,
                optimizer="adam",
            )[1]
            curves[("adam", 1.0, n, seed)] = np.asarray(result.losses)
            print(f"adam N={n} seed={seed}: loss {curves[('adam', 1.0, n, seed)][-1]:.4f}")
    for optimizer, style in (("sgd", "-"), ("adam", "--")):
        per_seed = np.array(
            [[curves[(optimizer, 1.0, n, s)] for s in range(args.seeds)] for n in widths]
        )
        mean_curve = per_seed.mean(1)
        dist = np.max(np.abs(per_seed[:-1] - per_seed[-1:]), axis=-1)  # (widths-1, seeds)
        out[f"loss_collapse_{optimizer}"] = {
            "sup_to_widest_seed_mean": dict(
                zip(map(str, widths[:-1]), dist.mean(1).tolist(), strict=True)
            ),
            "sup_to_widest_seed_sd": dict(
                zip(map(str, widths[:-1]), dist.std(1, ddof=1).tolist(), strict=True)
            ),
            "slope": fit_slope(widths[:-1], dist),
            "final_loss": dict(zip(map(str, widths), mean_curve[:, -1].tolist(), strict=True)),
            "initial_loss": float(mean_curve[0, 0]),
        }
        for n, curve in zip(widths, mean_curve, strict=True):
            axes[2].plot(curve, style, label=f"{optimizer}, N = {n}", lw=1)
    axes[2].set_xlabel("step")
    axes[2].set_ylabel("train loss (mean over seeds)")
    axes[2].set_title(f"α_A = 1, γ₀ = {args.gamma0}: SGD (solid), Adam (dashed)", fontsize=10)
    axes[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return out, fig


def depth_part(args, plt):
    import matplotlib.ticker as matplotlib_ticker

    depths = [2, 4, 8, 16, 32]
    out = {}
    fig, (ax, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for alpha_L in (1.0, 0.5):
        moves, logit_moves = [], []
        for depth in depths:
            row, row_a = [], []
            for seed in range(args.depth_seeds):
                start = time.perf_counter()
                model, result, x0 = train(
                    seed,
                    heads=2,
                    head_dim=8,
                    depth=depth,
                    alpha_A=1.0,
                    alpha_L=alpha_L,
                    eta=args.eta,
                    gamma0=args.gamma0,
                    steps=args.depth_steps,
                )
                w0, w1 = model.transformer.weights, result.model.transformer.weights
                num = sum(
                    float(jnp.sum((a - b) ** 2))
                    for a, b in ((w1.query, w0.query), (w1.key, w0.key))
                )
                den = sum(float(jnp.sum(a**2)) for a in (w0.query, w0.key))
                row.append(np.sqrt(num / den))
                # The attention update itself: RMS of A(T) − A(0) over layers, inputs, heads.
                delta = logits(result.model, x0) - logits(model, x0)
                row_a.append(float(jnp.sqrt(jnp.mean(delta**2))))
                print(
                    f"alpha_L={alpha_L} L={depth} seed={seed}: move {row[-1]:.3g} loss "
                    f"{float(result.losses[-1]):.4f} ({time.perf_counter() - start:.1f} s)",
                    flush=True,
                )
            moves.append(row)
            logit_moves.append(row_a)
        key = f"alpha_L={alpha_L}"
        out[key] = {
            "depths": depths,
            "kq_movement": np.mean(moves, 1).tolist(),
            "kq_movement_seed_sd": np.std(moves, 1, ddof=1).tolist(),
            "slope": fit_slope(depths, moves),
            "logit_update_rms": np.mean(logit_moves, 1).tolist(),
            "slope_logit_update": fit_slope(depths, logit_moves),
        }
        ax.loglog(
            depths,
            np.mean(moves, 1),
            "o-",
            label=f"α_L = {alpha_L}: slope {out[key]['slope'][0]:.2f}",
        )
        ax_a.loglog(
            depths,
            np.mean(logit_moves, 1),
            "s-",
            label=f"α_L = {alpha_L}: slope {out[key]['slope_logit_update'][0]:.2f}",
        )
    for axis, ylabel in (
        (ax, "key/query movement |ΔW|/|W(0)| (Frobenius)"),
        (ax_a, "attention update RMS[A(T) − A(0)]"),
    ):
        axis.set_xticks(depths, [str(d) for d in depths])
        axis.xaxis.set_minor_locator(matplotlib_ticker.NullLocator())
        axis.set_xlabel("depth L (N = 8, H = 2)")
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=8)
    fig.tight_layout()
    return out, fig


def trajectories_part(args, plt):
    """Token trajectories through depth recorded during training (steps 0, 100, 1000): the mean
    off-diagonal cosine of the tokens layer by layer, averaged over the inputs."""
    steps = (0, 100, 1000)
    heads, head_dim, depth = 4, 16, 8
    transformer = tf.limits.random_transformer(
        jax.random.key(100),
        depth=depth,
        heads=heads,
        head_dim=head_dim,
        alpha_A=1.0,
        alpha_L=1.0,
        dtype=jnp.float32,
    )
    model = tr.init_readout_model(jax.random.key(200), transformer)
    x0, y = toy_task(jax.random.key(0), heads * head_dim)
    lr = tr.sgd_learning_rate(
        args.eta, heads=heads, head_dim=head_dim, depth=depth, gamma0=args.gamma0, alpha_L=1.0
    )
    result = tr.train_readout_model(
        model, x0, y, gamma0=args.gamma0, learning_rate=lr, steps=steps[-1], record_steps=steps
    )
    cosine = jax.vmap(jax.vmap(tf.limits.mean_offdiagonal_cosine))  # (P, L + 1)
    out = {"steps": list(steps), "loss": [float(result.losses[s]) for s in steps]}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for s in steps:
        traj = result.trajectories[s]  # (P, L + 1, n, D)
        per_layer = np.asarray(cosine(traj)).mean(0)
        out[f"mean_cosine_step_{s}"] = per_layer.tolist()
        axes[0].plot(per_layer, "o-", label=f"step {s} (loss {float(result.losses[s]):.3f})")
    # How far the tokens travel through depth: mean over inputs and tokens of |x^l − x^0|.
    for s in steps:
        traj = np.asarray(result.trajectories[s])
        travel = np.linalg.norm(traj - traj[:, :1], axis=-1).mean(axis=(0, 2))
        out[f"mean_travel_step_{s}"] = travel.tolist()
        axes[1].plot(travel, "o-", label=f"step {s}")
    axes[0].set(xlabel="layer", ylabel="mean off-diagonal cosine (mean over inputs)")
    axes[0].set_title(f"N = {head_dim}, H = {heads}, L = {depth}, α_A = α_L = 1", fontsize=10)
    axes[1].set(xlabel="layer", ylabel="mean |x^l_i − x^0_i| (mean over inputs, tokens)")
    axes[1].set_title("distance travelled through depth", fontsize=10)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return out, fig


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("part", choices=["heads", "depth", "trajectories"])
    parser.add_argument("--out", default="out/limits_training")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--depth-steps", type=int, default=100)
    parser.add_argument("--depth-seeds", type=int, default=4)
    parser.add_argument("--eta", type=float, default=0.01)
    parser.add_argument("--adam-eta", type=float, default=0.02)
    parser.add_argument("--gamma0", type=float, default=1.0)
    parser.add_argument(
        "--momentum",
        type=float,
        default=0.0,
        help="heavy-ball momentum μ of the SGD runs of `heads` (0: plain SGD, the documented "
        "runs; 0.9: the authors' optimizer)",
    )
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=[8, 16, 32, 64, 128],
        help="head dimensions N of `heads`",
    )
    parser.add_argument(
        "--alpha-A",
        type=float,
        nargs="+",
        default=[1.0, 0.5],
        help="logit exponents α_A of `heads`",
    )
    parser.add_argument(
        "--skip-adam", action="store_true", help="`heads` without the loss-collapse runs"
    )
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"heads": heads_part, "depth": depth_part, "trajectories": trajectories_part}
    results, fig = parts[args.part](args, plt)
    results["settings"] = vars(args)
    (out / f"{args.part}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    fig.savefig(pathlib.Path(args.figures) / f"limits_training_{args.part}.png", dpi=120)


if __name__ == "__main__":
    main()
