"""Values where LightGBM's decision rules bite: the zero band, thresholds, category edges (shared by the kernel tests)."""

from __future__ import annotations

import numpy as np

K_ZERO = float(np.float32(1e-35))
THRESHOLDS = [-1.5, -K_ZERO, -K_ZERO / 2, 0.0, K_ZERO / 2, K_ZERO, 2.5, 1e300]
VALUES = [
    np.nan, -np.inf, np.inf, -1.5, np.nextafter(-1.5, 0), -1.0, -K_ZERO, np.nextafter(-K_ZERO, -1),
    np.nextafter(-K_ZERO, 1), -K_ZERO / 2, -1e-300, -0.0, 0.0, 1e-300, K_ZERO / 2, K_ZERO,
    np.nextafter(K_ZERO, 1), 0.5, 2.5, np.nextafter(2.5, 3), 1e300, 1.7e308,
]
# Categories: NaN, negatives, fractions (truncated), word boundaries, beyond the bitset, beyond int.
CATEGORY_VALUES = [
    np.nan, -np.inf, np.inf, -1.0, -0.99, -0.5, -0.0, 0.0, 0.7, 1.0, 2.0, 2.9, 31.0, 32.0, 33.0, 63.0, 64.0,
    95.0, 96.0, 1e9, 2.0**31 - 1, 2.0**31, 1e10,
]
