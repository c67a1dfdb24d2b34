"""upocr-train: train UPOCR (``python -m upocr_jax.main``).

Usage: upocr-train --config=CONFIG --workdir=DIR [--config.FIELD=VALUE ...]
       upocr-train --config=CONFIG --compile_only [--topology=NAME] [--suggest]

Examples:
  upocr-train --config=tiny --workdir=/tmp/upocr_tiny
  upocr-train --config=paper --workdir=gs://bucket/run \\
      --config.data.text_removal.root=/data/SCUT-ENS --config.mesh.shape="(1,-1,1)"
  # Compile the train step for a TPU slice from any host with libtpu (no TPU
  # needed): memory per chip, collectives, FLOPs, a roofline estimate.
  upocr-train --config=paper --compile_only --topology=v5e:2x2
  # The same for one H100 80 GB with the CUDA plugin (jax[cuda12]; no GPU).
  upocr-train --config=paper --compile_only --topology=h100

A run resumes from the checkpoints it finds in --workdir (a finished one says
so and stops). A mistake in the config, the data or a weight file stops with
one line naming the field or file. Only parses flags;
the work is in ``upocr_jax.train.trainer.run`` and ``upocr_jax.fit.report.run``.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from input_pipeline.schema import DataError
from upocr_jax import cli_flags
from upocr_jax import config_checks
from upocr_jax import sharding
from upocr_jax.fit import report as fit_report
from upocr_jax.train import trainer
from upocr_jax.weights.state_dict import StrictLoadError

# What a user can cause (a config field, a data set, a weight file, a missing
# package, a learning rate that diverges): printed as one line naming it. Any
# other exception is a bug and keeps its traceback.
USER_ERRORS = (config_checks.ConfigError, sharding.ShardingConfigError,
               DataError, StrictLoadError, FileNotFoundError, ImportError,
               trainer.NonFiniteLossError)


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the flags of ``upocr-train`` on ``fv`` (overrides looked up in
  ``argv``, default sys.argv)."""
  cli_flags.DEFINE_config(fv, argv, help_string="Training config")
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, "
                      "metrics.jsonl, TensorBoard events, previews; resumed "
                      "from.", flag_values=fv)
  cli_flags.DEFINE_compile_only(
      fv, "Compile the train step for abstract arguments, report memory "
      "per device, collectives, FLOPs and a roofline estimate, and stop (no "
      "--workdir needed).", "if the step does not fit, try remat, FSDP and "
      "a smaller batch and report the first that fits.")


def main(argv: Sequence[str], fv: flags.FlagValues) -> None:
  """Trains (or compiles only) with the parsed flags ``fv``."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments: {argv[1:]}")
  topology = cli_flags.compile_only_topology(fv)
  if topology is not None:
    cli_flags.require(fv, "config")
    fit_report.run(fv.config, topology, fv.suggest)
    return
  cli_flags.require(fv, "config", "workdir")
  trainer.run(fv.config, fv.workdir)


def run_main() -> None:
  """Console-script entry point (``upocr-train``)."""
  cli_flags.run("upocr-train", __doc__, define_flags, main,
                user_errors=USER_ERRORS)


if __name__ == "__main__":
  run_main()
