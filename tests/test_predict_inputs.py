"""upocr-predict never loses or destroys files: input/output checks up front,
image loading (bit depth, transparency, EXIF) and output names."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from tests import inference_helpers as helpers
from upocr_jax.inference import cli
from upocr_jax.inference.predictor import load_image, to_rgb_uint8


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  return helpers.random_weights_dir(tmp_path_factory.mktemp("predict_ckpt"))


def _argv(ckpt, out, *inputs, task="text removal"):
  return ["upocr-predict", "--checkpoint", ckpt, "--task", task,
          "--output_dir", str(out), "--image_size", "64", "--batch_size", "2",
          *map(str, inputs)]


def _image(path, value=120, size=(40, 30)):
  Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.fixture
def no_compute(monkeypatch):
  """Fails the test if the model is loaded (the checks must come first)."""
  def fail(*a, **k):
    raise AssertionError("the model was loaded before the check")
  monkeypatch.setattr(cli.Predictor, "from_checkpoint", fail)


def test_output_dir_that_would_overwrite_an_input_is_refused(
    ckpt, tmp_path, no_compute):
  src = tmp_path / "in"
  (src / "out").mkdir(parents=True)
  _image(src / "a.png")
  before = (src / "a.png").read_bytes()
  with pytest.raises(ValueError, match=r"would overwrite input .*a\.png"):
    cli.main(_argv(ckpt, src, src))
  assert (src / "a.png").read_bytes() == before
  # Inside the input folder: an earlier run's output is now an input.
  _image(src / "out" / "a.png")
  with pytest.raises(ValueError, match=r"would overwrite input .*out/a\.png"):
    cli.main(_argv(ckpt, src / "out", src))
  # Segmentation writes a_mask.png / a_overlay.png: nothing is overwritten.
  with pytest.raises(AssertionError, match="model was loaded"):
    cli.main(_argv(ckpt, src, src / "a.png", task="text segmentation"))


def test_unwritable_output_dir_is_one_line_before_compute(
    ckpt, tmp_path, no_compute):
  _image(tmp_path / "a.png")
  a_file = tmp_path / "file.txt"
  a_file.write_text("x")
  with pytest.raises(ValueError, match=r"file\.txt exists and is not a folder"):
    cli.main(_argv(ckpt, a_file, tmp_path / "a.png"))
  # A path under a regular file: NotADirectory, also for root.
  with pytest.raises(ValueError, match=r"file\.txt/out: cannot write there "
                     r"\(Not a directory\)"):
    cli.main(_argv(ckpt, a_file / "out", tmp_path / "a.png"))


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="root writes into read-only (chmod) folders")
def test_read_only_output_dir(ckpt, tmp_path, no_compute):
  _image(tmp_path / "a.png")
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  try:
    with pytest.raises(ValueError, match=r"ro: cannot write there"):
      cli.main(_argv(ckpt, ro, tmp_path / "a.png"))
  finally:
    ro.chmod(0o700)


def test_corrupt_images_listed_before_compute_or_skipped(ckpt, tmp_path,
                                                         monkeypatch, capsys):
  src = tmp_path / "in"
  src.mkdir()
  _image(src / "good.png")
  (src / "bad1.png").write_bytes(b"not a png")
  data = io.BytesIO()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data, "JPEG")
  (src / "bad2.jpg").write_bytes(data.getvalue()[:200])  # truncated
  real = cli.Predictor.from_checkpoint
  monkeypatch.setattr(cli.Predictor, "from_checkpoint",
                      lambda *a, **k: pytest.fail("model loaded"))
  with pytest.raises(ValueError, match=r"2 of 3 input images are unreadable.*"
                     r"bad1\.png: cannot read.*bad2\.jpg: cannot read"):
    cli.main(_argv(ckpt, tmp_path / "out", src))
  assert not os.listdir(tmp_path / "out")
  monkeypatch.setattr(cli.Predictor, "from_checkpoint", real)
  written = cli.main(_argv(ckpt, tmp_path / "out", src, "--skip_bad_images"))
  assert [os.path.basename(w) for w in written] == ["good.png"]
  out = capsys.readouterr().out
  assert "skipped 2 unreadable images" in out
  assert "bad1.png" in out and "bad2.jpg" in out


def test_same_stem_keeps_the_extension_only_when_needed(ckpt, tmp_path):
  src = tmp_path / "in"
  src.mkdir()
  _image(src / "x.webp")
  _image(src / "x.tiff", value=30)
  _image(src / "y.jpg")
  assert [s for _, s in cli.collect_inputs([str(src)])] == [
      "x.tiff", "x.webp", "y"]
  written = cli.main(_argv(ckpt, tmp_path / "out", src))
  assert sorted(os.path.basename(w) for w in written) == [
      "x.tiff.png", "x.webp.png", "y.png"]
  # The same file name from two arguments still cannot share an output.
  (tmp_path / "other").mkdir()
  _image(tmp_path / "other" / "y.jpg")
  with pytest.raises(ValueError, match="would both write output 'y.jpg'"):
    cli.collect_inputs([str(src / "y.jpg"), str(tmp_path / "other" / "y.jpg")])


def test_16_bit_grey_is_scaled_by_its_bit_depth(tmp_path):
  ramp = np.linspace(0, 65535, 64 * 16).reshape(16, 64).astype(np.uint16)
  Image.fromarray(ramp).save(tmp_path / "scan.png")
  assert Image.open(tmp_path / "scan.png").mode.startswith("I")
  x = load_image(tmp_path / "scan.png")
  assert x.shape == (16, 64, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(x[..., 0], np.round(ramp / 257).astype(np.uint8))


def test_transparency_is_composited_on_white(tmp_path):
  rgba = np.zeros((8, 8, 4), np.uint8)  # transparent black
  rgba[:4, :, :] = (255, 0, 0, 255)      # opaque red top half
  rgba[4:, :4] = (0, 0, 0, 128)          # half-transparent black
  Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
  for x in (load_image(tmp_path / "logo.png"), to_rgb_uint8(rgba),
            to_rgb_uint8(Image.fromarray(rgba, "RGBA"))):
    np.testing.assert_array_equal(x[0, 0], (255, 0, 0))
    np.testing.assert_array_equal(x[7, 7], (255, 255, 255))
    np.testing.assert_array_equal(x[7, 0], (127, 127, 127))


def test_pil_image_gets_the_exif_rotation_of_a_path(tmp_path):
  img = Image.fromarray(np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3))
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
  img.save(tmp_path / "phone.png", exif=exif)
  from_path = load_image(tmp_path / "phone.png")
  assert from_path.shape == (10, 6, 3)
  with Image.open(tmp_path / "phone.png") as pil:
    np.testing.assert_array_equal(to_rgb_uint8(pil), from_path)
