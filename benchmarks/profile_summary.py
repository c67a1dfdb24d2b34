"""Where the time of a compiled step goes: a JAX profiler trace, summarised.

The trace (``jax.profiler``, Perfetto JSON) has one event per executed XLA
operation with its HLO name; the compiled module's HLO text gives each
operation's ``op_name`` metadata, i.e. the JAX primitive and the named scopes it
was traced under (``attn_scores``, ``attn_linear``, ``mlp``, ``vgg``, see the
model). Time is summed per category; events on parallel threads are added, so the
shares are of busy CPU (or device) time, not of wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any

import jax

# (category, test on the op_name metadata); the first match wins.
def _scope(name: str):
  # As a path element, bare or inside a transform: .../vgg/..., jvp(mlp).
  pattern = re.compile(rf"(^|[/(]){name}([/)]|$)")
  return lambda n: pattern.search(n) is not None


_SCOPES = (
    ("vgg loss", _scope("vgg")),
    ("attention scores+softmax", lambda n: "attn_scores" in n),
    ("attention qkv/proj linears", lambda n: "attn_linear" in n),
    ("mlp", _scope("mlp")),
    ("convs", lambda n: "conv_general_dilated" in n),
    ("data movement", lambda n: re.search(
        r"/(transpose|pad|concatenate|slice|dynamic_slice|dynamic_update_slice"
        r"|gather|scatter-add|scatter_add|scatter|copy|copy_p|rev|"
        r"broadcast_in_dim|reshape|squeeze|select_n)(\[|$|/)", n) is not None),
    ("other linears", lambda n: "dot_general" in n),
)
_METADATA = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?"
                       r"metadata=\{[^}]*op_name=\"([^\"]*)\"")


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> op_name metadata."""
  out = {}
  for line in hlo_text.splitlines():
    m = _METADATA.match(line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def category(op_name: str) -> str:
  for cat, test in _SCOPES:
    if test(op_name):
      return cat
  return "other (norms, element-wise, optimizer)"


def summarise(trace_events: list[dict], names: dict[str, str]) -> dict:
  """Busy time per category (seconds and share) from trace events."""
  per_cat: dict[str, float] = collections.defaultdict(float)
  unknown = 0.0
  for e in trace_events:
    args = e.get("args") or {}
    if e.get("ph") != "X" or "hlo_op" not in args:
      continue
    dur = float(e.get("dur", 0.0)) * 1e-6
    op = args["hlo_op"]
    if op in names:
      per_cat[category(names[op])] += dur
    else:
      unknown += dur
  if unknown:
    per_cat["unattributed (no metadata)"] += unknown
  total = sum(per_cat.values()) or 1.0
  return {k: {"busy_s": round(v, 6), "share": round(v / total, 4)}
          for k, v in sorted(per_cat.items(), key=lambda kv: -kv[1])}


def profile(compiled, args: tuple, logdir: str, hlo_text: str,
            steps: int = 2) -> dict[str, Any]:
  """Traces ``steps`` calls of ``compiled(*args)`` (arguments not donated
  again: the outputs feed the next call) and summarises them."""
  os.makedirs(logdir, exist_ok=True)
  jax.profiler.start_trace(logdir, create_perfetto_trace=True)
  try:
    state = args
    for _ in range(steps):
      params, opt, m = compiled(*state)
      jax.block_until_ready((params, opt, m))
      state = (params, opt) + tuple(state[2:])
  finally:
    jax.profiler.stop_trace()
  files = sorted(glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  if not files:
    raise RuntimeError(f"no Perfetto trace written under {logdir}")
  with gzip.open(files[-1]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  summary = summarise(events, op_names(hlo_text))
  summary["_trace"] = files[-1]
  summary["_steps"] = steps
  return summary
