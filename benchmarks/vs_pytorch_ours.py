"""Our (JAX) side of ``benchmarks/vs_pytorch.py``.

Imported only in our side's process (jax is imported here, torch never is).
The train step is the one ``benchmarks/train_step.py`` builds: the real jitted
``upocr_jax.train.train_step`` (forward, the official losses with the VGG16
terms on random frozen weights, gradients, clipping, AdamW, the finite
guard) with random weights, on the batch both sides share. Inference is
``upocr_jax.inference.runner.forward_fn`` (the jitted eval forward, last output
clamped) at batch 1.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from benchmarks import train_step as train_step_bench
from benchmarks import vs_pytorch_common as common
from benchmarks import vs_pytorch_turns as turns
from upocr_jax.inference import runner
from upocr_jax.models import UPOCR
from upocr_jax.train import train_step


def _count(tree) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def _train(config, s: common.Settings) -> dict[str, Any]:
  t = time.perf_counter()
  step, args, layout, mesh = train_step_bench.build(config, s.batch_per_task)
  batch = common.random_batch(s.size, layout.task_ids, s.seed)
  args = (*args[:3], train_step.global_batch(batch, mesh, config), *args[4:])
  jax.block_until_ready(args[:2])
  init_s = time.perf_counter() - t
  params = _count(args[0])
  with jax.set_mesh(mesh):
    t = time.perf_counter()
    lowered = step.lower(*args)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    state, times, loss = args, [], []
    for i in range(s.warmup + s.steps):
      turns.wait_turn(s.interleave)
      t = time.perf_counter()
      new_params, opt, metrics = compiled(*state)
      jax.block_until_ready((new_params, opt, metrics))
      if i >= s.warmup:
        times.append(time.perf_counter() - t)
      loss.append(float(metrics["loss"]))
      state = (new_params, opt) + state[2:]  # params and opt are donated
    turns.finished(s.interleave)
  return {**common.summarize(times), "params": params,
          "loss_mean": float(np.mean(loss)), "batch": layout.batch_size,
          "init_s": round(init_s, 2), "lower_s": round(lower_s, 2),
          "compile_s": round(compile_s, 2),
          "remat": bool(config.model.remat),
          "remat_policy": str(config.model.remat_policy)}


def _infer(config, s: common.Settings) -> dict[str, Any]:
  t = time.perf_counter()
  model = nnx.jit(lambda: UPOCR(config.model, rngs=nnx.Rngs(s.seed)))()
  jax.block_until_ready(nnx.state(model))
  init_s = time.perf_counter() - t
  batch = common.random_batch(s.size, [0], s.seed)
  images, ids = batch["image"], batch["task_id"]
  t = time.perf_counter()
  # What upocr-predict and upocr-eval run per batch: the model prepared once.
  forward = runner.forward_fn(model)
  jax.block_until_ready(forward(images, ids))
  first_s = time.perf_counter() - t
  times = []
  for i in range(s.warmup + s.steps):
    turns.wait_turn(s.interleave)
    t = time.perf_counter()
    out = jax.block_until_ready(forward(images, ids))
    if i >= s.warmup:
      times.append(time.perf_counter() - t)
  turns.finished(s.interleave)
  return {**common.summarize(times),
          "params": _count(nnx.state(model, nnx.Param)),
          "output_mean": float(np.mean(out)), "batch": 1,
          "init_s": round(init_s, 2),
          # Tracing + compilation + one call: jit compiles on first use.
          "first_call_s": round(first_s, 2)}


def run(config, s: common.Settings) -> dict[str, Any]:
  """Times our train step or eval forward in this process.

  Args:
    config: our config after ``common.prepare_config``.
    s: the benchmark settings.

  Returns:
    the timing summary (plus lowering/compile/init times), parameter count,
    peak RSS and versions.
  """
  out = _train(config, s) if s.mode == "train" else _infer(config, s)
  out.update({
      "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                       * 1024,
      "device": str(jax.devices()[0].device_kind),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__,
  })
  return out
