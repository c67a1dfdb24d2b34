"""The sharded, jitted UPOCR train step and the sharded initialisation.

Train state is split: ``params`` (the model's ``nnx.Param`` values as a plain
nested dict) and ``opt_state`` (optax). The graph definition, the optimizer,
the loss config and the batch layout are static. One compiled function serves
all tasks; params and optimizer state are donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from input_pipeline.layout import DEVICE_ARRAYS, BatchLayout
from upocr_jax import sharding
from upocr_jax.models import UPOCR
from upocr_jax.train import losses

Array = jax.Array


@dataclasses.dataclass
class TrainSetup:
  """Everything the loop needs about the compiled model and its shardings."""
  graphdef: Any
  param_shardings: Any
  opt_shardings: Any
  init_params: Callable[[], Any]
  init_opt_state: Callable[[Any], Any]
  abstract_params: Any


def abstract_model(config: ml_collections.ConfigDict):
  """(graphdef, abstract nnx.State) of the model, allocating nothing."""
  model = nnx.eval_shape(
      lambda: UPOCR(config.model, rngs=nnx.Rngs(config.seed)))
  return nnx.split(model)


def make_setup(config: ml_collections.ConfigDict, mesh: Mesh,
               tx: optax.GradientTransformation) -> TrainSetup:
  """Shardings from the logical-axis rules and jitted, sharded initialisers."""
  graphdef, abstract = abstract_model(config)
  param_sh = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh, config))
  abstract_params = nnx.to_pure_dict(abstract)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  repl = sharding.replicated(mesh)
  # Optimizer moments follow their parameter; counters are replicated.
  opt_sh = optax.tree_utils.tree_map_params(
      tx, lambda _, s: s, abstract_opt, param_sh,
      transform_non_params=lambda _: repl)

  def init_params():
    model = UPOCR(config.model, rngs=nnx.Rngs(config.seed))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))

  return TrainSetup(
      graphdef=graphdef, param_shardings=param_sh, opt_shardings=opt_sh,
      # Built directly in their shardings: no array is ever whole on a device.
      init_params=jax.jit(init_params, out_shardings=param_sh),
      init_opt_state=jax.jit(tx.init, out_shardings=opt_sh),
      abstract_params=jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
          abstract_params, param_sh))


def make_train_step(config: ml_collections.ConfigDict, setup: TrainSetup,
                    tx: optax.GradientTransformation,
                    schedule: Callable[[Array], Array],
                    layout: BatchLayout, mesh: Mesh,
                    vgg_graphdef: Any = None):
  """Returns ``step(params, opt_state, vgg_params, batch, step, key)``.

  It returns (params, opt_state, metrics). A non-finite loss or gradient
  leaves params and optimizer state unchanged and sets ``metrics['finite']``
  to False, so the host can stop with the last good state intact.
  """
  graphdef = setup.graphdef
  loss_config = config.loss

  def step_fn(params, opt_state, vgg_params, batch, step, key):
    rng = jax.random.fold_in(key, step)
    images = losses.to_unit_float(batch["image"])
    vgg = None if vgg_graphdef is None else nnx.merge(vgg_graphdef, vgg_params)

    def loss_fn(p):
      model = nnx.merge(graphdef, p)
      outs = model(images, batch["task_id"], deterministic=False, rng=rng)
      return losses.upocr_loss(outs, batch, vgg, loss_config, layout)

    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grad_norm = optax.global_norm(grads)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # Also guard the update itself (e.g. a NaN learning rate).
    finite = (jnp.isfinite(total) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.global_norm(updates)))
    # One conditional, not a select per leaf: the same result in a smaller
    # program (compile time).
    new_params, new_opt = jax.lax.cond(
        finite, lambda: (new_params, new_opt), lambda: (params, opt_state))
    metrics = {f"loss/{k}": v for k, v in terms.items() if k != "total"}
    metrics.update(loss=total, grad_norm=grad_norm, lr=schedule(step),
                   finite=finite)
    return new_params, new_opt, metrics

  repl = sharding.replicated(mesh)
  batch_sh = {k: sharding.batch_sharding(mesh, config, ndim)
              for k, ndim in DEVICE_ARRAYS.items()}
  vgg_sh = None if vgg_graphdef is None else repl
  return jax.jit(
      step_fn,
      in_shardings=(setup.param_shardings, setup.opt_shardings, vgg_sh,
                    batch_sh, repl, repl),
      out_shardings=(setup.param_shardings, setup.opt_shardings, repl),
      donate_argnums=(0, 1))


def global_batch(batch: dict[str, Any], mesh: Mesh,
                 config: ml_collections.ConfigDict) -> dict[str, Array]:
  """This process's part of the batch -> global arrays sharded on the batch
  (the ``DEVICE_ARRAYS`` of input_pipeline/layout.py)."""
  out = {}
  for k in DEVICE_ARRAYS:
    x = batch[k]
    sh: NamedSharding = sharding.batch_sharding(mesh, config, x.ndim)
    out[k] = jax.make_array_from_process_local_data(sh, x)
  return out
