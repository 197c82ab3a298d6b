"""The step bias of the noisy particle solves at n = ∞: the transfer operator of each scheme.

SA on the circle, dθ = v[ρ](θ) dt + sqrt(2/κ) dW, with the mean-field velocity
v[ρ](θ) = ∫ e^{β cos(φ-θ)} sin(φ-θ) ρ(φ) dφ / ∫ e^{β cos(φ-θ)} ρ(φ) dφ. One Euler–Maruyama step
maps a density ρ to ρ'(θ') = ∫ ρ(θ) G(θ' - θ - h v[ρ](θ)) dθ, G the wrapped Gaussian of variance
2h/κ: this is the particle scheme with infinitely many particles, so its fixed point's order
parameter r(h) is the scheme's stationary value without finite-n error. Iterating it on a grid
(M points, far finer than the noise width) for h = 0.1, 0.05, 0.025 and fitting r(h) = r₀ + a h +
b h² separates the step bias from the finite-n error of the particle runs in REPRODUCTION.md,
and r₀ is compared with `theory.stationary_order_parameter` (exact n = ∞, h = 0).

    python experiments/noise_step_bias.py            # SA, β = 1, κ = 4 (a few seconds)
"""

import argparse

import numpy as np

import transformer_flows as tf


def velocity(rho, grid, beta):
    difference = grid[None, :] - grid[:, None]  # φ - θ, rows θ
    weights = np.exp(beta * (np.cos(difference) - 1)) * rho[None, :]
    return (weights * np.sin(difference)).sum(1) / weights.sum(1)


def stationary_r(beta, kappa, h, points, steps):
    grid = np.linspace(-np.pi, np.pi, points, endpoint=False)
    spacing = 2 * np.pi / points
    rho = np.exp(2 * np.cos(grid))
    rho /= rho.sum() * spacing
    variance = 2 * h / kappa
    for _ in range(steps):
        target = grid[:, None] - grid[None, :] - h * velocity(rho, grid, beta)[None, :]
        target = (target + np.pi) % (2 * np.pi) - np.pi
        images = target[..., None] + 2 * np.pi * np.arange(-3, 4)
        kernel = np.exp(-(images**2) / (2 * variance)).sum(-1) / np.sqrt(2 * np.pi * variance)
        new = kernel @ rho * spacing
        new /= new.sum() * spacing
        if np.max(np.abs(new - rho)) < 1e-13:
            rho = new
            break
        rho = new
    return float(np.abs(np.sum(rho * np.exp(1j * grid)) * spacing))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--kappa", type=float, default=4.0)
    parser.add_argument("--points", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    steps = (0.1, 0.05, 0.025)
    values = [stationary_r(args.beta, args.kappa, h, args.points, args.steps) for h in steps]
    coefficients = np.polyfit(steps, values, 2)
    theory = tf.theory.stationary_order_parameter(kappa=args.kappa, beta=args.beta, d=2, model="SA")
    print(f"SA, β = {args.beta:g}, κ = {args.kappa:g}, grid {args.points}")
    print("| h | r(h), Euler–Maruyama at n = ∞ |")
    print("|---|---|")
    for h, r in zip(steps, values, strict=True):
        print(f"| {h:g} | {r:.5f} |")
    print(f"extrapolated r(0) = {coefficients[2]:.5f}, slope dr/dh = {coefficients[1]:.4f}")
    print(f"theory (n = ∞, h = 0): {theory:.5f}")


if __name__ == "__main__":
    main()
