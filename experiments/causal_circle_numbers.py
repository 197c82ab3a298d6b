"""The numbers of REPRODUCTION.md's causal-circle section, from a saved run of
configs/causal_circle.yaml:

    transformer-flows run configs/causal_circle.yaml --out out/causal_circle
    python experiments/causal_circle_numbers.py out/causal_circle

Rényi centres of x(0) at δ = 4β^{-1/2} (`renyi_centres`), the cluster count over time, how far
token 1 moved, when each later centre token joins an earlier centre's cluster, and how far the
final clusters sit from the centre tokens that stayed.
"""

import sys

import numpy as np
import xarray as xr

from transformer_flows.experiment._plot import renyi_centres


def main(run: str) -> None:
    ds = xr.open_dataset(f"{run}/dataset.nc")
    x = ds["positions"].values.squeeze()  # (time, token, 2)
    t = ds["time"].values
    counts = ds["cluster_count"].values.squeeze()
    beta = float(ds["beta"].values.squeeze())
    delta = 4 / np.sqrt(beta)
    centres = renyi_centres(x[0], delta)
    print(
        f"β = {beta:g}, δ = {delta:.3f}: {len(centres)} Rényi centres, tokens (1-based)",
        [c + 1 for c in centres],
    )
    gaps = [np.arccos(np.clip(x[0, a] @ x[0, b], -1, 1)) for a in centres for b in centres if a < b]
    print(f"smallest angle between two centres at t = 0: {min(gaps):.3f} rad")
    for time in (0, 5, 10, 18, 30, 35, 50, 55, 75, 100, 125, 137.5, 150):
        k = int(np.argmin(np.abs(t - time)))
        print(f"t = {t[k]:g}: {int(counts[k])} clusters")
    print("max |x_1(t) - x_1(0)| =", float(np.abs(x[:, 0] - x[None, 0, 0]).max()))
    joined = []
    for c in centres[1:]:
        for o in (o for o in centres if o < c):
            close = (x[:, c] * x[:, o]).sum(-1) >= 1 - 1e-3
            if close.any():
                joined.append(c)
                first = t[np.argmax(close)]
                print(f"centre token {c + 1} joins token {o + 1}'s cluster at t = {first:g}")
    stay = [c for c in centres if c not in joined]
    angle = np.arctan2(x[..., 1], x[..., 0])
    moved = np.abs((angle[:, stay] - angle[0, stay] + np.pi) % (2 * np.pi) - np.pi).max()
    print("centre tokens that stay:", [c + 1 for c in stay], f"move at most {moved:.1e} rad")
    final = x[-1]
    labels = -np.ones(len(final), int)
    for i in range(len(final)):
        if labels[i] < 0:
            labels[(final @ final[i] >= 1 - 1e-3) & (labels < 0)] = i
    means = [final[labels == lab].mean(0) for lab in np.unique(labels)]
    far = max(
        min(np.arccos(np.clip(m @ x[0, c] / np.linalg.norm(m), -1, 1)) for c in stay) for m in means
    )
    print(f"each final cluster within {far:.1e} rad of a staying centre's x(0)")
    print("token 1's cluster at the end:", int(np.sum(final @ final[0] >= 1 - 1e-3)), "tokens")


if __name__ == "__main__":
    main(sys.argv[1])
