"""Orbax checkpoints of a training run: params, optimizer, data iterator, config.

Layout: ``WORKDIR/checkpoints/<step>/{params,opt_state,data,config}``. Saving is
asynchronous and collective (every process calls it; each process writes its
own data-iterator state). ``params`` is stored on its own so that evaluation and
prediction can read a workdir without the optimizer (see
``upocr_jax.weights.weight_dir.load_weights``).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
# Orbax writes step N into ``N.orbax-checkpoint-tmp-<time>`` and renames it to
# ``N`` once complete; a folder still so named is a save that was cut short.
_INCOMPLETE = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def _array_handlers():
  """PyTree handlers whose arrays are saved without replica-parallel slicing.

  Orbax's default splits replicated arrays across their replicas with jitted
  slices, compiling one per distinct shape: with UPOCR's hundreds of parameter
  shapes that made the first save of a run take ~20 s on 8 CPU devices, for a
  few MB. Each replica-0 shard is written whole instead.
  """
  th = ocp.type_handlers
  registry = th.create_type_handler_registry(
      (jax.Array, th.ArrayHandler(use_replica_parallel=False)),
      (np.ndarray, th.NumpyHandler()),
      (np.number, th.ScalarHandler()), (int, th.ScalarHandler()),
      (float, th.ScalarHandler()))
  return {name: ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
          for name in ("params", "opt_state")}


def _save(tree) -> ocp.args.PyTreeSave:
  return ocp.args.PyTreeSave(tree)


def _restore(abstract) -> ocp.args.PyTreeRestore:
  return ocp.args.PyTreeRestore(
      abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(
          abstract))


def _manager(workdir: str, options: ocp.CheckpointManagerOptions
             ) -> ocp.CheckpointManager:
  handlers = {**_array_handlers(),
              "data": grain.checkpoint.CheckpointHandler(),
              "config": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers=handlers)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def incomplete_saves(workdir: str) -> list[str]:
  """Names of the checkpoint folders of saves that never completed."""
  d = checkpoint_dir(workdir)
  if not os.path.isdir(d):
    return []
  return sorted(n for n in os.listdir(d) if _INCOMPLETE.match(n))


class Checkpointer:
  """Saves every ``every`` steps (and on demand), keeps the last ``keep``.

  ``incomplete``: the saves cut short by a kill (``N.orbax-checkpoint-tmp-*``)
  found at start; they are deleted, so a resume uses the last complete step.
  """

  def __init__(self, workdir: str, every: int, keep: int,
               async_save: bool = True):
    self.incomplete = incomplete_saves(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(every, 1),
        enable_async_checkpointing=async_save, create=True,
        cleanup_tmp_directories=True)
    self.manager = _manager(workdir, options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params: Any, opt_state: Any, data_iter: Any,
           config: ml_collections.ConfigDict, force: bool = False) -> bool:
    """Starts an (async) save at ``step``; returns whether one was started."""
    return self.manager.save(step, args=ocp.args.Composite(
        params=_save(params),
        opt_state=_save(opt_state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(config.to_dict())), force=force)

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any,
              data_iter: Any) -> tuple[Any, Any]:
    """Restores into the given shardings; the data iterator in place."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=_restore(abstract_params),
        opt_state=_restore(abstract_opt_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    return out["params"], out["opt_state"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class _ReadOnlyNoteFilter(logging.Filter):
  """Drops orbax's warning that a read-only manager's directory is read only
  (we ask for one to read a run; evaluation and prediction printed it every
  time)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


_READ_ONLY_NOTE_FILTER = _ReadOnlyNoteFilter()


def _restore_items(workdir: str, step: int | None, **items) -> tuple[dict, int]:
  """Restores the named items of a run's latest (or given) checkpoint."""
  # orbax logs through absl's logger (no-op when already added).
  logging.getLogger("absl").addFilter(_READ_ONLY_NOTE_FILTER)
  # save_interval_steps=0: what read_only sets anyway, with a warning.
  with _manager(workdir, ocp.CheckpointManagerOptions(
      create=False, read_only=True, save_interval_steps=0)) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{checkpoint_dir(workdir)} has no checkpoint")
    return mngr.restore(step, args=ocp.args.Composite(**items)), step


def read_params(workdir: str, abstract_params: Any,
                step: int | None = None) -> tuple[Any, dict, int]:
  """(params, config dict, step) of a run's latest (or given) checkpoint.

  The params are restored into ``abstract_params``' shardings (each device
  reads its own slices), or whole on the default device where its
  ShapeDtypeStructs have none.
  """
  out, step = _restore_items(workdir, step, params=_restore(abstract_params),
                             config=ocp.args.JsonRestore())
  return out["params"], out["config"], step


def read_config(workdir: str, step: int | None = None) -> dict:
  """The full config a run's latest (or given) checkpoint was written with."""
  return _restore_items(workdir, step, config=ocp.args.JsonRestore())[0][
      "config"]


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete or abstract pytree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      tree)
