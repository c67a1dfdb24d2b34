"""SCUT-EnsText reader (text removal): `ROOT/{train,test}/{image,label,mask}/`.

The label (text-free photo) and mask (white = non-text) of `image/NAME.ext` are
`label/NAME.jpg` and `mask/NAME.jpg` (another image extension is accepted when
the .jpg is absent).
"""

import os
from typing import Sequence

import numpy as np

from input_pipeline import schema
from input_pipeline.sources import common


def _find_companion(folder: str, name_stem: str, image_name: str) -> str:
  """Path of the label/mask for an image; DataError naming it when missing."""
  candidates = [name_stem + ".jpg", image_name, name_stem + ".png"]
  for c in candidates:
    path = os.path.join(folder, c)
    if os.path.isfile(path):
      return path
  raise schema.DataError(os.path.join(folder, candidates[0]),
                         "missing (every image needs a label and a mask)")


class ScutEnsText:
  """Random-access SCUT-EnsText split(s) in the shared schema."""

  def __init__(self, root: str, splits: Sequence[str] = ("train",),
               check_sizes: bool = True, skip_bad: bool = False):
    """Lists the files and checks the layout up front.

    Args:
      root: the SCUT-EnsText folder, holding `train/` and `test/`.
      splits: sub-folders to read, concatenated in order.
      check_sizes: also compare image/label/mask sizes from the file headers.
      skip_bad: an example failing these checks raises when read (see
        common.BadRecord) instead of here.
    """
    self.root = root
    self.records: list = []
    for split in splits:
      split_dir = os.path.join(root, split)
      image_dir = os.path.join(split_dir, "image")
      for name in common.list_images(image_dir):
        self.records.append(common.check_record(
            skip_bad, self._record, split_dir, image_dir, name, check_sizes))

  @staticmethod
  def _record(split_dir: str, image_dir: str, name: str,
              check_sizes: bool) -> tuple[str, str, str]:
    s = common.stem(name)
    rec = (os.path.join(image_dir, name),
           _find_companion(os.path.join(split_dir, "label"), s, name),
           _find_companion(os.path.join(split_dir, "mask"), s, name))
    if check_sizes:
      size = common.image_size(rec[0])
      common.check_same_size(rec[0], size, rec[1], common.image_size(rec[1]),
                             "label")
      common.check_same_size(rec[0], size, rec[2], common.image_size(rec[2]),
                             "mask")
    return rec

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    if isinstance(self.records[index], common.BadRecord):
      self.records[index].raise_error()
    image_path, label_path, mask_path = self.records[index]
    image = common.read_rgb(image_path)
    label = common.read_rgb(label_path)
    mask = common.open_image(mask_path)
    size = (image.shape[1], image.shape[0])
    common.check_same_size(image_path, size, label_path,
                           (label.shape[1], label.shape[0]), "label")
    common.check_same_size(image_path, size, mask_path, mask.size, "mask")
    return schema.make_example(schema.TEXT_REMOVAL, image, label, image_path,
                               text_mask=schema.removal_text_mask(mask))


def decode_removal(image: np.ndarray, label: np.ndarray, mask: np.ndarray,
                   name: str, binary_mask: bool = False) -> dict:
  """Decoded arrays (e.g. from TFDS) -> schema example.

  `mask` is the official mask image (L or RGB), or with `binary_mask` the
  already converted non-text mask (nonzero = non-text).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if image.shape[:2] != label.shape[:2] or image.shape[:2] != mask.shape[:2]:
    raise schema.DataError(name, f"image {image.shape[:2]}, label "
                           f"{label.shape[:2]} and mask {mask.shape[:2]} differ "
                           "in size")
  if binary_mask:
    text_mask = (mask > 0).astype(np.uint8)
  else:
    text_mask = schema.removal_text_mask(Image.fromarray(mask))
  return schema.make_example(schema.TEXT_REMOVAL, image, label, name,
                             text_mask=text_mask)
