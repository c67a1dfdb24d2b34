"""Loading the official-model fixture (tests/fixtures/fixture_tiny.npz)."""

import functools
import json
import os

import ml_collections
import numpy as np

from configs import upocr as upocr_config

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures")


@functools.lru_cache(maxsize=None)
def fixture() -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURE_DIR, "fixture_tiny.npz")) as z:
    return {k: z[k] for k in z.files}


def fixture_model_config() -> ml_collections.ConfigDict:
  """config.model matching the fixture's official configuration."""
  with open(os.path.join(FIXTURE_DIR, "fixture_tiny.json")) as f:
    js = json.load(f)
  cfg = upocr_config.get_config("tiny").model
  cfg.tasks = js["tasks"]
  cfg.encoder.embed_dim = js["swin_enc_embed_dim"]
  cfg.encoder.depths = js["swin_enc_depths"]
  cfg.encoder.num_heads = js["swin_enc_num_heads"]
  cfg.encoder.window_size = js["swin_enc_window_size"]
  cfg.encoder.pretrained_window_size = js["swin_enc_pretrained_ws"]
  cfg.decoder.depths = js["swin_dec_depths"]
  cfg.decoder.num_heads = js["swin_dec_num_heads"]
  cfg.decoder.window_size = js["swin_dec_window_size"]
  cfg.decoder.pretrained_window_size = js["swin_dec_pretrained_ws"]
  return cfg


def official_state_dict() -> dict[str, np.ndarray]:
  return {k[len("param/"):]: v for k, v in fixture().items()
          if k.startswith("param/")}


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1))
