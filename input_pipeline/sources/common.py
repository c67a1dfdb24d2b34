"""File reading with clear errors, and the skip-bad-examples wrapper."""

import logging
import os
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

from input_pipeline.schema import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ExampleSource(Protocol):
  """A random-access source of examples in the shared schema."""

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> dict:
    ...


def open_image(path: str) -> Image.Image:
  """Opens and fully decodes an image, raising DataError naming the file."""
  if not os.path.isfile(path):
    raise DataError(path, "file not found")
  img = None
  try:
    img = Image.open(path)
    img.load()  # Decodes now, so truncation is found here, not later.
    return img
  except OSError as e:  # PIL raises OSError subclasses for bad/truncated data.
    raise DataError(path, f"unreadable or truncated image ({e})") from e
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(path, f"cannot decode image ({e!r})") from e


def read_rgb(path: str) -> np.ndarray:
  """Reads an image file as uint8 (H, W, 3) RGB."""
  img = open_image(path)
  if img.mode != "RGB":
    img = img.convert("RGB")
  return np.asarray(img)


def image_size(path: str) -> tuple[int, int]:
  """(width, height) from the file header only (cheap up-front check)."""
  if not os.path.isfile(path):
    raise DataError(path, "file not found")
  try:
    with Image.open(path) as img:
      return img.size
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(path, f"not a readable image ({e})") from e


def check_same_size(ref_path: str, ref_size: tuple[int, int], path: str,
                    size: tuple[int, int], what: str) -> None:
  """Raises DataError on `path` when its (w, h) differs from the image's."""
  if tuple(size) != tuple(ref_size):
    raise DataError(path, f"{what} is {size[0]}x{size[1]} but the image "
                    f"{ref_path} is {ref_size[0]}x{ref_size[1]} (WxH)")


def list_images(folder: str) -> list[str]:
  """Sorted image file names in `folder`; DataError if it is missing or empty."""
  if not os.path.isdir(folder):
    raise DataError(folder, "expected folder is missing (is this the dataset "
                    "root in its official layout?)")
  names = sorted(n for n in os.listdir(folder)
                 if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise DataError(folder, "no images found (empty split)")
  return names


def stem(name: str) -> str:
  """File name without its extension."""
  return os.path.splitext(name)[0]


class BadRecord:
  """A record that failed the up-front checks, kept so that reading it raises.

  With ``skip_bad_examples`` the folder readers keep such records in place of
  aborting: training then replaces them (SkipBadExamples) and evaluation
  leaves them out and reports them, like files that fail to decode.
  """

  def __init__(self, error: DataError):
    self.path, self.problem = error.path, error.problem

  def raise_error(self):
    raise DataError(self.path, self.problem)


def check_record(skip_bad: bool, make_record, *args) -> Any:
  """``make_record(*args)``, or a BadRecord for its DataError if ``skip_bad``."""
  try:
    return make_record(*args)
  except DataError as e:
    if not skip_bad:
      raise
    logging.warning("bad example (skipped when read): %s", e)
    return BadRecord(e)


class SkipBadExamples:
  """Wraps a training source so a bad example is replaced by the next good one.

  The replacement is deterministic (index + 1, + 2, ...), so a resumed run still
  sees the same batches. Every skip is logged by file name and counted.
  """

  def __init__(self, source: ExampleSource, max_consecutive: int = 100):
    self._source = source
    self._max = max_consecutive
    self.skipped: dict[str, str] = {}

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    n = len(self._source)
    for k in range(min(self._max, n)):
      try:
        return self._source[(index + k) % n]
      except DataError as e:
        if e.path not in self.skipped:
          self.skipped[e.path] = e.problem
          logging.warning("Skipping bad example %d (%d skipped so far in this "
                          "process): %s", (index + k) % n, len(self.skipped), e)
    raise DataError(getattr(self._source, "root", "<source>"),
                    f"{min(self._max, n)} consecutive bad examples from index "
                    f"{index}; giving up")

  def __getattr__(self, name: str) -> Any:
    return getattr(self._source, name)


def parse_int_fields(path: str, line_no: int, line: str,
                     expected: int) -> Sequence[int]:
  """Parses a comma-separated line of `expected` integers, or DataError."""
  parts = [p.strip() for p in line.split(",")]
  if len(parts) != expected:
    raise DataError(path, f"line {line_no}: expected {expected} comma-separated "
                    f"integers, got {line!r}")
  try:
    return [int(p) for p in parts]
  except ValueError as e:
    raise DataError(path, f"line {line_no}: not integers: {line!r}") from e
