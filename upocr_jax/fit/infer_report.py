"""``--compile_only`` of ``upocr-eval`` and ``upocr-predict``: compile the
inference forward for one chip and report whether a batch fits.

  upocr-eval --config=paper --compile_only --topology=v5e:2x2 [--suggest]
  upocr-predict --config=paper --compile_only --topology=v6e:2x2 \\
      --batch_size=32 [--image_size=512] [--suggest]

The program is the one evaluation and prediction run
(``inference.runner.forward``: the model's float32 view at HIGHEST matmul
precision, the clamped full-resolution output) for a batch of uint8 images
on ONE chip of the topology (``fit.targets``), or of the local devices
without ``--topology``. Evaluation and prediction are data parallel with the
parameters replicated, so every chip of a slice runs this program on its
share of the global batch. Prints a readable table and one JSON line
(``{"compile_only": {...}}``): per-chip arguments / temporaries / total
against HBM (fits, margin), FLOPs and bytes accessed corrected for scanned
stages, and a roofline ESTIMATE of the time per batch and images/s (see
``fit.measure``) at the chip's float32 HIGHEST matmul rate
(``Target.highest_flops``: 1/6 of the bfloat16 peak on TPU, the CUDA-core
float32 peak on GPU). When the batch does not fit, the knob is a smaller batch;
``--suggest`` halves it until one fits.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from upocr_jax import sharding
from upocr_jax.fit import measure
from upocr_jax.fit.targets import Target, target_for
from upocr_jax.inference import runner
from upocr_jax.models import UPOCR
from upocr_jax.models import precision


def one_chip_parallel(config: ml_collections.ConfigDict | None
                      ) -> ml_collections.ConfigDict:
  """The ``mesh`` and ``sharding`` sections of ``config`` (data parallel
  without them; ``runner.parallel_config``) on a mesh of one device."""
  par = runner.parallel_config(config)
  par.mesh.shape = (1,) * len(par.mesh.axes)
  return par


def compile_forward(model_config: ml_collections.ConfigDict,
                    parallel: ml_collections.ConfigDict, batch: int,
                    image_size: int, target: Target
                    ) -> tuple[Any, float, float]:
  """(compiled forward, seconds to lower, seconds to compile) for ``batch``
  uint8 images of ``image_size`` squared on the first device of ``target``,
  with parameters placed by ``parallel`` (see :func:`one_chip_parallel`)."""
  mesh = sharding.make_mesh(parallel, target.devices[:1])
  model = nnx.eval_shape(lambda: UPOCR(model_config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(precision.full_precision(model))
  shardings = nnx.to_pure_dict(
      sharding.state_shardings(state, mesh, parallel))
  nnx.replace_by_pure_dict(state, sharding.abstract(
      nnx.to_pure_dict(state), shardings))
  images = jax.ShapeDtypeStruct(
      (batch, image_size, image_size, 3), jnp.uint8,
      sharding=sharding.batch_sharding(mesh, parallel, 4))
  task_ids = jax.ShapeDtypeStruct(
      (batch,), jnp.int32, sharding=sharding.batch_sharding(mesh, parallel, 1))
  with sharding.mesh_context(mesh, sharding.activation_rules(parallel)):
    t = time.perf_counter()
    lowered = runner.lower_split(graphdef, state, images, task_ids)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile(target.compiler_options)
  return compiled, lower_s, time.perf_counter() - t


def infer_report(model_config: ml_collections.ConfigDict,
                 parallel: ml_collections.ConfigDict, batch: int,
                 image_size: int, target: Target) -> dict[str, Any]:
  """Compiles the forward on one chip of ``target``; the report's figures
  (a refusal for lack of HBM is a report too, with ``compiler_error``)."""
  if batch < 1:
    raise ValueError(f"the batch must be >= 1 image, got {batch}")
  if image_size < 32 or image_size % 32:
    raise ValueError(f"the image size must be a positive multiple of 32, "
                     f"got {image_size}")
  # The program is float32 at HIGHEST precision: its roofline is at that
  # matmul rate, not at the chip's bfloat16 peak.
  chip = target.one_chip().at_highest_precision()
  head = {"program": "inference forward", "target": chip.name,
          "devices": 1, "batch": batch, "image_size": image_size,
          "precision": "float32, HIGHEST matmul precision",
          "peak_flops": chip.peak_flops}
  start = time.perf_counter()
  try:
    compiled, lower_s, compile_s = compile_forward(
        model_config, parallel, batch, image_size, chip)
  except jax.errors.JaxRuntimeError as e:
    refused = measure.refusal(e, time.perf_counter() - start)
    if refused is None:
      raise
    return {**head, **refused}
  out = {**head, "lower_s": round(lower_s, 1),
         "compile_s": round(compile_s, 1), **measure.measure(compiled, chip)}
  if "roofline_estimate_s" in out:
    out["images_per_s_estimate"] = batch / out["roofline_estimate_s"]
  return out


def suggest(model_config: ml_collections.ConfigDict,
            parallel: ml_collections.ConfigDict, batch: int, image_size: int,
            target: Target) -> dict[str, Any] | None:
  """Halves ``batch`` until the forward fits; the first report that fits,
  or None when not even one image does."""
  while batch > 1:
    batch //= 2
    report = infer_report(model_config, parallel, batch, image_size, target)
    if report["fits"]:
      return report
  return None


def format_report(r: dict[str, Any], batch_flag: str) -> str:
  """The readable table of an :func:`infer_report`; ``batch_flag`` is the
  command's flag for the batch (named in the advice)."""
  head = (f"inference forward on {r['target']}: batch {r['batch']} images of "
          f"{r['image_size']}x{r['image_size']}, {r['precision']}")
  knob = (f"a smaller batch ({batch_flag}; --suggest halves it until one "
          "fits)")
  if "compiler_error" in r:
    return "\n".join(
        [f"{head} (refused by the compiler after {r['compile_s']} s)"]
        + measure.refusal_lines(r) + [f"the knob that would help: {knob}"])
  lines = [f"{head} (lowered {r['lower_s']} s, compiled {r['compile_s']} s)"]
  lines += measure.memory_lines(r) + measure.cost_lines(r)
  if "roofline_estimate_s" in r:
    lines.append(
        "ESTIMATED time per batch (roofline: max of FLOPs / "
        f"{r['peak_flops'] / 1e12:.1f} TFLOP/s, the float32 HIGHEST matmul "
        "rate, and bytes / HBM bandwidth): "
        f"{_figure(r['roofline_estimate_s'] * 1e3)} ms, "
        f"{_figure(r['images_per_s_estimate'])} images/s")
  if r["fits"] is False:
    lines.append(f"does not fit; the knob that would help: {knob}")
  return "\n".join(lines)


def _figure(x: float) -> str:
  # One decimal, or three significant digits below 1 (a tiny model's ms).
  return f"{x:,.1f}" if x >= 1 else f"{x:.3g}"


def run(model_config: ml_collections.ConfigDict,
        parallel: ml_collections.ConfigDict, batch: int, image_size: int,
        topology: str = "", try_smaller: bool = False,
        batch_flag: str = "--batch_size") -> dict[str, Any]:
  """``--compile_only`` of evaluation / prediction: prints the table and one
  JSON line; returns the report (with ``suggested``: the first fitting
  halved batch, when asked and the batch does not fit)."""
  target = target_for(topology)
  report = infer_report(model_config, parallel, batch, image_size, target)
  print(format_report(report, batch_flag), flush=True)
  if try_smaller and report["fits"] is False:
    found = suggest(model_config, parallel, batch, image_size, target)
    report["suggested"] = found
    if found is None:
      print("--suggest: not even a batch of 1 image fits", flush=True)
    else:
      print(format_report(found, batch_flag), flush=True)
      print(f"fits with: {batch_flag}={found['batch']}", flush=True)
  print(json.dumps({"compile_only": report}, default=str), flush=True)
  return report
