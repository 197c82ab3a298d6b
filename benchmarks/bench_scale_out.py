"""Weak scaling of `run_sweep` over the local devices: D devices, D times the chunks.

The Fig. 3(a) setting per system (SA, n = 32, d = 2, t <= 30, Tsit5 rtol = atol = 1e-4,
float32, clustered fraction at 31 times), one β for every chunk so that all chunks cost the
same. For each device count D the sweep has D x `--chunks-per-device` chunks of
`--chunk-size` systems; a first run into a scratch directory compiles the program on every
device, then `--repeats` timed runs into fresh directories give the least wall time (compile
excluded).
Efficiency = wall(1 device) / wall(D devices) (1 is perfect weak scaling).

On a CPU the devices are simulated (`--xla_force_host_platform_device_count`, set here before
JAX starts): they share the machine's cores and XLA's CPU thread pool, so the efficiency
measures how well chunks overlap on those cores, not a speed-up from more hardware.

    PYTHONPATH=.:benchmarks python benchmarks/bench_scale_out.py [--devices 1 2 4]
"""

import argparse
import os
import sys

if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    _parser.add_argument("--chunks-per-device", type=int, default=2)
    _parser.add_argument("--chunk-size", type=int, default=64)
    _parser.add_argument("--beta", type=float, default=4.0)
    _parser.add_argument("--repeats", type=int, default=3, help="timed runs; the least wall")
    ARGS = _parser.parse_args()
    if "jax" not in sys.modules and "--xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={max(ARGS.devices)}"
        )

import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from _common import report, table  # noqa: E402

from transformer_flows._compilation_cache import _nan_checks  # noqa: E402
from transformer_flows.experiment import config_from_dict, run_sweep  # noqa: E402


def config(systems: int, chunk_size: int, beta: float):
    return config_from_dict(
        {
            "name": "weak_scaling",
            "model": {"field": "SA", "n": 32, "d": 2},
            "sweep": {"beta": [beta], "starts": systems, "seed": 0, "chunk_size": chunk_size},
            "time": {"t1": 30.0, "num": 31},
            "precision": "float32",
            "solver": {"name": "tsit5", "rtol": 1e-4, "atol": 1e-4},
            "observables": {"names": ["clustered_fraction"]},
            "figures": [],
        }
    )


def timed(cfg, devices) -> tuple[float, float, object]:
    with tempfile.TemporaryDirectory() as folder:
        wall, cpu = time.perf_counter(), time.process_time()
        dataset = run_sweep(cfg, folder, progress=False, devices=devices)
        return time.perf_counter() - wall, time.process_time() - cpu, dataset


def main():
    _nan_checks()  # as `transformer-flows run`: no host callbacks in the programs
    local = jax.local_devices()
    if max(ARGS.devices) > len(local):
        raise SystemExit(f"--devices {ARGS.devices}: only {len(local)} local devices")
    rows, base, reference = [], None, None
    for count in ARGS.devices:
        chunks = count * ARGS.chunks_per_device
        cfg = config(chunks * ARGS.chunk_size, ARGS.chunk_size, ARGS.beta)
        devices = local[:count]
        timed(cfg, devices)  # compiles on every device
        wall, cpu, dataset = min(
            (timed(cfg, devices) for _ in range(ARGS.repeats)), key=lambda run: run[0]
        )
        first = dataset["clustered_fraction"].values[
            ..., : ARGS.chunks_per_device * ARGS.chunk_size, :
        ]
        if reference is None:
            base, reference = wall, first
        same = bool((first == reference).all())
        steps = float(dataset["num_steps"].mean())
        rows.append([count, chunks, chunks * ARGS.chunk_size, wall, cpu, base / wall, steps, same])
    body = table(
        [
            "devices",
            "chunks",
            "systems",
            "wall s",
            "process CPU s",
            "efficiency wall(1)/wall(D)",
            "mean steps",
            "first chunks bitwise = 1 device",
        ],
        rows,
    )
    body += (
        f"\n\nSA n = 32, d = 2, t <= 30, Tsit5 1e-4 float32, beta = {ARGS.beta}, "
        f"{ARGS.chunk_size} systems per chunk, {ARGS.chunks_per_device} chunks per device; "
        f"{jax.default_backend()} devices: {[d.device_kind for d in local[: max(ARGS.devices)]]}; "
        f"os.cpu_count() = {os.cpu_count()}."
    )
    report("bench_scale_out", "Weak scaling of run_sweep over local devices", body)


if __name__ == "__main__":
    main()
