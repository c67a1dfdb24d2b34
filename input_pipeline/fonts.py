"""Fonts for the synthetic generator that every fresh install has.

They come from small pip packages that setup.py depends on (Source Sans Pro,
Source Serif Pro, Caladea, Amatic SC, Fredoka One) plus Pillow's built-in
scalable default font. The list is sorted, so the same install renders the same
synthetic images for the same seed. A folder of extra .ttf/.otf files can be
added through the config.
"""

import functools
import glob
import importlib.util
import os
from typing import Sequence

from PIL import ImageFont

PILLOW_DEFAULT = "pillow:default"
FONT_PACKAGES = ("font_source_sans_pro", "font_source_serif_pro", "font_caladea",
                 "font_amatic_sc", "font_fredoka_one")


def default_font_paths(extra_dir: str | None = None) -> list[str]:
  """Sorted font files of the font packages (+ `extra_dir`), then Pillow's."""
  paths = []
  for package in FONT_PACKAGES:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
      continue
    for root in spec.submodule_search_locations:
      paths.extend(glob.glob(os.path.join(root, "files", "*.ttf")))
  if extra_dir:
    if not os.path.isdir(extra_dir):
      raise FileNotFoundError(f"{extra_dir}: font folder not found")
    for ext in ("*.ttf", "*.otf", "*.TTF", "*.OTF"):
      paths.extend(glob.glob(os.path.join(extra_dir, ext)))
  return sorted(set(paths)) + [PILLOW_DEFAULT]


@functools.lru_cache(maxsize=512)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
  """A FreeType font of `size` pixels (cached per process)."""
  if path == PILLOW_DEFAULT:
    return ImageFont.load_default(size=size)
  try:
    return ImageFont.truetype(path, size=size)
  except OSError as e:
    raise OSError(f"{path}: cannot load font ({e})") from e


def check_fonts(paths: Sequence[str]) -> None:
  """Raises if no font is usable."""
  if not paths:
    raise RuntimeError("no fonts found for the synthetic generator")
