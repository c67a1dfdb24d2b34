"""The fit table's searches (benchmarks/fit_table.py): the remat ladder of a
sliced case, and the largest batch on one chip."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.fit_recorder import Recorder  # noqa: E402
from benchmarks.fit_rows import LADDER, case_key  # noqa: E402
from upocr_jax.fit import topologies  # noqa: E402


def run_ladder(rec: Recorder, base: dict[str, Any]) -> str | None:
  """Climbs the remat ladder of one case; the first rung that fits, or None."""
  start = 0
  if base["dtype"] == "float32":
    twin = _fitting_rung(rec, dict(base, dtype="bfloat16"))
    if twin is not None:
      start = LADDER.index(twin)
      for rung in LADDER[:start]:
        rec.record_inferred(dict(base, remat=rung),
                            f"bfloat16 needed remat {twin}")
  for rung in LADDER[start:]:
    row = rec.compile(dict(base, remat=rung))
    if "report" in row and row["report"]["fits"]:   # else refused/timed out
      return rung
  return None


def _fitting_rung(rec: Recorder, base: dict[str, Any]) -> str | None:
  for rung in LADDER:
    row = rec.done.get(case_key(dict(base, remat=rung)))
    if row and "report" in row and row["report"]["fits"]:
      return rung
  return None


def largest_one_chip(rec: Recorder, topology: str, dtype: str) -> int | None:
  """Largest images-per-task on one chip of ``topology`` with remat full,
  bracketed by a fitting compile and a refused one (None if 1 per task is
  refused).

  Temporaries grow about linearly with small batches, and every compile
  gives them (a refusal too), so a guess solves a line through the compiles
  so far (``_solve``) for the chip's HBM. Near the limit they stop growing
  (the compiler schedules tighter: on v5p, 78 images needed less than 60),
  and the line then points at a batch already known to fit: there the
  search grows the batch by a quarter until a refusal. Where the line
  points at a fit that was not flat, it tries one image per task more; a
  bracket the line does not split is bisected. A float32 search starts at
  the same chip's largest bfloat16 fit; else the one-chip compiles of the
  generation with the nearest HBM give the first guess. A timed-out
  compile is an upper bound (not known to fit).
  """
  base = {"topology": topology, "parallelism": "one_chip", "dtype": dtype,
          "remat": "full"}
  hbm = topologies.get(topology).generation.hbm_bytes
  # This chip's recorded compiles (None: timed out) are where a resumed
  # search goes on from, whatever other chips recorded since.
  points = _chip_points(rec.done.values(), base)
  # Else a float32 search starts where the same chip's bfloat16 one ended:
  # with remat full the compiler schedules one chip's step up to its limit
  # in either dtype, and the two needed about the same (docs/training.md).
  # Else another chip's one-chip compiles (same program, same dtype) give
  # the first guess; else FIRST_PER_TASK.
  prior = nearest_chip_points(rec.done.values(), topology, dtype)
  args = next((r["per_device_bytes"]["arguments"] for r in prior.values()
               if r["per_device_bytes"]["arguments"]), 0.0)
  if not points:
    twin = (_largest_fit(_chip_points(rec.done.values(),
                                      dict(base, dtype="bfloat16")))
            if dtype == "float32" else 0)
    k = twin or (_solve(prior, hbm - args) if prior else FIRST_PER_TASK)
  else:
    k = None
  while True:
    if k is not None:
      points[k] = rec.compile(dict(base, per_task=k)).get("report")
    args = next((p["per_device_bytes"]["arguments"] for _, p in
                 sorted(points.items(), reverse=True)
                 if p and p["per_device_bytes"]["arguments"]), args)
    lo = _largest_fit(points)
    hi = min((j for j, p in points.items() if not (p and p["fits"])),
             default=_UNBOUNDED)
    if hi == lo + 1:
      return lo or None
    known = {j: p for j, p in points.items() if p}
    k = _solve(known, hbm - args) if known else lo
    if not lo < k < hi:   # the line is no guide here
      k = (lo + hi) // 2 if hi < _UNBOUNDED else lo + 1
      if hi == _UNBOUNDED and _flat(known):
        k = lo + max(1, lo // 4)


def _chip_points(rows, base: dict[str, Any]
                 ) -> dict[int, dict[str, Any] | None]:
  """Images per task -> report (None: timed out) of the recorded one-chip
  compiles whose case matches ``base``."""
  return {row["case"]["per_task"]: row.get("report") for row in rows
          if all(row["case"].get(k) == v for k, v in base.items())}


def _largest_fit(points: dict[int, dict[str, Any] | None]) -> int:
  """The largest images per task among ``points`` that fit (0: none)."""
  return max((j for j, p in points.items() if p and p["fits"]), default=0)


def nearest_chip_points(rows, topology: str, dtype: str
                        ) -> dict[int, dict[str, Any]]:
  """Images per task -> report of the one-chip compiles of the other chip
  whose HBM is nearest ``topology``'s ({} if none). One chip's points only:
  mixed with a larger chip's (flat near its own limit) the line through the
  largest batches is not the line of either."""
  hbm = topologies.get(topology).generation.hbm_bytes
  by_chip: dict[str, dict[int, dict[str, Any]]] = {}
  for row in rows:
    c = row["case"]
    if ("report" in row and c["parallelism"] == "one_chip"
        and c["dtype"] == dtype and c["topology"] != topology):
      by_chip.setdefault(c["topology"], {})[c["per_task"]] = row["report"]
  if not by_chip:
    return {}
  nearest = min(sorted(by_chip), key=lambda t: abs(
      topologies.get(t).generation.hbm_bytes - hbm))
  return by_chip[nearest]


def _flat(points: dict[int, dict[str, Any]]) -> bool:
  """Whether the two largest fitting batches needed no more temporaries from
  one to the other (the compiler scheduling tighter near the limit)."""
  fit = sorted(k for k, p in points.items() if p["fits"])[-2:]
  t = [points[k]["per_device_bytes"]["temporaries"] for k in fit]
  return len(t) == 2 and t[1] <= t[0]


# Images per task of the first one-chip compile (fits a 16 GiB chip in bf16).
FIRST_PER_TASK = 4
_UNBOUNDED = 10**6   # no refused batch yet


def _solve(points: dict[int, dict[str, Any]], budget: float) -> int:
  """Images per task whose temporaries just fit ``budget`` bytes, on the line
  through two neighbouring batches whose temporaries grew: the first pair
  that reaches the budget, else the largest (through zero and the smallest
  batch when none grew). The pair nearest the budget, because the slope
  flattens near a chip's limit: a larger chip's last pair points far too
  low for a smaller one."""
  ks = sorted(points)
  t = {k: points[k]["per_device_bytes"]["temporaries"] for k in ks}
  grew = [(a, b) for a, b in zip(ks, ks[1:]) if t[b] > t[a]]
  if grew:
    a, b = next(((a, b) for a, b in grew if t[b] >= budget), grew[-1])
    slope = (t[b] - t[a]) / (b - a)
    icpt = t[a] - slope * a
  else:
    slope, icpt = t[ks[0]] / ks[0], 0.0
  return max(1, int((budget - icpt) // slope))

