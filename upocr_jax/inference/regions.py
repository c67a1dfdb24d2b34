"""Restricting predictions to a region of the image ("erase only where asked").

A region is given as boxes (``[[x1, y1, x2, y2], ...]`` in pixels of the input
image: columns x1 <= x < x2, rows y1 <= y < y2, so ``[0, 0, W, H]`` is the
whole image), as a mask (an HxW array, a PIL image or an image file; non-zero
pixels are the region) or as None (the whole image, no restriction).

:func:`region_weights` turns it into a float32 weight map at the input's size:
0 outside the region, 1 inside, with a raised-cosine ramp over the ``feather``
pixels just INSIDE the region's border (chessboard distance), so that blending
with it changes nothing outside the region. The image's own edge is no border:
a region touching it is erased up to the edge.

Per task (:func:`restrict_map`, :func:`blend_removal`):

* text removal: ``out = w * prediction + (1 - w) * input`` on the uint8
  output, so pixels outside the region are the input's, exactly;
* text segmentation: the map is zero outside the region;
* tampered text detection: background outside the region, so the class map
  and the regions found are inside it only.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence, Union

import numpy as np
from PIL import Image

from upocr_jax import tasks

DEFAULT_FEATHER = 3  # Pixels of ramp inside the region's border.
Box = Sequence[float]
Region = Union[None, Sequence[Box], np.ndarray, Image.Image, str, os.PathLike]


def parse_boxes(spec: str, name: str = "--boxes") -> list[list[float]]:
  """Boxes from ``"x1,y1,x2,y2;x1,y1,x2,y2"`` or from a ``.json`` file.

  The JSON file holds a list of ``[x1, y1, x2, y2]`` (an empty list is no
  region at all: nothing is changed).

  Args:
    spec: the string or the path of a .json file.
    name: what errors call the spec (the flag name).
  Raises:
    ValueError / FileNotFoundError: one line naming ``name`` and the problem.
  """
  spec = spec.strip()
  if spec.lower().endswith(".json"):
    if not os.path.isfile(spec):
      raise FileNotFoundError(f"{name}: {spec}: no such file")
    try:
      with open(spec, encoding="utf-8") as f:
        boxes = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"{name}: {spec}: not a JSON file ({e})") from e
    return check_boxes(boxes, f"{name} {spec}")
  if not spec:
    raise ValueError(f"{name}: no box given; expected 'x1,y1,x2,y2;...' or "
                     "a .json file")
  boxes = []
  for part in spec.split(";"):
    if not part.strip():
      continue  # A trailing ';'.
    try:
      boxes.append([float(v) for v in part.split(",")])
    except ValueError:
      raise ValueError(f"{name}: {part.strip()!r} is not 'x1,y1,x2,y2' "
                       "(four numbers)") from None
  return check_boxes(boxes, name)


def _fmt(box) -> str:
  return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def check_boxes(boxes, name: str = "region") -> list[list[float]]:
  """Validates the form of a list of boxes (four finite numbers, x2 > x1,
  y2 > y1); returns them as lists of floats.

  Raises:
    ValueError: one line naming ``name`` and the bad box.
  """
  if not isinstance(boxes, (list, tuple)):
    raise ValueError(f"{name}: expected a list of [x1, y1, x2, y2] boxes, got "
                     f"{type(boxes).__name__}")
  out = []
  for box in boxes:
    try:
      vals = [float(v) for v in box]
    except (TypeError, ValueError):
      vals = None
    if (vals is None or len(vals) != 4
        or not all(math.isfinite(v) for v in vals)):
      shown = repr(box) if vals is None else _fmt(vals)
      raise ValueError(f"{name}: box {shown} is not [x1, y1, x2, y2] (four "
                       "finite numbers)")
    x1, y1, x2, y2 = vals
    if x2 <= x1 or y2 <= y1:
      raise ValueError(f"{name}: box {_fmt(box)} is empty: need x2 > x1 and "
                       "y2 > y1")
    out.append(vals)
  return out


def boxes_mask(boxes, height: int, width: int, name: str = "region"
               ) -> np.ndarray:
  """bool HxW: True on the pixels of the union of ``boxes``.

  Fractional coordinates cover every pixel the box touches (x1, y1 floored,
  x2, y2 ceiled).

  Raises:
    ValueError: a malformed box, or one outside the image (naming ``name``
      and the image size).
  """
  mask = np.zeros((height, width), bool)
  for x1, y1, x2, y2 in check_boxes(boxes, name):
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
      raise ValueError(f"{name}: box {_fmt([x1, y1, x2, y2])} is outside the "
                       f"{width}x{height} image (0 <= x1 < x2 <= {width}, "
                       f"0 <= y1 < y2 <= {height})")
    mask[math.floor(y1):math.ceil(y2), math.floor(x1):math.ceil(x2)] = True
  return mask


def load_mask(path: str | os.PathLike, name: str = "region") -> np.ndarray:
  """bool HxW from a mask image file: non-zero pixels (any channel) are True.

  Raises:
    FileNotFoundError / ValueError: one line naming ``name`` and the file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{name}: {path}: no such file")
  try:
    with Image.open(path) as img:
      return image_mask(img)
  except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors.
    raise ValueError(f"{name}: {path}: cannot read mask image ({e})") from e


def image_mask(img: Image.Image) -> np.ndarray:
  """bool HxW of a PIL image: non-zero pixels (any channel) are True."""
  # Palette images index colours: compare the colours, not the indices.
  if img.mode not in ("1", "L", "I", "I;16", "F", "RGB", "RGBA", "LA"):
    img = img.convert("RGB")
  return array_mask(np.asarray(img))


def array_mask(mask: np.ndarray, name: str = "region") -> np.ndarray:
  """bool HxW of an HxW or HxWxC array: non-zero (any channel) is True."""
  mask = np.asarray(mask)
  if mask.ndim == 3:
    mask = (mask != 0).any(-1)
  if mask.ndim != 2:
    raise ValueError(f"{name}: a mask must be HxW or HxWxC, got shape "
                     f"{mask.shape}")
  return mask != 0


def region_mask(region: Region, height: int, width: int,
                name: str = "region") -> np.ndarray | None:
  """bool HxW of ``region`` (see the module docstring); None for None.

  Raises:
    ValueError / FileNotFoundError: one line naming ``name``: malformed boxes
      or boxes outside the image, an unreadable mask file, a mask whose size is
      not the image's.
  """
  if region is None:
    return None
  if isinstance(region, (str, os.PathLike)):
    mask, what = load_mask(region, name), f"mask {os.fspath(region)}"
  elif isinstance(region, Image.Image):
    mask, what = image_mask(region), "mask"
  elif isinstance(region, np.ndarray):
    mask, what = array_mask(region, name), "mask"
  else:
    return boxes_mask(region, height, width, name)
  if mask.shape != (height, width):
    raise ValueError(f"{name}: {what} is {mask.shape[1]}x{mask.shape[0]}, "
                     f"the image {width}x{height} (width x height)")
  return mask


def _erode(mask: np.ndarray) -> np.ndarray:
  """3x3 erosion; outside the image counts as inside (no border there)."""
  p = np.pad(mask, 1, constant_values=True)
  rows = p[:-2] & p[1:-1] & p[2:]
  return rows[:, :-2] & rows[:, 1:-1] & rows[:, 2:]


def feather_weights(mask: np.ndarray, feather: int = DEFAULT_FEATHER
                    ) -> np.ndarray:
  """float32 HxW: 0 off ``mask``, 1 on it, ramped just inside its border.

  A region pixel at chessboard distance k (1 = touching a pixel outside) from
  the outside gets ``0.5 - 0.5 cos(pi k / (feather + 1))`` for k <= feather,
  1 beyond; ``feather=0`` is a hard edge. Weights are > 0 exactly on ``mask``.
  """
  if feather < 0:
    raise ValueError(f"feather must be >= 0 pixels, got {feather}")
  mask = np.asarray(mask, bool)
  weights = mask.astype(np.float32)
  ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, feather + 1) / (feather + 1))
  cur = mask
  for k in range(feather):
    if not cur.any():
      break
    inner = _erode(cur)
    weights[cur & ~inner] = ramp[k]  # Depth k + 1.
    cur = inner
  return weights


def region_weights(region: Region, height: int, width: int,
                   feather: int = DEFAULT_FEATHER, name: str = "region"
                   ) -> np.ndarray | None:
  """float32 HxW weight map of ``region`` (see :func:`feather_weights`);
  None for None (no restriction)."""
  mask = region_mask(region, height, width, name)
  return None if mask is None else feather_weights(mask, feather)


def restrict_map(output_map: np.ndarray, weights: np.ndarray | None,
                 task: str) -> np.ndarray:
  """A float HxWx3 model output with everything outside the region cleared.

  Segmentation: zero outside; tampered detection: background (1, 0, 0)
  outside. Text removal is returned unchanged: its blend with the input is
  done on the uint8 output (:func:`blend_removal`), which keeps the outside
  exact.
  """
  if weights is None or task == tasks.TASKS[tasks.TEXT_REMOVAL]:
    return output_map
  outside = np.asarray(weights) <= 0
  out = np.array(output_map, np.float32)
  if task == tasks.TASKS[tasks.TAMPERED]:
    out[outside] = (1.0, 0.0, 0.0)
  else:
    out[outside] = 0.0
  return out


def blend_removal(output: np.ndarray, image: np.ndarray,
                  weights: np.ndarray | None) -> np.ndarray:
  """uint8 ``w * output + (1 - w) * image``, rounded: the input, exactly,
  where w = 0, the prediction, exactly, where w = 1."""
  if weights is None:
    return output
  w = np.asarray(weights, np.float32)[..., None]
  if output.shape != image.shape or w.shape[:2] != image.shape[:2]:
    raise ValueError(f"output {output.shape}, input {image.shape} and region "
                     f"{w.shape[:2]} sizes differ")
  mixed = w * output.astype(np.float32) + (1 - w) * image.astype(np.float32)
  return np.round(mixed).astype(np.uint8)
