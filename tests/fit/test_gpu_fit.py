"""GPU table, cuBLAS / cuDNN FLOP counting, compile-only GPU report.

The GPU test compiles the tiny config's train step for one H100 with the
CUDA plugin (``pip install "jax[cuda12]==<jax version>"``; no GPU needed); it
is marked ``gpu_aot`` (``-m "not gpu_aot"`` skips it) and skipped where the
plugin is not installed. It takes about 2 minutes on two CPU cores.
"""

import re

import jax
import pytest

from configs import upocr as upocr_config
from upocr_jax.evaluation import cli as eval_cli
from upocr_jax.fit import gpus, hlo, report, targets, topologies



def needs_cuda_plugin(test):
  """Marks a compile-only GPU test gpu_aot, skipped without the CUDA
  plugin."""
  return pytest.mark.gpu_aot(pytest.mark.skipif(
      not gpus.cuda_aot_available(),
      reason="the CUDA plugin is not installed (pip install "
      f'"jax[cuda12]=={jax.__version__}"); compile-only GPU reports need it'
  )(test))


def test_gpu_table_names_parse_and_the_target_config_says_the_facts():
  assert "h100" in gpus.KNOWN
  g = gpus.get("h100")
  assert g.compute_capability == (9, 0) and g.sm_count == 132
  assert 79 * 2**30 < g.hbm_bytes < 80 * 2**30  # the 80 GB part, as CUDA says
  assert g.peak_bf16_flops == 989e12 and g.hbm_bandwidth == 3.35e12
  # NVIDIA's H100 SXM datasheet: 67 TFLOP/s of float32 (no tensor cores).
  assert 66e12 < g.peak_fp32_flops < 68e12
  text = gpus.target_config(g)
  assert "cuda_compute_capability { major: 9 minor: 0 }" in text
  assert "core_count: 132" in text
  assert f"device_memory_size: {g.hbm_bytes}" in text
  assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text
  # GPU and TPU names both pass the --topology check.
  targets.check_topology("h100")
  targets.check_topology("v5e:2x2")
  assert not set(gpus.KNOWN) & set(topologies.KNOWN)


def test_unknown_topology_is_one_line_listing_tpu_slices_and_gpus():
  with pytest.raises(ValueError) as e:
    targets.check_topology("a100")
  message = str(e.value)
  assert "\n" not in message
  assert re.match(r"--topology 'a100' is not a known TPU topology or GPU; "
                  r"known TPU slices: v4:2x2x1, .*v5e:2x2.*; known GPUs: "
                  r"h100$", message)
  with pytest.raises(ValueError, match=r"'a100' is not a known GPU; known: "
                     r"h100$"):
    gpus.get("a100")


def test_without_the_cuda_plugin_the_error_says_what_to_install(monkeypatch):
  monkeypatch.setattr(gpus, "cuda_aot_available", lambda: False)
  with pytest.raises(ImportError) as e:
    targets.target_for("h100")
  message = str(e.value)
  assert "\n" not in message
  assert f'pip install "jax[cuda12]=={jax.__version__}"' in message


def test_cublas_and_cudnn_custom_calls_count_as_their_dot_and_convolution():
  """The GPU compiler writes dots as cuBLAS calls and convolutions as cuDNN
  ones; a backward convolution costs as much as its forward one."""
  cublas = ('backend_config={"gemm_backend_config":{"dot_dimension_numbers":'
            '{"lhs_contracting_dimensions":["2"],"rhs_contracting_dimensions"'
            ':["1"],"lhs_batch_dimensions":["0"],"rhs_batch_dimensions":'
            '["0"]}}}')
  conv = "window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f"
  text = f"""HloModule m

ENTRY %main (a: bf16[4,8,16], b: bf16[4,16,32], x: f32[2,8,8,3], g: f32[2,8,8,5], k: f32[5,3,3,3]) -> f32[2,8,8,5] {{
  %a = bf16[4,8,16]{{2,1,0}} parameter(0)
  %b = bf16[4,16,32]{{2,1,0}} parameter(1)
  %x = f32[2,8,8,3]{{3,2,1,0}} parameter(2)
  %g = f32[2,8,8,5]{{3,2,1,0}} parameter(3)
  %k = f32[5,3,3,3]{{3,2,1,0}} parameter(4)
  %mm = (bf16[4,8,32]{{2,1,0}}, s8[4194304]{{0}}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", {cublas}
  %fwd = (f32[2,8,8,5]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%x, %k), {conv}, custom_call_target="__cudnn$convForward"
  %bwi = (f32[2,8,8,3]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%g, %k), {conv}, custom_call_target="__cudnn$convBackwardInput"
  %bwf = (f32[5,3,3,3]{{3,2,1,0}}, u8[0]{{0}}) custom-call(%x, %g), {conv}, custom_call_target="__cudnn$convBackwardFilter"
  ROOT %plain = f32[2,8,8,5]{{3,2,1,0}} convolution(%x, %k), {conv}
}}
"""
  program = hlo.parse(text)
  by_name = {i.name: i for i in program.comps["main"]}
  flops = {n: hlo._dot_flops(i, program.types)  # pylint: disable=protected-access
           for n, i in by_name.items() if n in ("mm", "fwd", "bwi", "bwf",
                                                "plain")}
  assert flops["mm"] == 2 * 4 * 8 * 32 * 16
  # 8 outputs over 8 inputs padded by 1: 2+3*6+2 = 22 window positions on
  # real input per spatial dimension.
  assert flops["plain"] == 2 * 2 * 5 * 3 * 22 * 22
  assert flops["fwd"] == flops["bwi"] == flops["bwf"] == flops["plain"]
  costs = hlo.program_costs(program)
  assert costs["flops"] == flops["mm"] + 4 * flops["plain"]
  # A custom-call's workspace result is not step data.
  assert costs["bytes"] < 4194304


@needs_cuda_plugin
def test_fit_report_of_the_tiny_step_on_one_h100(capsys):
  r = report.run(upocr_config.get_config("tiny"), "h100")
  out = capsys.readouterr().out
  assert "fits: yes" in out and "ESTIMATED step time" in out
  assert "counted from the HLO" in out
  assert out.strip().splitlines()[-1].startswith('{"compile_only"')
  assert r["target"] == "h100" and r["devices"] == 1 and r["fits"] is True
  m = r["per_device_bytes"]
  assert 0 < m["arguments"] < m["total"] < r["hbm_bytes"]
  # No cost analysis from this compiler: FLOPs and bytes come from the HLO.
  assert r["costs_from"] == "hlo_count" and r["xla_flops"] is None
  assert r["flops"] > 1e9 and r["bytes_accessed"] > 0
  assert r["roofline_estimate_s"] > 0
  assert sum(c["count"] for c in r["collectives"].values()) == 0


@needs_cuda_plugin
def test_inference_fit_report_on_one_h100(capsys):
  """``upocr-eval --compile_only --topology=h100``: the forward compiles
  for the GPU; its roofline is at the float32 (CUDA-core) rate."""
  r = eval_cli.main(["upocr-eval", "--config=tiny", "--compile_only",
                     "--topology=h100", "--config.data.eval_batch_size=8"])
  out = capsys.readouterr().out
  assert out.startswith("inference forward on h100: batch 8 images of 64x64")
  assert "fits: yes" in out and "counted from the HLO" in out
  assert r["peak_flops"] == gpus.get("h100").peak_fp32_flops
  assert r["costs_from"] == "hlo_count" and r["flops"] > 0
  assert r["images_per_s_estimate"] == pytest.approx(
      8 / r["roofline_estimate_s"])
