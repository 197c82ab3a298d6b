"""Per-pair diagnostics of a measure-to-measure fit (configs/fit_measure*.yaml): for each
source → target pair, the MMD² of the fitted flow and its own noise floor, the share of tokens
that do not arrive (cosine < 0.9 with the nearest target mean), the share of inputs where most
tokens do not arrive, the share of tokens at another pair's target instead, the median cosine,
and how the tokens divide between the target caps.

    python experiments/fit_measure_pairs.py out/fit_measure [--inputs 64] [--seed 99]

(the directory of a finished `transformer-flows fit`; tables in docs/fitting.md).
"""

import argparse

import jax
import numpy as np

import transformer_flows as tf
from transformer_flows.experiment import load_config, load_fitted_model
from transformer_flows.experiment._build import build_flow, build_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output directory of a finished fit")
    parser.add_argument("--inputs", type=int, default=64, help="held-out inputs per pair")
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--arrived", type=float, default=0.9, help="cosine threshold")
    args = parser.parse_args()
    config = load_config(f"{args.out}/config.yaml")
    model = load_fitted_model(config, f"{args.out}/params.eqx")
    task, flow = build_task(config), build_flow(config)
    field = tf.as_field(model)
    final = jax.jit(jax.vmap(lambda x: flow.final(field, x)))
    mmd2 = jax.vmap(tf.sphere_mmd2, in_axes=(0, 0, None))
    for p, (source, target) in enumerate(zip(task.sources, task.targets, strict=True)):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), p), 3 * args.inputs)
        keys = keys.reshape(args.inputs, 3)
        x0 = jax.vmap(lambda k: source(k, task.n))(keys[:, 0])
        y = jax.vmap(lambda k: target(k, task.num_target_samples))(keys[:, 1])
        other = jax.vmap(lambda k: target(k, task.n))(keys[:, 2])
        x_final = np.asarray(final(x0))
        means = np.asarray(target.means)
        cosines = x_final @ means.T  # (inputs, n, caps)
        best = cosines.max(-1)
        missed = best < args.arrived
        shares = [float(np.mean(cosines.argmax(-1) == c)) for c in range(len(means))]
        others = np.concatenate([np.asarray(t.means) for q, t in enumerate(task.targets) if q != p])
        misrouted = missed & ((x_final @ others.T).max(-1) >= args.arrived)
        print(
            f"pair {p}: MMD² {float(mmd2(x_final, y, task.kappa).mean()):.4f} "
            f"(floor {float(mmd2(other, y, task.kappa).mean()):.4f}); tokens not arrived "
            f"{missed.mean():.3f}; inputs with > 50% not arrived "
            f"{np.mean(missed.mean(1) > 0.5):.3f}; of the tokens, at another pair's target "
            f"{misrouted.mean():.3f}; median cosine "
            f"{np.median(best):.3f}; shares of the target caps {np.round(shares, 3)}"
        )


if __name__ == "__main__":
    main()
