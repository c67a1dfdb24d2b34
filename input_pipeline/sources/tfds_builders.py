"""TFDS builders (ArrayRecord) for SCUT-EnsText, TextSeg and Tampered-IC13.

Manual download: point ``manual_dir`` at the extracted data set in its official
layout (the same folder the folder readers take as ``root``)::

  python -m input_pipeline.sources.tfds_builders --dataset=scut_enstext \
      --manual_dir=data/TextRemoval/SCUT-ENS --data_dir=data/tfds

Builds without tensorflow: images are stored as their original encoded bytes
when they are RGB JPEG/PNG files (otherwise converted to RGB PNG), the SCUT mask
as its 0/1 non-text mask (as the folder reader computes it) in a PNG, TextSeg
labels as 8-bit PNG, Tampered-IC13 boxes as an int32 (N, 5) tensor. Files are
checked with the folder readers, so a bad file fails the build with its name.
"""

import io
import os
from typing import Iterator, Sequence

from absl import flags
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import schema
from input_pipeline.sources import common
from input_pipeline.sources.scut_enstext import ScutEnsText
from input_pipeline.sources.tampered_ic13 import TamperedIC13
from input_pipeline.sources.textseg import TextSeg
from upocr_jax import cli_flags

_VERSION = tfds.core.Version("1.0.0")


def _rgb_bytes(path: str) -> bytes:
  """Original bytes of an RGB JPEG/PNG; anything else re-encoded as RGB PNG."""
  img = common.open_image(path)
  if img.mode == "RGB" and img.format in ("JPEG", "PNG"):
    with open(path, "rb") as f:
      return f.read()
  return _png(np.asarray(img.convert("RGB")))


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1
                  else array).save(buf, format="PNG")
  return buf.getvalue()


def _image(channels: int) -> tfds.features.Image:
  return tfds.features.Image(shape=(None, None, channels))


class _Builder(tfds.core.GeneratorBasedBuilder):
  """Common parts: version, manual download text, split generators."""

  VERSION = _VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download and extract the data set, then pass its folder (official "
      "layout) as manual_dir.")
  SPLITS: Sequence[str] = ()

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=self.FEATURES)

  def _split_generators(self, dl_manager):
    root = str(dl_manager.manual_dir)
    return {s: self._generate_examples(root, s) for s in self.SPLITS}


class ScutEnsTextTfds(_Builder):
  """SCUT-EnsText: image, label (text-free), text_mask (1 = non-text)."""

  name = "scut_enstext"
  SPLITS = ("train", "test")
  FEATURES = tfds.features.FeaturesDict({
      "image": _image(3), "label": _image(3), "text_mask": _image(1),
      "name": tfds.features.Text()})

  def _generate_examples(self, root: str, split: str) -> Iterator:
    reader = ScutEnsText(root, [split])
    for image_path, label_path, mask_path in reader.records:
      mask = schema.removal_text_mask(common.open_image(mask_path))
      yield os.path.basename(image_path), {
          "image": _rgb_bytes(image_path), "label": _rgb_bytes(label_path),
          "text_mask": _png(mask[..., None] * np.uint8(255)),
          "name": image_path}


class TextSegTfds(_Builder):
  """TextSeg: image and the raw 8-bit `_maskfg` label."""

  name = "textseg"
  SPLITS = ("train", "val", "test")
  FEATURES = tfds.features.FeaturesDict({
      "image": _image(3), "label": _image(1), "name": tfds.features.Text()})

  def _generate_examples(self, root: str, split: str) -> Iterator:
    reader = TextSeg(root, [split])
    for image_path, label_path in reader.records:
      label = np.asarray(common.open_image(label_path).convert("RGB"))[..., 0]
      yield os.path.basename(image_path), {
          "image": _rgb_bytes(image_path), "label": _png(label[..., None]),
          "name": image_path}


class TamperedIC13Tfds(_Builder):
  """Tampered-IC13: image and (N, 5) rows x1, y1, x2, y2, label."""

  name = "tampered_ic13"
  SPLITS = ("train", "test")
  FEATURES = tfds.features.FeaturesDict({
      "image": _image(3),
      "boxes": tfds.features.Tensor(shape=(None, 5), dtype=np.int32),
      "name": tfds.features.Text()})

  def _generate_examples(self, root: str, split: str) -> Iterator:
    reader = TamperedIC13(root, [split])
    for image_path, boxes in reader.records:
      yield os.path.basename(image_path), {
          "image": _rgb_bytes(image_path), "boxes": boxes, "name": image_path}


BUILDERS = {"scut_enstext": ScutEnsTextTfds, "textseg": TextSegTfds,
            "tampered_ic13": TamperedIC13Tfds}


def build(name: str, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Writes data set `name` from `manual_dir` as ArrayRecord under data_dir."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; expected one of "
                     f"{sorted(BUILDERS)}")
  if not os.path.isdir(manual_dir):
    raise schema.DataError(manual_dir, "manual_dir is not a folder")
  builder = BUILDERS[name](data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


USAGE = """Build a UPOCR TFDS data set (ArrayRecord) from its official folder.

Usage: python -m input_pipeline.sources.tfds_builders --dataset=NAME \\
    --manual_dir=DIR --data_dir=DIR

Example:
  python -m input_pipeline.sources.tfds_builders --dataset=scut_enstext \\
      --manual_dir=data/TextRemoval/SCUT-ENS --data_dir=data/tfds

Training reads it with --config.data.<task>.source=tfds and
--config.data.tfds_data_dir=DIR.
"""


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the builder's flags on ``fv`` (``argv`` unused: no config)."""
  del argv
  flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Data set to build.",
                    flag_values=fv)
  flags.DEFINE_string("manual_dir", None, "The extracted data set, in its "
                      "official layout.", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data directory written to.",
                      flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues | None = None
         ) -> tfds.core.DatasetBuilder:
  """Builds the data set; ``argv`` has the program name first. Flags are
  parsed into a fresh FlagValues unless ``fv`` (parsed) is given."""
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  cli_flags.require(fv, "dataset", "manual_dir", "data_dir")
  return build(fv.dataset, fv.manual_dir, fv.data_dir)


if __name__ == "__main__":
  cli_flags.run("input_pipeline.sources.tfds_builders", USAGE, define_flags,
                main)
