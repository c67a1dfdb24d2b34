"""The one example schema shared by every source, and the label conversions.

Every source (folder readers, TFDS readers, the synthetic generator) returns, for
any task, a dict with:

* ``image``: uint8 (H, W, 3), the RGB input.
* ``target``: uint8 (H, W, 3), the task's RGB target:
  text removal: the text-free photo; text segmentation: text white
  (255, 255, 255), the rest black, ignore grey (128, 128, 128); tampered text
  detection: background red, real text green, tampered text blue.
* ``valid``: bool (H, W), False where the target is "ignore" (all channels 128)
  for segmentation / tampered detection; all True for text removal, whose targets
  are photos.
* ``text_mask``: uint8 (H, W), values 0/1. Text removal: 1 on NON-text pixels, as
  the official white-is-non-text mask; all ones for the other tasks.
* ``task_id``: int32 scalar (0 removal, 1 tampered, 2 segmentation).
* ``name``: str, the source file (or synthetic index) the example came from.
"""

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from upocr_jax import tasks

# The task names, ids and keys are defined once, in upocr_jax/tasks.py; the
# schema's ``task_id`` is their id. Re-exported: the sources spell them
# ``schema.TEXT_REMOVAL`` etc.
TASKS, TASK_KEYS = tasks.TASKS, tasks.TASK_KEYS
TEXT_REMOVAL, TAMPERED, SEGMENTATION = (tasks.TEXT_REMOVAL, tasks.TAMPERED,
                                        tasks.SEGMENTATION)

IGNORE_VALUE = 128
# TextSeg `*_maskfg.png` values -> target grey level (official conversion:
# 255 ignore -> 128, 200 word effect -> 0 (background), 100 text -> 255; any
# other value is kept as it is).
_TEXTSEG_LUT = np.arange(256, dtype=np.uint8)
_TEXTSEG_LUT[255] = IGNORE_VALUE
_TEXTSEG_LUT[200] = 0
_TEXTSEG_LUT[100] = 255

BACKGROUND_RGB = (255, 0, 0)
REAL_RGB = (0, 255, 0)
TAMPERED_RGB = (0, 0, 255)


class DataError(ValueError):
  """A bad input file; the message always starts with the offending path."""

  def __init__(self, path: str, problem: str):
    super().__init__(f"{path}: {problem}")
    self.path = str(path)
    self.problem = problem

  def __reduce__(self):
    # Rebuilt from both fields: grain's worker processes pickle the error to
    # re-raise it in the main process (the default would call
    # DataError(message) and fail there with a TypeError).
    return (DataError, (self.path, self.problem))


def textseg_target(label: np.ndarray) -> np.ndarray:
  """TextSeg label (H, W) or (H, W, 3) uint8 -> RGB target (H, W, 3) uint8."""
  if label.ndim == 2:  # Convert once, then copy to the 3 channels.
    return np.repeat(_TEXTSEG_LUT[label][:, :, None], 3, axis=2)
  return _TEXTSEG_LUT[label]


def tampered_target(width: int, height: int,
                    boxes: Sequence[Sequence[int]]) -> np.ndarray:
  """Draws Tampered-IC13 boxes, filled, in file order on a red background.

  Args:
    width, height: image size.
    boxes: rows ``(x1, y1, x2, y2, label)``, label 1 real / 2 tampered. Corners
      are inclusive (as a filled OpenCV rectangle) and may come in either order.

  Returns:
    uint8 (height, width, 3) target.
  """
  canvas = Image.new("RGB", (width, height), BACKGROUND_RGB)
  draw = ImageDraw.Draw(canvas)
  for x1, y1, x2, y2, label in boxes:
    colour = REAL_RGB if label == 1 else TAMPERED_RGB
    draw.rectangle((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)),
                   fill=colour)
  return np.asarray(canvas)


def removal_text_mask(mask: Image.Image) -> np.ndarray:
  """SCUT-EnsText mask image -> uint8 (H, W) with 1 on non-text (white) pixels.

  Uses PIL's 1-bit conversion (with its dithering), as the official reader does.
  """
  return (np.asarray(mask.convert("1"), dtype=np.uint8) > 0).astype(np.uint8)


def valid_from_target(task_id: int, target: np.ndarray) -> np.ndarray:
  """bool (H, W): False where a segmentation/tampered target is ignore grey."""
  if task_id == TEXT_REMOVAL:
    return np.ones(target.shape[:2], dtype=bool)
  # Channel by channel: much faster than np.all(..., axis=-1) on (H, W, 3).
  return ~((target[..., 0] == IGNORE_VALUE) & (target[..., 1] == IGNORE_VALUE)
           & (target[..., 2] == IGNORE_VALUE))


def make_example(task_id: int, image: np.ndarray, target: np.ndarray,
                 name: str, text_mask: np.ndarray | None = None) -> dict:
  """Assembles one example in the shared schema (see module docstring)."""
  if text_mask is None:
    text_mask = np.ones(image.shape[:2], dtype=np.uint8)
  return {
      "image": image,
      "target": target,
      "valid": valid_from_target(task_id, target),
      "text_mask": text_mask,
      "task_id": np.int32(task_id),
      "name": name,
  }
