"""Tampered-IC13 reader (tampered text detection).

Layout: `ROOT/{train,test}_img/NAME.jpg` and `ROOT/{train,test}_gt/NAME.txt`,
one `x1,y1,x2,y2,label` line per box (label 1 real text, 2 tampered text).
"""

import os
from typing import Sequence

import numpy as np

from input_pipeline import schema
from input_pipeline.sources import common


def read_gt(path: str) -> np.ndarray:
  """Parses a gt file into int32 (N, 5) rows; DataError naming file and line."""
  if not os.path.isfile(path):
    raise schema.DataError(path, "missing ground-truth file")
  try:
    with open(path, encoding="utf-8-sig") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise schema.DataError(path, f"unreadable ({e})") from e
  rows = []
  for i, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    row = common.parse_int_fields(path, i, line, 5)
    if row[4] not in (1, 2):
      raise schema.DataError(path, f"line {i}: label must be 1 (real) or 2 "
                             f"(tampered), got {row[4]} in {line!r}")
    rows.append(row)
  return np.asarray(rows, dtype=np.int32).reshape(-1, 5)


class TamperedIC13:
  """Random-access Tampered-IC13 split(s) in the shared schema."""

  def __init__(self, root: str, splits: Sequence[str] = ("train",),
               check_sizes: bool = True, skip_bad: bool = False):
    """Lists the images and parses every gt file up front.

    Args:
      root: the Tampered-IC13 folder holding `{split}_img` and `{split}_gt`.
      splits: split prefixes to read ('train', 'test').
      check_sizes: also check that every image header is readable.
      skip_bad: an example failing these checks (unreadable header, missing
        or malformed gt file) raises when read (common.BadRecord) instead.
    """
    self.root = root
    self.records: list = []
    for split in splits:
      image_dir = os.path.join(root, f"{split}_img")
      gt_dir = os.path.join(root, f"{split}_gt")
      names = common.list_images(image_dir)
      if not os.path.isdir(gt_dir):
        raise schema.DataError(gt_dir, "expected folder is missing")
      for name in names:
        self.records.append(common.check_record(
            skip_bad, self._record, image_dir, gt_dir, name, check_sizes))

  @staticmethod
  def _record(image_dir: str, gt_dir: str, name: str,
              check_sizes: bool) -> tuple[str, np.ndarray]:
    image_path = os.path.join(image_dir, name)
    if check_sizes:
      common.image_size(image_path)
    return image_path, read_gt(os.path.join(gt_dir, common.stem(name) + ".txt"))

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    if isinstance(self.records[index], common.BadRecord):
      self.records[index].raise_error()
    image_path, boxes = self.records[index]
    image = common.read_rgb(image_path)
    return decode_tampered(image, boxes, image_path)


def decode_tampered(image: np.ndarray, boxes: np.ndarray, name: str) -> dict:
  """Image + (N, 5) boxes -> schema example."""
  h, w = image.shape[:2]
  target = schema.tampered_target(w, h, np.asarray(boxes).reshape(-1, 5).tolist())
  return schema.make_example(schema.TAMPERED, image, target, name)
