"""Entry point of training: ``upocr-train`` / ``python -m upocr_jax.main``.

  upocr-train --config configs/upocr.py:tiny --workdir /tmp/upocr_tiny
  upocr-train --config configs/upocr.py:paper --workdir gs://... \\
      --config.data.text_removal.root=/data/SCUT-ENS --config.mesh.shape="(1,-1,1)"

  # Compile the train step for a TPU slice from any host with libtpu (no
  # TPU), report memory per chip, collectives, FLOPs (upocr_jax/fit/report.py):
  upocr-train --config configs/upocr.py:paper --compile_only --topology=v5e:2x2

Only parses flags; the work is in ``upocr_jax.train.trainer.run``.
"""

from absl import app, flags
from ml_collections import config_flags

from upocr_jax.fit import report as fit_report

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file and variant, e.g. configs/upocr.py:tiny; "
    "fields are overridden with --config.a.b=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics.jsonl, TensorBoard "
    "events, previews. A run resumes from the checkpoints it finds there.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Compile the train step (abstract arguments), "
    "print memory per device, collectives, FLOPs and a roofline estimate, "
    "and stop; --workdir is not needed.")
_TOPOLOGY = flags.DEFINE_string(
    "topology", "", "With --compile_only: a TPU slice to compile for, e.g. "
    "v5e:2x2 or v4:2x2x1 (needs libtpu, no TPU); empty: the local devices.")
_SUGGEST = flags.DEFINE_bool(
    "suggest", False, "With --compile_only: if the step does not fit, try "
    "remat, FSDP and a smaller batch and report the first that fits.")
flags.mark_flags_as_required(["config"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _COMPILE_ONLY.value:
    fit_report.run(_CONFIG.value, _TOPOLOGY.value, _SUGGEST.value)
    return
  if _TOPOLOGY.value or _SUGGEST.value:
    raise app.UsageError("--topology and --suggest need --compile_only")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required (except with --compile_only)")
  from upocr_jax.train import trainer  # pylint: disable=g-import-not-at-top
  trainer.run(_CONFIG.value, _WORKDIR.value)


def run_main() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run_main()
