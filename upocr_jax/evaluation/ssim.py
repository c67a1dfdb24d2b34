"""MS-SSIM as the official SCUT-EnsText evaluation script computes it (numpy).

``mode='official'`` reproduces the public script (all five levels at full
resolution: the published numbers); ``'standard'`` is real multi-scale SSIM.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Official MS-SSIM level weights (they sum to 1.0001, kept as published).
MSSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
MSSIM_MODES = ('official', 'standard')


def _gauss_1d(size: int, sigma: float = 1.5) -> np.ndarray:
  # The official 2D window is exp(-(x^2 + y^2) / 2s^2) normalised over an mgrid
  # running from -size//2 + 1 to size//2 (with Python's floor division, so even
  # sizes are asymmetric). It is exactly the outer product of this 1D window.
  x = np.arange(-size // 2 + 1, size // 2 + 1, dtype=np.float64)
  g = np.exp(-(x**2) / (2.0 * sigma**2))
  return g / g.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Separable 'valid' convolution (true convolution, like fftconvolve)."""
  w = w[::-1]  # convolution flips the kernel; matters only for even windows.
  k = len(w)
  h_out, w_out = x.shape[0] - k + 1, x.shape[1] - k + 1
  rows = sum(w[j] * x[j:j + h_out] for j in range(k))
  return sum(w[j] * rows[:, j:j + w_out] for j in range(k))


def _ssim_cs(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """Mean SSIM and mean contrast-structure term on 0..255 luminance images."""
  # The official window is min(height, 11); taking the width into account too only
  # changes cases where the official fftconvolve would fail.
  w = _gauss_1d(min(a.shape[0], a.shape[1], 11))
  c1, c2 = (0.01 * 255)**2, (0.03 * 255)**2
  mu1, mu2 = _filter_valid(a, w), _filter_valid(b, w)
  s11 = _filter_valid(a * a, w) - mu1 * mu1
  s22 = _filter_valid(b * b, w) - mu2 * mu2
  s12 = _filter_valid(a * b, w) - mu1 * mu2
  cs = (2 * s12 + c2) / (s11 + s22 + c2)
  ssim = (2 * mu1 * mu2 + c1) / (mu1 * mu1 + mu2 * mu2 + c1) * cs
  return float(ssim.mean()), float(cs.mean())


def _downsample2(x: np.ndarray) -> np.ndarray:
  # A 2x2 mean with 'reflect' borders then every second pixel: out[i] averages
  # rows/cols 2i and 2i+1, the last one duplicated when the size is odd.
  x = np.pad(x, ((0, x.shape[0] % 2), (0, x.shape[1] % 2)), mode='edge')
  return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4.0


def ms_ssim(y1: ArrayLike, y2: ArrayLike, mode: str = 'official') -> float:
  """5-level MS-SSIM of two HxW luminance images on the 0..255 scale.

  Args:
    y1: HxW array (the official script passes the ground truth first).
    y2: HxW array of the same shape.
    mode: 'official' reproduces the public script, whose loop computes the
      downsampled images but feeds the full-resolution ones to every level, so all
      five levels are the same full-resolution SSIM/CS (the published numbers).
      'standard' is real multi-scale SSIM (Wang et al. 2003): 2x2 mean filter and
      2x subsampling between levels.
  Returns:
    prod_{l<5} sign(cs_l)|cs_l|^w_l * sign(ssim_5)|ssim_5|^w_5.
  """
  if mode not in MSSIM_MODES:
    raise ValueError(f'mssim_mode must be one of {MSSIM_MODES}, got {mode!r}')
  a, b = np.asarray(y1, np.float64), np.asarray(y2, np.float64)
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f'y1 and y2 must be HxW of one shape, got {a.shape}, {b.shape}')
  levels = []
  if mode == 'official':
    levels = [_ssim_cs(a, b)] * len(MSSIM_WEIGHTS)
  else:
    for _ in MSSIM_WEIGHTS:
      levels.append(_ssim_cs(a, b))
      a, b = _downsample2(a), _downsample2(b)
  ssim = np.array([s for s, _ in levels])
  cs = np.array([c for _, c in levels])
  w = MSSIM_WEIGHTS
  # The sign is taken out before the power to avoid NaN, as the official code does.
  value = np.prod(np.sign(cs[:-1]) * np.abs(cs[:-1])**w[:-1])
  return float(value * np.sign(ssim[-1]) * np.abs(ssim[-1])**w[-1])
