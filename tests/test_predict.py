"""Prediction: tiling/blending, sizes in both modes, regions, CLI and bad inputs."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests import inference_helpers as helpers
from upocr_jax.inference import postprocess
from upocr_jax.inference import cli
from upocr_jax.inference import tiling
from upocr_jax.inference.predictor import Predictor

TASKS = ("text removal", "tampered text detection", "text segmentation")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return helpers.random_weights_dir(tmp_path_factory.mktemp("predict_ckpt"))


@pytest.fixture(scope="module")
def predictor(ckpt):
  return Predictor.from_checkpoint(ckpt, image_size=64, batch_size=4)


class _Identity(nnx.Module):
  """Stands in for UPOCR: returns its input, so blending is all that shows."""

  def __init__(self):
    self.config = type("Cfg", (), {"tasks": list(TASKS)})()

  def __call__(self, images, task_ids):
    del task_ids
    return images, images, images


# ------------------------------------------------------------------ tiling


@pytest.mark.parametrize("length", [1, 40, 64, 65, 100, 150, 333])
def test_tiles_cover_with_overlap(length):
  starts = tiling.tile_starts(length, 64, 16)
  assert starts[0] == 0
  assert starts[-1] + 64 == max(length, 64)
  assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:]))


def test_neighbour_weights_sum_to_one():
  starts = tiling.tile_starts(150, 64, 16)
  w = tiling.axis_weights(starts, 64)
  total = np.zeros(150)
  for s, wi in zip(starts, w):
    total[s:s + 64] += wi
  np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_blend_roundtrip_and_flat_tiles():
  rng = np.random.default_rng(0)
  for h, w in [(150, 230), (40, 100), (64, 64), (20, 30)]:
    img = rng.random((h, w, 3)).astype(np.float32)
    grid = tiling.make_grid(h, w, 64, 16)
    tiles = tiling.extract_tiles(img, grid)
    np.testing.assert_allclose(tiling.blend_tiles(tiles, grid), img, atol=1e-6)
    flat = np.full_like(tiles, 0.3)
    np.testing.assert_allclose(tiling.blend_tiles(flat, grid), 0.3, atol=1e-6)


def test_blend_of_disagreeing_tiles_has_no_step():
  # Every tile a different constant: a hard seam would jump by up to 0.7; the
  # raised-cosine ramps over >= 16 pixels change by at most pi/32 of a jump.
  grid = tiling.make_grid(150, 230, 64, 16)
  vals = np.linspace(0.1, 0.8, grid.num_tiles)
  tiles = np.stack([np.full((64, 64, 1), v) for v in vals])
  out = tiling.blend_tiles(tiles, grid)[..., 0]
  max_step = max(np.abs(np.diff(out, axis=0)).max(),
                 np.abs(np.diff(out, axis=1)).max())
  assert max_step < 0.7 * np.pi / 32 + 1e-6


def test_tiled_identity_model_is_seamless():
  pred = Predictor(_Identity(), image_size=64, mode="tiled", batch_size=8,
                   overlap=16)
  flat = np.full((150, 230, 3), 128, np.uint8)
  out = pred(flat, "text removal")
  # Constant in, constant out: no seam anywhere (the official-style truncation
  # may lose one level, uniformly).
  assert out.shape == flat.shape and np.ptp(out) == 0
  assert abs(int(out[0, 0, 0]) - 128) <= 1
  img = np.random.default_rng(1).integers(0, 256, (150, 230, 3), np.uint8)
  assert np.abs(pred(img, "text removal").astype(int) - img).max() <= 1


# ---------------------------------------------------------------- predictor


@pytest.mark.parametrize("mode", ["resize", "tiled"])
def test_output_has_input_size(predictor, mode):
  predictor.mode = mode
  img = np.random.default_rng(2).integers(0, 256, (70, 150, 3), np.uint8)
  small = np.random.default_rng(3).integers(0, 256, (37, 100), np.uint8)  # grey
  outs = predictor.predict_batch([img, small], "text removal")
  assert [o.shape for o in outs] == [(70, 150, 3), (37, 100, 3)]
  assert all(o.dtype == np.uint8 for o in outs)
  seg = predictor(Image.fromarray(img), "text_segmentation")
  assert seg.shape == (70, 150, 3) and seg.dtype == np.uint8
  tmap, regions = predictor(img, "tampered text detection")
  assert tmap.shape == (70, 150, 3)
  for r in regions:
    x0, y0, x1, y1 = r["box"]
    assert r["class"] in ("real", "tampered") and 0 <= x0 <= x1 < 150
    assert 0 <= y0 <= y1 < 70 and r["area"] >= predictor.min_region_area


@pytest.fixture(scope="module")
def one_device_maps(ckpt):
  config = helpers.tiny_config()
  config.mesh.shape = (1, 1, 1)
  one = Predictor.from_checkpoint(ckpt, config=config, image_size=64,
                                  batch_size=2, devices=jax.devices()[:1])
  return {t: one.predict_maps(_mesh_images(), t) for t in TASKS}


def _mesh_images():
  rng = np.random.default_rng(5)
  return [rng.integers(0, 256, s, np.uint8)
          for s in ((70, 150, 3), (64, 64, 3), (40, 90, 3))]


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2)])
def test_predictor_on_a_mesh_matches_one_device(ckpt, one_device_maps, shape):
  config = helpers.tiny_config()
  config.mesh.shape = shape
  pred = Predictor.from_checkpoint(ckpt, config=config, image_size=64,
                                   batch_size=2)
  assert dict(pred.mesh.shape) == dict(zip(("data", "fsdp", "tensor"), shape))
  # Parameters sharded by the rules (fc1: embed -> fsdp, mlp -> tensor).
  fc1 = pred.model.encoder.layers[0].blocks[0].mlp.fc1.kernel[...]
  assert tuple(fc1.sharding.spec) == ("fsdp",
                                      "tensor" if shape[2] > 1 else None)
  for task in TASKS:
    for got, want in zip(pred.predict_maps(_mesh_images(), task),
                         one_device_maps[task]):
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=task)


def test_label_components_matches_scipy():
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.default_rng(4)
  for density in (0.3, 0.55, 0.8):
    mask = rng.random((37, 53)) < density
    for conn, structure in ((4, None), (8, np.ones((3, 3)))):
      ours, n = postprocess.label_components(mask, conn)
      ref, n_ref = ndimage.label(mask, structure=structure)
      assert n == n_ref
      np.testing.assert_array_equal(ours, ref)


def test_tamper_regions_boxes():
  out = np.zeros((40, 60, 3), np.float32)
  out[..., 0] = 1  # background
  out[5:10, 8:20] = (0, 0.9, 0.1)  # real
  out[20:31, 30:41] = (0, 0.2, 0.8)  # tampered
  out[0, 59] = (0, 1, 0)  # one-pixel speck: below min_area
  regions = postprocess.tamper_regions(out, min_area=4)
  assert [(r["class"], r["box"], r["area"]) for r in regions] == [
      ("tampered", [30, 20, 40, 30], 121), ("real", [8, 5, 19, 9], 60)]
  assert regions[0]["score"] == pytest.approx(0.8)


# ---------------------------------------------------------------------- CLI


def test_cli_writes_outputs(ckpt, tmp_path):
  src = tmp_path / "in"
  (src / "sub").mkdir(parents=True)
  Image.fromarray(np.full((50, 90, 3), 200, np.uint8)).save(src / "a.png")
  Image.fromarray(np.full((33, 70, 3), 90, np.uint8)).save(src / "sub" / "b.jpg")
  (src / "notes.txt").write_text("not an image")
  single = tmp_path / "c.bmp"
  Image.fromarray(np.zeros((64, 40, 3), np.uint8)).save(single)
  out = tmp_path / "out"
  base = ["upocr-predict", "--checkpoint", os.path.dirname(ckpt),  # workdir
          str(src), str(single), "--output_dir", str(out), "--image_size",
          "64", "--batch_size", "4"]
  cli.main(base + ["--task", "text removal", "--mode", "tiled"])
  assert Image.open(out / "sub" / "b.png").size == (70, 33)
  assert Image.open(out / "c.png").size == (40, 64)
  cli.main(base + ["--task", "text segmentation"])
  mask = np.asarray(Image.open(out / "a_mask.png"))
  assert mask.shape == (50, 90) and set(np.unique(mask)) <= {0, 255}
  assert Image.open(out / "a_overlay.png").size == (90, 50)
  cli.main(base + ["--task", "tampered_text_detection"])
  assert Image.open(out / "sub" / "b_tamper.png").size == (70, 33)
  report = json.loads((out / "a_regions.json").read_text())
  assert report["image_size"] == [90, 50] and isinstance(report["regions"], list)


def test_bad_inputs(ckpt, predictor, tmp_path):
  with pytest.raises(ValueError, match="unknown task 'ocr'.*text removal"):
    predictor(np.zeros((8, 8, 3), np.uint8), "ocr")
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"definitely not a png")
  empty = tmp_path / "empty"
  empty.mkdir()
  base = ["upocr-predict", "--checkpoint", ckpt, "--task", "text removal",
          "--output_dir", str(tmp_path / "o")]
  with pytest.raises(ValueError, match="broken.png: cannot read image"):
    cli.main(base + [str(bad)])
  with pytest.raises(ValueError, match="empty: folder contains no image"):
    cli.main(base + [str(empty)])
  with pytest.raises(FileNotFoundError, match="missing.jpg: no such file"):
    cli.main(base + [str(tmp_path / "missing.jpg")])
  with pytest.raises(ValueError, match="no input"):
    cli.main(base)
  with pytest.raises(FileNotFoundError, match="neither a weight directory"):
    Predictor.from_checkpoint(str(tmp_path))
  other = helpers.tiny_config()
  other.model.encoder.embed_dim = 32
  with pytest.raises(ValueError, match="encoder.embed_dim"):
    Predictor.from_checkpoint(ckpt, config=other)
  with pytest.raises(ValueError, match="multiple of 32"):
    Predictor(predictor.model, image_size=50)
