"""The training loop: ``train.run(config, workdir)``.

Start-up checks the whole config (``config_checks``; errors name the field)
before anything compiles,
builds the mesh and the sharded state, resumes from ``WORKDIR/checkpoints``
when a checkpoint exists (params, optimizer and data iterator), otherwise
starts fresh (optionally from ``config.init_from``). SIGTERM or Ctrl-C
(SIGINT) saves a checkpoint at the current step and returns (a second Ctrl-C
aborts at once); a save cut short by a kill is ignored on resume (the last
complete checkpoint is used) and ``metrics.jsonl`` loses the rows past it. A
non-finite loss stops with an error naming the step and the loss terms,
leaving the last good checkpoint in place.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from jax._src import distributed

from input_pipeline import pipeline
from input_pipeline.layout import BatchLayout
from upocr_jax import config_checks
from upocr_jax import sharding
from upocr_jax.evaluation import baselines
from upocr_jax.evaluation import evaluate
from upocr_jax.tasks import task_key
from upocr_jax.train import checkpoint
from upocr_jax.train import optim
from upocr_jax.train import preview
from upocr_jax.train import train_step
from upocr_jax.train.metric_writer import MetricWriter, format_line
from upocr_jax.weights import vgg_weights
from upocr_jax.weights import weight_dir


class NonFiniteLossError(RuntimeError):
  """Raised when a step produced a non-finite loss or gradient."""


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  """Calls jax.distributed.initialize for multi-host runs.

  Enabled by ``config.distributed.enabled`` or by the environment of a
  cluster that JAX can detect by itself (TPU pod slices, SLURM, Open MPI).
  """
  d = config.distributed
  env = os.environ
  auto = (len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
          or int(env.get("SLURM_NTASKS", "1")) > 1
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)
  if not (d.enabled or auto):
    return
  if jax.distributed.is_initialized():
    return
  if (env.get("JAX_PLATFORMS", "") or "cpu").startswith("cpu"):
    # CPU devices of several processes talk through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=d.coordinator_address,
                             num_processes=d.num_processes,
                             process_id=d.process_id)
  logging.info("jax.distributed: process %d of %d", jax.process_index(),
               jax.process_count())


def compile_synced(name: str, fn, *args):
  """``fn`` compiled for ``args``; with several processes, after a barrier.

  Processes compile at different speeds; on CPU (gloo) the first collective
  gives up after 30 s, so a slow compile on one host would fail the run.
  Compiling ahead and meeting at a barrier (no such limit) avoids that.
  """
  if jax.process_count() == 1:
    return fn
  compiled = fn.lower(*args).compile()
  # The coordination service's barrier, not a device collective (which would
  # have the 30 s limit again). orbax uses the same client.
  distributed.global_state.client.wait_at_barrier(
      f"upocr_compiled_{name}", timeout_in_ms=30 * 60 * 1000)
  return compiled


def synced_call(name: str, fn, *args):
  """Calls ``fn(*args)``, compiled and synchronised as ``compile_synced``."""
  return compile_synced(name, fn, *args)(*args)


class _Preemption:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks every step.

  The loop then checkpoints at the step reached and stops. A second SIGINT
  raises KeyboardInterrupt at once, for a user who will not wait for the save.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name: str | None = None
    self.stopped_at: int | None = None
    self._old: dict[int, Any] = {}

  def __enter__(self):
    try:
      for s in self.SIGNALS:
        self._old[s] = signal.signal(s, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._restore()
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    logging.warning("%s: saving a checkpoint at the current step (a second "
                    "Ctrl-C aborts without it)", self.signal_name)

  def _restore(self):
    for s, old in self._old.items():
      signal.signal(s, old)
    self._old = {}

  def __exit__(self, *exc):
    self._restore()


def _load_vgg(config, mesh):
  vgg = vgg_weights.load_loss_vgg(config.loss)
  if vgg is None:
    logging.info("perceptual and style losses are off (config.loss); "
                 "text removal trains with the multi-scale L1 loss only")
    return None, None
  graphdef, state = nnx.split(vgg)
  state = jax.device_put(nnx.to_pure_dict(state), sharding.replicated(mesh))
  return graphdef, state


def _init_from(config, setup, mesh) -> Any:
  logging.info("initialising from %s", config.init_from)
  # Restored straight into the training shardings (never whole on a device);
  # the device_put is then a no-op.
  try:
    model = weight_dir.load_weights(config.init_from, config.model, mesh=mesh,
                                    parallel=config)
  except (FileNotFoundError, config_checks.ConfigError) as e:
    # The same error, naming the field that pointed there.
    raise type(e)(f"config.init_from: {e}") from e
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return jax.device_put(params, setup.param_shardings)


def run(config: ml_collections.ConfigDict, workdir: str,
        devices: Sequence[jax.Device] | None = None) -> dict[str, float]:
  """Trains until ``config.train.steps``; returns the last logged metrics.

  ``devices``: the devices of the mesh (default: all, which multi-host runs
  need); e.g. one device of a machine for a quick experiment.
  """
  maybe_initialize_distributed(config)
  devices = list(jax.devices() if devices is None else devices)
  checked = config_checks.check_config(config, len(devices))
  num_shards = checked.num_data_shards
  mesh = sharding.make_mesh(config, devices)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  logging.info("mesh %s on %d devices (%d processes)", dict(mesh.shape),
               len(devices), jax.process_count())
  # Looked at first: a finished run started again stops before building
  # anything (reading the data sets' headers, loading the VGG, compiling).
  ckpt = checkpoint.Checkpointer(workdir, config.train.checkpoint_every,
                                 config.train.keep_checkpoints)
  start = ckpt.latest_step()
  if ckpt.incomplete:
    logging.warning(
        "%s: ignoring (and deleting) incomplete checkpoint save(s) %s of an "
        "interrupted run; %s", checkpoint.checkpoint_dir(workdir),
        ", ".join(ckpt.incomplete),
        f"the last complete one is step {start}" if start is not None
        else "there is no complete one: starting fresh")
  if start is not None and start >= config.train.steps:
    ckpt.close()
    _say(is_main, f"already at step {start} of {config.train.steps} in "
         f"{workdir}, nothing to do (raise --config.train.steps to train "
         "further)")
    return {}

  tx = optim.make_optimizer(config.optim, checked.schedule_steps)
  schedule = optim.make_schedule(config.optim, checked.schedule_steps)
  setup = train_step.make_setup(config, mesh, tx)
  logging.info("parameter shardings (mesh %s):\n%s", dict(mesh.shape),
               sharding.param_table(setup.abstract_params))
  layout = BatchLayout.from_data_config(config.data, num_shards)
  vgg_graphdef, vgg_params = _load_vgg(config, mesh)
  step_fn = train_step.make_train_step(config, setup, tx, schedule, layout,
                                       mesh, vgg_graphdef)
  data_iter = pipeline.create_train_iterator(
      config, jax.process_index(), jax.process_count(), num_shards)
  writer = MetricWriter(workdir, enabled=is_main)

  if start is not None:
    logging.info("resuming from step %d in %s", start, workdir)
    _say(is_main, f"resuming from checkpoint "
         f"{os.path.join(checkpoint.checkpoint_dir(workdir), str(start))} "
         f"(step {start} of {config.train.steps})")
    abstract_opt = checkpoint.abstract_like(jax.eval_shape(
        setup.init_opt_state, setup.abstract_params))
    abstract_opt = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_opt, setup.opt_shardings)
    params, opt_state = ckpt.restore(start, setup.abstract_params,
                                     abstract_opt, data_iter)
    writer.truncate_after(start)
  else:
    start = 0
    # Rows of a run killed before its first checkpoint would be replayed.
    writer.truncate_after(0)
    params = (_init_from(config, setup, mesh) if config.init_from
              else synced_call("init_params", setup.init_params))
    opt_state = synced_call("init_opt_state", setup.init_opt_state, params)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  logging.info("model: %s parameters; global batch %d (%s per task)",
               f"{n_params:,}", layout.batch_size,
               [layout.count(t) for t in range(3)])

  key = jax.random.key(config.seed)
  hooks = _Hooks(config, workdir, mesh, setup, is_main)
  try:
    with _Preemption() as preempt, sharding.mesh_context(
        mesh, sharding.activation_rules(config)):
      last = _loop(config, step_fn, params, opt_state, vgg_params, data_iter,
                   ckpt, writer, hooks, preempt, mesh, layout, start, key,
                   is_main)
  finally:
    # Also on errors: finish pending async saves (the last good checkpoint).
    ckpt.close()
    writer.close()
  if preempt.stopped_at is not None:
    # After close(): the checkpoint named here is complete on disk.
    logging.warning(
        "%s: stopped at step %d of %d; checkpoint %s written; run the same "
        "command to resume", preempt.signal_name, preempt.stopped_at,
        config.train.steps, os.path.join(checkpoint.checkpoint_dir(workdir),
                                         str(preempt.stopped_at)))
  return last


def _say(is_main: bool, line: str) -> None:
  """A progress line for the user (stdout, process 0), whatever the logging
  verbosity, like the per-step lines."""
  if is_main:
    print(line, flush=True)


def _loop(config, step_fn, params, opt_state, vgg_params, data_iter, ckpt,
          writer, hooks, preempt, mesh, layout, start, key, is_main):
  """Runs steps start+1..train.steps; returns the last logged metrics."""
  total = config.train.steps
  last: dict[str, float] = {}
  pending = None       # (step, device metrics) of the previous step
  window: list[dict[str, float]] = []
  t0, s0 = time.time(), start
  step = start
  while step < total:
    local = next(data_iter)
    batch = train_step.global_batch(local, mesh, config)
    args = (params, opt_state, vgg_params, batch, np.int32(step), key)
    first = step == start
    if first:
      _say(is_main, "compiling the train step...")
      t_compile = time.time()
      step_fn = compile_synced("train_step", step_fn, *args)
    params, opt_state, m = step_fn(*args)
    if first:
      # The first call returns once compiled and dispatched; the steps/s and
      # ETA are timed from here, without the compilation.
      t0, s0 = time.time(), start + 1
      _say(is_main, f"compiled the train step in {t0 - t_compile:.1f} s")
    # A fingerprint of the data, so that resumed runs can be checked to see
    # exactly the batches of an uninterrupted one.
    m = {**m, "data_checksum": np.float64(np.sum(local["image"],
                                                 dtype=np.float64))}
    step += 1
    # Read the previous step's metrics while this one runs (one-step lag).
    if pending is not None:
      window.append(_check(*pending))
    pending = (step, m)
    if step % config.train.log_every == 0 or step == total or \
        step % config.train.checkpoint_every == 0 or preempt.requested:
      window.append(_check(*pending))
      pending = None
    if window and (step % config.train.log_every == 0 or step == total):
      last = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
      dt = time.time() - t0
      # None while only the compiling step has run: no rate, no ETA yet.
      sps = (step - s0) / dt if step > s0 and dt > 0 else None
      if is_main:
        print(format_line(step, total, last, sps,
                          None if sps is None else sps * layout.batch_size),
              flush=True)
      writer.write(step, last if sps is None else {**last, "steps_per_s": sps})
      window, t0, s0 = [], time.time(), step
    if step % config.train.checkpoint_every == 0 or step == total or \
        preempt.requested:
      ckpt.save(step, params, opt_state, data_iter, config, force=True)
    hooks.after_step(step, params, writer, last_step=step == total)
    if preempt.requested:
      preempt.stopped_at = step
      break
  return last


def _check(step: int, metrics: dict[str, Any]) -> dict[str, float]:
  """Host copy of a step's metrics; raises on a non-finite step."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not m.pop("finite"):
    bad = {k: v for k, v in m.items() if not np.isfinite(v)}
    raise NonFiniteLossError(
        f"step {step}: non-finite loss or gradient ({bad}); the update was "
        "not applied and no checkpoint was written for this step")
  return m


class _Hooks:
  """Periodic previews and evaluations."""

  def __init__(self, config, workdir, mesh, setup, is_main):
    self.config, self.workdir, self.mesh = config, workdir, mesh
    self.setup, self.is_main = setup, is_main
    self._samples = None

  def _model(self, params):
    return nnx.merge(self.setup.graphdef, params)

  def after_step(self, step, params, writer, last_step):
    t = self.config.train
    if t.preview_every and (step % t.preview_every == 0 or last_step):
      if self._samples is None:  # the same images all run long: read once
        self._samples = preview.fixed_samples(self.config)
      path = preview.write_preview(self._model(params), self.config,
                                   self.workdir, step, self.is_main,
                                   self._samples)
      if path:
        logging.info("preview: %s", path)
    if (t.eval_every and step % t.eval_every == 0) or (last_step and
                                                       t.final_eval):
      results = evaluate.run_evals(
          self._model(params), self.config, step, mesh=self.mesh,
          batch_axes=tuple(self.config.sharding.batch_axes))
      if last_step and "synthetic" in self.config.evals.datasets:
        results.update(_report_against_baselines(self.config, results,
                                                 self.is_main))
      if results:
        writer.write(step, results)


def _report_against_baselines(config, results: dict[str, float],
                              is_main: bool) -> dict[str, float]:
  """Prints the final synthetic evaluation next to the trivial baselines."""
  base = baselines.flat_baselines(config, "synthetic",
                                  config.evals.max_examples)
  if is_main:
    print("final evaluation on held-out synthetic data (model vs trivial "
          "baselines; an undefined F, no pixel predicted, counts as 0):")
    for task, metric in baselines.HEADLINE:
      key = task_key(task)
      model_v = results.get(f"eval/synthetic/{key}/{metric}", float("nan"))
      others = ", ".join(
          f"{k.split('/')[2]} {np.nan_to_num(v):.4g}" for k, v in base.items()
          if k.startswith(f"baseline/{key}/") and k.endswith(f"/{metric}"))
      print(f"  {task:24s} {metric:10s} model {np.nan_to_num(model_v):.4g}"
            f"  | {others}", flush=True)
  return base
