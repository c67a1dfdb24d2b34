"""Orbax checkpoints of a training run: params, optimizer, data iterator, config.

Layout: ``WORKDIR/checkpoints/<step>/{params,opt_state,data,config}``. Saving is
asynchronous and collective (every process calls it; each process writes its
own data-iterator state). ``params`` is stored on its own so that evaluation and
prediction can read a workdir without the optimizer (see
``upocr_jax.weights.load_weights``).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("params", "opt_state", "data", "config")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


class Checkpointer:
  """Saves every ``every`` steps (and on demand), keeps the last ``keep``."""

  def __init__(self, workdir: str, every: int, keep: int,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(every, 1),
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(checkpoint_dir(workdir),
                                         options=options, item_names=ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, params: Any, opt_state: Any, data_iter: Any,
           config: ml_collections.ConfigDict, force: bool = False) -> bool:
    """Starts an (async) save at ``step``; returns whether one was started."""
    return self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(config.to_dict())), force=force)

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any,
              data_iter: Any) -> tuple[Any, Any]:
    """Restores into the given shardings; the data iterator in place."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    return out["params"], out["opt_state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def read_params(workdir: str, abstract_params: Any,
                step: int | None = None) -> tuple[Any, dict, int]:
  """(params, config dict, step) of a run's latest (or given) checkpoint."""
  with ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS,
                             options=ocp.CheckpointManagerOptions(
                                 create=False, read_only=True)) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{checkpoint_dir(workdir)} has no checkpoint")
    out = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params),
        config=ocp.args.JsonRestore()))
  return out["params"], out["config"], step


def read_config(workdir: str, step: int | None = None) -> dict:
  """The full config a run's latest (or given) checkpoint was written with."""
  with ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS,
                             options=ocp.CheckpointManagerOptions(
                                 create=False, read_only=True)) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{checkpoint_dir(workdir)} has no checkpoint")
    return mngr.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"]


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a concrete or abstract pytree."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      tree)
