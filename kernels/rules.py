"""LightGBM's decision rules, defined once: kZeroThreshold and its band, decision_type bits, the category test.

The parser, the packer, the compiled and SIMD tiers and the CPU and CUDA kernels all read these
(docs/lightgbm-semantics.md states the rules). The scalar tests are ``register_jitable``: plain
Python functions that Numba code of any target (CPU ``@njit``, CUDA device code, the CUDA
simulator) can call, so the CPU and GPU kernels share one definition.
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

__all__ = [
    "BELOW_MINUS_K_ZERO",
    "CATEGORY_LIMIT",
    "DECISION_CATEGORICAL",
    "DECISION_DEFAULT_LEFT",
    "K_ZERO",
    "MISSING_NAN",
    "MISSING_NONE",
    "MISSING_ZERO",
    "category_index",
    "default_left",
    "effective_thresholds",
    "in_zero_band",
    "is_categorical",
    "missing_type",
    "nan_goes_left",
    "needs_zero_band",
    "valid_decision",
    "zero_goes_left",
]

# LightGBM drops |x| <= kZeroThreshold from a dense row before predicting (so such an x reads as
# 0.0). The constant is the float literal 1e-35f widened to double.
K_ZERO = float(np.float32(1e-35))
BELOW_MINUS_K_ZERO = float(np.nextafter(-K_ZERO, -np.inf))
# Categories at or beyond 2^31 (and +-inf) convert to INT_MIN on x86 and go right.
CATEGORY_LIMIT = 2147483648.0

# decision_type: bit 0 categorical, bit 1 default left, bits 2-3 the missing type.
DECISION_CATEGORICAL = 1
DECISION_DEFAULT_LEFT = 2
MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2


def is_categorical(decision):
    """Bit 0 of decision_type (an int or an int array)."""
    return (decision & DECISION_CATEGORICAL) == DECISION_CATEGORICAL


def default_left(decision):
    """Bit 1 of decision_type: missing values go left."""
    return (decision & DECISION_DEFAULT_LEFT) == DECISION_DEFAULT_LEFT


def missing_type(decision):
    """Bits 2-3 of decision_type: MISSING_NONE, MISSING_ZERO or MISSING_NAN (3 is invalid)."""
    return (decision >> 2) & 3


def valid_decision(decision):
    """decision_type values LightGBM writes: 0..15 without missing type 3."""
    return (decision >= 0) & (decision <= 15) & (missing_type(decision) != 3)


def zero_goes_left(threshold):
    """Where 0.0 (and the zero band) goes at a numeric split: left iff 0 <= threshold."""
    return 0.0 <= threshold


def nan_goes_left(decision, threshold):
    """Where NaN goes at a numeric split: missing type None reads it as 0.0; Zero and NaN send it
    to the default side."""
    return np.where(missing_type(decision) == MISSING_NONE, zero_goes_left(threshold), default_left(decision))


def needs_zero_band(decision, threshold):
    """Numeric splits that must test |x| <= K_ZERO: zero as missing where 0.0 would not already
    reach the default side."""
    return (missing_type(decision) == MISSING_ZERO) & (zero_goes_left(threshold) != default_left(decision))


def effective_thresholds(thr: np.ndarray) -> np.ndarray:
    """Thresholds t' with ``x <= t'`` == ``z(x) <= t`` where z maps |x| <= K_ZERO to 0.0.

    LightGBM compares the zero-filtered value; moving the few thresholds inside the zero band
    lets the kernels compare the raw value instead, with no extra work per node.
    """
    out = np.array(thr, dtype=np.float64, copy=True)
    band_low = (out >= -K_ZERO) & (out < 0.0)  # zero goes right, below -K_ZERO goes left
    band_high = (out >= 0.0) & (out < K_ZERO)  # zero goes left, above K_ZERO goes right
    out[band_low] = BELOW_MINUS_K_ZERO
    out[band_high] = K_ZERO
    return out


@register_jitable
def in_zero_band(x):
    """|x| <= kZeroThreshold: LightGBM drops such a value from the row (it reads as 0.0)."""
    return abs(x) <= K_ZERO


@register_jitable
def category_index(x):
    """The category LightGBM reads from x, or -1 where every categorical split sends x right.

    NaN, negatives and values at or beyond 2^31 (+-inf too) go right; others truncate toward
    zero, so -0.5 is category 0 and 2.9 is 2.
    """
    if not (x > -1.0 and x < CATEGORY_LIMIT):
        return np.int64(-1)
    return np.int64(x)
