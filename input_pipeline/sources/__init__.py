"""Random-access example sources: official folder layouts, TFDS, synthetic."""

from typing import Any

from input_pipeline import schema
from input_pipeline import synthetic
from input_pipeline.sources import common
from input_pipeline.sources import tfds_source
from input_pipeline.sources.scut_enstext import ScutEnsText
from input_pipeline.sources.tampered_ic13 import TamperedIC13
from input_pipeline.sources.textseg import TextSeg

FOLDER_READERS = (ScutEnsText, TamperedIC13, TextSeg)  # In task-id order.


def make_source(data_config: Any, task_id: int,
                train: bool) -> common.ExampleSource:
  """The train (or eval) source of task `task_id` as `config.data` says.

  Folder layouts are listed and checked here, so a bad layout, a missing label
  or a malformed gt line fails before training starts. With
  ``skip_bad_examples`` a bad example is kept and raises DataError when read:
  the train source replaces it by the next good one (SkipBadExamples), the
  eval pipeline leaves it out and reports it (pipeline._EvalExample).
  """
  cfg = data_config[schema.TASK_KEYS[task_id]]
  splits = list(cfg.train_splits if train else cfg.eval_splits)
  if cfg.source == "folder":
    source = FOLDER_READERS[task_id](
        cfg.root, splits, check_sizes=data_config.check_sizes,
        skip_bad=data_config.skip_bad_examples)
  elif cfg.source == "tfds":
    source = tfds_source.TfdsSource(cfg.tfds_name, data_config.tfds_data_dir,
                                    splits, task_id)
  elif cfg.source == "synthetic":
    s = data_config.synthetic
    params = synthetic.SynthParams(s.min_size, s.max_size, s.max_words,
                                   s.fonts_dir or None, s.photos_dir or None)
    source = synthetic.SyntheticSource(
        task_id, s.num_train if train else s.num_eval, s.seed,
        "train" if train else "test", params, cache=s.cache)
  else:
    raise ValueError(f"config.data.{schema.TASK_KEYS[task_id]}.source must be "
                     f"'folder', 'tfds' or 'synthetic', got {cfg.source!r}")
  if len(source) == 0:
    raise schema.DataError(getattr(source, "root", cfg.root),
                           f"{'train' if train else 'eval'} splits {splits} "
                           "are empty")
  if data_config.skip_bad_examples and train:
    source = common.SkipBadExamples(source)
  return source
