"""Entry point of training: ``upocr-train`` / ``python -m upocr_jax.main``.

  upocr-train --config configs/upocr.py:tiny --workdir /tmp/upocr_tiny
  upocr-train --config configs/upocr.py:paper --workdir gs://... \\
      --config.data.text_removal.root=/data/SCUT-ENS --config.mesh.shape="(1,-1,1)"

Only parses flags; the work is in ``upocr_jax.train.trainer.run``.
"""

from absl import app, flags
from ml_collections import config_flags

from upocr_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. configs/upocr.py:tiny; "
    "fields are overridden with --config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard "
    "events, previews. A run resumes from the checkpoints it finds there.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  trainer.run(_CONFIG.value, _WORKDIR.value)


def run_main() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run_main()
