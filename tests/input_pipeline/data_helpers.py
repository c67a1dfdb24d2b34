"""Helpers shared by the input pipeline tests."""

import shutil

from configs import data_config
from input_pipeline import synthetic

SMALL = synthetic.SynthParams(min_size=32, max_size=48, max_words=3)


def tiny_data_config(**overrides):
  """The 'tiny' data config, shrunk further for fast tests.

  Overrides use dotted keys with '__' for dots: text_removal__batch_size=2.
  """
  d = data_config.get_data_config("tiny")
  d.image_size = 32
  d.synthetic.min_size, d.synthetic.max_size = 32, 48
  d.synthetic.num_train = 12
  d.synthetic.num_eval = 5
  d.read_threads = 1
  d.prefetch_buffer_size = 2
  for k, v in overrides.items():
    node = d
    *parents, leaf = k.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return d


def folder_config(roots: dict, **overrides):
  """Tiny config reading the three folder layouts under `roots`."""
  d = tiny_data_config(**overrides)
  for key, root in roots.items():
    d[key].source = "folder"
    d[key].root = root
  return d


def copy_dataset(src_root: str, dst_root: str) -> str:
  """Copies a data set folder so a test can break it."""
  shutil.copytree(src_root, dst_root)
  return dst_root
