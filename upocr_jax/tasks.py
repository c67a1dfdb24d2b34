"""The three UPOCR tasks: names, ids, config keys, benchmarks, thresholds.

The one place that spells them out. It imports nothing, so the input pipeline
(which must not depend on the rest of the library) and the configs may use it.

* ``TASKS``: the names, in task-id order. The id of a task is its index here:
  the pipeline's ``task_id``, the loss's batch layout and the prompt of
  ``config.model.tasks`` (which training checks is ``TASKS``).
* ``TASK_KEYS``: the names as config keys (``config.data.<key>``,
  ``config.loss.task_weights.<key>``), file and metric names.
* ``BENCHMARKS``: the data set of each task (the TFDS names and ``upocr-eval
  --dataset`` values), in task-id order; ``EVAL_DATASETS``: every data set
  ``upocr-eval`` reads and the tasks it has labels for.
* ``TAMPER_CLASSES``: the classes of a tampered-text map, in channel order.
* ``SEG_THRESHOLD``: text where the segmentation map's channel mean exceeds it
  (the official evaluation's 0.4).
"""

from __future__ import annotations

from typing import Sequence

TASKS = ("text removal", "tampered text detection", "text segmentation")
TEXT_REMOVAL, TAMPERED, SEGMENTATION = 0, 1, 2


def task_key(name: str) -> str:
  """'text removal' -> 'text_removal' (config keys, file and metric names)."""
  return name.replace(" ", "_")


TASK_KEYS = tuple(task_key(t) for t in TASKS)
BENCHMARKS = ("scut_enstext", "tampered_ic13", "textseg")
EVAL_DATASETS = {**{b: (t,) for b, t in zip(BENCHMARKS, TASKS)},
                 "synthetic": TASKS}
SEG_THRESHOLD = 0.4
TAMPER_CLASSES = ("background", "real", "tampered")


def canonical_task(name: str, tasks: Sequence[str] = TASKS) -> str:
  """Normalises a user-given task name to its entry in ``tasks``.

  Accepts the name as in ``config.model.tasks`` ('text removal') or with
  underscores or dashes ('text_removal'), any case.

  Raises:
    ValueError: naming the unknown task and the known ones.
  """
  wanted = name.strip().lower().replace("_", " ").replace("-", " ")
  for t in tasks:
    if t.lower() == wanted:
      return t
  raise ValueError(f"unknown task {name!r}; expected one of "
                   + ", ".join(repr(t) for t in tasks))
