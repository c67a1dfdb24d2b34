"""Data fields of the UPOCR configs (``config.data``)."""

import ml_collections


def get_data_config(variant: str) -> ml_collections.ConfigDict:
  """Returns ``config.data`` for a variant of configs/upocr.py."""
  d = ml_collections.ConfigDict()
  d.image_size = 512 if variant == "paper" else 64
  return d
