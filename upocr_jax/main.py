"""upocr-train: train UPOCR (``python -m upocr_jax.main``).

Usage: upocr-train --config=CONFIG --workdir=DIR [--config.FIELD=VALUE ...]

Examples:
  upocr-train --config=tiny --workdir=/tmp/upocr_tiny
  upocr-train --config=paper --workdir=gs://bucket/run \\
      --config.data.text_removal.root=/data/SCUT-ENS --config.mesh.shape="(1,-1,1)"

A run resumes from the checkpoints it finds in --workdir. Only parses flags;
the work is in ``upocr_jax.train.trainer.run``.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from upocr_jax import cli_flags
from upocr_jax.train import trainer


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the flags of ``upocr-train`` on ``fv`` (overrides looked up in
  ``argv``, default sys.argv)."""
  cli_flags.DEFINE_config(fv, argv, help_string="Training config")
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, "
                      "metrics.jsonl, TensorBoard events, previews; resumed "
                      "from.", flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues) -> None:
  """Trains with the parsed flags ``fv``; ``argv`` holds no positionals."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments: {argv[1:]}")
  cli_flags.require(fv, "config", "workdir")
  trainer.run(fv.config, fv.workdir)


def run_main() -> None:
  """Console-script entry point (``upocr-train``)."""
  # Training errors keep their tracebacks; only flag errors are one line.
  cli_flags.run("upocr-train", __doc__, define_flags, main, user_errors=(),
                quiet_logging=False)


if __name__ == "__main__":
  run_main()
