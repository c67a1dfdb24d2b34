"""Collectives of a compiled XLA program, from its optimized HLO text.

``parse_collectives(compiled.as_text(), num_devices)`` counts the all-reduce,
all-gather, reduce-scatter, all-to-all and collective-permute ops a step
executes (ops in a while loop once per iteration), their per-device bytes and
an estimate of the bytes each device sends with ring algorithms. Used by
benchmarks/scaling.py.
"""

from __future__ import annotations

import collections
import math
import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
                "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}

_HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(")
_DEF_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_SHAPE_RE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_CALLS_RE = re.compile(
    r"\b(body|condition|to_apply|calls|branch_computations|"
    r"true_computation|false_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_RE = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


def _shapes(text: str) -> list[int]:
  """Bytes of each array shape in an HLO type, e.g. (f32[2,3]{1,0}, s32[])."""
  return [_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
          for dtype, dims in _SHAPE_RE.findall(text) if dtype in _DTYPE_BYTES]


def _group_size(attrs: str, num_devices: int) -> int:
  """Devices per replica group of a collective, from its HLO attributes."""
  # mesh['axis_0'=2,'axis_1'=4] {'axis_1'} (optionally with device_ids=(...)
  # before the braces): the listed axes form a group.
  m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attrs)
  if m:
    sizes = dict((k, int(v)) for k, v in re.findall(r"'([^']+)'=(\d+)",
                                                     m.group(1)))
    return math.prod(sizes[k] for k in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[([0-9,]+)\]<=", attrs)  # iota form
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
  if m and m.group(1):
    return len(m.group(1).split(","))
  return num_devices  # {} means all devices


def _split_type(rhs: str) -> tuple[str, str]:
  """'(f32[2], s32[]) op(args), attrs' -> ('(f32[2], s32[])', 'op(args)...')."""
  if rhs.startswith("("):
    depth = 0
    for i, ch in enumerate(rhs):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        return rhs[:i + 1], rhs[i + 1:].lstrip()
  head, _, tail = rhs.partition(" ")
  return head, tail


def _split_operands(rest: str) -> tuple[str, str]:
  """'operands), attrs' -> (operands, attrs), honouring nested parentheses."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += (ch == "(") - (ch == ")")
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ""


def parse_collectives(hlo_text: str, num_devices: int) -> dict[str, dict]:
  """Collectives per step in optimized HLO text: ops, arrays, bytes.

  Args:
    hlo_text: ``compiled.as_text()`` of an SPMD-partitioned program (shapes
      are per device).
    num_devices: devices of the program (size of a group written ``{}``).

  Returns:
    ``{kind: {"count", "arrays", "bytes", "wire_bytes"}}`` for every kind in
    COLLECTIVES. ``count``: ops executed per step (XLA combines many small
    collectives into one op on a tuple; ``arrays`` counts the tensors in
    them); an op inside a while loop with a known trip count counts once per
    iteration. ``bytes``: per device, the larger of operand and result (the
    tensor reduced / gathered / exchanged). ``wire_bytes``: what one device
    sends with ring algorithms for a group of n: all-reduce 2(n-1)/n,
    all-gather / reduce-scatter / all-to-all (n-1)/n of that tensor,
    collective-permute all of it.
  """
  types: dict[str, str] = {}        # instruction name -> result type
  comps: dict[str, list[tuple[str, str, str, str]]] = {}
  edges: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  entry, current = None, None
  for line in hlo_text.splitlines():
    if line and not line[0].isspace():
      m = _HEADER_RE.match(line)
      if m and line.rstrip().endswith("{"):
        current = m.group(2)
        comps[current] = []
        entry = current if m.group(1) else entry
      continue
    m = _DEF_RE.match(line) if current is not None else None
    if not m:
      continue
    name, rhs = m.groups()
    result, rest = _split_type(rhs)
    types[name] = result
    op, paren, rest = rest.partition("(")
    if not paren:
      continue
    trip = _TRIP_RE.search(rest)
    for kind, names in _CALLS_RE.findall(rest):
      for callee in names.strip("{}").split(","):
        mult = int(trip.group(1)) if kind == "body" and trip else 1
        edges[current].append((callee.strip().lstrip("%"), mult))
    base = op[:-len("-start")] if op.endswith("-start") else op
    if base in COLLECTIVES:
      comps[current].append((base, result, *_split_operands(rest)))
  # How many times each computation runs per step (the call graph is a DAG).
  times: dict[str, int] = collections.defaultdict(int)

  def visit(comp: str, n: int) -> None:
    times[comp] += n
    for callee, mult in edges.get(comp, ()):
      visit(callee, n * mult)

  if entry is not None:
    visit(entry, 1)
  out = {k: {"count": 0, "arrays": 0, "bytes": 0, "wire_bytes": 0}
         for k in COLLECTIVES}
  for comp, instrs in comps.items():
    n_run = times.get(comp, 0)
    for kind, result, operands, attrs in instrs:
      ins = [b for o in re.findall(r"%([\w.\-]+)", operands)
             for b in _shapes(types.get(o, ""))]
      # Async *-start ops return (operands..., results..., [contexts]): the
      # largest of input and output per tensor is counted, so the tail does.
      outs = _shapes(result)[-len(ins):] if ins else _shapes(result)
      size = sum(max(i, o) for i, o in zip(ins, outs)) if ins and len(
          ins) == len(outs) else max(sum(ins), sum(outs))
      g = _group_size(attrs, num_devices)
      frac = (1.0 if kind == "collective-permute" else
              2 * (g - 1) / g if kind == "all-reduce" else (g - 1) / g)
      out[kind]["count"] += n_run
      out[kind]["arrays"] += n_run * max(len(ins), 1)
      out[kind]["bytes"] += n_run * size
      out[kind]["wire_bytes"] += int(n_run * size * frac)
  return out
