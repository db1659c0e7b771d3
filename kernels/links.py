"""Objective output transforms (raw margin -> prediction), written as LightGBM's C++ writes them."""

from __future__ import annotations

import numpy as np

from scoreline.kernels.policy import jit

__all__ = [
    "LINK_IDENTITY",
    "LINK_SIGMOID",
    "LINK_SOFTMAX",
    "LINK_SIGMOID_EACH",
    "LINK_EXP",
    "LINK_SIGNED_SQUARE",
    "LINK_LOG1P_EXP",
    "apply_link",
]

# Codes passed to kernels as plain integers (kernels take no Python objects).
LINK_IDENTITY = 0  # regression family, ranking, custom objectives
LINK_SIGMOID = 1  # binary (sigmoid:k) and cross_entropy (k = 1)
LINK_SOFTMAX = 2  # multiclass
LINK_SIGMOID_EACH = 3  # multiclassova: a sigmoid per class
LINK_EXP = 4  # poisson, gamma, tweedie
LINK_SIGNED_SQUARE = 5  # regression family trained with reg_sqrt
LINK_LOG1P_EXP = 6  # cross_entropy_lambda


@jit
def apply_link(row, link, param):
    """Transform one row of raw scores (length num_class) in place.

    The expressions follow LightGBM's ConvertOutput term by term so the results agree to the last
    bit: ``1 / (1 + exp(-k * x))``, softmax with the maximum subtracted first and the sum taken in
    class order, ``sign(x) * x * x``, ``log1p(exp(x))``.
    """
    if link == LINK_IDENTITY:
        return
    n = row.shape[0]
    if link == LINK_SIGMOID or link == LINK_SIGMOID_EACH:
        for k in range(n):
            row[k] = 1.0 / (1.0 + np.exp(-param * row[k]))
    elif link == LINK_SOFTMAX:
        wmax = row[0]
        for k in range(1, n):
            # std::max(input[i], wmax) is (input[i] < wmax) ? wmax : input[i]: a NaN input wins.
            if not (row[k] < wmax):
                wmax = row[k]
        wsum = 0.0
        for k in range(n):
            row[k] = np.exp(row[k] - wmax)
            wsum += row[k]
        for k in range(n):
            row[k] = row[k] / wsum
    elif link == LINK_EXP:
        for k in range(n):
            row[k] = np.exp(row[k])
    elif link == LINK_SIGNED_SQUARE:
        for k in range(n):
            x = row[k]
            sign = 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)
            row[k] = sign * x * x
    elif link == LINK_LOG1P_EXP:
        for k in range(n):
            row[k] = np.log1p(np.exp(row[k]))
