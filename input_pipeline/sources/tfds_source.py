"""Reads the ArrayRecord data sets of tfds_builders.py as schema examples.

Uses ``tfds.data_source`` (random access, decoding with numpy/PIL, no
tensorflow), so it plugs into grain like the folder readers.
"""

from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import schema
# Imported for its side effect: it registers the data set builders with TFDS.
from input_pipeline.sources import tfds_builders  # noqa: F401
from input_pipeline.sources.scut_enstext import decode_removal
from input_pipeline.sources.tampered_ic13 import decode_tampered
from input_pipeline.sources.textseg import decode_textseg
from upocr_jax import tasks

_EXPECTED = dict(enumerate(tasks.BENCHMARKS))  # task id -> TFDS name


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TfdsSource:
  """Concatenated TFDS splits of one task, random access."""

  def __init__(self, name: str, data_dir: str, splits: Sequence[str],
               task_id: int):
    if _EXPECTED[task_id] != name:
      raise ValueError(f"TFDS data set {name!r} does not hold task "
                       f"{schema.TASKS[task_id]!r} (expected "
                       f"{_EXPECTED[task_id]!r})")
    self.root = f"{data_dir}/{name}"
    self.task_id = task_id
    self._parts = []
    for split in splits:
      try:
        self._parts.append(tfds.data_source(name, split=split,
                                            data_dir=data_dir, download=False))
      except Exception as e:  # pylint: disable=broad-except
        raise schema.DataError(self.root, f"cannot open split {split!r} ({e}); "
                               "build it with input_pipeline.sources."
                               "tfds_builders") from e
    self._offsets = np.cumsum([0] + [len(p) for p in self._parts])

  def __len__(self) -> int:
    return int(self._offsets[-1])

  def __getitem__(self, index: int) -> dict:
    part = int(np.searchsorted(self._offsets, index, side="right")) - 1
    record = self._parts[part][index - int(self._offsets[part])]
    name = _text(record["name"])
    if self.task_id == schema.TEXT_REMOVAL:
      return decode_removal(record["image"], record["label"],
                            record["text_mask"], name, binary_mask=True)
    if self.task_id == schema.SEGMENTATION:
      return decode_textseg(record["image"], record["label"], name)
    return decode_tampered(record["image"], record["boxes"], name)
