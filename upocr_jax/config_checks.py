"""One check of a whole config before anything compiles.

:func:`check_config` validates every section of a training config (model, loss,
optim, data, train, evals, mesh and sharding) and returns the values that the
run derives from it (the number of data shards, the schedule length); the
trainer calls it once at start-up. The section checks are public so that
evaluation and prediction can check what they read (e.g. :func:`check_model`,
:func:`check_data`, :func:`check_evals`). Every error is a ``ConfigError`` (or,
for the mesh, a ``sharding.ShardingConfigError``), both ``ValueError``s whose
message starts with the offending field.

The model's own check stays with the model (``models.validate_model_config``:
``UPOCR`` runs it when built); the mesh's device-dependent parts with
``sharding.mesh_shape``. This module composes them.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from upocr_jax import sharding
from upocr_jax import tasks
from upocr_jax.models import ConfigError, validate_model_config

SOURCES = ("folder", "tfds", "synthetic")
IMAGE_DTYPES = ("uint8", "float32")
MSSIM_MODES = ("official", "standard")


@dataclasses.dataclass(frozen=True)
class CheckedConfig:
  """What a run derives from a checked config.

  Attributes:
    num_data_shards: D, the data-parallel pieces of the global batch (None
      when the number of devices was not given).
    schedule_steps: the length of the lr schedule.
  """
  num_data_shards: int | None
  schedule_steps: int


def check_model(model_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.model`` (see ``models.validate_model_config``)."""
  validate_model_config(model_config)


def check_training_tasks(model_config: ml_collections.ConfigDict) -> None:
  """Training needs ``config.model.tasks`` in task-id order: the pipeline's
  ``task_id`` indexes the model's prompts."""
  if tuple(model_config.tasks) != tasks.TASKS:
    raise ConfigError(f"config.model.tasks: training needs {tasks.TASKS} (the "
                      f"pipeline's task ids index them), got "
                      f"{tuple(model_config.tasks)}")


def check_loss(loss_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.loss``."""
  lc = loss_config
  if (lc.perceptual or lc.style) and not lc.vgg_weights:
    on = [f"config.loss.{n}" for n in ("perceptual", "style") if lc[n]]
    raise ConfigError(
        f"config.loss.vgg_weights is not set but {' and '.join(on)} "
        f"{'are' if len(on) > 1 else 'is'} on: give an official UPOCR "
        "checkpoint / weight directory or a "
        "torchvision VGG16 state dict, or set config.loss.perceptual=False and "
        "config.loss.style=False")
  if len(lc.msr_weights) != 3 or any(len(w) != 2 for w in lc.msr_weights):
    raise ConfigError("config.loss.msr_weights must be 3 (text, non-text) "
                      f"pairs, got {lc.msr_weights}")
  for name in ("seg_scale_weights", "ttd_scale_weights"):
    if len(lc[name]) != 3:
      raise ConfigError(f"config.loss.{name} must have 3 entries (1/4, 1/2, "
                        f"1), got {lc[name]}")
  missing = [k for k in tasks.TASK_KEYS if k not in lc.task_weights]
  if missing:
    raise ConfigError(f"config.loss.task_weights: no weight for {missing}")


def schedule_steps(config: ml_collections.ConfigDict) -> int:
  """Length of the lr schedule of a full config: ``config.optim.total_steps``
  when > 0 (a fixed length, e.g. to stop a run early and resume it), else
  ``config.train.steps``."""
  n = config.optim.total_steps
  return config.train.steps if n is None or n <= 0 else n


def check_optim(optim_config: ml_collections.ConfigDict,
                num_steps: int) -> None:
  """Checks ``config.optim`` for a schedule of ``num_steps`` steps."""
  k = optim_config.steps_per_epoch
  if k < 1:
    raise ConfigError(f"config.optim.steps_per_epoch must be >= 1, got {k}")
  if num_steps % k or optim_config.warmup_steps % k:
    raise ConfigError(
        f"config.optim.total_steps ({num_steps}, the schedule length) and "
        f"config.optim.warmup_steps ({optim_config.warmup_steps}) must be "
        f"multiples of config.optim.steps_per_epoch ({k})")
  if not 0 <= optim_config.warmup_steps < num_steps:
    # Not shortened silently: the warm-up is part of the recipe (the tiny
    # demo's 600 steps keep it off a constant-output plateau).
    raise ConfigError(
        f"config.optim.warmup_steps ({optim_config.warmup_steps}) must be in "
        f"[0, {num_steps}), shorter than the lr schedule (config.train.steps, "
        "or config.optim.total_steps when > 0): set it for this run, e.g. "
        f"--config.optim.warmup_steps={num_steps // 5 // k * k}")


def check_data(data_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data`` (what needs no files: sources are read later)."""
  d = data_config
  if d.image_size <= 0 or d.image_size % 32:
    raise ConfigError(f"config.data.image_size must be a positive multiple of "
                      f"32 (the model works at H/32), got {d.image_size}")
  if d.image_dtype not in IMAGE_DTYPES:
    raise ConfigError(f"config.data.image_dtype must be one of {IMAGE_DTYPES},"
                      f" got {d.image_dtype!r}")
  if d.eval_batch_size < 1:
    raise ConfigError(f"config.data.eval_batch_size must be >= 1, got "
                      f"{d.eval_batch_size}")
  for key in tasks.TASK_KEYS:
    t = d[key]
    if t.source not in SOURCES:
      raise ConfigError(f"config.data.{key}.source must be one of {SOURCES}, "
                        f"got {t.source!r}")
    if t.batch_size < 0:
      raise ConfigError(f"config.data.{key}.batch_size must be >= 0, got "
                        f"{t.batch_size}")
  if not any(d[key].batch_size for key in tasks.TASK_KEYS):
    raise ConfigError("config.data: every task has batch_size 0")
  s = d.synthetic
  if (any(d[key].source == "synthetic" for key in tasks.TASK_KEYS)
      and not 16 <= s.min_size <= s.max_size):
    raise ConfigError(f"config.data.synthetic.min_size ({s.min_size}) and "
                      f"max_size ({s.max_size}) must satisfy 16 <= min_size "
                      "<= max_size")


def check_train(train_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.train``."""
  for name in ("steps", "log_every", "checkpoint_every", "keep_checkpoints"):
    if train_config[name] <= 0:
      raise ConfigError(f"config.train.{name} must be > 0, got "
                        f"{train_config[name]}")
  for name in ("preview_every", "eval_every"):
    if train_config[name] < 0:
      raise ConfigError(f"config.train.{name} must be >= 0 (0: never), got "
                        f"{train_config[name]}")


def check_evals(evals_config: ml_collections.ConfigDict) -> None:
  """Checks ``config.evals`` (the evaluations during and after training)."""
  datasets = evals_config.datasets
  if isinstance(datasets, str):
    datasets = [s.strip() for s in datasets.split(",") if s.strip()]
  unknown = [s for s in datasets if s not in tasks.EVAL_DATASETS]
  if unknown:
    raise ConfigError(f"config.evals.datasets: unknown {unknown}; expected "
                      f"some of {tuple(tasks.EVAL_DATASETS)}")
  if evals_config.mssim_mode not in MSSIM_MODES:
    raise ConfigError(f"config.evals.mssim_mode must be one of {MSSIM_MODES},"
                      f" got {evals_config.mssim_mode!r}")
  if not 0.0 <= evals_config.seg_threshold <= 1.0:
    raise ConfigError(f"config.evals.seg_threshold must be in [0, 1], got "
                      f"{evals_config.seg_threshold}")


def check_mesh(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.mesh`` and ``config.sharding`` as far as no device count
  is needed (``sharding.mesh_shape`` checks the rest)."""
  axes, shape = tuple(config.mesh.axes), tuple(config.mesh.shape)
  if len(set(axes)) != len(axes):
    raise sharding.ShardingConfigError(
        f"config.mesh.axes: repeated names in {axes}")
  if len(axes) != len(shape):
    raise sharding.ShardingConfigError(
        f"config.mesh.shape {shape} and config.mesh.axes {axes} differ in "
        "length")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise sharding.ShardingConfigError(
        f"config.mesh.shape {shape}: sizes must be >= 1, with at most one -1 "
        "(all remaining devices)")
  batch_axes = tuple(config.sharding.batch_axes)
  if not batch_axes or not set(batch_axes) <= set(axes):
    raise sharding.ShardingConfigError(
        f"config.sharding.batch_axes {batch_axes} must be a non-empty subset "
        f"of config.mesh.axes {axes}")
  for name, target in config.sharding.rules:
    targets = () if target is None else (
        (target,) if isinstance(target, str) else tuple(target))
    bad = [t for t in targets if t not in axes]
    if bad:
      raise sharding.ShardingConfigError(
          f"config.sharding.rules: logical axis {name!r} maps to {bad}, not "
          f"in config.mesh.axes {axes}")


def num_data_shards(config: ml_collections.ConfigDict,
                    num_devices: int) -> int:
  """D, the data-parallel pieces of the global batch on ``num_devices``."""
  shape = sharding.mesh_shape(config, num_devices)
  return sharding.batch_shard_count(dict(zip(config.mesh.axes, shape)),
                                    config.sharding.batch_axes)


def _check_batch_split(config: ml_collections.ConfigDict, shards: int,
                       num_devices: int) -> None:
  for key in tasks.TASK_KEYS:
    b = config.data[key].batch_size
    if b % shards:
      raise ConfigError(
          f"config.data.{key}.batch_size ({b}) is not divisible by the "
          f"data-parallel size {shards} (mesh axes "
          f"{tuple(config.sharding.batch_axes)} of config.mesh.shape "
          f"{sharding.mesh_shape(config, num_devices)})")


def check_config(config: ml_collections.ConfigDict,
                 num_devices: int | None = None) -> CheckedConfig:
  """Checks a whole training config; raises naming the first bad field.

  Args:
    config: the full config (configs/upocr.py).
    num_devices: the devices of the mesh; with it the mesh shape is resolved
      and every task's batch checked to split over the data shards.

  Returns:
    The derived values (see ``CheckedConfig``).
  """
  check_model(config.model)
  check_training_tasks(config.model)
  check_loss(config.loss)
  steps = schedule_steps(config)
  check_optim(config.optim, steps)
  check_data(config.data)
  check_train(config.train)
  check_evals(config.evals)
  check_mesh(config)
  shards = None
  if num_devices is not None:
    shards = num_data_shards(config, num_devices)
    _check_batch_split(config, shards, num_devices)
  return CheckedConfig(num_data_shards=shards, schedule_steps=steps)

