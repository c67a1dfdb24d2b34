"""The training batch layout: which example of a global batch belongs to which
task and which data shard, and the arrays a batch holds.

Let D be the number of data-parallel shards of the global batch (the product of
the mesh axes the batch is split over), P the number of processes, and b_t the
configured global batch size of task t (``config.data.<task>.batch_size``); each
b_t must divide by D, k_t = b_t / D. The GLOBAL batch of B = sum_t b_t examples
is, along axis 0::

  [shard 0: task 0 x k_0, task 1 x k_1, task 2 x k_2,
   shard 1: task 0 x k_0, task 1 x k_1, task 2 x k_2, ...,  shard D-1: ...]

so that splitting axis 0 into D equal contiguous blocks gives every data shard
its share of every task. Process p builds the contiguous block of shards
p*D/P .. (p+1)*D/P - 1 (local batch B/P), ready for
``jax.make_array_from_process_local_data``. When D < P (P a multiple of D), the
P/D processes of one data shard produce identical batches (one shard each).

Each batch is a dict of numpy arrays:
  image     uint8 (or float32 in [0, 1]) (B, S, S, 3)
  target    same dtype as image, (B, S, S, 3)
  valid     bool (B, S, S)   False on ignore pixels
  text_mask uint8 (or float32) (B, S, S, 1)  text removal: 1 on non-text;
            other tasks: all ones
  task_id   int32 (B,)
  name      list of B source file names (for logging / debugging)

The pipeline (pipeline.py) builds batches in this layout; the loss selects each
task's examples with a ``BatchLayout`` (static, so by slices, not masks); the
train step puts the ``DEVICE_ARRAYS`` on the mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from upocr_jax.tasks import TASK_KEYS, TASKS

# The arrays of a batch that go to the device, and their ranks (``name`` stays
# on the host).
DEVICE_ARRAYS = {"image": 4, "target": 4, "valid": 3, "text_mask": 4,
                 "task_id": 1}


def per_shard_batch_sizes(data_config: Any, num_data_shards: int) -> list[int]:
  """k_t: examples of each task per data shard per step (``config.data``)."""
  sizes = []
  for key in TASK_KEYS:
    b = data_config[key].batch_size
    if b < 0 or b % num_data_shards:
      raise ValueError(f"config.data.{key}.batch_size={b} must be a "
                       f"non-negative multiple of num_data_shards="
                       f"{num_data_shards}")
    sizes.append(b // num_data_shards)
  if not any(sizes):
    raise ValueError("config.data: every task has batch_size 0")
  return sizes


def local_shards(process_index: int, process_count: int,
                 num_data_shards: int) -> tuple[int, int, int]:
  """(stream shard index, stream shard count, data shards on this process)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, "
                     f"{process_count})")
  if num_data_shards % process_count == 0:
    return process_index, process_count, num_data_shards // process_count
  if process_count % num_data_shards == 0:
    per_shard = process_count // num_data_shards
    return process_index // per_shard, num_data_shards, 1
  raise ValueError(f"num_data_shards ({num_data_shards}) and process_count "
                   f"({process_count}) must divide one another")


@dataclasses.dataclass(frozen=True)
class BatchLayout:
  """Static task of every example: one shard's pattern repeated per data shard.

  Attributes:
    shard_task_ids: task id of each example of ONE data shard's block.
    num_shards: D, the number of equal contiguous blocks of the global batch.
  """
  shard_task_ids: tuple[int, ...]
  num_shards: int = 1

  def __post_init__(self):
    object.__setattr__(self, "shard_task_ids",
                       tuple(int(t) for t in self.shard_task_ids))
    if self.num_shards < 1:
      raise ValueError("BatchLayout: num_shards must be >= 1, got "
                       f"{self.num_shards}")
    bad = [t for t in self.shard_task_ids if not 0 <= t < len(TASKS)]
    if bad:
      raise ValueError(f"BatchLayout: unknown task ids {bad}; expected "
                       + ", ".join(f"{i} {t}" for i, t in enumerate(TASKS)))

  @classmethod
  def from_counts(cls, per_shard_counts: Sequence[int],
                  num_shards: int = 1) -> "BatchLayout":
    """The pipeline layout: task t repeated k_t times in every shard block."""
    ids = tuple(t for t, k in enumerate(per_shard_counts) for _ in range(k))
    return cls(ids, num_shards)

  @classmethod
  def from_task_ids(cls, task_ids: Sequence[int],
                    num_shards: int = 1) -> "BatchLayout":
    """From the GLOBAL list of task ids; checks it repeats per shard."""
    task_ids = tuple(int(t) for t in task_ids)
    if len(task_ids) % num_shards:
      raise ValueError(f"BatchLayout: batch of {len(task_ids)} does not split "
                       f"into {num_shards} shards")
    n = len(task_ids) // num_shards
    block = task_ids[:n]
    if task_ids != block * num_shards:
      raise ValueError(f"BatchLayout: task ids {task_ids} are not one block "
                       f"repeated over {num_shards} shards")
    return cls(block, num_shards)

  @classmethod
  def from_data_config(cls, data_config: Any,
                       num_shards: int) -> "BatchLayout":
    """From ``config.data.<task>.batch_size`` (global) and the shard count."""
    return cls.from_counts(per_shard_batch_sizes(data_config, num_shards),
                           num_shards)

  @property
  def batch_size(self) -> int:
    return len(self.shard_task_ids) * self.num_shards

  @property
  def task_ids(self) -> tuple[int, ...]:
    return self.shard_task_ids * self.num_shards

  def positions(self, task: int) -> tuple[int, ...]:
    """Positions of ``task``'s examples inside one shard block."""
    return tuple(i for i, t in enumerate(self.shard_task_ids) if t == task)

  def count(self, task: int) -> int:
    """Number of ``task``'s examples in the global batch."""
    return len(self.positions(task)) * self.num_shards
