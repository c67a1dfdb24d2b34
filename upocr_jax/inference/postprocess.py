"""From model outputs to what users look at: masks, overlays, tampered regions.

Model outputs are HxWx3 maps in [0, 1] (or uint8). Text segmentation: text where
the channel mean exceeds a threshold (``tasks.SEG_THRESHOLD``, the official
evaluation's).
Tampered text detection: class = argmax over (R background, G real, B tampered),
and regions are the 8-connected components of each text class.
Connected components are labelled here in numpy (runs + union-find), so scipy is
not needed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from upocr_jax import tasks

# Overlay colours: the targets' own colours (real green, tampered blue) and red
# for segmented text.
TEXT_RGB = (255, 0, 0)
CLASS_RGB = {"real": (0, 255, 0), "tampered": (0, 0, 255)}


def _as_float(output: np.ndarray) -> np.ndarray:
  output = np.asarray(output)
  if output.ndim != 3 or output.shape[-1] != 3:
    raise ValueError(f"expected an HxWx3 model output, got shape {output.shape}")
  if output.dtype == np.uint8:
    return output.astype(np.float32) / np.float32(255)
  return output.astype(np.float32)


def text_mask(output: np.ndarray,
              threshold: float = tasks.SEG_THRESHOLD) -> np.ndarray:
  """bool HxW: text where the channel mean of the segmentation map > threshold."""
  return _as_float(output).mean(-1) > threshold


def tamper_classes(output: np.ndarray) -> np.ndarray:
  """uint8 HxW class map: 0 background, 1 real text, 2 tampered text."""
  return _as_float(output).argmax(-1).astype(np.uint8)


def label_components(mask: np.ndarray, connectivity: int = 8
                     ) -> tuple[np.ndarray, int]:
  """Connected components of a boolean HxW mask.

  Args:
    mask: bool (H, W).
    connectivity: 4 or 8.
  Returns:
    (labels int32 (H, W) with 0 off the mask and 1..n numbered in raster order
    of their first pixel, like scipy.ndimage.label; n).
  """
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"mask must be HxW, got shape {mask.shape}")
  h, w = mask.shape
  labels = np.zeros((h, w), np.int32)
  # Horizontal runs of True: [start, end) per row, in raster order.
  d = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
  rows, starts = np.nonzero(d == 1)
  _, ends = np.nonzero(d == -1)
  if rows.size == 0:
    return labels, 0
  # Runs of consecutive rows touch when their column ranges overlap (8-conn:
  # diagonal contact counts too). With keys row * (w + 2) + col, which sort
  # globally, the candidates of a run in the row above are one contiguous range.
  c = 1 if connectivity == 8 else 0
  stride = w + 2
  s_key, e_key = rows * stride + starts, rows * stride + ends
  base = (rows - 1) * stride
  lo = np.searchsorted(e_key, base + starts - c, side="right")
  hi = np.searchsorted(s_key, base + ends + c, side="left")
  parent = list(range(rows.size))

  def find(a):
    while parent[a] != a:
      parent[a] = parent[parent[a]]
      a = parent[a]
    return a

  for b in np.nonzero(hi > lo)[0]:
    rb = find(int(b))
    for a in range(int(lo[b]), int(hi[b])):
      ra = find(a)
      if ra != rb:  # Keep the earlier run as the root: raster-order numbering.
        ra, rb = min(ra, rb), max(ra, rb)
        parent[rb] = ra
        rb = ra
  roots = np.array([find(i) for i in range(rows.size)])
  uniq, run_label = np.unique(roots, return_inverse=True)  # roots sort = raster
  lengths = ends - starts
  flat = np.repeat(rows * w + starts - np.cumsum(lengths) + lengths, lengths)
  flat += np.arange(lengths.sum())
  labels.ravel()[flat] = np.repeat(run_label.astype(np.int32) + 1, lengths)
  return labels, int(uniq.size)


def tamper_regions(output: np.ndarray, min_area: int = 16) -> list[dict]:
  """Detected text regions of a tampered-text map.

  Args:
    output: HxWx3 map (float [0, 1] or uint8) at the image's size.
    min_area: components smaller than this many pixels are dropped as noise.
  Returns:
    One dict per 8-connected component of the 'real' and 'tampered' classes:
    ``class`` ('real'/'tampered'), ``box`` [x_min, y_min, x_max, y_max]
    (inclusive pixel coordinates), ``area`` (pixels) and ``score`` (mean
    output of the class's channel over the component), tampered ones first,
    then by decreasing area.
  """
  out = _as_float(output)
  cls = out.argmax(-1)
  regions = []
  for c in (2, 1):
    labels, n = label_components(cls == c)
    if n == 0:
      continue
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)
    score = np.bincount(flat, weights=out[..., c].ravel(), minlength=n + 1)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    y0, x0 = np.full(n + 1, labels.shape[0]), np.full(n + 1, labels.shape[1])
    y1, x1 = np.full(n + 1, -1), np.full(n + 1, -1)
    np.minimum.at(y0, lab, ys)
    np.minimum.at(x0, lab, xs)
    np.maximum.at(y1, lab, ys)
    np.maximum.at(x1, lab, xs)
    found = [{"class": tasks.TAMPER_CLASSES[c],
              "box": [int(x0[k]), int(y0[k]), int(x1[k]), int(y1[k])],
              "area": int(area[k]), "score": float(score[k] / area[k])}
             for k in range(1, n + 1) if area[k] >= min_area]
    regions += sorted(found, key=lambda r: -r["area"])
  return regions


def _tint(image: np.ndarray, where: np.ndarray, rgb, alpha: float) -> np.ndarray:
  out = image.astype(np.float32)
  out[where] = (1 - alpha) * out[where] + alpha * np.asarray(rgb, np.float32)
  return np.round(out).astype(np.uint8)


def segmentation_overlay(image: np.ndarray, mask: np.ndarray,
                         alpha: float = 0.5) -> np.ndarray:
  """uint8 image with the text pixels of ``mask`` tinted red."""
  return _tint(image, mask, TEXT_RGB, alpha)


def tamper_overlay(image: np.ndarray, classes: np.ndarray, regions: list[dict],
                   alpha: float = 0.4) -> np.ndarray:
  """uint8 image with real text tinted green, tampered blue, boxes outlined."""
  out = _tint(image, classes == 1, CLASS_RGB["real"], alpha)
  out = _tint(out, classes == 2, CLASS_RGB["tampered"], alpha)
  pil = Image.fromarray(out)
  draw = ImageDraw.Draw(pil)
  width = max(1, min(image.shape[:2]) // 200)
  for r in regions:
    draw.rectangle(r["box"], outline=CLASS_RGB[r["class"]], width=width)
  return np.asarray(pil)
