"""The inference fit report: ``upocr-eval`` / ``upocr-predict``
``--compile_only`` (upocr_jax/fit/infer_report.py).

Most tests compile the tiny forward for the local CPU (seconds). One compiles
it with the real TPU compiler for one chip of a v5e 2x2 slice (libtpu, no
TPU); it is marked ``tpu`` and skipped where libtpu is not installed.
"""

import json

import jax
import pytest
from flax import nnx

from tests.inference_helpers import random_model, tiny_config
from upocr_jax.evaluation import cli as eval_cli
from upocr_jax.fit import infer_report, targets, topologies
from upocr_jax.inference import cli as predict_cli
from upocr_jax.models import UPOCR
from upocr_jax.weights import weight_dir

REFUSAL = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
           "required for HLO temporaries (20.50G) exceeds available HBM "
           "(15.75G).")


def _json_line(out: str) -> dict:
  last = out.strip().splitlines()[-1]
  assert last.startswith('{"compile_only"')
  return json.loads(last)["compile_only"]


def test_eval_compile_only_reports_the_forward_at_the_eval_batch(capsys):
  """What a user runs: no checkpoint, no data; the config's eval batch and
  image size; memory, FLOPs and the JSON line, for one local device."""
  r = eval_cli.main(["upocr-eval", "--config=tiny", "--compile_only",
                     "--config.data.eval_batch_size=4"])
  out = capsys.readouterr().out
  assert out.startswith("inference forward on 1 device of local cpu x8")
  assert "batch 4 images of 64x64, float32, HIGHEST matmul precision" in out
  assert "per device memory (XLA memory analysis):" in out
  assert "fits: n/a (unknown HBM)" in out  # the CPU reports no HBM
  line = _json_line(out)
  assert line["batch"] == 4 and line["image_size"] == 64
  assert line["devices"] == 1 and r["batch"] == 4
  m = r["per_device_bytes"]
  # The arguments: the parameters in float32 (less those of the side
  # outputs, which the forward drops and jit prunes), the uint8 batch and
  # the task ids.
  params = sum(x.size for x in jax.tree.leaves(nnx.state(nnx.eval_shape(
      lambda: UPOCR(tiny_config().model, rngs=nnx.Rngs(0))), nnx.Param)))
  weights = m["arguments"] - 4 * 64 * 64 * 3 - 4 * 4
  assert 0.99 * 4 * params < weights <= 4 * params
  assert m["total"] == m["arguments"] + m["temporaries"] + \
      m["outputs_not_aliased"]
  # The output is (4, 64, 64, 3) float32.
  assert m["outputs_not_aliased"] >= 4 * 64 * 64 * 3 * 4
  assert r["flops"] > 0


def test_the_batch_and_image_size_are_the_ones_compiled():
  """FLOPs grow with the batch and the pixels: the flags reach the
  program."""
  c = tiny_config()
  par = infer_report.one_chip_parallel(c)
  target = targets.target_for("")
  small = infer_report.infer_report(c.model, par, 2, 64, target)
  batch = infer_report.infer_report(c.model, par, 4, 64, target)
  pixels = infer_report.infer_report(c.model, par, 2, 128, target)
  assert batch["flops"] == pytest.approx(2 * small["flops"], rel=0.05)
  # Four times the pixels; windowed attention keeps it near-linear.
  assert 3.5 * small["flops"] < pixels["flops"] < 5 * small["flops"]


def test_predict_compile_only_takes_the_model_and_size_of_a_checkpoint(
    tmp_path, capsys):
  """Without --config: the checkpoint's saved model config and image size;
  the weights are not read, --batch_size is the batch."""
  weights = str(tmp_path / "weights")
  weight_dir.save_weights(weights, random_model(), image_size=96)
  written = predict_cli.main(["upocr-predict", f"--checkpoint={weights}",
                              "--compile_only", "--batch_size=3"])
  assert written == []
  line = _json_line(capsys.readouterr().out)
  assert line["batch"] == 3 and line["image_size"] == 96
  # --image_size and --config win; the config's model is compiled.
  predict_cli.main(["upocr-predict", "--config=tiny", "--compile_only",
                    "--image_size=32", "--batch_size=1"])
  line = _json_line(capsys.readouterr().out)
  assert line["batch"] == 1 and line["image_size"] == 32
  with pytest.raises(ValueError, match="--compile_only needs the model: "
                     "--config or --checkpoint"):
    predict_cli.main(["upocr-predict", "--compile_only"])


def test_a_refused_batch_is_reported_and_suggest_halves_it(monkeypatch,
                                                           capsys):
  """The TPU compiler refuses a batch whose temporaries exceed HBM: the
  report says by how much and names the knob; --suggest halves the batch
  until the compiler accepts one, and reports it."""
  real = infer_report.compile_forward
  tried = []

  def compile_forward(model_config, parallel, batch, image_size, target):
    tried.append(batch)
    if batch > 2:
      raise jax.errors.JaxRuntimeError(REFUSAL)
    return real(model_config, parallel, batch, image_size, target)

  monkeypatch.setattr(infer_report, "compile_forward", compile_forward)
  monkeypatch.setattr(infer_report, "target_for", lambda _: targets.Target(
      "fake chip", jax.devices()[:1], 16 * 2**30, 1e14, 1e12,
      highest_flops=1e13))
  r = eval_cli.main(["upocr-eval", "--config=tiny", "--compile_only",
                     "--suggest", "--config.data.eval_batch_size=12"])
  out = capsys.readouterr().out
  assert tried == [12, 6, 3, 1]
  assert "batch 12 images of 64x64" in out
  assert "refused by the compiler" in out
  assert "fits: NO, 4.75 GiB over in temporaries alone" in out
  assert ("the knob that would help: a smaller batch "
          "(--config.data.eval_batch_size; --suggest halves it") in out
  assert "fits with: --config.data.eval_batch_size=1" in out
  assert r["fits"] is False and r["suggested"]["batch"] == 1
  assert r["suggested"]["fits"] is True
  # The roofline is at the float32 HIGHEST rate, not the bfloat16 peak.
  fit = r["suggested"]
  assert fit["peak_flops"] == 1e13
  assert fit["roofline_estimate_s"] == pytest.approx(
      max(fit["flops"] / 1e13, fit["bytes_accessed"] / 1e12))
  assert fit["images_per_s_estimate"] == pytest.approx(
      1 / fit["roofline_estimate_s"])
  assert "max of FLOPs / 10.0 TFLOP/s, the float32 HIGHEST" in out
  ms = fit["roofline_estimate_s"] * 1e3
  assert f"HBM bandwidth): {ms:.3g} ms, " in out if ms < 1 else \
      f"HBM bandwidth): {ms:,.1f} ms, " in out
  assert _json_line(out)["suggested"]["batch"] == 1

  def other(*_):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")

  monkeypatch.setattr(infer_report, "compile_forward", other)
  with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
    eval_cli.main(["upocr-eval", "--config=tiny", "--compile_only"])


@pytest.mark.parametrize("argv,message", [
    (["--compile_only", "--topology=v9:2x2"],
     "--topology 'v9:2x2' is not a known TPU topology or GPU"),
    (["--topology=v5e:2x2"], "--topology and --suggest need --compile_only"),
    (["--compile_only", "--config.data.eval_batch_size=0"],
     "the batch must be >= 1 image, got 0"),
    (["--compile_only", "--config.data.image_size=48"],
     "the image size must be a positive multiple of 32, got 48"),
])
def test_bad_compile_only_flags_are_one_clear_error(argv, message):
  with pytest.raises(ValueError, match=message):
    eval_cli.main(["upocr-eval", "--config=tiny"] + argv)


def test_without_libtpu_the_error_says_what_to_install(monkeypatch):
  def missing(**_):
    raise RuntimeError("Unable to initialize backend 'tpu': not installed")

  monkeypatch.setattr(topologies.jax_topologies, "get_topology_desc", missing)
  with pytest.raises(ImportError, match=r"--topology v5e:2x2: compiling for "
                     r"TPU needs libtpu \(pip install"):
    topologies.devices(topologies.get("v5e:2x2"))


@pytest.mark.tpu
@pytest.mark.skipif(not topologies.libtpu_available(),
                    reason="libtpu is not installed (pip install "
                    "'upocr_jax[tpu]'); compile-only TPU reports need it")
def test_eval_fit_report_on_one_chip_of_v5e_2x2(capsys):
  r = eval_cli.main(["upocr-eval", "--config=tiny", "--compile_only",
                     "--topology=v5e:2x2", "--config.data.eval_batch_size=8"])
  out = capsys.readouterr().out
  assert "inference forward on 1 chip of v5e:2x2: batch 8" in out
  assert "fits: yes" in out and "ESTIMATED time per batch" in out
  assert _json_line(out)["target"] == "1 chip of v5e:2x2"
  assert r["devices"] == 1 and r["fits"] is True
  assert r["hbm_bytes"] == topologies.GENERATIONS["v5e"].hbm_bytes
  m = r["per_device_bytes"]
  assert 0 < m["arguments"] < m["total"] < r["hbm_bytes"]
  # One chip: no collectives.
  assert all(c["count"] == 0 for c in r["collectives"].values())
  assert r["flops"] > 0 and r["roofline_estimate_s"] > 0
  assert r["images_per_s_estimate"] == pytest.approx(
      8 / r["roofline_estimate_s"])
  # HIGHEST float32 on TPU: 6 bfloat16 passes.
  assert r["peak_flops"] == pytest.approx(
      topologies.GENERATIONS["v5e"].peak_bf16_flops / 6)
