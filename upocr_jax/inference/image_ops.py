"""Host image operations shared by prediction and evaluation (plain numpy).

Both need the official quantisation of outputs and torch's bilinear resize (the
official evaluation upsamples label maps with it; prediction uses it to bring
outputs back to the input size). They live here, next to prediction, so that
prediction does not depend on evaluation; evaluation (metrics, FID) imports
them from here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def to_uint8_like_official(image: ArrayLike) -> np.ndarray:
  """Quantises a float [0, 1] image as the official code saved predictions.

  The official evaluation clamps outputs to [0, 1] and writes
  ``(x * 255).astype(uint8)``, i.e. truncation, not rounding.

  Args:
    image: float array, any shape.
  Returns:
    uint8 array of the same shape.
  """
  x = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
  return (x * np.float32(255)).astype(np.uint8)


def bilinear_taps(n_in: int, n_out: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Source indices and weights of torch's bilinear resize along one axis.

  ``align_corners=False``, no antialiasing: source coordinate
  (dst + 0.5) * n_in / n_out - 0.5 clamped at 0, float32 arithmetic.

  Returns:
    (i0, i1, w0, w1): output j is w0[j] * x[i0[j]] + w1[j] * x[i1[j]].
  """
  scale = np.float32(n_in) / np.float32(n_out)
  src = np.maximum((np.arange(n_out, dtype=np.float32) + 0.5) * scale - 0.5, 0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  lam = np.clip(src - i0.astype(np.float32), 0, 1)
  return i0, np.minimum(i0 + 1, n_in - 1), 1 - lam, lam


def resize_bilinear(image: ArrayLike, out_h: int, out_w: int) -> np.ndarray:
  """Resizes HxWxC like torch ``F.interpolate(mode='bilinear', align_corners=False)``.

  No antialiasing (unlike PIL), source coordinates (dst + 0.5) * in/out - 0.5
  clamped at 0, float32 arithmetic.
  """
  x = np.asarray(image, np.float32)
  if x.shape[:2] == (out_h, out_w):
    return x
  h0, h1, hl0, hl1 = bilinear_taps(x.shape[0], out_h)
  w0, w1, wl0, wl1 = bilinear_taps(x.shape[1], out_w)
  wl0, wl1 = wl0[:, None], wl1[:, None]
  cols = wl0 * x[:, w0] + wl1 * x[:, w1]  # width first, as torch's kernel nests it
  return hl0[:, None, None] * cols[h0] + hl1[:, None, None] * cols[h1]
