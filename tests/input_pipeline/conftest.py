"""Small data sets in the official layouts, built once per test session."""

import pytest

from input_pipeline import write_synthetic
from tests.input_pipeline import data_helpers


@pytest.fixture(scope="session")
def lossless_roots(tmp_path_factory) -> dict:
  """Official layouts with PNG images (pixel-exact against the generator)."""
  out = tmp_path_factory.mktemp("synth_lossless")
  return write_synthetic.write_dataset(str(out), num_train=4, num_test=3,
                                       seed=3, params=data_helpers.SMALL,
                                       num_val=2, lossless=True)


@pytest.fixture(scope="session")
def jpeg_roots(tmp_path_factory) -> dict:
  """Official layouts with JPEG images, as the real data sets ship."""
  out = tmp_path_factory.mktemp("synth_jpeg")
  return write_synthetic.write_dataset(str(out), num_train=6, num_test=5,
                                       seed=4, params=data_helpers.SMALL)
