"""FID: the Inception network against pytorch-fid, its loader, and eval with it.

The network is checked against features that pytorch-fid 0.3.0 computed for
seeded random weights and images (tests/fixtures/inception_ref.npz, written by
tests/fixtures/make_inception_ref.py); the weights and images are regenerated
here in numpy, so no torch is needed.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from input_pipeline import pipeline
from tests import inference_helpers as helpers
from upocr_jax.evaluation import cli as eval_cli
from upocr_jax.evaluation import evaluate
from upocr_jax.evaluation import fid
from upocr_jax.evaluation import metrics
from upocr_jax.inference import image_ops
from upocr_jax.weights import inception_weights

# One xdist worker: the tests share the jit-compiled network and the weights.
pytestmark = pytest.mark.xdist_group("fid")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def _load_generator():
  # Loaded by path: a top-level "fixtures" name could be another package.
  spec = importlib.util.spec_from_file_location(
      "make_inception_ref", os.path.join(FIXTURES, "make_inception_ref.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


gen = _load_generator()


@pytest.fixture(scope="module")
def state_dict():
  return gen.random_state_dict()


@pytest.fixture(scope="module")
def extractor(state_dict):
  return fid.InceptionFeatureExtractor(state_dict, batch_size=2)


@pytest.fixture(scope="module")
def weights_npz(state_dict, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "inception_fid.npz"
  np.savez(path, **state_dict)
  return str(path)


@pytest.fixture(scope="module")
def reference():
  with np.load(os.path.join(FIXTURES, "inception_ref.npz")) as z:
    return {k: z[k] for k in z.files}


def test_regenerated_inputs_match_the_fixture(state_dict, reference):
  # Otherwise a change in numpy's random streams would look like a network bug.
  total = sum(float(np.abs(v).astype(np.float64).sum())
              for v in state_dict.values())
  assert total == pytest.approx(float(reference["weights_checksum"]), rel=1e-12)
  assert sum(int(gen.make_images(c).astype(np.int64).sum())
             for c in gen.IMAGE_SHAPES) == int(reference["images_checksum"])


@pytest.mark.parametrize("case", sorted(gen.IMAGE_SHAPES))
def test_features_match_pytorch_fid(extractor, reference, case):
  # 'up': 53x71 images upsampled to 299; 'down': 347x311 downsampled.
  ours = extractor.extract_batch(list(gen.make_images(case)))
  ref = reference[f"features_{case}"]
  assert ours.shape == ref.shape == (2, 2048)
  # Float32 rounding only; the measured error is in docs/results.md.
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-5)


def test_live_against_pytorch_fid(extractor, state_dict):
  pytest.importorskip("pytorch_fid")
  images = gen.make_images("up", seed=7)
  ref = gen.reference_features(state_dict, images)
  np.testing.assert_allclose(extractor.extract_batch(list(images)), ref,
                             rtol=1e-4, atol=2e-5)


def test_preprocess_is_torch_bilinear_then_scaled():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (1, 20, 31, 3), np.uint8)
  expected = image_ops.resize_bilinear(img[0].astype(np.float32) / 255, 299, 299)
  np.testing.assert_allclose(np.asarray(fid.preprocess(img))[0],
                             2 * expected - 1, atol=1e-6)
  # Already 299x299: only the scaling, as F.interpolate to the same size.
  same = rng.integers(0, 256, (1, 299, 299, 3), np.uint8)
  np.testing.assert_array_equal(np.asarray(fid.preprocess(same)),
                                2 * (same.astype(np.float32) / 255) - 1)


def test_batching_and_identical_sets(extractor):
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, (40, 48, 3), np.uint8) for _ in range(3)]
  feats = extractor.extract_batch(images)  # batches of 2, then 1 (padded)
  # The same features alone as inside a batch.
  np.testing.assert_allclose(extractor(images[0]), feats[0], rtol=1e-5,
                             atol=1e-6)
  acc = metrics.TextRemovalMetrics(feature_extractor=extractor)
  for img in images:
    acc.update(img, img)
  pred_feats, gt_feats = acc.features()
  np.testing.assert_allclose(pred_feats, feats, rtol=1e-6)
  np.testing.assert_array_equal(pred_feats, gt_feats)
  r = acc.result()
  assert r["fid"] == pytest.approx(0, abs=1e-6) and r["fid_note"] == ""
  assert r["num_skipped_identical"] == 3  # skipped by the averages, not FID


def test_fid_command_on_two_folders(weights_npz, extractor, tmp_path, capsys):
  rng = np.random.default_rng(4)
  for d in ("a", "b"):
    os.makedirs(tmp_path / d)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(
          tmp_path / d / f"{i}.png")
  value = fid.main(["fid", f"--inception_weights={weights_npz}",
                    "--batch_size=2", str(tmp_path / "a"), str(tmp_path / "b")])
  assert f"FID: {value}" in capsys.readouterr().out
  assert value == pytest.approx(fid.fid_of_folders(
      str(tmp_path / "a"), str(tmp_path / "b"), extractor), rel=1e-5)
  with pytest.raises(ValueError, match="two image folders"):
    fid.main(["fid", f"--inception_weights={weights_npz}", str(tmp_path)])


def test_fewer_than_two_images_is_not_a_number():
  acc = metrics.TextRemovalMetrics(feature_extractor=lambda img: img.mean((0, 1)))
  img = np.zeros((8, 8, 3), np.uint8)
  acc.update(img, img + 1)
  r = acc.result()
  assert r["fid"] is None and "at least two" in r["fid_note"]


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.pop("Mixed_6b.branch7x7_2.conv.weight"),
     "missing (1): Mixed_6b.branch7x7_2.conv.weight"),
    (lambda d: d.__setitem__("Mixed_5b.bn.extra", np.zeros(3, np.float32)),
     "unexpected (1): Mixed_5b.bn.extra"),
    (lambda d: d.__setitem__("Conv2d_1a_3x3.bn.running_var",
                             np.ones(31, np.float32)),
     "mis-shaped (1): Conv2d_1a_3x3.bn.running_var (checkpoint (31,), model "
     "expects (32,))"),
    (lambda d: d.__setitem__("Mixed_7c.branch_pool.conv.weight",
                             np.ones((192, 2048, 3, 3), np.float32)),
     "Mixed_7c.branch_pool.conv.weight (checkpoint (192, 2048, 3, 3), model "
     "expects (192, 2048, 1, 1))"),
    (lambda d: d.__setitem__("fc.weight", np.zeros((1000, 1), np.float32)),
     "fc.weight has 1000 classes"),
])
def test_bad_keys_are_named(state_dict, edit, needle):
  bad = dict(state_dict)
  edit(bad)
  with pytest.raises(ValueError) as e:
    inception_weights.load_inception(bad)
  assert needle in str(e.value)


def test_unused_keys_are_ignored_and_bad_files_named(state_dict, tmp_path,
                                                     monkeypatch):
  extra = dict(state_dict, **{"fc.weight": np.zeros((1008, 1), np.float32),
                              "fc.bias": np.zeros(1008, np.float32),
                              "Mixed_5b.branch1x1.bn.num_batches_tracked":
                                  np.zeros((), np.int64)})
  inception_weights.load_inception(extra)  # the real file's extra keys are fine
  bad = tmp_path / "weights.h5"
  bad.write_bytes(b"")
  with pytest.raises(ValueError, match=r"weights.h5: unknown format '.h5'"):
    fid.InceptionFeatureExtractor(str(bad))
  with pytest.raises(FileNotFoundError, match="nothing.npz"):
    fid.InceptionFeatureExtractor(str(tmp_path / "nothing.npz"))
  pth = tmp_path / "pt_inception.pth"
  pth.write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
  with pytest.raises(ImportError, match=r"needs torch.*--inception .*"
                     r"pt_inception.pth --out inception_fid.npz"):
    inception_weights.load_inception(str(pth))


def test_pth_loads_and_converts(state_dict, tmp_path):
  torch = pytest.importorskip("torch")
  sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  sd.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
  torch.save(sd, tmp_path / "pt_inception.pth")
  n = inception_weights.convert_inception(tmp_path / "pt_inception.pth",
                                tmp_path / "inception.npz")
  assert n == len(state_dict)
  with np.load(tmp_path / "inception.npz") as z:
    assert sorted(z.files) == sorted(state_dict)
    for k in z.files:
      np.testing.assert_array_equal(z[k], state_dict[k])
  with pytest.raises(FileExistsError):
    inception_weights.convert_inception(tmp_path / "pt_inception.pth",
                              tmp_path / "inception.npz")


def test_convert_cli(weights_npz, state_dict, tmp_path):
  out = tmp_path / "inception.safetensors"
  proc = subprocess.run(
      [sys.executable, "-m", "upocr_jax.weights.convert", f"--inception={weights_npz}",
       f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "FID Inception" in proc.stdout
  model = inception_weights.load_inception(str(out))
  got = inception_weights.inception_state_dict(model)
  assert sorted(got) == sorted(state_dict)
  np.testing.assert_array_equal(got["Mixed_7c.branch_pool.conv.weight"],
                                state_dict["Mixed_7c.branch_pool.conv.weight"])


def test_eval_cli_reports_fid_of_the_saved_pngs(weights_npz, extractor,
                                               tmp_path, capsys):
  root = tmp_path / "run"
  helpers.random_weights_dir(root)
  out = tmp_path / "eval"
  eval_cli.main([
      "upocr-eval", "--config=configs/upocr.py:tiny",
      "--config.data.synthetic.num_eval=5", "--max_examples", "3",
      "--checkpoint", str(root),
      "--dataset", "synthetic", "--task", "text removal",
      "--inception_weights", weights_npz, "--fid_batch_size", "2",
      "--save_predictions", "--output_dir", str(out)])
  report = json.loads((out / "metrics.json").read_text())
  removal = report["results"]["text removal"]
  assert math.isfinite(removal["fid"]) and removal["fid"] > 0
  assert removal["fid_note"] == ""
  assert report["inception_weights"] == os.path.abspath(weights_npz)
  table = capsys.readouterr().out
  assert any(line.split()[2:3] == ["fid"] for line in table.splitlines())
  # pytorch-fid on the saved prediction PNGs and the ground truths as files
  # gives the same number.
  gt_dir = tmp_path / "gt"
  gt_dir.mkdir()
  for batch in pipeline.create_eval_iterator(helpers.tiny_config(), 0,
                                            max_examples=3):
    for i in np.nonzero(batch["example_mask"])[0]:
      gt = np.asarray(batch["target"][i])
      if gt.dtype != np.uint8:  # as TextRemovalMetrics quantises it
        gt = np.round(np.clip(gt, 0, 1) * 255).astype(np.uint8)
      name = evaluate._stem(batch["name"][i])  # pylint: disable=protected-access
      Image.fromarray(gt).save(gt_dir / (name + ".png"))
  pred_dir = str(out / "predictions" / "text_removal")
  assert len(fid.list_images(pred_dir)) == len(fid.list_images(str(gt_dir))) == 3
  assert fid.fid_of_folders(pred_dir, str(gt_dir), extractor) == pytest.approx(
      removal["fid"], rel=1e-5)


def test_fid_merges_over_processes(monkeypatch):
  # Process 0 holds two feature rows per set, the simulated process 1 one.
  other = np.full((1, 3), 5.0)

  def allgather(x):
    x = np.asarray(x)
    if x.ndim == 2:  # padded feature rows
      o = np.zeros_like(x)
      o[:len(other)] = other
      return np.stack([x, o])
    if x.dtype == np.int64 and x.shape == (2,):  # their shapes
      return np.stack([x, np.asarray(other.shape)])
    return np.stack([x, x])  # sums and counts
  monkeypatch.setattr(evaluate.jax, "process_count", lambda: 2)
  monkeypatch.setattr(evaluate.multihost_utils, "process_allgather", allgather)
  acc = metrics.TextRemovalMetrics(
      feature_extractor=lambda img: img.mean((0, 1)).astype(np.float64))
  acc.update(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8))
  acc.update(np.ones((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
  evaluate._merge_processes(acc)  # pylint: disable=protected-access
  pred_feats, gt_feats = acc.features()
  np.testing.assert_array_equal(pred_feats, [[0, 0, 0], [1, 1, 1], [5, 5, 5]])
  np.testing.assert_array_equal(gt_feats, [[1, 1, 1], [0, 0, 0], [5, 5, 5]])
  assert acc.result()["fid"] == pytest.approx(metrics.frechet_distance(
      pred_feats, gt_feats))


@pytest.mark.parametrize("n1,n2,d", [(5, 7, 64), (40, 30, 6)])
def test_frechet_distance_both_paths_match_sqrtm(n1, n2, d):
  # (5, 7, 64): fewer images than dimensions (the SVD of A B^T); (40, 30, 6):
  # the D x D eigendecomposition.
  linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(n1)
  f1 = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
  f2 = rng.normal(size=(n2, d)) @ rng.normal(size=(d, d)) + 0.5
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  ref = (np.sum((f1.mean(0) - f2.mean(0))**2) + np.trace(s1) + np.trace(s2)
         - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
  assert metrics.frechet_distance(f1, f2) == pytest.approx(ref, rel=1e-6)
  assert metrics.frechet_distance(f1, f1) == pytest.approx(0, abs=1e-6 * ref)
