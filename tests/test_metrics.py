"""Tests of upocr_jax.evaluation.metrics on hand-computed cases and independent references."""

import math

import numpy as np
import pytest
from scipy import linalg, ndimage
from skimage.metrics import structural_similarity

from upocr_jax.evaluation import metrics as M
from upocr_jax.inference import image_ops

W = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def _pair(shape=(48, 40), noise=25.0, seed=0):
  """A smooth uint8 image and a noisy copy."""
  rng = np.random.default_rng(seed)
  gt = rng.integers(0, 256, shape + (3,)).astype(float)
  gt = ndimage.uniform_filter(gt, (5, 5, 1))
  pred = np.clip(gt + rng.normal(0, noise, gt.shape), 0, 255)
  return gt.round().astype(np.uint8), pred.round().astype(np.uint8)


# Independent SSIM: scipy's gaussian_filter (sigma 1.5, truncate 3.5 -> 11 taps)
# over the full image, then the 5-pixel border dropped = the 'valid' region.
def _ref_ssim_cs(a, b):
  f = lambda x: ndimage.gaussian_filter(x, 1.5, truncate=3.5)[5:-5, 5:-5]
  c1, c2 = (0.01 * 255)**2, (0.03 * 255)**2
  mu1, mu2 = f(a), f(b)
  v1, v2, v12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
  cs = (2 * v12 + c2) / (v1 + v2 + c2)
  return ((2 * mu1 * mu2 + c1) / (mu1**2 + mu2**2 + c1) * cs).mean(), cs.mean()


def _skimage_ssim(a, b):
  return structural_similarity(a, b, data_range=255, gaussian_weights=True,
                               sigma=1.5, use_sample_covariance=False)


def _luma(img_uint8):
  x = img_uint8.astype(np.float64) / 255
  return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]) * 255


def test_known_mse_and_psnr():
  gt = np.zeros((16, 16, 3), np.uint8)
  pred = gt.copy()
  pred[:2, :2] = 51  # 4 pixels x 3 channels at 0.2
  m = M.text_removal_metrics(pred, gt)
  assert m['mse'] == pytest.approx(4 * 3 * 0.04 / 768, rel=1e-6)  # 6.25e-4
  assert m['psnr'] == pytest.approx(10 * math.log10(1600), rel=1e-6)  # 32.04
  # float [0, 1] input gives the same numbers.
  m2 = M.text_removal_metrics(pred / 255.0, gt.astype(np.float32) / 255)
  assert m2['mse'] == pytest.approx(m['mse'], rel=1e-6)


def test_known_error_counts_and_erosion():
  h, w = 12, 10
  gt = np.full((h, w, 3), 100, np.uint8)
  pred = gt.copy()
  pred[4:7, 4:7] = 121   # 3x3 block, |dY| = 21 > 20: 9 errors, 1 survives erosion
  pred[0:3, 0:3] = 130   # corner 3x3 block, |dY| = 30: 9 errors, (1,1) survives
  pred[10, 0:6] = 60     # 1-pixel line, |dY| = 40: 6 errors, none survive
  pred[9, 9] = 120       # |dY| = 20 is not an error (strictly greater)
  m = M.text_removal_metrics(pred, gt)
  n = h * w
  assert m['peps'] == pytest.approx(24 / n)
  assert m['pceps'] == pytest.approx(2 / n)
  assert m['age'] == pytest.approx((9 * 21 + 9 * 30 + 6 * 40 + 20) / n)
  # Same survivors as scipy's binary_erosion with the 4-connected cross.
  errors = np.abs(_luma(pred) - _luma(gt)).round() > 20
  cross = ndimage.generate_binary_structure(2, 1)
  assert ndimage.binary_erosion(errors, cross).sum() == 2


def test_identical_images():
  gt, _ = _pair((24, 24))
  m = M.text_removal_metrics(gt, gt)
  assert m['mse'] == 0 and m['psnr'] == float('inf')
  assert m['mssim'] == pytest.approx(1.0, abs=1e-12) and m['peps'] == 0


@pytest.mark.parametrize('shape,seed', [((48, 40), 0), ((33, 52), 1), ((64, 64), 2)])
def test_official_mssim_is_full_resolution_product(shape, seed):
  gt, pred = _pair(shape, seed=seed)
  y_gt, y_pred = _luma(gt), _luma(pred)
  ssim, cs = _ref_ssim_cs(y_gt, y_pred)
  assert ssim == pytest.approx(_skimage_ssim(y_gt, y_pred), abs=1e-10)
  # Every level is the same full-resolution SSIM/CS: cs^(w1+..+w4) * ssim^w5.
  expected = cs**W[:4].sum() * ssim**W[4]
  assert M.ms_ssim(y_gt, y_pred, 'official') == pytest.approx(expected, abs=1e-10)
  assert M.text_removal_metrics(pred, gt)['mssim'] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('shape,seed', [((192, 192), 3), ((200, 185), 4)])
def test_standard_mssim_against_independent_multiscale(shape, seed):
  gt, pred = _pair(shape, noise=15.0, seed=seed)
  a, b = _luma(gt), _luma(pred)
  value = 1.0
  for level in range(5):
    ssim, cs = _ref_ssim_cs(a, b)
    assert ssim == pytest.approx(_skimage_ssim(a, b), abs=1e-10)
    value *= cs**W[level] if level < 4 else ssim**W[level]
    # 2x2 block mean (odd sizes: last row/col duplicated), then keep every 2nd.
    a, b = [np.pad(x, ((0, x.shape[0] % 2), (0, x.shape[1] % 2)), mode='edge')
            for x in (a, b)]
    a, b = [x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2).mean((1, 3))
            for x in (a, b)]
  got = M.ms_ssim(_luma(gt), _luma(pred), 'standard')
  assert got == pytest.approx(value, abs=1e-10)
  assert got != pytest.approx(M.ms_ssim(_luma(gt), _luma(pred), 'official'), abs=1e-4)


def test_text_removal_accumulator_skips_identical_and_fid():
  g1, p1 = _pair((24, 24), seed=5)
  g2, p2 = _pair((24, 24), seed=6)
  acc = M.TextRemovalMetrics()
  m1, m2 = acc.update(p1, g1), acc.update(p2, g2)
  acc.update(g1, g1)  # MSE 0: skipped by the official averaging
  r = acc.result()
  assert r['num_images'] == 2 and r['num_skipped_identical'] == 1
  for k in ('psnr', 'mse', 'mssim', 'age', 'peps', 'pceps'):
    assert r[k] == pytest.approx((m1[k] + m2[k]) / 2)
  assert r['mssim_mode'] == 'official'
  assert r['fid'] is None and r['fid_note'] == M.FID_NOT_COMPUTED

  # With a user-supplied extractor, FID matches a scipy.linalg.sqrtm reference.
  rng = np.random.default_rng(0)
  proj = rng.normal(size=(3, 4))
  extract = lambda img: np.concatenate(
      [img.reshape(-1, 3).mean(0) @ proj, img.std((0, 1))])
  acc = M.TextRemovalMetrics('standard', feature_extractor=extract)
  pairs = [_pair((32, 32), seed=s) for s in range(8)]
  for g, p in pairs:
    acc.update(p, g)
  f1 = np.stack([extract(p) for _, p in pairs])
  f2 = np.stack([extract(g) for g, _ in pairs])
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  ref = (np.sum((f1.mean(0) - f2.mean(0))**2) + np.trace(s1) + np.trace(s2)
         - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
  assert acc.result()['fid'] == pytest.approx(ref, rel=1e-6, abs=1e-8)
  assert acc.result()['mssim_mode'] == 'standard'


def test_to_uint8_truncates():
  x = np.array([0.0, 0.999 / 255, 1.5 / 255, 1.0, 1.2])
  np.testing.assert_array_equal(image_ops.to_uint8_like_official(x), [0, 0, 1, 255, 255])


def test_resize_bilinear_matches_torch_half_pixel_rule():
  x = np.array([[0.0, 1.0]])[..., None]
  # torch F.interpolate([0, 1] -> 4, bilinear, align_corners=False) = [0, .25, .75, 1]
  np.testing.assert_allclose(image_ops.resize_bilinear(x, 1, 4)[0, :, 0], [0, .25, .75, 1])
  y = np.arange(4.0)[None, :, None]
  # Downsampling 4 -> 2 samples at 0.5 and 2.5 (no antialiasing).
  np.testing.assert_allclose(image_ops.resize_bilinear(y, 1, 2)[0, :, 0], [0.5, 2.5])


def test_segmentation_confusion_matrix_with_ignore():
  lab = np.array([[255, 255, 0, 0],
                  [255, 128, 0, 0],
                  [0, 0, 128, 255],
                  [0, 0, 0, 255]], np.uint8)
  pred = np.zeros((4, 4, 3), np.float32)
  text = np.array([[1, 0, 1, 0],
                   [1, 1, 0, 0],
                   [0, 0, 0, 1],
                   [0, 0, 0, 0]], bool)
  pred[text] = 0.9
  pred[3, 0] = [0.4, 0.4, 0.4]  # mean exactly 0.4: not text (strict >)
  pred[0, 3] = [1.0, 0.2, 0.1]  # mean 0.433 > 0.4: text (a false positive)
  # gt text at 5 pixels, 2 ignored; TP: (0,0),(1,0),(2,3) = 3, FN: (0,1),(3,3) = 2,
  # FP: (0,2),(0,3) = 2 (the ignored (1,1) prediction does not count), TN = 7.
  acc = M.SegmentationMetrics()
  acc.update(pred, np.repeat(lab[..., None], 3, -1))  # RGB target form
  np.testing.assert_array_equal(acc.confusion_matrix, [[7, 2], [2, 3]])
  r = acc.result()
  assert r['fgIoU'] == pytest.approx(3 / 7)
  assert r['precision'] == pytest.approx(3 / 5) and r['recall'] == pytest.approx(3 / 5)
  assert r['F'] == pytest.approx(3 / 5)
  # The HxW form and float labels give the same matrix; updates accumulate.
  acc.update((pred * 255).round().astype(np.uint8), lab.astype(np.float32) / 255)
  np.testing.assert_array_equal(acc.confusion_matrix, [[14, 4], [4, 6]])
  # A higher threshold turns the 0.433 pixel into background.
  acc = M.SegmentationMetrics(threshold=0.5)
  acc.update(pred, lab)
  np.testing.assert_array_equal(acc.confusion_matrix, [[8, 1], [2, 3]])


def test_segmentation_resizes_prediction_to_label():
  lab = np.zeros((4, 4), np.uint8)
  lab[:, 2:] = 255
  pred = np.zeros((1, 2, 3), np.float32)
  pred[0, 1] = 1.0  # upsampled columns: 0, .25, .75, 1 -> text at columns 2, 3
  acc = M.SegmentationMetrics()
  acc.update(pred, lab)
  np.testing.assert_array_equal(acc.confusion_matrix, [[8, 0], [0, 8]])
  assert acc.result()['fgIoU'] == 1.0


def test_tamper_confusion_matrix_with_ignore():
  R, G, B, GREY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128)
  lab = np.array([[R, R, G, G],
                  [R, GREY, G, B],
                  [B, B, B, R]], np.uint8)
  pred = np.array([[R, G, G, G],
                   [R, B, B, B],
                   [B, B, R, R]], np.float32) / 255
  acc = M.TamperMetrics()
  acc.update(pred, lab)
  # rows gt (bg, real, tampered), cols pred.
  cm = [[3, 1, 0], [0, 2, 1], [1, 0, 3]]
  np.testing.assert_array_equal(acc.confusion_matrix, cm)
  r = acc.result()
  assert r['background_IoU'] == pytest.approx(3 / 5)  # TP / (row + col - TP)
  assert r['real_IoU'] == pytest.approx(2 / 4)
  assert r['real_precision'] == pytest.approx(2 / 3)
  assert r['real_recall'] == pytest.approx(2 / 3)
  assert r['tampered_IoU'] == pytest.approx(3 / 5)
  assert r['tampered_precision'] == pytest.approx(3 / 4)
  assert r['tampered_recall'] == pytest.approx(3 / 4)
  assert r['mean_IoU'] == pytest.approx((2 / 4 + 3 / 5) / 2)
  assert r['mean_F'] == pytest.approx((2 / 3 + 3 / 4) / 2)
  # The HxW class-map form (255 = ignore) gives the same matrix.
  acc = M.TamperMetrics()
  acc.update(pred, np.array([[0, 0, 1, 1], [0, 255, 1, 2], [2, 2, 2, 0]], np.uint8))
  np.testing.assert_array_equal(acc.confusion_matrix, cm)


def test_tamper_mean_skips_absent_class():
  lab = np.zeros((2, 2, 3), np.uint8)
  lab[..., 0] = 255
  lab[0, 0] = (0, 255, 0)
  acc = M.TamperMetrics()
  acc.update(lab, lab)  # no tampered pixels anywhere: its scores are NaN
  r = acc.result()
  assert math.isnan(r['tampered_IoU']) and r['mean_IoU'] == 1.0


_IMG = np.zeros((8, 8, 3), np.uint8)


@pytest.mark.parametrize('pred,gt,match', [
    (_IMG[..., 0], _IMG, 'pred must be an HxWx3'),
    (_IMG.astype(np.int32), _IMG, 'pred must be uint8'),
    (np.full((8, 8, 3), 1.5), _IMG, r'pred is float but not in \[0, 1\]'),
    (_IMG, np.full((8, 8, 3), np.nan), 'gt contains NaN'),
    (_IMG, np.zeros((8, 9, 3), np.uint8), 'same shape'),
])
def test_text_removal_errors(pred, gt, match):
  with pytest.raises(ValueError, match=match):
    M.text_removal_metrics(pred, gt)


def test_other_errors():
  img = np.zeros((8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match='mssim_mode'):
    M.text_removal_metrics(img, img, mssim_mode='fast')
  with pytest.raises(ValueError, match='threshold'):
    M.SegmentationMetrics(threshold=2)
  with pytest.raises(ValueError, match='label must be HxW'):
    M.SegmentationMetrics().update(img, np.zeros((8, 8, 2), np.uint8))
  with pytest.raises(ValueError, match='label must be uint8'):
    M.SegmentationMetrics().update(img, np.zeros((8, 8), np.int16))
  with pytest.raises(ValueError, match='label must be HxWx3'):
    M.TamperMetrics().update(img, np.zeros((8, 8), np.float32))
  with pytest.raises(ValueError, match='pred must be an HxWx3'):
    M.TamperMetrics().update(img[..., :2], img)


def _assert_same_results(got, want):
  assert got.keys() == want.keys()
  for k, v in want.items():
    if isinstance(v, float):
      assert got[k] == pytest.approx(v, rel=1e-12, nan_ok=True), k
    else:
      assert got[k] == v, k


@pytest.mark.parametrize('cls', [M.TextRemovalMetrics, M.SegmentationMetrics,
                                 M.TamperMetrics])
def test_merge_equals_one_pass(cls):
  rng = np.random.default_rng(7)
  pairs = [(rng.integers(0, 256, (16, 16, 3), np.uint8),
            rng.integers(0, 256, (16, 16, 3), np.uint8)) for _ in range(5)]
  whole, first, rest = cls(), cls(), cls()
  for i, (pred, gt) in enumerate(pairs):
    whole.update(pred, gt)
    (first if i < 2 else rest).update(pred, gt)
  want = whole.result()
  by_counts = cls()
  for pred, gt in pairs[:2]:
    by_counts.update(pred, gt)
  # Its counts, as gathered from other processes.
  by_counts.merge(rest.counts())
  _assert_same_results(by_counts.result(), want)
  first.merge(rest)  # another accumulator
  _assert_same_results(first.result(), want)
