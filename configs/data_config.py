"""Data fields of the UPOCR configs (``config.data``).

``get_data_config('paper')``: the paper's data sets and recipe (SCUT-EnsText,
Tampered-IC13, TextSeg train+val; 512x512; 16 images per task per global batch;
the official augmentations). ``get_data_config('tiny')``: synthetic data at
64x64, 6 text-removal and 3 + 3 other images per batch, no worker processes:
for tests and the CPU demo.

Per task (``config.data.text_removal``, ``.tampered_text_detection``,
``.text_segmentation``):

* ``source``: 'folder' (official layout under ``root``), 'tfds' (ArrayRecord
  written by input_pipeline/sources/tfds_builders.py under ``tfds_data_dir``) or
  'synthetic' (generated on the fly, see ``config.data.synthetic``).
* ``train_splits`` / ``eval_splits``: folder splits (TextSeg: split.json keys;
  SCUT-EnsText: sub-folders; Tampered-IC13: ``{split}_img`` prefixes).
* ``batch_size``: examples of this task in every GLOBAL batch; must divide by the
  number of data shards. ``shuffle_seed``: this task's shuffle seed.
* augmentation: ``crop_prob`` with ``crop_min_ratio``/``crop_max_ratio`` (per
  side), ``hflip_prob``, ``jitter_prob`` with ``brightness``/``contrast``/
  ``saturation``/``hue``, ``rotate_prob`` with ``rotate_max_angle`` (degrees).
"""

import ml_collections

from upocr_jax import tasks


def _task(root: str, train_splits, eval_splits, tfds_name: str,
          shuffle_seed: int, **augment) -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.source = "folder"
  t.root = root
  t.train_splits = list(train_splits)
  t.eval_splits = list(eval_splits)
  t.tfds_name = tfds_name
  t.batch_size = 16
  t.shuffle_seed = shuffle_seed
  aug = dict(crop_prob=0.0, crop_min_ratio=1.0, crop_max_ratio=1.0,
             hflip_prob=0.0, jitter_prob=0.0, brightness=0.0, contrast=0.0,
             saturation=0.0, hue=0.0, rotate_prob=0.0, rotate_max_angle=0.0)
  aug.update(augment)
  for k, v in aug.items():
    setattr(t, k, float(v))
  return t


def get_data_config(variant: str) -> ml_collections.ConfigDict:
  """Returns ``config.data`` for a variant ('paper' or 'tiny')."""
  if variant not in ("paper", "tiny"):
    raise ValueError(f"configs/data_config.py: unknown variant {variant!r}; "
                     "expected one of 'paper', 'tiny'")
  d = ml_collections.ConfigDict()
  d.image_size = 512
  # 'uint8' (0..255; the model divides by 255) or 'float32' (already in [0, 1])
  # for `image` and `target`; `text_mask` follows (0/1).
  d.image_dtype = "uint8"
  d.seed = 0  # Base seed of the augmentations (per task and process derived).
  # Host-side parallelism: grain worker processes (0 = in the main process),
  # threads per process, elements prefetched per thread pool / per worker.
  d.worker_count = 8
  d.worker_buffer_size = 16
  d.read_threads = 2
  d.prefetch_buffer_size = 32
  # Bad examples: False raises (naming the file); True skips them, logging
  # each: training takes the next good example instead, evaluation leaves
  # them out and reports them (num_skipped, skipped).
  d.skip_bad_examples = False
  # Compare image/label/mask sizes from file headers before training starts.
  d.check_sizes = True
  d.tfds_data_dir = "data/tfds"
  d.eval_batch_size = 8  # Global, per task; the last batch is padded.

  d.text_removal = _task("data/TextRemoval/SCUT-ENS", ["train"], ["test"],
                         "scut_enstext", shuffle_seed=100,
                         hflip_prob=0.3, rotate_prob=0.5, rotate_max_angle=30)
  d.tampered_text_detection = _task(
      "data/TamperedTextDetection/Tampered-IC13", ["train"], ["test"],
      "tampered_ic13", shuffle_seed=101,
      crop_prob=1.0, crop_min_ratio=0.5, crop_max_ratio=1.0, hflip_prob=0.5)
  d.text_segmentation = _task(
      "data/TextSegmentation/TextSeg", ["train", "val"], ["test"], "textseg",
      shuffle_seed=102, crop_prob=1.0, crop_min_ratio=0.7, crop_max_ratio=1.0,
      hflip_prob=0.3, jitter_prob=0.5, brightness=0.5, contrast=0.5,
      saturation=0.5, hue=0.5, rotate_prob=0.5, rotate_max_angle=30)

  # On-the-fly synthetic data (used by tasks whose source is 'synthetic').
  d.synthetic = ml_collections.ConfigDict()
  d.synthetic.num_train = 100_000  # Examples per task in the train split.
  d.synthetic.num_eval = 64
  d.synthetic.seed = 0
  d.synthetic.min_size = 384  # Raw side lengths, before augmentation.
  d.synthetic.max_size = 640
  d.synthetic.max_words = 6
  d.synthetic.fonts_dir = ""  # Extra .ttf/.otf files to mix in.
  d.synthetic.photos_dir = ""  # Background photos to mix in.
  # Keep generated examples in memory (per process): worth it when a small
  # split is read for many epochs; the examples are identical either way.
  d.synthetic.cache = False

  if variant == "tiny":
    d.image_size = 64
    d.worker_count = 0
    d.read_threads = 1
    d.prefetch_buffer_size = 8
    d.eval_batch_size = 4
    d.synthetic.num_train = 512
    d.synthetic.num_eval = 8
    d.synthetic.min_size = 64
    d.synthetic.max_size = 96
    d.synthetic.max_words = 3
    # 512 examples per task, each read ~45 times in the demo: drawing them
    # once cuts the input pipeline from 30 to 6 ms of CPU per batch of 12.
    d.synthetic.cache = True
    for key in tasks.TASK_KEYS:
      d[key].source = "synthetic"
      d[key].batch_size = 3
    # Redrawing the background (what PSNR measures) is the slowest skill to
    # learn from scratch: text removal gets the largest share of each batch;
    # tampered text the next (its traces are subtle at 64 px).
    d.text_removal.batch_size = 5
    d.tampered_text_detection.batch_size = 4
    # No crop for tampered text: a crop upsampled to 64 px blurs the grain
    # whose absence marks a tampered word, so training images would lack the
    # traces the held-out ones have (docs/results.md).
    d.tampered_text_detection.crop_prob = 0.0
  return d
