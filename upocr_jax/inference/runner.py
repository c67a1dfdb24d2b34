"""Shared pieces of evaluation and prediction: checkpoints, task names, forward.

* :func:`resolve_weights_dir`: ``--checkpoint`` accepts a weight directory or a
  training workdir (read through its latest checkpoint).
* :func:`canonical_task`: task names as in ``config.model.tasks`` or their
  config keys ('text removal' or 'text_removal').
* :func:`forward` / :func:`predict_batches`: the jitted model call returning the
  clamped full-resolution output, and a batched host loop around it with a fixed
  batch shape (one compilation whatever the number of images).
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx

from upocr_jax.models import UPOCR
from upocr_jax.models import precision
from upocr_jax.weights import weight_dir

WEIGHTS_SUBDIR = "weights"  # A weight directory kept inside a workdir.


def resolve_weights_dir(path: str) -> str:
  """The weight source named by ``path``: a weight directory or a workdir.

  A training workdir (with ``checkpoints/``) is read through its latest
  checkpoint; ``path/weights`` is also accepted.

  Raises:
    FileNotFoundError: ``path`` is neither.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--checkpoint {path}: no such directory")
  if weight_dir.is_workdir(path):
    return path
  for cand in (path, os.path.join(path, WEIGHTS_SUBDIR)):
    if os.path.isfile(os.path.join(cand, weight_dir.CONFIG_FILE)):
      return cand
  raise FileNotFoundError(
      f"--checkpoint {path}: neither a weight directory (with "
      f"{weight_dir.CONFIG_FILE} and {weight_dir.PARAMS_DIR}/) nor a training "
      "workdir (with checkpoints/; `upocr-convert` writes a weight directory "
      "from official weights)")


def load_model(checkpoint: str,
               model_config: ml_collections.ConfigDict | None = None) -> UPOCR:
  """Loads the UPOCR model of a weight directory or training workdir.

  Args:
    checkpoint: see :func:`resolve_weights_dir`.
    model_config: ``config.model`` that the checkpoint must match (a clear
      ValueError names the differing fields); None uses the saved one.
  """
  return weight_dir.load_weights(resolve_weights_dir(checkpoint), model_config)


def task_key(name: str) -> str:
  """'text removal' -> 'text_removal' (config keys, file and metric names)."""
  return name.replace(" ", "_")


def canonical_task(name: str, tasks: Sequence[str]) -> str:
  """Normalises a user-given task name to its entry in ``tasks``.

  Accepts the name as in ``config.model.tasks`` ('text removal') or with
  underscores ('text_removal'), any case.

  Raises:
    ValueError: naming the unknown task and the known ones.
  """
  wanted = name.strip().lower().replace("_", " ").replace("-", " ")
  for t in tasks:
    if t.lower() == wanted:
      return t
  raise ValueError(f"unknown task {name!r}; expected one of "
                   + ", ".join(repr(t) for t in tasks))


@nnx.jit
def _forward(model: UPOCR, images: jax.Array, task_ids: jax.Array
             ) -> jax.Array:
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  # The official evaluation clamps the last (full-resolution) output only.
  return jnp.clip(model(x, task_ids)[-1], 0.0, 1.0)


def forward(model: UPOCR, images: jax.Array, task_ids: jax.Array
            ) -> jax.Array:
  """Clamped full-resolution output (B, H, W, 3) float32 in [0, 1].

  ``images`` uint8 (converted here, so only a quarter of the bytes travel to the
  device) or float in [0, 1]; H, W multiples of 32. Runs in full float32
  whatever the model's training dtypes, at HIGHEST matmul precision, as the
  official evaluation (TF32 off); see upocr_jax/models/precision.py.
  """
  with precision.eval_precision():
    return _forward(precision.full_precision(model), images, task_ids)


def lower_forward(model: UPOCR, images, task_ids):
  """:func:`forward` lowered for these (possibly abstract) arguments."""
  with precision.eval_precision():
    return _forward.lower(precision.full_precision(model), images, task_ids)


def _chunks(n: int, size: int) -> Iterator[slice]:
  for start in range(0, n, size):
    yield slice(start, min(start + size, n))


def predict_batches(model: UPOCR, images: np.ndarray, task_id: int,
                    batch_size: int) -> np.ndarray:
  """Runs ``forward`` on (N, H, W, 3) host images in batches of ``batch_size``.

  The last batch is padded to the full batch size so every call has the same
  shape (one compilation). Returns float32 (N, H, W, 3) in [0, 1].
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = len(images)
  outs = []
  for sl in _chunks(n, batch_size):
    batch = images[sl]
    k = len(batch)
    if k < batch_size:
      pad = np.zeros((batch_size - k,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, pad])
    ids = np.full((batch_size,), task_id, np.int32)
    outs.append(np.asarray(forward(model, batch, ids))[:k])
  if not outs:
    return np.zeros((0,) + images.shape[1:3] + (3,), np.float32)
  return np.concatenate(outs)


def run_cli(prog: str, define_flags: Callable[[flags.FlagValues], None],
            main: Callable[..., object]) -> None:
  """Runs ``main(argv, flags.FLAGS)`` as the absl program ``prog``.

  Orbax's INFO logging is hidden unless --verbosity is given, and expected
  user errors (ValueError, FileNotFoundError) print one line instead of a
  traceback.
  """

  def app_main(argv: Sequence[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv, flags.FLAGS)
    except (ValueError, FileNotFoundError) as e:
      sys.exit(f"{prog}: error: {e}")

  define_flags(flags.FLAGS)
  app.run(app_main)
