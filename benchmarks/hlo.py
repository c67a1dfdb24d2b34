"""Collectives in optimized HLO text, for the benchmarks.

The parser is the library's (``upocr_jax.fit.hlo``, used by ``--compile_only``);
this keeps the benchmarks' one-call form.
"""

from upocr_jax.fit import hlo as fit_hlo

COLLECTIVES = fit_hlo.COLLECTIVES


def parse_collectives(hlo_text: str, num_devices: int) -> dict[str, dict]:
  """Collectives per step in optimized HLO text: ops, arrays, bytes.

  ``{kind: {"count", "arrays", "bytes", "wire_bytes"}}`` for every kind in
  COLLECTIVES, as ``upocr_jax.fit.hlo.collectives`` defines them (an op in a
  while loop with a known trip count counts once per iteration; shapes are
  per device; ``num_devices`` is the size of a group written ``{}``).
  """
  return fit_hlo.collectives(fit_hlo.parse(hlo_text), num_devices)
