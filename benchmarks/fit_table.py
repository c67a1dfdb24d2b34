"""The fit table of docs/training.md: where the paper train step fits on TPUs.

Usage: python benchmarks/fit_table.py --out=FILE.jsonl [--append]
    [--only=KEY=VALUE,...] [--noone_chip] [--config=paper] [--config.F=V ...]
       python benchmarks/fit_table.py --from_jsonl=FILE.jsonl

Example (every row; hours on a 2-core host, so it writes as it goes and
``--append`` resumes where it stopped):
  python benchmarks/fit_table.py --out=benchmarks/results/fit_table.jsonl

Compiles the real train step (``upocr_jax.fit.report``, what ``upocr-train
--compile_only --topology=...`` runs) with the TPU compiler for each case
(needs libtpu: ``pip install -e '.[tpu]'``; no TPU):

* sliced cases: every topology of ``--topologies`` (default the 8-core/8-chip
  slices v4-8, v5e-8, v5p-8, v6e-8) x data parallel (mesh (-1,1,1)) and FSDP
  ((1,-1,1)) x bfloat16 and float32, at the config's global batch (the
  paper's 48). Each case climbs the remat ladder: no remat, remat policy
  ``dots`` (keeps the linears' outputs), policy ``full`` (keeps block inputs
  only), and stops at the first that fits. A float32 case starts at the rung
  its bfloat16 twin needed (float32 keeps every activation at least as large);
  the rungs it skips are written as ``inferred``, never as compiled.
* one chip of each generation (``--one_chip``): the largest batch (in whole
  images per task) that fits with remat ``full``, bracketed by compiles:
  it fits at that batch and is refused one image per task above. Guesses
  solve a line through the temporaries of the compiles so far; where the
  temporaries stop growing near the limit, the batch grows by a quarter
  until a refusal and the bracket is bisected.

Every bfloat16 case (slices, then one chip) runs before any float32 one,
so a run stopped early has the rows TPU users train with.

Each compile appends one JSON line to ``--out`` at once (the report of
``fit.report.fit_report`` plus the case); an existing file is refused unless
``--append``, which skips the compiles already recorded. A compile that runs
past ``--compile_timeout_s`` cannot be interrupted inside XLA, so the script
records it as timed out (not known to fit; the ladder goes on to the next
rung, a one-chip search takes it as an upper bound) and restarts itself
with ``--append``. It restarts after every compile too (``--fresh_process``,
on by default): the compiler does not give its memory back, and one process
grew past 21 GiB over three paper compiles. The searches are deterministic
given the recorded rows, so a restarted run takes the same path. At the
end, and with ``--from_jsonl``, it prints the markdown table of
docs/training.md. Step times and images/s are roofline ESTIMATES from XLA's
cost analysis, not measurements.

The work is split by job: ``fit_search`` (the ladder and the one-chip
search), ``fit_recorder`` (compiling and recording a case), ``fit_rows``
(reading the rows and the markdown table).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.fit_recorder import Recorder  # noqa: E402
from benchmarks.fit_rows import (DEFAULT_TOPOLOGIES, DTYPES,  # noqa: E402
                                 PARALLELISM, read_rows, table)
from benchmarks.fit_search import largest_one_chip, run_ladder  # noqa: E402
from upocr_jax import cli_flags  # noqa: E402
from upocr_jax.fit import topologies  # noqa: E402

USAGE = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
  """The script's flags on ``fv``."""
  cli_flags.DEFINE_config(fv, argv, default="paper",
                          help_string="Config whose train step is compiled")
  flags.DEFINE_string("out", None, "JSON lines file, one line per compile, "
                      "written as it goes.", flag_values=fv)
  flags.DEFINE_bool("append", False, "Add to an existing --out file, "
                    "skipping compiles it already holds (resume).",
                    flag_values=fv)
  flags.DEFINE_list("topologies", list(DEFAULT_TOPOLOGIES), "TPU slices "
                    "(names of upocr_jax/fit/topologies.py).", flag_values=fv)
  flags.DEFINE_bool("one_chip", True, "Also find the largest batch on one "
                    "chip of each generation.", flag_values=fv)
  flags.DEFINE_string("only", "", "Only cases matching KEY=VALUE,... "
                      "(keys: topology, parallelism, dtype), e.g. "
                      "dtype=bfloat16,parallelism=dp.", flag_values=fv)
  flags.DEFINE_bool("fresh_process", True, "Restart (with --append) after "
                    "each compile: the compiler's memory is not given back, "
                    "and one process would grow from compile to compile.",
                    flag_values=fv)
  flags.DEFINE_float("compile_timeout_s", 0, "Give up a compile after this "
                       "many seconds (0: never): record it as timed out and "
                       "restart with --append to go on.", flag_values=fv)
  flags.DEFINE_string("from_jsonl", None, "Print the table of this file and "
                      "stop (no compile).", flag_values=fv)


def _only(spec: str) -> dict[str, str]:
  out = {}
  for part in filter(None, spec.split(",")):
    key, sep, value = part.partition("=")
    if not sep or key not in ("topology", "parallelism", "dtype"):
      raise cli_flags.UsageError(
          f"--only {part!r}: expected KEY=VALUE with KEY one of topology, "
          "parallelism, dtype")
    out[key] = value
  return out


def _matches(case: dict[str, Any], only: dict[str, str]) -> bool:
  return all(str(case.get(k)) == v for k, v in only.items())


def sliced_cases(fv: flags.FlagValues, only: dict[str, str],
                 dtype: str) -> Iterator[dict[str, Any]]:
  """The sliced cases of ``--topologies`` x parallelism that ``only`` keeps."""
  for topology in fv.topologies:
    for par in PARALLELISM:
      case = {"topology": topology, "parallelism": par, "dtype": dtype}
      if _matches(case, only):
        yield case


def main(argv: list[str], fv: flags.FlagValues) -> None:
  """Compiles the cases (or prints a recorded table)."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments: {argv[1:]}")
  if fv.from_jsonl:
    print(table(read_rows(fv.from_jsonl)))
    return
  cli_flags.require(fv, "out")
  if fv.compile_timeout_s < 0:
    raise cli_flags.UsageError(f"--compile_timeout_s={fv.compile_timeout_s}:"
                               " must be >= 0 (0: no timeout)")
  for t in fv.topologies:
    topologies.get(t)
  only = _only(fv.only)
  if not topologies.libtpu_available():
    raise cli_flags.UsageError("compiling for TPU needs libtpu: pip install "
                               "-e '.[tpu]' (no TPU needed)")
  rec = Recorder(fv.config, fv.out, fv.append, fv.compile_timeout_s,
                 fresh=fv.fresh_process)
  # bfloat16 (what TPU users train with) everywhere first; float32 cases
  # start from their bfloat16 twins' rungs.
  for dtype in DTYPES:
    for case in sliced_cases(fv, only, dtype):
      run_ladder(rec, case)
    for t in fv.topologies if fv.one_chip else ():
      if _matches({"topology": t, "parallelism": "one_chip",
                   "dtype": dtype}, only):
        largest_one_chip(rec, t, dtype)
  print(table(list(rec.done.values())))


if __name__ == "__main__":
  cli_flags.run("fit_table.py", USAGE, define_flags, main,
                user_errors=(ValueError, RuntimeError, ImportError))
