"""Wendel's theorem: the probability that random tokens fit in an open hemisphere."""

import numpy as np
from scipy import special

from ._checks import Numbers, as_output, check_count_array


def wendel_probability(n: Numbers, d: Numbers) -> np.ndarray | float:
    """P(∃ w : <x_i, w> > 0 for all i) for n i.i.d. uniform points on S^{d-1} (Thm 6.7):
    2^{-(n-1)} Σ_{k=0}^{d-1} C(n-1, k), and 1 for d >= n.

    By Lemma 6.4 such tokens collapse to one cluster, so this lower-bounds the clustering
    probability. It is the binomial CDF P(Bin(n-1, 1/2) <= d-1) (scipy.special.bdtr,
    accurate in the tail: n = 32, d = 2 gives 32/2^31 ≈ 1.49e-8). n >= 1, d >= 1;
    broadcasts; a float64 numpy array (a float for scalar arguments).
    """
    n = check_count_array(n, "n", 1)
    d = check_count_array(d, "d", 1)
    n, d = np.broadcast_arrays(n, d)
    return as_output(np.where(d >= n, 1.0, special.bdtr(d - 1, n - 1, 0.5)))
