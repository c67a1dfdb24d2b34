"""Training and evaluation pipelines: per-task grain pipelines, one batch.

The training batch layout (which example belongs to which task and data shard,
which process builds which block, the arrays of a batch) is in layout.py.

Per task the example stream is: source -> shuffle (the task's own seed, new order
each epoch) -> repeat -> augmentation (a per-element RNG from the config seed,
the task and the element's global index) -> this process's data shards' slots
of each step (disjoint across processes) -> that layout. The global batch is
therefore the same whatever the number of processes that read it. The returned
iterator's ``get_state``/``set_state`` (or orbax via
``grain.checkpoint.CheckpointSave/Restore``) resume exactly where it stopped.
"""

import sys
from typing import Any, Sequence

import grain
import numpy as np

from input_pipeline import layout
from input_pipeline import schema
from input_pipeline import sources
from input_pipeline import transforms


class _TaskInterleave(grain.MapDataset):
  """Flat stream: the examples of each step in the layout order (layout.py)."""

  def __init__(self, parents: Sequence[grain.MapDataset],
               per_shard: Sequence[int], first_shard: int,
               num_local_shards: int, num_shards: int):
    super().__init__(list(parents))
    # Step s of task t consumes elements s*b_t .. s*b_t + b_t - 1 of the task's
    # GLOBAL stream (b_t = k_t * num_shards); data shard d takes k_t of them.
    # So the global batch does not depend on how many processes read it.
    self._per_task = [k * num_shards for k in per_shard]
    self._layout = [(t, (first_shard + d) * k + j)
                    for d in range(num_local_shards)
                    for t, k in enumerate(per_shard) for j in range(k)]

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, pos = divmod(index, len(self._layout))
    task, offset = self._layout[pos]
    return self._parents[task][step * self._per_task[task] + offset]

  def __str__(self) -> str:
    return f"_TaskInterleave(layout={len(self._layout)} per step)"


class _Augment:
  """Picklable random_map transform: the task's training augmentation."""

  def __init__(self, aug: Any, image_size: int):
    self._aug = aug
    self._size = image_size

  def __call__(self, example: dict, rng: np.random.Generator) -> dict:
    return transforms.train_transform(example, rng, self._aug, self._size)


class _Collate:
  """Stacks examples into the batch dict; optional float conversion."""

  def __init__(self, image_dtype: str, extra_list_keys: Sequence[str] = ()):
    if image_dtype not in ("uint8", "float32"):
      raise ValueError(f"config.data.image_dtype must be 'uint8' or 'float32', "
                       f"got {image_dtype!r}")
    self._float = image_dtype == "float32"
    self._lists = ("name",) + tuple(extra_list_keys)

  def __call__(self, examples: Sequence[dict]) -> dict:
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]
             if k not in self._lists}
    for k in self._lists:
      batch[k] = [e[k] for e in examples]
    batch["text_mask"] = batch["text_mask"][..., None]
    if self._float:
      for k in ("image", "target"):
        batch[k] = batch[k].astype(np.float32) * np.float32(1 / 255)
      batch["text_mask"] = batch["text_mask"].astype(np.float32)
    return batch


def _task_dataset(data_config: Any, task_id: int, source) -> grain.MapDataset:
  """The task's global stream: shuffled, repeated, augmented per element.

  The augmentation RNG depends on the element's global index only, so an
  example looks the same whichever process reads it.
  """
  cfg = data_config[schema.TASK_KEYS[task_id]]
  ds = grain.MapDataset.source(source).shuffle(seed=cfg.shuffle_seed).repeat()
  aug_seed = int(np.random.SeedSequence(
      [data_config.seed, task_id]).generate_state(1)[0])
  return ds.random_map(_Augment(cfg, data_config.image_size), seed=aug_seed)


def _read_options(data_config: Any) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=data_config.read_threads,
                           prefetch_buffer_size=data_config.prefetch_buffer_size)


def _maybe_workers(ds: grain.IterDataset, data_config: Any) -> grain.IterDataset:
  if data_config.worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.worker_count,
        per_worker_buffer_size=data_config.worker_buffer_size))
  return ds


def create_train_dataset(config: Any, process_index: int = 0,
                         process_count: int = 1,
                         num_data_shards: int = 1) -> grain.IterDataset:
  """The training IterDataset of this process (see the module docstring).

  Args:
    config: the full config (uses ``config.data``) or ``config.data`` itself.
    process_index, process_count: this process and the number of processes
      (``jax.process_index()``, ``jax.process_count()``).
    num_data_shards: data-parallel shards of the global batch.

  Raises:
    DataError: a bad data folder (checked before anything is returned).
    ValueError: an inconsistent config.
  """
  data_config = config.data if "data" in config else config
  per_shard = layout.per_shard_batch_sizes(data_config, num_data_shards)
  shard, shard_count, n_local = layout.local_shards(
      process_index, process_count, num_data_shards)
  task_ds = []
  for task_id, k in enumerate(per_shard):
    if k == 0:
      task_ds.append(grain.MapDataset.range(0))
      continue
    source = sources.make_source(data_config, task_id, train=True)
    task_ds.append(_task_dataset(data_config, task_id, source))
  del shard_count
  flat = _TaskInterleave(task_ds, per_shard, shard * n_local, n_local,
                         num_data_shards)
  ds = _maybe_workers(flat.to_iter_dataset(_read_options(data_config)),
                      data_config)
  return ds.batch(sum(per_shard) * n_local,
                  batch_fn=_Collate(data_config.image_dtype))


def create_train_iterator(config: Any, process_index: int = 0,
                          process_count: int = 1,
                          num_data_shards: int = 1) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of training batches.

  Same arguments as `create_train_dataset`. Save/restore with
  ``it.get_state()`` / ``it.set_state(state)`` or with orbax
  (``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``).
  """
  return iter(create_train_dataset(config, process_index, process_count,
                                    num_data_shards))


class _EvalExample:
  """Loads eval example `i` of the padded order, or a masked-out pad.

  With ``skip_bad`` an example whose files are bad becomes a masked-out pad
  too, never another example (which would be scored twice); its ``skipped``
  field says which file and why ("" for every other example).
  """

  def __init__(self, source, num_examples: int, image_size: int, task_id: int,
               skip_bad: bool = False):
    self._source, self._n = source, num_examples
    self._size, self._task = image_size, task_id
    self._skip_bad = skip_bad

  def __call__(self, index: int) -> dict:
    if index < self._n:
      try:
        out = transforms.eval_transform(self._source[index], self._size)
      except schema.DataError as e:
        if not self._skip_bad:
          raise
        return self._pad(f"<skipped {index}>", str(e))
      out["example_mask"] = np.bool_(True)
      out["skipped"] = ""
      return out
    return self._pad("<padding>", "")

  def _pad(self, name: str, skipped: str) -> dict:
    s = self._size
    out = schema.make_example(self._task, np.zeros((s, s, 3), np.uint8),
                              np.zeros((s, s, 3), np.uint8), name)
    out["orig_target"] = out["target"]
    out["orig_valid"] = np.zeros((s, s), bool)
    out["valid"] = out["orig_valid"]
    out["example_mask"] = np.bool_(False)
    out["skipped"] = skipped
    return out


def create_eval_dataset(config: Any, task_id: int, process_index: int = 0,
                        process_count: int = 1,
                        max_examples: int = -1) -> tuple[grain.IterDataset, int]:
  """Fixed-order evaluation batches of one task, and the number of batches.

  Every process yields the same number of batches. Global batch s holds eval
  examples s*G .. s*G+G-1 in file order (G = ``config.data.eval_batch_size``),
  process p the contiguous slice p*G/P .. (p+1)*G/P - 1 of it; positions past
  the end are padding with ``example_mask`` False. Besides the training keys
  (images resized to image_size: bicubic for photos, nearest for label maps)
  each batch has ``example_mask`` bool (b,) and lists ``orig_target`` /
  ``orig_valid`` of the labels at their file's own size, for metrics, and
  a list ``skipped``: with ``config.data.skip_bad_examples``, "FILE: problem"
  for a bad example (masked out, not replaced), else "".

  Args:
    config: the full config or ``config.data``.
    task_id: 0 removal, 1 tampered, 2 segmentation.
    process_index, process_count: as in `create_train_dataset`.
    max_examples: evaluate only the first N examples (-1: all).
  """
  data_config = config.data if "data" in config else config
  g = data_config.eval_batch_size
  if g % process_count:
    raise ValueError(f"config.data.eval_batch_size={g} must be a multiple of "
                     f"process_count={process_count}")
  local = g // process_count
  source = sources.make_source(data_config, task_id, train=False)
  n = len(source) if max_examples < 0 else min(max_examples, len(source))
  steps = -(-n // g)
  order = [s * g + process_index * local + j for s in range(steps)
           for j in range(local)]
  ds = grain.MapDataset.source(order).map(
      _EvalExample(source, n, data_config.image_size, task_id,
                   data_config.skip_bad_examples))
  ds = _maybe_workers(ds.to_iter_dataset(_read_options(data_config)),
                      data_config)
  collate = _Collate(data_config.image_dtype,
                     ("orig_target", "orig_valid", "skipped"))
  return ds.batch(local, batch_fn=collate), steps


def create_eval_iterator(config: Any, task_id: int, process_index: int = 0,
                         process_count: int = 1, max_examples: int = -1):
  """A fresh iterator over `create_eval_dataset`'s batches (one pass)."""
  ds, _ = create_eval_dataset(config, task_id, process_index, process_count,
                              max_examples)
  return iter(ds)
