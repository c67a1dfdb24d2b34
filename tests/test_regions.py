"""Prediction restricted to a region: weights, boxes, masks, Predictor, CLI."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests import inference_helpers as helpers
from upocr_jax import cli_flags
from upocr_jax.inference import cli
from upocr_jax.inference import postprocess
from upocr_jax.inference import regions
from upocr_jax.inference.predictor import Predictor

TASKS = ("text removal", "tampered text detection", "text segmentation")
H, W = 70, 150
BOX = [30, 10, 110, 50]  # x1, y1, x2, y2: columns 30..109, rows 10..49.


class _Invert(nnx.Module):
  """Stands in for UPOCR: 1 - input, an output far from the input everywhere
  (so "unchanged outside the region" is not true by accident)."""

  def __init__(self):
    self.config = type("Cfg", (), {"tasks": list(TASKS)})()

  def __call__(self, images, task_ids):
    del task_ids
    out = 1.0 - images
    return out, out, out


def _image():
  """Random texture plus solid blocks whose inverses are clear tamper classes
  (magenta -> real, yellow -> tampered), inside, outside and across BOX."""
  img = np.random.default_rng(0).integers(0, 256, (H, W, 3), np.uint8)
  img[:, :] = np.maximum(img, 0) // 4 + np.array([0, 190, 190], np.uint8)
  img[20:40, 40:70] = (255, 0, 255)     # inside: real
  img[15:45, 90:130] = (255, 255, 0)    # across the right edge: tampered
  img[55:68, 5:40] = (255, 0, 255)      # outside: real
  return img


@pytest.fixture(scope="module", params=["resize", "tiled"])
def invert_predictor(request):
  return Predictor(_Invert(), image_size=64, mode=request.param, batch_size=8,
                   overlap=16, min_region_area=4)


# ------------------------------------------------------------------ weights


def test_feather_ramps_inside_the_border_only():
  mask = regions.boxes_mask([BOX], H, W)
  assert mask.sum() == 80 * 40 and mask[10, 30] and not mask[50, 110]
  w = regions.feather_weights(mask, 3)
  np.testing.assert_array_equal(w > 0, mask)  # Nothing leaks outside.
  ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, 4) / 4)
  np.testing.assert_allclose(w[30, 30:34], [*ramp, 1.0], atol=1e-6)
  np.testing.assert_allclose(w[10:14, 70], [*ramp, 1.0], atol=1e-6)
  assert w[13:47, 33:107].min() == 1.0
  np.testing.assert_array_equal(regions.feather_weights(mask, 0), mask)
  # The image's edge is no border: a box touching it is fully on up to it.
  edge = regions.feather_weights(regions.boxes_mask([[0, 0, 20, 20]], H, W), 3)
  assert edge[0, 0] == 1.0 and edge[0, 16] == 1.0 and edge[0, 19] < 0.2
  with pytest.raises(ValueError, match="feather must be >= 0"):
    regions.feather_weights(mask, -1)


def test_boxes_from_strings_and_json(tmp_path):
  assert regions.parse_boxes(" 1,2,3,4; 5.5,6,7,8;") == [[1, 2, 3, 4],
                                                         [5.5, 6, 7, 8]]
  path = tmp_path / "boxes.json"
  path.write_text(json.dumps([[0, 0, 10, 5], [2, 2, 4, 4]]))
  assert regions.parse_boxes(str(path)) == [[0, 0, 10, 5], [2, 2, 4, 4]]
  # Fractional boxes cover every pixel they touch.
  m = regions.boxes_mask([[1.5, 0.2, 3.1, 1]], 4, 5)
  np.testing.assert_array_equal(np.nonzero(m[0])[0], [1, 2, 3])
  assert not m[1:].any()


@pytest.mark.parametrize("spec, message", [
    ("1,2,3", r"--boxes: box \[1, 2, 3\] is not \[x1, y1, x2, y2\]"),
    ("1,2,x,4", r"--boxes: '1,2,x,4' is not 'x1,y1,x2,y2'"),
    ("5,0,5,4", r"--boxes: box \[5, 0, 5, 4\] is empty: need x2 > x1"),
    ("0,9,5,4", r"--boxes: box \[0, 9, 5, 4\] is empty"),
    ("1,2,3,nan", r"--boxes: box .* \(four finite numbers\)"),
    (" ", r"--boxes: no box given"),
])
def test_malformed_boxes_name_the_flag(spec, message):
  with pytest.raises(ValueError, match=message):
    regions.parse_boxes(spec, "--boxes")


def test_bad_box_files_and_outside_boxes(tmp_path):
  with pytest.raises(FileNotFoundError, match="--boxes: .*nope.json: no such"):
    regions.parse_boxes(str(tmp_path / "nope.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="--boxes: .*bad.json: not a JSON"):
    regions.parse_boxes(str(bad))
  bad.write_text(json.dumps({"boxes": []}))
  with pytest.raises(ValueError, match="expected a list of"):
    regions.parse_boxes(str(bad))
  for box in ([-1, 0, 5, 5], [0, 0, W + 1, 5], [0, 0, 5, H + 1]):
    with pytest.raises(ValueError, match=f"--boxes: box .* is outside the "
                       f"{W}x{H} image"):
      regions.region_weights([box], H, W, name="--boxes")
  assert regions.region_weights([[0, 0, W, H]], H, W, 0).min() == 1.0


def test_masks_from_files_arrays_and_pil(tmp_path):
  want = np.zeros((H, W), bool)
  want[5:20, 7:60] = True
  rgb = np.zeros((H, W, 3), np.uint8)
  rgb[want] = (0, 0, 1)  # Any non-zero channel counts, however dark.
  Image.fromarray(rgb).save(tmp_path / "m.png")
  Image.fromarray(want).save(tmp_path / "m1.png")  # mode "1"
  for region in (str(tmp_path / "m.png"), tmp_path / "m1.png", rgb,
                 want.astype(np.float32), Image.fromarray(rgb)):
    np.testing.assert_array_equal(regions.region_mask(region, H, W), want)
  assert regions.region_mask(None, H, W) is None
  with pytest.raises(ValueError, match=r"--region_mask: mask .*m.png is "
                     r"150x70, the image 151x70"):
    regions.region_mask(str(tmp_path / "m.png"), H, W + 1, "--region_mask")
  (tmp_path / "junk.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="--region_mask: .*junk.png: cannot "
                     "read mask"):
    regions.load_mask(tmp_path / "junk.png", "--region_mask")


def test_blend_is_exact_outside_and_inside():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (H, W, 3), np.uint8)
  pred = rng.integers(0, 256, (H, W, 3), np.uint8)
  w = regions.region_weights([BOX], H, W, 3)
  out = regions.blend_removal(pred, image, w)
  np.testing.assert_array_equal(out[w == 0], image[w == 0])
  np.testing.assert_array_equal(out[w == 1], pred[w == 1])
  lo, hi = np.minimum(pred, image), np.maximum(pred, image)
  assert np.all((out >= lo) & (out <= hi))


# ---------------------------------------------------------------- Predictor


def test_removal_only_in_region(invert_predictor):
  img = _image()
  full = invert_predictor(img, "text removal")
  assert np.abs(full.astype(int) - img).mean() > 50  # The model does change it.
  out = invert_predictor(img, "text removal", region=[BOX], feather=3)
  w = regions.region_weights([BOX], H, W, 3)
  np.testing.assert_array_equal(out[w == 0], img[w == 0])
  np.testing.assert_array_equal(out[w == 1], full[w == 1])
  ramp = (w > 0) & (w < 1)
  lo, hi = np.minimum(full, img), np.maximum(full, img)
  assert np.all((out[ramp] >= lo[ramp]) & (out[ramp] <= hi[ramp]))
  # A mask file gives the same result as the boxes it draws; feather 0 is a
  # hard edge; an empty region changes nothing.
  mask = regions.boxes_mask([BOX], H, W)
  np.testing.assert_array_equal(
      invert_predictor(img, "text removal", region=mask * 255), out)
  hard = invert_predictor(img, "text removal", region=[BOX], feather=0)
  np.testing.assert_array_equal(hard[mask], full[mask])
  np.testing.assert_array_equal(hard[~mask], img[~mask])
  np.testing.assert_array_equal(
      invert_predictor(img, "text removal", region=[]), img)


def test_segmentation_and_tamper_only_in_region(invert_predictor):
  img = _image()
  mask = regions.boxes_mask([BOX], H, W)
  full_seg = invert_predictor(img, "text segmentation")
  assert full_seg[~mask].max() > 0
  seg = invert_predictor(img, "text segmentation", region=[BOX])
  assert seg[~mask].max() == 0
  np.testing.assert_array_equal(seg[mask], full_seg[mask])

  full_map, full_regions = invert_predictor(img, "tampered text detection")
  assert any(r["box"][0] < BOX[0] for r in full_regions)  # The outside block.
  tmap, found = invert_predictor(img, "tampered text detection", region=[BOX])
  classes = postprocess.tamper_classes(tmap)
  assert not classes[~mask].any()  # Background outside.
  np.testing.assert_array_equal(classes[mask],
                                postprocess.tamper_classes(full_map)[mask])
  assert {r["class"] for r in found} == {"real", "tampered"}
  for r in found:
    x0, y0, x1, y1 = r["box"]
    assert BOX[0] <= x0 <= x1 < BOX[2] and BOX[1] <= y0 <= y1 < BOX[3]


def test_predict_batch_regions_per_image(invert_predictor):
  img = _image()
  small = img[:40, :60].copy()
  outs = invert_predictor.predict_batch([img, small], "text removal",
                                        [[BOX], None])
  np.testing.assert_array_equal(outs[0][0, 0], img[0, 0])
  assert np.abs(outs[1].astype(int) - small).mean() > 50  # No region: all.
  with pytest.raises(ValueError, match="region_list has 1 entries for 2"):
    invert_predictor.predict_batch([img, small], "text removal", [None])
  with pytest.raises(ValueError, match="region: box .* outside the 60x40"):
    invert_predictor.predict_batch([small], "text removal", [[BOX]])


# ---------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return helpers.random_weights_dir(tmp_path_factory.mktemp("regions_ckpt"))


def test_cli_boxes_and_mask_folder(ckpt, tmp_path):
  src = tmp_path / "in"
  (src / "sub").mkdir(parents=True)
  a, b = _image(), _image()[:50, :90].copy()
  Image.fromarray(a).save(src / "a.png")
  Image.fromarray(b).save(src / "sub" / "b.png")
  out = tmp_path / "out"
  base = ["upocr-predict", "--checkpoint", ckpt, str(src), "--output_dir",
          str(out), "--image_size", "64", "--batch_size", "4"]
  cli.main(base + ["--task", "text removal", "--mode", "tiled",
                   "--boxes", "30,10,80,40;0,0,5,5", "--feather", "2"])
  mask = regions.boxes_mask([[30, 10, 80, 40], [0, 0, 5, 5]], H, W)
  got = np.asarray(Image.open(out / "a.png"))
  np.testing.assert_array_equal(got[~mask], a[~mask])
  assert np.any(got[mask] != a[mask])  # Random weights do change the inside.

  masks = tmp_path / "masks"
  (masks / "sub").mkdir(parents=True)
  Image.fromarray(mask).save(masks / "a.png")
  mb = np.zeros(b.shape[:2], bool)
  mb[10:30, 20:60] = True
  Image.fromarray(mb.astype(np.uint8) * 200).save(masks / "sub" / "b.bmp")
  cli.main(base + ["--task", "text segmentation", "--region_mask",
                   str(masks)])
  seg = np.asarray(Image.open(out / "sub" / "b_mask.png"))
  assert not seg[~mb].any()
  overlay = np.asarray(Image.open(out / "sub" / "b_overlay.png"))
  np.testing.assert_array_equal(overlay[~mb], b[~mb])
  cli.main(base + ["--task", "tampered text detection", "--region_mask",
                   str(masks)])
  report = json.loads((out / "a_regions.json").read_text())
  for r in report["regions"]:
    x0, y0, x1, y1 = r["box"]
    assert mask[y0:y1 + 1, x0:x1 + 1].any()
  tamper = np.asarray(Image.open(out / "a_tamper.png"))
  np.testing.assert_array_equal(tamper[~mask], [[255, 0, 0]] * (~mask).sum())


def test_cli_region_errors(ckpt, tmp_path):
  img = tmp_path / "a.png"
  Image.fromarray(_image()).save(img)
  other = tmp_path / "other.png"
  Image.fromarray(np.zeros((20, 20), np.uint8)).save(other)
  base = ["upocr-predict", "--checkpoint", ckpt, "--task", "text removal",
          "--output_dir", str(tmp_path / "o"), "--image_size", "64", str(img)]
  with pytest.raises(cli_flags.UsageError, match="--boxes or --region_mask"):
    cli.main(base + ["--boxes", "0,0,5,5", "--region_mask", str(other)])
  with pytest.raises(cli_flags.UsageError, match="--feather must be >= 0"):
    cli.main(base + ["--boxes", "0,0,5,5", "--feather", "-1"])
  with pytest.raises(ValueError, match="--boxes: '0,0,5' is not|--boxes: box"):
    cli.main(base + ["--boxes", "0,0,5"])
  with pytest.raises(ValueError, match=r"--boxes on .*a.png: box \[0, 0, 151, "
                     r"5\] is outside the 150x70 image"):
    cli.main(base + ["--boxes", "0,0,151,5"])
  with pytest.raises(ValueError, match=r"--region_mask on .*a.png: mask is "
                     r"20x20, the image 150x70"):
    cli.main(base + ["--region_mask", str(other)])
  with pytest.raises(FileNotFoundError, match="--region_mask: .*missing.png: "
                     "no such file or folder"):
    cli.main(base + ["--region_mask", str(tmp_path / "missing.png")])
  empty = tmp_path / "masks"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match="--region_mask: no mask for 'a'"):
    cli.main(base + ["--region_mask", str(empty)])


def test_help_lists_region_flags():
  text = cli_flags.entry_help(cli.__doc__, cli.define_flags)
  for flag in ("--boxes:", "--region_mask:", "--feather:", "Only in a region"):
    assert flag in text
