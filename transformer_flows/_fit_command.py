"""`transformer-flows fit CONFIG --out DIR [key=value ...]`: build the model, task, flow and
optimizer from a YAML config, fit, and write parameters, metrics and figures.

Until the top-level CLI registers it: `python -m transformer_flows._fit_command CONFIG --out DIR`.
Rerunning the same command with the same DIR resumes from `DIR/checkpoint.eqx`.
"""

import argparse
import json
import pathlib
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from ._fit import (
    FlowOptions,
    LowRank,
    LowRankAttention,
    as_field,
    evaluate,
    fit,
    trainable_spec,
)
from ._losses import (
    AbstractTask,
    CapMixture,
    LabeledInputs,
    LabeledTargets,
    TargetMeasure,
    TargetPartition,
)
from ._overrides import apply_overrides
from ._solver._fixed_step import RK4, GeodesicEuler, NormalizedEuler

_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "normalized_euler": NormalizedEuler,
    "geodesic_euler": GeodesicEuler,
    "rk4": RK4,
}

# What `--smoke` changes: a run of a few seconds that still exercises every output.
_SMOKE = {("train", "steps"): 2, ("train", "batch_size"): 2, ("train", "eval_size"): 4,
          ("train", "eval_every"): 1, ("train", "checkpoint_every"): 1}


def _choice(section: str, key: str, value, options) -> object:
    if value not in options:
        raise ValueError(f"`{section}.{key}` must be one of {sorted(options)}, got {value!r}.")
    return options[value]


def _points(value, name: str, dim: int, seed: int) -> np.ndarray:
    """A list of points, or {random: k, seed: s}: k Gaussian directions."""
    if isinstance(value, dict):
        if set(value) - {"random", "seed"} or "random" not in value:
            raise ValueError(
                f"`task.{name}` as a mapping must be {{random: k, seed: s}}, got {value}."
            )
        key = jax.random.key(value.get("seed", seed))
        return np.asarray(jax.random.normal(key, (int(value["random"]), dim)))
    points = np.asarray(value, dtype=float)
    if points.ndim != 2 or points.shape[1] != dim:
        raise ValueError(
            f"`task.{name}` must be a list of {dim}-dimensional points (model.dim = {dim}), "
            f"got shape {points.shape}."
        )
    return points


def build_model(config: dict):
    """The initial model: random Gaussian N(0, init_scale²/d) weights (fixed by `seed`), heads,
    layers and low rank as configured; names in `model.identity` stay None (the identity)."""
    spec = config["model"]
    d, heads, layers, rank = spec["dim"], spec["heads"], spec["layers"], spec["rank"]
    kind = _choice("model", "kind", spec["kind"], {"sa": True, "usa": False})
    identity = set(spec["identity"] or [])
    start_at_identity = set(spec["start_at_identity"] or [])
    for option, names in (("identity", identity), ("start_at_identity", start_at_identity)):
        if names - {"Q", "K", "V"}:
            raise ValueError(f"`model.{option}` may list Q, K, V only, got {sorted(names)}.")
    lead = (() if layers is None else (layers,)) + (() if heads is None else (heads,))
    scale = spec["init_scale"] / np.sqrt(d)
    keys = dict(zip("QKV", jax.random.split(jax.random.key(config["seed"]), 3)))

    def weight(name):
        if name in identity:
            return None
        if name in start_at_identity:
            return jnp.broadcast_to(jnp.eye(d), (*lead, d, d))
        if rank is None:
            return scale * jax.random.normal(keys[name], (*lead, d, d))
        left_key, right_key = jax.random.split(keys[name])
        # left @ rightᵀ has entries of variance rank·(scale²/sqrt(d))², i.e. scale²·rank/d.
        factor = np.sqrt(scale / np.sqrt(rank))
        return LowRank(factor * jax.random.normal(left_key, (*lead, d, rank)),
                       factor * jax.random.normal(right_key, (*lead, d, rank)))

    layer_duration = None if layers is None else config["flow"]["horizon"] / layers
    model = LowRankAttention(
        spec["beta"], weight("Q"), weight("K"), weight("V"), normalized=kind,
        layer_duration=layer_duration,
    )
    # Strong dtypes (β = 1.0 would be weakly typed), as `fit` returns them: one compilation
    # serves the initial and the fitted model.
    return jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf, dtype=leaf.dtype), model)


def build_task(config: dict) -> AbstractTask:
    spec, d, seed = config["task"], config["model"]["dim"], config["seed"]
    kind = spec["kind"]
    if kind == "measure":
        def mixture(entry, where):
            if not isinstance(entry, dict) or set(entry) != {"means", "spread"}:
                raise ValueError(
                    f"`task.pairs` {where} must be {{means: [...], spread: s}}, got {entry}."
                )
            return CapMixture(_points(entry["means"], "pairs.means", d, seed), entry["spread"])

        pairs = spec["pairs"]
        return TargetMeasure(
            [mixture(p["source"], "source") for p in pairs],
            [mixture(p["target"], "target") for p in pairs],
            n=spec["n"], num_target_samples=spec["num_target_samples"], kappa=spec["kappa"],
        )
    inputs = LabeledInputs(_points(spec["anchors"], "anchors", d, seed), spec["n"], spec["spread"])
    if kind == "labeled":
        return LabeledTargets(inputs, _points(spec["targets"], "targets", d, seed + 1))
    if kind == "partition":
        return TargetPartition(inputs, spec["margin"], spec["delta"])
    raise ValueError(
        f"`task.kind` must be one of ['labeled', 'measure', 'partition'], got {kind!r}."
    )


def build_flow(config: dict) -> FlowOptions:
    spec = config["flow"]
    solver = _choice("flow", "solver", spec["solver"], _SOLVERS)()
    if spec["adjoint"] == "recursive_checkpoint":
        adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=spec["checkpoints"])
    elif spec["adjoint"] == "backsolve":
        adjoint = diffrax.BacksolveAdjoint()
    else:
        raise ValueError(
            "`flow.adjoint` must be 'recursive_checkpoint' or 'backsolve', got "
            f"{spec['adjoint']!r}."
        )
    return FlowOptions(
        horizon=float(spec["horizon"]), solver=solver, dt0=spec["dt0"], rtol=spec["rtol"],
        atol=spec["atol"], max_steps=spec["max_steps"], adjoint=adjoint,
    )


def build_optimizer(config: dict) -> optax.GradientTransformation:
    spec = config["train"]
    steps, rate = spec["steps"], spec["learning_rate"]
    schedules = {
        "constant": lambda: optax.constant_schedule(rate),
        "cosine": lambda: optax.cosine_decay_schedule(rate, max(steps, 1)),
        "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
            0.0, rate, spec["warmup_steps"], max(steps, spec["warmup_steps"] + 1)
        ),
    }
    schedule = _choice("train", "schedule", spec["schedule"], schedules)()
    optimizer = _choice("train", "optimizer", spec["optimizer"],
                        {"adam": optax.adam, "sgd": optax.sgd})(schedule)
    if spec["clip_norm"] is None:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(spec["clip_norm"]), optimizer)


def load_fitted_model(config: dict, path) -> LowRankAttention:
    """The model written by `fit` to DIR/params.eqx, rebuilt from the same config."""
    return eqx.tree_deserialise_leaves(path, build_model(config))


def run_fit(config: dict, out: pathlib.Path, *, progress: bool = True) -> dict:
    """Fit as configured and write `params.eqx`, `metrics.json`, `config.yaml`, `loss.png`,
    `trajectories_before.png` and `trajectories_after.png` to `out`. Returns the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    model, task, flow = build_model(config), build_task(config), build_flow(config)
    train = config["train"]
    spec = trainable_spec(model, train["parameters"])
    started = time.perf_counter()
    result = fit(
        model, task, build_optimizer(config), key=jax.random.key(config["seed"]),
        num_steps=train["steps"], flow=flow, batch_size=train["batch_size"], filter_spec=spec,
        eval_every=train["eval_every"], eval_size=train["eval_size"],
        checkpoint=out / "checkpoint.eqx", checkpoint_every=train["checkpoint_every"],
        progress=progress,
    )
    wall = time.perf_counter() - started
    eqx.tree_serialise_leaves(out / "params.eqx", result.model)
    history = result.loss_history
    tail = history[-max(1, len(history) // 10):] if len(history) else np.array([np.nan])
    after = result.evaluations[-1]
    before = result.evaluations[0]
    if before["step"] != 0:  # resumed: score the initial model on the same held-out inputs
        heldout_key = jax.random.split(jax.random.key(config["seed"]))[1]
        before = {"step": 0, **evaluate(model, task, flow, heldout_key, train["eval_size"])}
    metrics = {
        "task": config["task"]["kind"],
        "headline": task.headline,
        "train_loss": float(np.mean(tail)),
        "train_loss_initial": float(history[0]) if len(history) else None,
        **{key: value for key, value in after.items() if key != "step"},
        **{f"{key}_before": value for key, value in before.items() if key != "step"},
        "steps": int(len(history)),
        "train_seconds": result.train_seconds,
        "first_step_seconds": result.first_step_seconds,
        "wall_seconds": wall,
        "beta": float(as_field(result.model).beta),
        "evaluations": result.evaluations,
        "loss_history": [float(v) for v in history],
    }
    if isinstance(task, TargetMeasure):
        metrics["heldout_mmd2_noise_floor"] = task.noise_floor(
            jax.random.key(1), train["eval_size"]
        )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _plot_loss(history, result.evaluations, task.headline, out / "loss.png")
    example_key = jax.random.key(config["seed"] + 12345)
    for name, fitted in (("before", model), ("after", result.model)):
        _plot_trajectories(fitted, task, flow, example_key, f"{name} fitting",
                           out / f"trajectories_{name}.png")
    return metrics


def _plot_loss(history, evaluations, headline, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(np.arange(1, len(history) + 1), history, lw=1)
    scale = "log" if np.all(history > 0) else "linear"
    left.set(xlabel="step", ylabel="training loss", yscale=scale)
    right.plot([e["step"] for e in evaluations], [e[headline] for e in evaluations], "o-")
    right.set(xlabel="step", ylabel=headline)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_trajectories(model, task, flow, key, title, path, num_saves: int = 60) -> None:
    """Token paths of one held-out input, coloured by label (targets as black stars, target
    measure samples as grey dots); d > 3 is drawn in the top-3 principal directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x0, aux = task.sample(key)
    xs = np.asarray(flow.trajectory(as_field(model), x0, num_saves).xs)  # (T, n, d)
    d = xs.shape[-1]
    if d == 3:
        basis = np.eye(3)
    else:
        flat = xs.reshape(-1, d)
        basis = np.linalg.svd(flat - flat.mean(0), full_matrices=False)[2][:3].T
    paths = xs @ basis
    colours = np.asarray(aux) if not isinstance(task, TargetMeasure) else np.zeros(xs.shape[1])
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(projection="3d")
    cmap = plt.get_cmap("tab10")
    for i in range(paths.shape[1]):
        ax.plot(*paths[:, i].T, color=cmap(int(colours[i]) % 10), lw=0.8, alpha=0.8)
    ax.scatter(*paths[0].T, c=[cmap(int(c) % 10) for c in colours], s=8, marker="o")
    ax.scatter(*paths[-1].T, c=[cmap(int(c) % 10) for c in colours], s=30, marker="D")
    if isinstance(task, LabeledTargets):
        ax.scatter(*(np.asarray(task.targets) @ basis).T, c="k", s=120, marker="*")
    if isinstance(task, TargetMeasure):
        ax.scatter(*(np.asarray(aux[1]) @ basis).T, c="0.5", s=6, marker=".")
    ax.set_title(f"{title} (t = 0 to {flow.horizon:g})" + ("" if d == 3 else ", PCA to 3-d"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _main(args: argparse.Namespace) -> int:
    config = yaml.safe_load(pathlib.Path(args.config).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{args.config} must hold a YAML mapping (see configs/fit_*.yaml).")
    config = apply_overrides(config, args.overrides)
    if args.smoke:
        for (section, key), value in _SMOKE.items():
            config[section][key] = value
    metrics = run_fit(config, pathlib.Path(args.out), progress=not args.quiet)
    summary = {key: metrics[key] for key in
               ("train_loss", metrics["headline"], f"{metrics['headline']}_before", "steps",
                "train_seconds", "wall_seconds")}
    print(json.dumps(summary, indent=2))
    return 0


def _add_options(parser: argparse.ArgumentParser, *, required_out: bool) -> None:
    parser.add_argument("--out", required=required_out, metavar="DIR", help="output directory")
    parser.add_argument("--smoke", action="store_true",
                        help="a few-second run (2 steps, tiny batches) that writes every output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_rest(args: argparse.Namespace) -> argparse.Namespace:
    """Options and key=value overrides in any order after CONFIG (argparse 3.11 cannot mix a
    `*` positional with options, so the subparser hands the rest over unparsed)."""
    rest = argparse.ArgumentParser(prog="transformer-flows fit CONFIG")
    _add_options(rest, required_out=args.out is None)
    rest.add_argument("overrides", nargs="*")
    parsed = rest.parse_intermixed_args(args.rest)
    return argparse.Namespace(
        config=args.config, out=parsed.out or args.out, smoke=args.smoke or parsed.smoke,
        quiet=args.quiet or parsed.quiet, overrides=parsed.overrides,
    )


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `fit` subcommand to an `argparse` subparsers object."""
    parser = subparsers.add_parser(
        "fit",
        help="learn Q, K, V and/or β by differentiating through the flow",
        description="Fit attention weights so that the flow maps random inputs to a target "
        "(labeled clusters, a partition, or a measure). Writes params.eqx, metrics.json, "
        "config.yaml, loss.png and trajectories_{before,after}.png to --out; rerunning with the "
        "same --out resumes from its checkpoint.eqx.",
    )
    parser.add_argument("config", help="YAML config, e.g. configs/fit_two_clusters.yaml")
    _add_options(parser, required_out=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="key=value",
                        help="override config entries, e.g. train.steps=50 flow.rtol=1e-4 "
                        "(options may come before or after them)")
    parser.set_defaults(func=lambda args: _main(_parse_rest(args)))
    return parser


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m transformer_flows._fit_command")
    _arguments = register(_parser.add_subparsers(dest="command", required=True))
    import sys

    _namespace = _parser.parse_args(["fit", *sys.argv[1:]])
    raise SystemExit(_namespace.func(_namespace))
