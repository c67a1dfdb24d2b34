"""Turn taking of ``benchmarks/vs_pytorch.py --interleave``.

With ``--interleave`` both sides' processes stay alive and take turns, one
timed call each per round, so that a slow or fast spell of a shared machine
falls on both sides alike instead of on whichever side ran then. Each side
announces on stdout that it is ready for its next call and blocks on stdin
until the parent answers; the parent starts one call at a time and waits for
it to finish. No jax or torch here (see ``vs_pytorch_common``).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Mapping

READY = "vs_pytorch:ready"
DONE = "vs_pytorch:done"
GO = "go"


def _say(line: str) -> None:
  # sys.__stdout__: the official side redirects sys.stdout while it trains.
  sys.__stdout__.write(line + "\n")
  sys.__stdout__.flush()


def wait_turn(enabled: bool) -> None:
  """In a side's process, before each call: with ``enabled``, tell the
  parent this side is ready and block until it says go."""
  if not enabled:
    return
  _say(READY)
  line = sys.stdin.readline()
  if line.strip() != GO:
    raise RuntimeError(f"vs_pytorch --interleave: expected {GO!r} from the "
                       f"parent process, got {line.strip()!r}")


def finished(enabled: bool) -> None:
  """In a side's process, after its last call: with ``enabled``, tell the
  parent so."""
  if enabled:
    _say(DONE)


def expect(proc: subprocess.Popen, name: str, wanted: tuple[str, ...]) -> str:
  """Reads ``proc``'s stdout up to a line in ``wanted`` (other lines are
  dropped); raises if the process ends first."""
  for line in proc.stdout:
    if line.strip() in wanted:
      return line.strip()
  raise RuntimeError(f"the {name} side's process ended (exit "
                     f"{proc.wait()}) before its turn; its error is above")


def rest(proc: subprocess.Popen) -> str:
  """The rest of ``proc``'s stdout once it ends. Not ``communicate()``: that
  reads the pipe itself and would miss lines :func:`expect` already
  buffered."""
  proc.stdin.close()
  out = proc.stdout.read()
  proc.wait()
  return out


def drive(procs: Mapping[str, subprocess.Popen], calls: int) -> None:
  """Runs ``calls`` rounds: in each, every process in ``procs`` order makes
  one call, alone. Each process must already have said READY once."""
  for _ in range(calls):
    for name, proc in procs.items():
      proc.stdin.write(GO + "\n")
      proc.stdin.flush()
      expect(proc, name, (READY, DONE))
