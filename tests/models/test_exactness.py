"""The port against the official PyTorch model (fixture_tiny from shared/)."""

import numpy as np
import pytest
from flax import nnx

from tests.fixture_utils import (fixture, fixture_model_config, nchw_to_nhwc,
                                 official_state_dict)
from upocr_jax.models import task_ids_from_names
from upocr_jax.weights import official

# Checkpoints in forward order: (our intermediate, fixture key, layout).
CHECKPOINTS = (
    [(f"enc_stage{i}", f"debug/enc_stage{i}", "nchw") for i in range(1, 5)]
    + [("proj_out", "debug/proj_out_nhwc", "nhwc"),
       ("dec_in", "debug/dec_in", "nchw")]
    + [(f"dec_layer{i}_up", f"debug/dec_layer{i}_up", "nchw")
       for i in range(5)])

# Module fixtures are built once: one worker runs the module (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("exactness")


def _run(model, images, ids):
  inter = {}
  outputs = model(images, ids, intermediates=inter)
  return outputs, inter


@pytest.fixture(scope="module")
def official_run():
  fx = fixture()
  cfg = fixture_model_config()
  model = official.load_official(official_state_dict(), cfg)
  images = nchw_to_nhwc(fx["input/images"])
  ids = task_ids_from_names(cfg, [str(t) for t in fx["input/tasks"]])
  inter = {}
  # jit: eager execution compiles every op on its own and is far slower.
  outputs, inter = nnx.jit(_run)(model, images, ids)
  return fx, outputs, inter


def first_divergence(fx, inter, tol=1e-4):
  """Names the first intermediate map that differs from the official one.

  The tolerance is relative to the map's largest value: float32 rounding grows
  with magnitude, and some decoder maps reach several units.
  """
  for ours, key, layout in CHECKPOINTS:
    ref = fx[key] if layout == "nhwc" else nchw_to_nhwc(fx[key])
    err = float(np.max(np.abs(np.asarray(inter[ours]) - ref)))
    scale = max(1.0, float(np.max(np.abs(ref))))
    if err > tol * scale:
      return (f"first divergence at {ours} ({key}): max abs err {err:.3g} "
              f"(map max {scale:.3g})")
  return "all intermediate maps match; divergence is in the output heads"


def test_outputs_match_official_within_1e4(official_run):
  fx, outputs, inter = official_run
  assert len(outputs) == 3
  for i, out in enumerate(outputs):
    ref = nchw_to_nhwc(fx[f"output/{i}"])
    assert out.shape == ref.shape
    err = float(np.max(np.abs(np.asarray(out) - ref)))
    assert err < 1e-4, (f"output {i}: max abs err {err:.3g}; "
                        + first_divergence(fx, inter))


def test_intermediates_match_official(official_run):
  fx, _, inter = official_run
  msg = first_divergence(fx, inter)
  assert msg.startswith("all intermediate"), msg


def test_localisation_names_a_broken_stage(official_run):
  # A corrupted decoder map must be reported at that stage, not elsewhere.
  fx, _, inter = official_run
  broken = dict(inter)
  broken["dec_layer2_up"] = np.asarray(inter["dec_layer2_up"]) + 1e-2
  assert "dec_layer2_up" in first_divergence(fx, broken)
