"""TextSeg reader (text segmentation).

Layout: `ROOT/image/NAME.jpg`, `ROOT/semantic_label/NAME_maskfg.png` and
`ROOT/split.json` = {"train": [NAME, ...], "val": [...], "test": [...]}.
Labels: 0 background, 100 text, 200 word effect (-> background), 255 ignore.
"""

import json
import os
from typing import Sequence

import numpy as np

from input_pipeline import schema
from input_pipeline.sources import common


def read_split_names(root: str, splits: Sequence[str]) -> list[str]:
  """Sample names of `splits` from ROOT/split.json, with clear errors."""
  path = os.path.join(root, "split.json")
  if not os.path.isfile(path):
    raise schema.DataError(path, "missing; expected a TextSeg folder with "
                           "image/, semantic_label/ and split.json")
  try:
    with open(path, encoding="utf-8") as f:
      split = json.load(f)
  except (OSError, ValueError) as e:
    raise schema.DataError(path, f"not valid JSON ({e})") from e
  if not isinstance(split, dict):
    raise schema.DataError(path, "expected a JSON object of split -> names")
  names = []
  for s in splits:
    if s not in split:
      raise schema.DataError(path, f"has no split {s!r} (has {sorted(split)})")
    if not isinstance(split[s], list):
      raise schema.DataError(path, f"split {s!r} is not a list of names")
    names.extend(str(n) for n in split[s])
  if not names:
    raise schema.DataError(path, f"splits {list(splits)} are empty")
  return names


def paths_for(root: str, name: str) -> tuple[str, str]:
  """(image path, label path) of a TextSeg sample name."""
  return (os.path.join(root, "image", name + ".jpg"),
          os.path.join(root, "semantic_label", name + "_maskfg.png"))


class TextSeg:
  """Random-access TextSeg split(s) in the shared schema."""

  def __init__(self, root: str, splits: Sequence[str] = ("train", "val"),
               check_sizes: bool = True, skip_bad: bool = False):
    """Reads split.json and checks every listed file up front.

    Args:
      root: the TextSeg folder.
      splits: split.json keys to read, concatenated (train+val for training).
      check_sizes: also compare image/label sizes from the file headers.
      skip_bad: a sample failing these checks (missing image or label, size
        mismatch) raises when read (common.BadRecord) instead of here.
    """
    self.root = root
    self.records: list = []
    for name in read_split_names(root, splits):
      self.records.append(common.check_record(skip_bad, self._record, root,
                                              name, check_sizes))

  @staticmethod
  def _record(root: str, name: str, check_sizes: bool) -> tuple[str, str]:
    image_path, label_path = paths_for(root, name)
    for p, what in ((image_path, "image"), (label_path, "label")):
      if not os.path.isfile(p):
        raise schema.DataError(p, f"missing {what} of sample {name!r} listed "
                               "in split.json")
    if check_sizes:
      common.check_same_size(image_path, common.image_size(image_path),
                             label_path, common.image_size(label_path),
                             "label")
    return image_path, label_path

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    if isinstance(self.records[index], common.BadRecord):
      self.records[index].raise_error()
    image_path, label_path = self.records[index]
    image = common.read_rgb(image_path)
    label_img = common.open_image(label_path)
    # 8-bit grey labels (the usual case) convert on one channel; the official
    # RGB conversion copies grey to all three channels, so this is the same.
    label = np.asarray(label_img if label_img.mode == "L"
                       else label_img.convert("RGB"))
    common.check_same_size(image_path, (image.shape[1], image.shape[0]),
                           label_path, (label.shape[1], label.shape[0]),
                           "label")
    return schema.make_example(schema.SEGMENTATION, image,
                               schema.textseg_target(label), image_path)


def decode_textseg(image: np.ndarray, label: np.ndarray, name: str) -> dict:
  """Decoded arrays (e.g. from TFDS) -> schema example."""
  if label.ndim == 3 and label.shape[-1] == 1:
    label = label[..., 0]
  if image.shape[:2] != label.shape[:2]:
    raise schema.DataError(name, f"image {image.shape[:2]} and label "
                           f"{label.shape[:2]} differ in size")
  return schema.make_example(schema.SEGMENTATION, image,
                             schema.textseg_target(label), name)
