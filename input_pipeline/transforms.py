"""Training augmentations and evaluation preprocessing, in uint8 with PIL.

The training chain is, for every task, (crop) -> (horizontal flip) -> (colour
jitter) -> (rotate) -> resize, each step with its own probability from the task's
augmentation config; the paper's recipe switches steps off per task with a zero
probability. Facts reproduced from the official recipe:

* crop: width and height ratios drawn independently in [crop_min, crop_max],
  size = int(side * ratio), top-left uniform over the valid positions.
* rotate: angle uniform in [-max, max] degrees (counter-clockwise positive), the
  canvas expanded to hold the whole image, nearest-neighbour sampling; image
  filled black, target black for text removal and ignore-grey 128 otherwise, the
  non-text mask filled with 1 (non-text).
* colour jitter (image only): brightness, contrast, saturation factors uniform in
  [max(0, 1 - x), 1 + x], hue shift uniform in [-h, h] turns, applied in a random
  order, with PIL's ImageEnhance and an HSV hue rotation.
* resize to image_size x image_size: bicubic for the image and for the text
  removal target (a photo), nearest for label maps and the mask.
"""

from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from input_pipeline import schema

_NEAREST = Image.Resampling.NEAREST
_BICUBIC = Image.Resampling.BICUBIC


def _to_pil(example: dict) -> dict[str, Image.Image]:
  imgs = {"image": Image.fromarray(example["image"]),
          "target": Image.fromarray(example["target"])}
  if int(example["task_id"]) == schema.TEXT_REMOVAL:
    imgs["text_mask"] = Image.fromarray(example["text_mask"] * np.uint8(255))
  return imgs


def _from_pil(imgs: dict[str, Image.Image], task_id: int, name: str) -> dict:
  image = np.asarray(imgs["image"])
  target = np.asarray(imgs["target"])
  mask = None
  if "text_mask" in imgs:
    mask = (np.asarray(imgs["text_mask"]) > 127).astype(np.uint8)
  return schema.make_example(task_id, image, target, name, text_mask=mask)


def random_crop(imgs: dict, rng: np.random.Generator, min_ratio: float,
                max_ratio: float) -> dict:
  """Crops every image of `imgs` to the same random window."""
  w, h = imgs["image"].size
  crop_w = int(w * rng.uniform(min_ratio, max_ratio))
  crop_h = int(h * rng.uniform(min_ratio, max_ratio))
  x0 = int(rng.integers(0, w - crop_w + 1))
  y0 = int(rng.integers(0, h - crop_h + 1))
  box = (x0, y0, x0 + crop_w, y0 + crop_h)
  return {k: v.crop(box) for k, v in imgs.items()}


def hflip(imgs: dict) -> dict:
  """Mirrors every image left-right."""
  return {k: v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
          for k, v in imgs.items()}


def rotate(imgs: dict, angle: float, task_id: int) -> dict:
  """Rotates with an expanded canvas and the official per-key fills."""
  target_fill = ((0, 0, 0) if task_id == schema.TEXT_REMOVAL
                 else (schema.IGNORE_VALUE,) * 3)
  fills = {"image": (0, 0, 0), "target": target_fill, "text_mask": 255}
  return {k: v.rotate(angle, resample=_NEAREST, expand=True,
                      fillcolor=fills[k]) for k, v in imgs.items()}


def adjust_hue(img: Image.Image, hue: float) -> Image.Image:
  """Rotates the hue by `hue` turns (in [-0.5, 0.5]) in PIL's 8-bit HSV."""
  h, s, v = img.convert("HSV").split()
  shift = int(hue * 255) % 256  # Truncate, then wrap like a uint8 add.
  h = h.point(lambda x: (x + shift) % 256)
  return Image.merge("HSV", (h, s, v)).convert("RGB")


def colour_jitter(img: Image.Image, rng: np.random.Generator, brightness: float,
                  contrast: float, saturation: float, hue: float) -> Image.Image:
  """Random brightness/contrast/saturation/hue, in a random order."""
  def factor(x):
    return rng.uniform(max(0.0, 1.0 - x), 1.0 + x)
  b, c, s = factor(brightness), factor(contrast), factor(saturation)
  hshift = rng.uniform(-hue, hue)
  for op in rng.permutation(4):
    if op == 0 and brightness > 0:
      img = ImageEnhance.Brightness(img).enhance(b)
    elif op == 1 and contrast > 0:
      img = ImageEnhance.Contrast(img).enhance(c)
    elif op == 2 and saturation > 0:
      img = ImageEnhance.Color(img).enhance(s)
    elif op == 3 and hue > 0:
      img = adjust_hue(img, hshift)
  return img


def resize(imgs: dict, size: int, task_id: int) -> dict:
  """Resizes to size x size: bicubic for photos, nearest for label maps."""
  out = {}
  for k, v in imgs.items():
    photo = k == "image" or (k == "target" and task_id == schema.TEXT_REMOVAL)
    out[k] = v if v.size == (size, size) else v.resize(
        (size, size), _BICUBIC if photo else _NEAREST)
  return out


def train_transform(example: dict, rng: np.random.Generator, aug: Any,
                    image_size: int) -> dict:
  """The training augmentation chain of one example (see module docstring).

  Args:
    example: a schema example (uint8 arrays).
    rng: the per-example generator (grain seeds it from the index).
    aug: the task's augmentation config (crop_prob, crop_min_ratio,
      crop_max_ratio, hflip_prob, jitter_prob, brightness, contrast, saturation,
      hue, rotate_prob, rotate_max_angle).
    image_size: output side length.

  Returns:
    The augmented example, image_size x image_size.
  """
  task_id = int(example["task_id"])
  imgs = _to_pil(example)
  # One uniform draw per step, always, so a step's randomness does not depend on
  # whether an earlier step fired.
  u = rng.uniform(size=4)
  if u[0] < aug.crop_prob:
    imgs = random_crop(imgs, rng, aug.crop_min_ratio, aug.crop_max_ratio)
  if u[1] < aug.hflip_prob:
    imgs = hflip(imgs)
  if u[2] < aug.jitter_prob:
    imgs["image"] = colour_jitter(imgs["image"], rng, aug.brightness,
                                  aug.contrast, aug.saturation, aug.hue)
  if u[3] < aug.rotate_prob:
    angle = rng.uniform(-aug.rotate_max_angle, aug.rotate_max_angle)
    imgs = rotate(imgs, angle, task_id)
  imgs = resize(imgs, image_size, task_id)
  return _from_pil(imgs, task_id, example["name"])


def eval_transform(example: dict, image_size: int) -> dict:
  """Evaluation preprocessing: resize only, original-size target kept.

  Returns the resized example plus `orig_target` (H, W, 3) and `orig_valid`
  (H, W) at the file's own size, for metrics computed at label resolution.
  """
  task_id = int(example["task_id"])
  out = _from_pil(resize(_to_pil(example), image_size, task_id), task_id,
                  example["name"])
  out["orig_target"] = example["target"]
  out["orig_valid"] = example["valid"]
  return out
