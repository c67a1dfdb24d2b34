"""Synthetic text images for all three tasks, so everything runs with no download.

Each scene is a procedural background (gradient, low-frequency noise, shapes,
stripes/texture, or a user photo) with words drawn in several fonts, sizes,
colours and rotations, some with outlines or shadows. Per task:

* text removal: the composite, the clean background (target) and a mask that is
  white (non-text) outside the rotated word rectangles;
* text segmentation: a TextSeg-style label: 100 text, 200 outline/shadow (word
  effect), 255 ignore on the anti-aliased glyph border, 0 background;
* tampered text detection: the scene gets a camera history (grain, JPEG), then
  some words are tampered after the fact, either erased (leaving inpainting
  residue) and re-rendered as another word in another font, or copied elsewhere
  in the image; each edited area is pasted with a history of its own (clean,
  blurred, grainier or resampled: see synthetic_traces.py); gt rows (x1, y1,
  x2, y2, label 1 real / 2 tampered).

`generate_raw` returns these in the official file formats (the writer CLI saves
them in the official layouts); `SyntheticSource` converts them with the same
label conversions as the folder readers. Everything is a pure function of
(seed, split, task, index).
"""

import zlib
from typing import Sequence

import numpy as np
from PIL import Image

from input_pipeline import fonts as fonts_lib
from input_pipeline import schema
from input_pipeline import synthetic_render as render
from input_pipeline import synthetic_traces as traces


class SynthParams:
  """Size range, word count and resources of the generator."""

  def __init__(self, min_size: int = 64, max_size: int = 96, max_words: int = 4,
               fonts_dir: str | None = None, photos_dir: str | None = None):
    if not 16 <= min_size <= max_size:
      raise ValueError(f"synthetic sizes must satisfy 16 <= min_size <= "
                       f"max_size, got {min_size}, {max_size}")
    self.min_size, self.max_size, self.max_words = min_size, max_size, max_words
    self.font_paths = fonts_lib.default_font_paths(fonts_dir)
    self.photos = render.list_photos(photos_dir)


def _place_words(rng: np.random.Generator, canvas: Image.Image, bg_luma: float,
                 params: SynthParams, n_words: int, max_angle: float,
                 acc: dict[str, np.ndarray]) -> list[list[int]]:
  """Draws up to n_words non-overlapping words; returns their tight boxes."""
  w, h = canvas.size
  boxes = []
  for _ in range(n_words):
    layers = _fit_word(rng, params, min(w, h), w, h, max_angle, bg_luma)
    if layers is None:
      continue
    box = _try_place(rng, layers, w, h, boxes)
    if box is None:
      continue
    _draw(canvas, layers, box, acc)
    boxes.append(box[:4])
  return boxes


def _fit_word(rng, params, side, w, h, max_angle, bg_luma,
              text=None, size_px=None):
  text = text or render.random_text(rng)
  font = params.font_paths[int(rng.integers(len(params.font_paths)))]
  size_px = size_px or max(8, int(side * rng.uniform(0.1, 0.3)))
  for _ in range(4):
    layers = render.render_word(rng, text, font, size_px, max_angle, bg_luma)
    if layers.fill.size[0] <= w and layers.fill.size[1] <= h:
      return layers
    size_px = max(6, int(size_px * 0.7))
  return None


def _try_place(rng, layers, w, h, boxes, tries=20):
  lw, lh = layers.fill.size
  tight = (Image.fromarray(np.maximum(np.asarray(layers.fill),
                                      np.asarray(layers.effect)))).getbbox()
  if tight is None:
    return None
  for _ in range(tries):
    x, y = int(rng.integers(0, w - lw + 1)), int(rng.integers(0, h - lh + 1))
    box = [x + tight[0], y + tight[1], x + tight[2] - 1, y + tight[3] - 1]
    if not render.overlaps(box, boxes, margin=2):
      return box + [x, y]
  return None


def _draw(canvas, layers, box, acc):
  x, y = box[4], box[5]
  render.composite(canvas, layers, (x, y))
  lw, lh = layers.fill.size
  for key in ("fill", "effect", "region"):
    sl = acc[key][y:y + lh, x:x + lw]
    np.maximum(sl, np.asarray(getattr(layers, key)), out=sl)


def _tamper(rng, image, bg, params, boxes, acc_shape, bg_luma):
  """Tampers some of the words in `image` in place; returns gt rows."""
  h, w = acc_shape
  rows = [list(b) + [1] for b in boxes]
  order = rng.permutation(len(rows))
  n = int(rng.integers(1, max(1, len(rows) // 2) + 1))
  moved = []
  for i in order[:n]:
    x1, y1, x2, y2, _ = rows[i]
    if rng.uniform() < 0.5:  # Re-render as another word, another font.
      others = [r[:4] for j, r in enumerate(rows) if j != i] + moved
      side = max(8, int((y2 - y1 + 1) * rng.uniform(0.8, 1.1)))
      layers = _fit_word(rng, params, side, w, h, 0.0, bg_luma, size_px=side)
      if layers is None:
        continue
      tight = Image.fromarray(np.maximum(np.asarray(layers.fill),
                                         np.asarray(layers.effect))).getbbox()
      x, y = x1 - tight[0], y1 - tight[1]
      new = [x1, y1, x1 + tight[2] - tight[0] - 1, y1 + tight[3] - tight[1] - 1]
      union = [min(x1, new[0]), min(y1, new[1]), max(x2, new[2]),
               max(y2, new[3])]
      lw, lh = layers.fill.size
      if (x < 0 or y < 0 or x + lw > w or y + lh > h or
          render.overlaps(union, others, margin=1)):
        continue
      # The old word is erased (inpainting residue), the new one drawn, and
      # the edited area pasted back with a history of its own.
      sl = np.s_[union[1]:union[3] + 1, union[0]:union[2] + 1]
      work = image.copy()
      work[sl] = traces.inpaint_residue(rng, bg[sl])
      canvas = Image.fromarray(work)
      render.composite(canvas, layers, (x, y))
      image[sl] = traces.edited_history(rng, np.asarray(canvas)[sl])
      rows[i] = union + [2]
    else:  # Copy-move the word somewhere free.
      bw, bh = x2 - x1 + 1, y2 - y1 + 1
      taken = [r[:4] for r in rows] + moved
      for _ in range(20):
        nx, ny = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        dst = [nx, ny, nx + bw - 1, ny + bh - 1]
        if not render.overlaps(dst, taken, margin=2):
          # A copy with the same history as its source leaves no local
          # trace; a copy pasted at another size or quality does.
          image[ny:ny + bh, nx:nx + bw] = traces.edited_history(
              rng, image[y1:y2 + 1, x1:x2 + 1].copy(), traces.EDIT_KINDS[1:])
          moved.append(dst)
          break
  return rows + [m + [2] for m in moved]


def generate_raw(task_id: int, rng: np.random.Generator,
                 params: SynthParams) -> dict:
  """One synthetic example in the official file formats of `task_id`.

  Returns:
    text removal: {'image', 'label' (RGB), 'mask' (L, 255 non-text)};
    segmentation: {'image', 'label' (L, TextSeg values 0/100/200/255)};
    tampered: {'image', 'boxes' int32 (N, 5)}. Images are uint8 arrays.
  """
  w, h = (int(v) for v in rng.integers(params.min_size, params.max_size + 1,
                                       size=2))
  bg = render.background(rng, w, h, params.photos)
  bg_luma = float(np.mean(bg @ np.array([0.299, 0.587, 0.114])))
  canvas = Image.fromarray(bg)
  acc = {k: np.zeros((h, w), np.uint8) for k in ("fill", "effect", "region")}
  tampered = task_id == schema.TAMPERED
  n_words = int(rng.integers(2 if tampered else 1, params.max_words + 1))
  boxes = _place_words(rng, canvas, bg_luma, params, n_words,
                       0.0 if tampered else 25.0, acc)
  image = np.array(canvas)
  if task_id == schema.TEXT_REMOVAL:
    mask = np.where(acc["region"] > 127, 0, 255).astype(np.uint8)
    return {"image": image, "label": bg, "mask": mask}
  if task_id == schema.SEGMENTATION:
    label = np.zeros((h, w), np.uint8)
    label[acc["effect"] > 127] = 200
    label[(acc["fill"] > 40) & (acc["fill"] < 160)] = 255
    label[acc["fill"] >= 160] = 100
    return {"image": image, "label": label}
  image = traces.camera_history(rng, image)
  rows = _tamper(rng, image, bg, params, boxes, (h, w), bg_luma) if boxes else []
  return {"image": image, "boxes": np.asarray(rows, np.int32).reshape(-1, 5)}


def raw_to_example(task_id: int, raw: dict, name: str) -> dict:
  """Raw files -> schema example, with the folder readers' conversions."""
  image = raw["image"]
  if task_id == schema.TEXT_REMOVAL:
    return schema.make_example(
        task_id, image, raw["label"], name,
        text_mask=schema.removal_text_mask(Image.fromarray(raw["mask"])))
  if task_id == schema.SEGMENTATION:
    return schema.make_example(task_id, image,
                               schema.textseg_target(raw["label"]), name)
  h, w = image.shape[:2]
  return schema.make_example(task_id, image,
                             schema.tampered_target(w, h, raw["boxes"].tolist()),
                             name)


class SyntheticSource:
  """Random-access synthetic split: example i is a pure function of the seed."""

  def __init__(self, task_id: int, num_examples: int | None = 1000,
               seed: int = 0, split: str = "train",
               params: SynthParams | None = None, cache: bool = False):
    """Creates the source.

    Args:
      task_id: 0 removal, 1 tampered, 2 segmentation.
      num_examples: split size; None for an (effectively) infinite split.
      seed: base seed; (seed, split, task, index) fixes each example.
      split: split name; different names give disjoint random streams.
      params: size range, words, fonts and photos (defaults: 64-96 px).
      cache: keep every generated example in memory (read-only arrays), so a
        small split that is read for many epochs is drawn only once. The
        examples are the same either way; augmentation still runs each read.
    """
    self.task_id = task_id
    self.num_examples = (2 ** 31 - 1) if num_examples is None else num_examples
    if self.num_examples <= 0:
      raise ValueError(f"synthetic {split} split of task {task_id} is empty")
    self.seed, self.split = seed, split
    self.params = params or SynthParams()
    self.root = f"synthetic:{schema.TASK_KEYS[task_id]}/{split}"
    self._split_code = zlib.crc32(split.encode())
    if cache and num_examples is None:
      raise ValueError(f"{self.root}: cache=True needs a finite num_examples "
                       "(an infinite split cannot be kept in memory)")
    self._cache: dict[int, dict] | None = {} if cache else None

  def __len__(self) -> int:
    return self.num_examples

  def rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, self._split_code, self.task_id,
                                  index])

  def raw(self, index: int) -> dict:
    """Example `index` in the official file formats (see generate_raw)."""
    if not 0 <= index < self.num_examples:
      raise IndexError(f"{self.root}: index {index} out of range")
    return generate_raw(self.task_id, self.rng(index), self.params)

  def __getitem__(self, index: int) -> dict:
    if self._cache is not None and index in self._cache:
      return dict(self._cache[index])
    example = raw_to_example(self.task_id, self.raw(index),
                             f"{self.root}/{index:07d}")
    if self._cache is not None:
      # Read-only, so a transform that wrote into a cached array would fail
      # loudly instead of changing every later epoch.
      for value in example.values():
        if isinstance(value, np.ndarray):
          value.flags.writeable = False
      self._cache[index] = example
      example = dict(example)
    return example


def make_sources(num_examples: int | None, seed: int, split: str,
                 params: SynthParams) -> Sequence[SyntheticSource]:
  """One synthetic source per task, in task-id order."""
  return [SyntheticSource(t, num_examples, seed, split, params)
          for t in range(len(schema.TASKS))]
