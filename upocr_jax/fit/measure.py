"""What a compiled program needs on its target, for the fit reports of
training (``fit.report``) and inference (``fit.infer_report``).

* :func:`measure`: per-device memory from XLA's memory analysis against the
  target's HBM, collectives, FLOPs and bytes accessed (XLA's cost analysis
  with the iterations of scanned loops it leaves out added back, or counted
  from the HLO where the compiler gives none) and a roofline ESTIMATE;
* :func:`refusal`: the figures of a program the compiler refused for lack
  of HBM (the TPU compiler raises instead of returning its analysis);
* :func:`memory_lines`, :func:`cost_lines`, :func:`refusal_lines`: the
  readable table's lines.
"""

from __future__ import annotations

import re
from typing import Any

from upocr_jax.fit import hlo
from upocr_jax.fit.targets import Target

# The TPU compiler refuses a program that does not fit in HBM instead of
# returning its memory analysis. It words the refusal in one of two ways:
# temporaries alone over the HBM it can use, or the whole program's usage
# over it, itemised.
_SIZE = r"([\d.]+)([KMGT]?)"
_TEMPS_OVER = re.compile(r"memory required for HLO temporaries \(" + _SIZE
                         + r"\) exceeds available HBM \(" + _SIZE + r"\)")
_USAGE_OVER = re.compile(r"Used [\d.]+[KMGT]? of " + _SIZE + r" hbm\. "
                         r"Exceeded hbm capacity by " + _SIZE)
_ITEM = {"temporaries": re.compile(r"HLO temp\s+" + _SIZE),
         "arguments": re.compile(r"\n\s*arguments\s+" + _SIZE),
         "total": re.compile(r"Total hbm usage >= " + _SIZE)}
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(m: re.Match[str], i: int = 1) -> float:
  return float(m.group(i)) * _UNITS[m.group(i + 1)]


def _parse_refusal(text: str) -> tuple[dict[str, float | None], float, float,
                                       str] | None:
  m = _TEMPS_OVER.search(text)
  if m is not None:
    temps, hbm = _bytes(m, 1), _bytes(m, 3)
    return ({"arguments": None, "temporaries": temps,
             "outputs_not_aliased": None, "total": None},
            hbm, hbm - temps, m.group(0))
  m = _USAGE_OVER.search(text)
  if m is None:
    return None
  items = {k: (None if (i := r.search(text)) is None else _bytes(i))
           for k, r in _ITEM.items()}
  return ({"arguments": items["arguments"], "temporaries": items["temporaries"],
           "outputs_not_aliased": None, "total": items["total"]},
          _bytes(m, 1), -_bytes(m, 3), m.group(0))


def refusal(error: Exception, seconds: float) -> dict[str, Any] | None:
  """The figures of a program the compiler refused for lack of HBM
  (``per_device_bytes`` as far as the message itemises them, ``hbm_bytes``:
  the compiler's own usable figure, a little under the chip's nominal size,
  ``fits`` False, ``margin_bytes``, ``compiler_error``: its sentence), or
  None when ``error`` is something else."""
  parsed = _parse_refusal(str(error))
  if parsed is None:
    return None
  per_device, hbm, margin, sentence = parsed
  return {"lower_s": None, "compile_s": round(seconds, 1),
          "per_device_bytes": per_device, "hbm_bytes": hbm, "fits": False,
          "margin_bytes": margin, "compiler_error": sentence}


def measure(compiled: Any, target: Target) -> dict[str, Any]:
  """The figures of a compiled program on ``target`` (see the module
  docstring): memory per device and fit, collectives, FLOPs, bytes and,
  where the target's peak and bandwidth are known, the roofline estimate in
  seconds (``roofline_estimate_s``)."""
  mem = compiled.memory_analysis()
  args = mem.argument_size_in_bytes
  temps = mem.temp_size_in_bytes
  outs = mem.output_size_in_bytes - mem.alias_size_in_bytes
  total = args + temps + outs
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  program = hlo.parse(compiled.as_text())
  if cost:
    corr = hlo.loop_correction(program)
    xla_flops = float(cost.get("flops", 0.0))
    xla_bytes = float(cost.get("bytes accessed", 0.0))
  else:  # no cost analysis (compile-only GPU): all of it from the HLO
    corr = hlo.program_costs(program)
    xla_flops = xla_bytes = 0.0
  flops = xla_flops + corr["flops"]
  nbytes = xla_bytes + corr["bytes"]
  hbm = target.hbm_bytes
  out: dict[str, Any] = {
      "per_device_bytes": {"arguments": args, "temporaries": temps,
                           "outputs_not_aliased": outs, "total": total},
      "hbm_bytes": hbm,
      "fits": None if hbm is None else total <= hbm,
      "margin_bytes": None if hbm is None else hbm - total,
      "collectives": hlo.collectives(program, len(target.devices)),
      "xla_flops": xla_flops if cost else None,
      "xla_bytes_accessed": xla_bytes if cost else None,
      "loop_correction": corr if cost else None,
      "flops": flops, "bytes_accessed": nbytes,
      "costs_from": "xla+loop_correction" if cost else "hlo_count",
      "scanned_loops": sum(i.op == "while" for body in program.comps.values()
                           for i in body),
  }
  if target.peak_flops and target.hbm_bandwidth:
    out["roofline_estimate_s"] = max(flops / target.peak_flops,
                                     nbytes / target.hbm_bandwidth)
  return out


def gib(x: float | None) -> str:
  """``x`` bytes in GiB with two decimals ('n/a' for None)."""
  return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def _over(x: float) -> str:
  # A refusal can be by a few MiB, which two decimals of GiB would hide.
  return gib(x) if x >= 2**30 else f"{x / 2**20:.2f} MiB"


def refusal_lines(r: dict[str, Any]) -> list[str]:
  """The lines of a :func:`refusal`: temporaries vs HBM, the compiler's
  sentence."""
  m = r["per_device_bytes"]
  return [
      f"  temporaries          {gib(m['temporaries'])}   HBM "
      f"{gib(r['hbm_bytes'])}   fits: NO, {_over(-r['margin_bytes'])} over"
      + (" in temporaries alone" if m["total"] is None
         else f" (arguments {gib(m['arguments'])})"),
      f"  ({r['compiler_error']})"]


def memory_lines(r: dict[str, Any]) -> list[str]:
  """The per-device memory lines of a :func:`measure`."""
  m = r["per_device_bytes"]
  fits = ("n/a (unknown HBM)" if r["fits"] is None else
          f"yes, {gib(r['margin_bytes'])} to spare" if r["fits"] else
          f"NO, {gib(-r['margin_bytes'])} over")
  return [
      "per device memory (XLA memory analysis):",
      f"  arguments            {gib(m['arguments'])}",
      f"  temporaries          {gib(m['temporaries'])}",
      f"  outputs (not alias.) {gib(m['outputs_not_aliased'])}",
      f"  total                {gib(m['total'])}   HBM "
      f"{gib(r['hbm_bytes'])}   fits: {fits}"]


def cost_lines(r: dict[str, Any]) -> list[str]:
  """The FLOPs and bytes lines of a :func:`measure`."""
  if r["xla_flops"] is None:
    return [
        f"FLOPs per device {r['flops']:.3e} (dots and convolutions counted "
        "from the HLO, every loop iteration; this compiler gives no cost "
        "analysis)",
        f"bytes accessed   {r['bytes_accessed']:.3e} (counted from the HLO)"]
  return [
      f"FLOPs per device {r['flops']:.3e} (XLA {r['xla_flops']:.3e} + "
      f"{r['loop_correction']['flops']:.3e} for the iterations of "
      f"{r['scanned_loops']} loops whose bodies XLA counts once)",
      f"bytes accessed   {r['bytes_accessed']:.3e} (XLA "
      f"{r['xla_bytes_accessed']:.3e} + "
      f"{r['loop_correction']['bytes']:.3e})"]
