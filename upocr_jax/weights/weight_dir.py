"""Weight directories: UPOCR parameters (+ the loss's VGG16) with their config.

Layout of a weight directory (what ``upocr-convert`` writes and what
``config.init_from``, evaluation and prediction read)::

  DIR/model_config.json   config.model as JSON
  DIR/params/             orbax checkpoint of {"model": ..., "vgg": ...}
  DIR/data_config.json    {"image_size": N}, the size the model works at
                          (optional; prediction's default size)

"vgg" is absent when no VGG weights were given.

``load_weights`` and ``read_model_config`` also accept a training workdir (a
directory with ``checkpoints/``): they read the params and config of its latest
checkpoint.

Given a mesh, ``load_weights`` restores every array straight into its sharding
(the model's parameters by ``config.sharding.rules`` as training shards them,
the VGG replicated): each device reads only its own slices, so a model that
only fits sharded is never whole on one device.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from upocr_jax import sharding
from upocr_jax.train import checkpoint
from upocr_jax.models import ConfigError, UPOCR, VGG16Features
from upocr_jax.models.layers import FrozenParam

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
DATA_CONFIG_FILE = "data_config.json"


def _pure(module: nnx.Module, var_type) -> dict[str, Any]:
  return nnx.to_pure_dict(nnx.state(module, var_type))


def save_weights(out_dir: str, model: UPOCR,
                 vgg: VGG16Features | None = None,
                 image_size: int | None = None) -> None:
  """Writes ``model`` (and ``vgg``) with the model config to ``out_dir``;
  with ``image_size`` (``config.data.image_size``), also the size that
  prediction uses by default."""
  out_dir = os.path.abspath(out_dir)
  params_dir = os.path.join(out_dir, PARAMS_DIR)
  if os.path.exists(params_dir):
    raise FileExistsError(f"{params_dir} already exists; choose an empty --out")
  os.makedirs(out_dir, exist_ok=True)
  tree = {"model": _pure(model, nnx.Param)}
  if vgg is not None:
    tree["vgg"] = _pure(vgg, FrozenParam)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(params_dir, tree)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(model.config.to_dict(), f, indent=1)
  if image_size is not None:
    with open(os.path.join(out_dir, DATA_CONFIG_FILE), "w") as f:
      json.dump({"image_size": int(image_size)}, f)


def is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, checkpoint.CHECKPOINT_DIR))


def read_model_config(weights_dir: str) -> ml_collections.ConfigDict:
  """The ``config.model`` a weight directory (or workdir) was written with."""
  if is_workdir(weights_dir):
    return ml_collections.ConfigDict(checkpoint.read_config(weights_dir)["model"])
  path = os.path.join(weights_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path} not found: {weights_dir} is not a upocr_jax weight directory "
        "(write one with `upocr-convert`)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def read_image_size(weights_dir: str) -> int | None:
  """The image size a weight directory or workdir was saved with: a
  workdir's ``config.data.image_size``, a weight directory's
  ``data_config.json``; None when it has none (e.g. an older conversion)."""
  if is_workdir(weights_dir):
    size = checkpoint.read_config(weights_dir).get("data", {}).get(
        "image_size")
  else:
    path = os.path.join(weights_dir, DATA_CONFIG_FILE)
    if not os.path.isfile(path):
      return None
    with open(path) as f:
      size = json.load(f).get("image_size")
  return None if size is None else int(size)


def _check_same_architecture(saved: ml_collections.ConfigDict,
                             wanted: ml_collections.ConfigDict, where: str):
  # dtype/remat/mask_padding/drop path change behaviour, not parameter shapes.
  keys = ("tasks", "patch_size", "mlp_ratio")
  sub = ("embed_dim", "depths", "num_heads", "window_size")
  diffs = [k for k in keys if _norm(saved[k]) != _norm(wanted[k])]
  for part in ("encoder", "decoder"):
    diffs += [f"{part}.{k}" for k in sub if k in saved[part]
              and _norm(saved[part][k]) != _norm(wanted[part][k])]
  if diffs:
    raise ConfigError(
        f"{where} was written for another model: config.model fields differ: "
        + ", ".join(f"{d} (checkpoint {_get(saved, d)} vs config "
                    f"{_get(wanted, d)})" for d in diffs))


def _norm(v):
  # JSON gives lists where configs have tuples.
  return list(v) if isinstance(v, (list, tuple)) else v


def _get(cfg, dotted):
  for k in dotted.split("."):
    cfg = cfg[k]
  return list(cfg) if isinstance(cfg, (list, tuple)) else cfg


def _merge(abstract: nnx.Module, values: dict[str, Any]) -> nnx.Module:
  """An abstract (eval_shape) module filled with concrete values."""
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)


def _targets(abstract: dict[str, Any], shardings: Any) -> dict[str, Any]:
  """ShapeDtypeStructs to restore into: with ``shardings`` (a matching tree of
  shardings, or None for orbax's default placement)."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        abstract)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, shardings)


def load_weights(weights_dir: str,
                 model_config: ml_collections.ConfigDict | None = None,
                 with_vgg: bool = False, mesh: Mesh | None = None,
                 parallel: ml_collections.ConfigDict | None = None):
  """Loads a weight directory.

  Args:
    weights_dir: a directory written by ``save_weights`` / ``upocr-convert``,
      or a training workdir (its latest checkpoint; it holds no VGG).
    model_config: ``config.model`` to build the model with (its dtype, remat,
      ...); must describe the same architecture as the saved one. Defaults to
      the saved config.
    with_vgg: also return the VGG16 features (None if the directory has none).
    mesh: restore straight onto this mesh: the model's parameters sharded by
      ``parallel``'s rules (as ``sharding.state_shardings``), the VGG
      replicated. None: orbax's default placement.
    parallel: a config with ``mesh`` and ``sharding`` sections (the rules);
      required with ``mesh``.

  Returns:
    The UPOCR model, or (model, vgg) when ``with_vgg``.
  """
  if mesh is not None and (parallel is None or "sharding" not in parallel):
    raise ValueError("load_weights: a mesh needs `parallel`, a config with "
                     "a sharding section (config.sharding.rules)")
  saved = read_model_config(weights_dir)
  cfg = saved if model_config is None else model_config
  _check_same_architecture(saved, cfg, weights_dir)
  abstract = nnx.eval_shape(lambda: UPOCR(cfg, rngs=nnx.Rngs(0)))
  model_sh = None if mesh is None else nnx.to_pure_dict(
      sharding.state_shardings(nnx.state(abstract, nnx.Param), mesh, parallel))
  model_target = _targets(_pure(abstract, nnx.Param), model_sh)
  if is_workdir(weights_dir):
    params, _, _ = checkpoint.read_params(weights_dir, model_target)
    model = _merge(abstract, params)
    return (model, None) if with_vgg else model
  params_dir = os.path.join(os.path.abspath(weights_dir), PARAMS_DIR)
  target = {"model": model_target}
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(params_dir)
    tree_meta = getattr(meta, "item_metadata", meta)
    has_vgg = "vgg" in (tree_meta.tree if hasattr(tree_meta, "tree")
                        else tree_meta)
    vgg_abs = None
    if has_vgg:
      vgg_abs = nnx.eval_shape(lambda: VGG16Features(rngs=nnx.Rngs(0)))
      vgg_pure = _pure(vgg_abs, FrozenParam)
      target["vgg"] = _targets(vgg_pure, None if mesh is None else jax.tree.map(
          lambda _: sharding.replicated(mesh), vgg_pure))
    restored = ckptr.restore(params_dir, target)
  model = _merge(abstract, restored["model"])
  if not with_vgg:
    return model
  vgg = None
  if has_vgg:
    vgg = _merge(vgg_abs, restored["vgg"])
  return model, vgg
