"""Shared pieces of evaluation and prediction: checkpoints, mesh, forward.

* :func:`resolve_weights_dir`: ``--checkpoint`` accepts a weight directory or a
  training workdir (read through its latest checkpoint).
* :func:`load_on_mesh`: the mesh of ``config.mesh`` and the model restored
  straight into the shardings training gives its parameters
  (``config.sharding``; data parallel over all devices when the config has
  none), never whole on one device; :func:`place_on_mesh` does the same for a
  model already in memory.
* :func:`forward` / :func:`forward_fn` / :func:`predict_batches`: the jitted
  model call returning the clamped full-resolution output (``forward_fn``
  prepares the model once for many calls), and a batched host loop around it
  with a fixed batch shape (one compilation whatever the number of images).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from upocr_jax import sharding
from upocr_jax.weights import weight_dir
from upocr_jax.models import UPOCR
from upocr_jax.models import precision

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


def load_on_mesh(checkpoint: str,
                 config: ml_collections.ConfigDict | None = None,
                 devices: Sequence[jax.Device] | None = None
                 ) -> tuple[UPOCR, Mesh, ml_collections.ConfigDict]:
  """Loads a checkpoint's model sharded on the mesh of ``config``.

  Each array is restored directly into its sharding (a device reads only its
  slices of the checkpoint), so a model that only fits sharded can be
  evaluated.

  Args:
    checkpoint: see :func:`resolve_weights_dir`.
    config: full config: ``config.model`` must match the checkpoint, and its
      ``mesh`` / ``sharding`` sections place the model (see
      :func:`parallel_config`). None: the saved model config, data parallel.
    devices: the mesh's devices (default: all).
  Returns:
    (model, mesh, the parallel config used: ``mesh`` and ``sharding``).
  """
  weights = resolve_weights_dir(checkpoint)
  par = parallel_config(config)
  mesh = sharding.make_mesh(par, devices)
  model_config = (config.model if config is not None and "model" in config
                  else None)
  model = weight_dir.load_weights(weights, model_config, mesh=mesh,
                                  parallel=par)
  return model, mesh, par


def parallel_config(config: ml_collections.ConfigDict | None
                    ) -> ml_collections.ConfigDict:
  """The ``mesh`` and ``sharding`` sections of ``config``; data parallel over
  all devices (parameters replicated) when it has none, e.g. a weight
  directory's saved model config."""
  par = ml_collections.ConfigDict()
  if config is not None and "mesh" in config and "sharding" in config:
    par.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
    par.sharding = ml_collections.ConfigDict(config.sharding.to_dict())
  else:
    par.mesh = {"axes": ("data",), "shape": (-1,)}
    par.sharding = {"batch_axes": ("data",), "rules": ()}
  return par


def place_on_mesh(model: nnx.Module,
                  config: ml_collections.ConfigDict | None = None,
                  devices: Sequence[jax.Device] | None = None
                  ) -> tuple[Mesh, ml_collections.ConfigDict]:
  """Puts ``model``'s state on the mesh of ``config`` as training shards it.

  Args:
    model: the model; its state is replaced in place by sharded arrays.
    config: a config with ``mesh`` and ``sharding`` sections (see
      :func:`parallel_config` for one without).
    devices: the mesh's devices (default: all).
  Returns:
    (mesh, the parallel config used: ``mesh`` and ``sharding`` sections).
  """
  par = parallel_config(config)
  mesh = sharding.make_mesh(par, devices)
  state = nnx.state(model)
  shardings = nnx.to_pure_dict(sharding.state_shardings(state, mesh, par))
  # Arrays already in place (a model from load_on_mesh) are left untouched.
  placed = jax.tree.map(
      lambda x, s: x if getattr(x, "sharding", None) == s
      else jax.device_put(x, s), nnx.to_pure_dict(state), shardings)
  nnx.replace_by_pure_dict(state, placed)
  nnx.update(model, state)
  return mesh, par


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array,
             task_ids: jax.Array) -> jax.Array:
  # A pure function of the split state: nnx.jit would also return the
  # model's state (every parameter, copied) in case the call changed it.
  model = nnx.merge(graphdef, state)
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
  official evaluation (TF32 off); see upocr_jax/models/precision.py. For many
  calls with the same parameters, :func:`forward_fn` prepares the model once.
  """
  return forward_fn(model)(images, task_ids)


def forward_fn(model: UPOCR) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """:func:`forward` bound to ``model``'s parameters as they are now.

  The float32 view and its split are made once here, not per call: on the
  paper model they cost about as much as a tenth of a 512x512 CPU forward
  (benchmarks/README.md). The returned function keeps using these parameter
  arrays, so call this again after the model's parameters change (training).
  """
  graphdef, state = nnx.split(precision.full_precision(model))

  def call(images: jax.Array, task_ids: jax.Array) -> jax.Array:
    with precision.eval_precision():
      return _forward(graphdef, state, images, task_ids)

  return call


def lower_forward(model: UPOCR, images, task_ids):
  """:func:`forward` lowered for these (possibly abstract) arguments."""
  return lower_split(*nnx.split(precision.full_precision(model)), images,
                     task_ids)


def lower_split(graphdef: nnx.GraphDef, state: nnx.State, images, task_ids):
  """:func:`forward`'s program lowered for a split float32 view of a model
  (``precision.full_precision``); ``state`` and the batch may be abstract
  (``jax.ShapeDtypeStruct`` with shardings), as the compile-only fit report
  gives them."""
  with precision.eval_precision():
    return _forward.lower(graphdef, state, images, task_ids)


def _chunks(n: int, size: int) -> Iterator[slice]:
  for start in range(0, n, size):
    yield slice(start, min(start + size, n))


def predict_batches(model: UPOCR, images: np.ndarray, task_id: int,
                    batch_size: int, mesh: Mesh | None = None,
                    parallel: ml_collections.ConfigDict | None = None
                    ) -> np.ndarray:
  """Runs ``forward`` on (N, H, W, 3) host images in batches of ``batch_size``.

  The last batch is padded to the full batch size so every call has the same
  shape (one compilation). With ``mesh`` (and ``parallel``, its config, see
  :func:`place_on_mesh`) each batch is split over the batch axes, its size
  rounded up to a multiple of their size. Returns float32 (N, H, W, 3) in
  [0, 1].
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  context, put = contextlib.nullcontext(), lambda x: x
  if mesh is not None:
    parallel = parallel_config(parallel)
    shards = sharding.num_batch_shards(mesh, parallel)
    batch_size = -(-batch_size // shards) * shards
    context = sharding.mesh_context(mesh, sharding.activation_rules(parallel))
    put = lambda x: jax.device_put(  # noqa: E731
        x, sharding.batch_sharding(mesh, parallel, x.ndim))
  n = len(images)
  outs = []
  run = forward_fn(model)
  with context:
    for sl in _chunks(n, batch_size):
      batch = images[sl]
      k = len(batch)
      if k < batch_size:
        pad = np.zeros((batch_size - k,) + batch.shape[1:], batch.dtype)
        batch = np.concatenate([batch, pad])
      ids = np.full((batch_size,), task_id, np.int32)
      outs.append(np.asarray(run(put(batch), put(ids)))[:k])
  if not outs:
    return np.zeros((0,) + images.shape[1:3] + (3,), np.float32)
  return np.concatenate(outs)
