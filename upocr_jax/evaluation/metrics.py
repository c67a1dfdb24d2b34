"""Evaluation metrics of the three UPOCR benchmarks, as the official code computes them.

Everything here is plain numpy (no torch, no scipy) and works on host arrays.

Image inputs: numpy (or array-like) ``HxWx3`` RGB, either ``uint8`` in [0, 255] or
floating point in [0, 1]. uint8 is converted as torchvision's ``ToTensor`` does
(``x / 255`` in float32), so uint8 inputs give the official numbers bit for bit up
to summation order.

* Text removal (SCUT-EnsText): :func:`text_removal_metrics` per image and the
  :class:`TextRemovalMetrics` accumulator. The official pipeline saved predictions as
  PNG with ``(x * 255).astype(uint8)`` (truncation) and re-read them; float inputs
  are used as given, so apply ``upocr_jax.inference.image_ops.to_uint8_like_official``
  to float model outputs to reproduce that.
  Values are fractions: the paper prints MSSIM x100 and MSE x100.
* Text segmentation (TextSeg): :class:`SegmentationMetrics`.
* Tampered text detection (Tampered-IC13): :class:`TamperMetrics`.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from numpy.typing import ArrayLike

from upocr_jax.inference.image_ops import (resize_bilinear,
                                           to_uint8_like_official)
from upocr_jax.evaluation.ssim import MSSIM_MODES, MSSIM_WEIGHTS, ms_ssim
from upocr_jax.tasks import SEG_THRESHOLD, TAMPER_CLASSES

__all__ = [
    'text_removal_metrics', 'TextRemovalMetrics', 'SegmentationMetrics',
    'TamperMetrics', 'ms_ssim', 'frechet_distance', 'MSSIM_WEIGHTS',
    'FID_NOT_COMPUTED'
]

ERROR_THRESHOLD = 20  # pEPs: |dY| > 20 on the 0..255 scale, after rounding.
FID_NOT_COMPUTED = 'not computed: no Inception weights supplied'


def _to_float_image(x: ArrayLike, name: str) -> np.ndarray:
  """Validates an HxWx3 image and returns it as float32 in [0, 1]."""
  x = np.asarray(x)
  if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f'{name} must be an HxWx3 RGB image, got shape {x.shape}')
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255)
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f'{name} must be uint8 in [0, 255] or float in [0, 1], '
                     f'got dtype {x.dtype}')
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains NaN or inf values')
  if x.min() < 0 or x.max() > 1:
    raise ValueError(f'{name} is float but not in [0, 1] (min {x.min():.4g}, '
                     f'max {x.max():.4g}); clip model outputs with np.clip(x, 0, 1)')
  return x


# ----------------------------------------------------------------- text removal


def _luminance255(img: np.ndarray) -> np.ndarray:
  # float32 throughout, in this order, as the official script does it on torch tensors.
  y = .299 * img[..., 0] + .587 * img[..., 1] + .114 * img[..., 2]
  return y * 255


def _erode4(mask: np.ndarray) -> np.ndarray:
  # Binary erosion with the 4-connected cross; pixels outside count as False, so
  # errors touching the border never survive (scipy's binary_erosion default).
  p = np.pad(mask, 1, constant_values=False)
  return (p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:])


def text_removal_metrics(pred: ArrayLike, gt: ArrayLike,
                         mssim_mode: str = 'official') -> dict:
  """Per-image text-removal metrics as the official evaluation script computes them.

  Args:
    pred: HxWx3 prediction, uint8 [0, 255] or float [0, 1].
    gt: HxWx3 ground truth of the same size (the official script resizes both to
      512 on the short side beforehand; SCUT-EnsText test images already are).
    mssim_mode: 'official' or 'standard', see :func:`ms_ssim`.
  Returns:
    dict of floats: mse (on [0, 1] over the three channels), psnr (inf when mse is
    0), mssim (on luminance Y*255), age (mean rounded |dY*255|), peps (fraction of
    pixels with rounded |dY*255| > 20) and pceps (those errors surviving a
    4-connected erosion). peps/pceps divide by H*W (the script hardcodes 512*512).
  """
  if mssim_mode not in MSSIM_MODES:
    raise ValueError(f'mssim_mode must be one of {MSSIM_MODES}, got {mssim_mode!r}')
  p, g = _to_float_image(pred, 'pred'), _to_float_image(gt, 'gt')
  if p.shape != g.shape:
    raise ValueError(f'pred and gt must have the same shape, got {p.shape} and '
                     f'{g.shape}; resize both beforehand')
  d = g - p
  mse = float(np.mean((d * d).astype(np.float64)))
  psnr = float('inf') if mse == 0 else 10 * np.log10(1 / mse)
  y_gt, y_pred = _luminance255(g), _luminance255(p)
  diff = np.abs(y_pred - y_gt).round().astype(np.uint8)
  errors = diff > ERROR_THRESHOLD
  n = errors.size
  return {
      'psnr': float(psnr),
      'mse': mse,
      'mssim': ms_ssim(y_gt, y_pred, mssim_mode),
      'age': float(diff.mean()),
      'peps': float(errors.sum()) / n,
      'pceps': float(_erode4(errors).sum()) / n,
  }


def frechet_distance(feats1: ArrayLike, feats2: ArrayLike) -> float:
  """Fréchet distance between Gaussians fitted to two NxD feature sets (FID).

  tr(sqrt(S1 S2)) needs no scipy.linalg.sqrtm: with fewer images than feature
  dimensions (the usual case: 2048-d Inception features) it is the nuclear norm
  of A B^T / sqrt((n1 - 1)(n2 - 1)) for the centred features A, B (S1 S2 has
  the eigenvalues of that matrix times its transpose), an n1 x n2 SVD;
  otherwise the sum of square roots of the eigenvalues of the symmetric
  sqrt(S1) S2 sqrt(S1).
  """
  f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f'features must be NxD with one D, got {f1.shape}, {f2.shape}')
  if len(f1) < 2 or len(f2) < 2:
    raise ValueError('FID needs at least two images per set')
  mu1, mu2 = f1.mean(0), f2.mean(0)
  (n1, d), n2 = f1.shape, len(f2)
  if n1 * n2 <= d * d:
    a, b = f1 - mu1, f2 - mu2
    tr1, tr2 = np.sum(a * a) / (n1 - 1), np.sum(b * b) / (n2 - 1)
    tr_sqrt = (np.linalg.svd(a @ b.T, compute_uv=False).sum()
               / np.sqrt((n1 - 1) * (n2 - 1)))
  else:
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    tr1, tr2 = np.trace(s1), np.trace(s2)
    ev, vec = np.linalg.eigh(s1)
    root1 = (vec * np.sqrt(np.clip(ev, 0, None))) @ vec.T
    m = root1 @ s2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
  return float(np.sum((mu1 - mu2)**2) + tr1 + tr2 - 2 * tr_sqrt)


class TextRemovalMetrics:
  """Dataset-level text-removal metrics, averaged as the official script does.

  Images whose MSE is exactly 0 are skipped for every average (the script
  ``continue``s before counting them; FID, computed on all saved files, still
  sees them). FID is only computed when a ``feature_extractor`` (e.g.
  ``upocr_jax.evaluation.fid.InceptionFeatureExtractor`` with Inception weights the user
  supplies) is given: a callable mapping an HxWx3 uint8 image to a 1-D feature
  vector. If it also has ``extract_batch(images) -> NxD`` and a ``batch_size``,
  images are buffered and sent that many at a time (an Inception pass per
  image is slow). Without an extractor FID is reported as None with a note,
  never made up. ``result()`` returns the averaged psnr, mse, mssim, age,
  peps, pceps, plus mssim_mode, num_images, num_skipped_identical, fid and
  fid_note.
  """

  def __init__(self, mssim_mode: str = 'official',
               feature_extractor: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    if mssim_mode not in MSSIM_MODES:
      raise ValueError(f'mssim_mode must be one of {MSSIM_MODES}, got {mssim_mode!r}')
    self.mssim_mode = mssim_mode
    self.feature_extractor = feature_extractor
    self.reset()

  def reset(self) -> None:
    """Forgets every image seen so far."""
    self._sums = dict.fromkeys(('psnr', 'mse', 'mssim', 'age', 'peps', 'pceps'), 0.0)
    self.count = 0
    self.skipped = 0
    self._feats = ([], [])
    self._pending = ([], [])

  def update(self, pred: ArrayLike, gt: ArrayLike) -> dict:
    """Adds one image pair; returns its per-image metrics."""
    m = text_removal_metrics(pred, gt, self.mssim_mode)
    if self.feature_extractor is not None:
      # Float predictions are quantised as the official code saved them; float
      # ground truths come from 8-bit files, so they are rounded back.
      p, g = np.asarray(pred), np.asarray(gt)
      p = p if p.dtype == np.uint8 else to_uint8_like_official(p)
      if g.dtype != np.uint8:
        g = np.round(np.clip(g, 0, 1) * 255).astype(np.uint8)
      self._pending[0].append(p)
      self._pending[1].append(g)
      if len(self._pending[0]) >= getattr(self.feature_extractor, 'batch_size', 1):
        self._flush_features()
    if m['mse'] == 0:
      self.skipped += 1
      return m
    self.count += 1
    for k in self._sums:
      self._sums[k] += m[k]
    return m

  def _flush_features(self) -> None:
    fe = self.feature_extractor
    for store, images in zip(self._feats, self._pending):
      if not images:
        continue
      if hasattr(fe, 'extract_batch'):
        feats = np.asarray(fe.extract_batch(images), np.float64)
      else:
        feats = np.stack([np.asarray(fe(img), np.float64).ravel() for img in images])
      store.extend(feats.reshape(len(images), -1))
      images.clear()

  def features(self) -> tuple[np.ndarray, np.ndarray]:
    """The (prediction, ground truth) feature sets so far, each NxD float64."""
    self._flush_features()
    return tuple(np.stack(f) if f else np.zeros((0, 0)) for f in self._feats)

  def set_features(self, pred_feats: ArrayLike, gt_feats: ArrayLike) -> None:
    """Replaces both feature sets (e.g. with those gathered over processes)."""
    self._flush_features()
    self._feats = tuple(list(np.asarray(f, np.float64)) for f in (pred_feats, gt_feats))

  def counts(self) -> dict[str, np.ndarray]:
    """The additive state (sums and counts; not the FID features)."""
    return {**{k: np.float64(v) for k, v in self._sums.items()},
            'count': np.int64(self.count), 'skipped': np.int64(self.skipped)}

  def merge(self, other: 'TextRemovalMetrics | dict') -> None:
    """Adds another accumulator's images (e.g. another process's), or its
    ``counts()``; FID features come only with an accumulator."""
    if isinstance(other, TextRemovalMetrics):
      if self.feature_extractor is not None:
        mine, theirs = self.features(), other.features()
        self.set_features(*(np.concatenate([a, b]) if len(b) else a
                            for a, b in zip(mine, theirs)))
      other = other.counts()
    for k in self._sums:
      self._sums[k] += float(other[k])
    self.count += int(other['count'])
    self.skipped += int(other['skipped'])

  def result(self) -> dict:
    """Averages over the counted images (NaN when there are none)."""
    out = {k: (v / self.count if self.count else float('nan'))
           for k, v in self._sums.items()}
    out.update(mssim_mode=self.mssim_mode, num_images=self.count,
               num_skipped_identical=self.skipped)
    if self.feature_extractor is None:
      out.update(fid=None, fid_note=FID_NOT_COMPUTED)
    else:
      pred_feats, gt_feats = self.features()
      if min(len(pred_feats), len(gt_feats)) < 2:
        out.update(fid=None, fid_note='not computed: FID needs at least two '
                   'images per set')
      else:
        out.update(fid=frechet_distance(pred_feats, gt_feats), fid_note='')
    return out


# ------------------------------------------------------------ segmentation maps


def _label_uint8(label: ArrayLike, name: str) -> np.ndarray:
  label = np.asarray(label)
  if label.dtype == np.bool_:
    return label.astype(np.uint8) * 255
  if np.issubdtype(label.dtype, np.floating):
    if not np.all(np.isfinite(label)) or label.min() < 0 or label.max() > 1:
      raise ValueError(f'{name} is float but not in [0, 1]')
    return np.round(label * 255).astype(np.uint8)
  if label.dtype != np.uint8:
    raise ValueError(f'{name} must be uint8, bool or float in [0, 1], '
                     f'got dtype {label.dtype}')
  return label


def _confusion(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
  valid = gt >= 0  # ignore pixels carry -1
  return np.bincount(n * gt[valid] + pred[valid], minlength=n * n).reshape(n, n)


def _scores(cm: np.ndarray) -> dict:
  """Per-class IoU/P/R/F from a gt-by-pred confusion matrix (NaN on 0/0)."""
  tp = np.diag(cm).astype(np.float64)
  col, row = cm.sum(0), cm.sum(1)
  with np.errstate(divide='ignore', invalid='ignore'):
    p, r = tp / col, tp / row
    return {'IoU': tp / (row + col - tp), 'precision': p, 'recall': r,
            'F': 2 * p * r / (p + r)}


def _pred_at(pred: ArrayLike, label_hw: tuple) -> np.ndarray:
  return resize_bilinear(_to_float_image(pred, 'pred'), *label_hw)


class _ConfusionCounts:
  """counts()/merge() of the accumulators whose state is a confusion matrix."""

  def counts(self) -> dict[str, np.ndarray]:
    """The additive state: the confusion matrix and the number of images."""
    return {'confusion_matrix': self.confusion_matrix.copy(),
            'num_images': np.int64(self.num_images)}

  def merge(self, other) -> None:
    """Adds another accumulator's images (e.g. another process's), or its
    ``counts()``."""
    if not isinstance(other, dict):
      other = other.counts()
    self.confusion_matrix = self.confusion_matrix + np.asarray(
        other['confusion_matrix'], np.int64)
    self.num_images += int(other['num_images'])


class SegmentationMetrics(_ConfusionCounts):
  """Text segmentation: fgIoU, precision, recall, F from one confusion matrix.

  ``update(pred, label)``: ``pred`` HxWx3 (any size: resized bilinearly to the
  label size like the official code), text where its channel mean > threshold.
  ``label`` is the RGB target image (white text, black background, grey 128
  ignore) as HxWx3 or HxW; uint8, float [0, 1] (rounded to /255 levels) or bool
  (True = text, no ignore). RGB labels are converted to grey with PIL's 'L' formula
  as the official loader does; 0 is background, 255 text, anything else ignored.
  """

  def __init__(self, threshold: float = SEG_THRESHOLD):
    if not 0 <= threshold <= 1:
      raise ValueError(f'threshold must be in [0, 1], got {threshold}')
    self.threshold = threshold
    self.reset()

  def reset(self) -> None:
    """Clears the confusion matrix."""
    self.confusion_matrix = np.zeros((2, 2), np.int64)
    self.num_images = 0

  def update(self, pred: ArrayLike, label: ArrayLike) -> None:
    """Adds one image's pixels to the confusion matrix."""
    lab = _label_uint8(label, 'label')
    if lab.ndim == 3 and lab.shape[-1] == 3:
      r, g, b = np.moveaxis(lab.astype(np.uint32), -1, 0)
      lab = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    if lab.ndim != 2 or lab.size == 0:
      raise ValueError(f'label must be HxW or HxWx3, got shape {np.shape(label)}')
    gt = np.full(lab.shape, -1, np.int64)
    gt[lab == 0], gt[lab == 255] = 0, 1
    mean = _pred_at(pred, lab.shape).mean(-1)
    self.confusion_matrix += _confusion(gt, (mean > self.threshold).astype(np.int64), 2)
    self.num_images += 1

  def result(self) -> dict:
    """fgIoU, precision, recall and F of the text class over the whole set."""
    s = _scores(self.confusion_matrix)
    return {'fgIoU': float(s['IoU'][1]), 'precision': float(s['precision'][1]),
            'recall': float(s['recall'][1]), 'F': float(s['F'][1]),
            'threshold': self.threshold, 'num_images': self.num_images}




class TamperMetrics(_ConfusionCounts):
  """Tampered text detection: per-class pixel IoU/P/R/F and real+tampered means.

  ``update(pred, label)``: ``pred`` HxWx3 (any size, resized bilinearly to the
  label size), class = argmax over (R background, G real, B tampered).
  ``label``: the RGB target (red/green/blue filled boxes) as HxWx3 uint8 or float
  [0, 1], class = argmax over channels, grey (128, 128, 128) padding ignored; or an
  HxW integer class map (0, 1, 2; any other value ignored). The official test
  labels contain no grey, so ignoring it never changes published numbers.
  """

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    """Clears the confusion matrix."""
    self.confusion_matrix = np.zeros((3, 3), np.int64)
    self.num_images = 0

  def update(self, pred: ArrayLike, label: ArrayLike) -> None:
    """Adds one image's pixels to the confusion matrix."""
    lab = np.asarray(label)
    if lab.ndim == 2 and np.issubdtype(lab.dtype, np.integer) and lab.size:
      gt = lab.astype(np.int64)
      gt[(gt < 0) | (gt > 2)] = -1
    elif lab.ndim == 3 and lab.shape[-1] == 3 and lab.size:
      lab = _label_uint8(lab, 'label')
      gt = lab.argmax(-1).astype(np.int64)
      gt[np.all(lab == 128, axis=-1)] = -1
    else:
      raise ValueError('label must be HxWx3 RGB or an HxW integer class map, got '
                       f'shape {lab.shape} dtype {lab.dtype}')
    out = _pred_at(pred, gt.shape).argmax(-1)
    self.confusion_matrix += _confusion(gt, out, 3)
    self.num_images += 1

  def result(self) -> dict:
    """Per-class '<class>_<metric>' values plus 'mean_<metric>' over real+tampered."""
    s = _scores(self.confusion_matrix)
    out = {}
    for k, v in s.items():
      for i, c in enumerate(TAMPER_CLASSES):
        out[f'{c}_{k}'] = float(v[i])
      pair = v[1:][~np.isnan(v[1:])]  # nanmean, as the official print uses
      out[f'mean_{k}'] = float(pair.mean()) if pair.size else float('nan')
    out['num_images'] = self.num_images
    return out
