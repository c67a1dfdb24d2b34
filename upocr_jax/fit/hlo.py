"""Collectives and loop-corrected costs from optimized HLO text.

The text is ``compiled.as_text()`` of an SPMD-partitioned program (shapes are
per device). The call graph (while bodies with their trip counts: XLA's
known_trip_count, else counted from the loop's condition, start and step;
fusions, calls, conditionals) says how often each computation runs per step.

XLA's ``cost_analysis`` counts the body of a while loop once, whatever its
trip count; scanned stages are while loops. :func:`loop_correction` counts
what the other iterations add: the FLOPs of every dot and convolution in a
loop body (elementwise work is left out: it is small next to the matmuls)
and the bytes of every top-level instruction of the body (operands plus
result, as XLA's bytes-accessed does; the instructions inside fusions are
not memory traffic of their own). A scan reads one slice of its stacked
inputs (a dynamic-slice in a fusion) and writes one slice of its stacked
outputs (an in-place dynamic-update-slice): those count the slice, not the
stacked array. Both are estimates.

The GPU compiler writes dots as cuBLAS custom-calls and convolutions as cuDNN
ones (forward, backward-input, backward-filter); they count as the dot or
convolution they replace. Its compile-only executables have no
``cost_analysis`` at all: :func:`program_costs` then counts the whole step
the same way (every run of every computation).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

from upocr_jax.fit import hlo_loops

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2,
                "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
                "f8e4m3fn": 1, "f8e5m2": 1}
_HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(")
_DEF_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_SHAPE_RE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_CALLS_RE = re.compile(
    r"\b(body|condition|to_apply|calls|branch_computations|"
    r"true_computation|false_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_RE = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
# Instructions that move no data of their own.
_FREE_OPS = ("parameter", "get-tuple-element", "tuple", "constant", "bitcast",
             "after-all", "partition-id", "replica-id")


@dataclasses.dataclass
class Program:
  """Parsed HLO: instructions per computation and runs per step."""
  comps: dict[str, list[hlo_loops.Instr]]
  types: dict[str, str]
  times: dict[str, int]       # runs per step, loops at their trip counts
  once: dict[str, int]        # runs as cost_analysis counts (loops once)
  fused: set[str]             # computations that are fusion bodies


def _shape_bytes(text: str) -> list[int]:
  """Bytes of each array in an HLO type, e.g. (f32[2,3]{1,0}, s32[])."""
  return [_DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
          for dt, dims in _SHAPE_RE.findall(text) if dt in _DTYPE_BYTES]


def _dims(text: str) -> list[int]:
  m = _SHAPE_RE.search(text)
  return [int(d) for d in m.group(2).split(",") if d] if m else []


def _split_type(rhs: str) -> tuple[str, str]:
  """'(f32[2], s32[]) op(args), attrs' -> ('(f32[2], s32[])', 'op(...')."""
  if rhs.startswith("("):
    depth = 0
    for i, ch in enumerate(rhs):
      depth += (ch == "(") - (ch == ")")
      if depth == 0:
        return rhs[:i + 1], rhs[i + 1:].lstrip()
  head, _, tail = rhs.partition(" ")
  return head, tail


def _split_operands(rest: str) -> tuple[str, str]:
  """'operands), attrs' -> (operands, attrs), honouring nested parens."""
  depth = 1
  for i, ch in enumerate(rest):
    depth += (ch == "(") - (ch == ")")
    if depth == 0:
      return rest[:i], rest[i + 1:]
  return rest, ""


def parse(hlo_text: str) -> Program:
  """Parses optimized HLO text into a :class:`Program`."""
  types: dict[str, str] = {}
  comps: dict[str, list[hlo_loops.Instr]] = {}
  edges: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  fused: set[str] = set()
  # (caller, body, condition, initial tuple) of loops without a
  # known_trip_count attribute.
  untripped: list[tuple[str, str, str, str]] = []
  roots: dict[str, str] = {}
  entry = current = None
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
    if line.lstrip().startswith("ROOT"):
      roots[current] = name
    result, rest = _split_type(rhs)
    types[name] = result
    op, paren, rest = rest.partition("(")
    if not paren:
      continue
    operands, attrs = _split_operands(rest)
    trip = _TRIP_RE.search(attrs)
    calls = {kind: [c.strip().lstrip("%") for c in names.strip("{}").split(",")]
             for kind, names in _CALLS_RE.findall(attrs)}
    for kind, callees in calls.items():
      for callee in callees:
        if kind == "body" and not trip:  # resolved from its condition below
          init = re.findall(r"%([\w.\-]+)", operands)
          untripped.append((current, callee, calls["condition"][0],
                            init[0] if init else ""))
          continue
        mult = int(trip.group(1)) if kind == "body" and trip else 1
        edges[current].append((callee, mult))
        if op == "fusion" and kind == "calls":
          fused.add(callee)
    comps[current].append(hlo_loops.Instr(
        name, op, result, re.findall(r"%([\w.\-]+)", operands), attrs,
        operands))
  names = {c: {i.name: i for i in instrs} for c, instrs in comps.items()}
  for loop in untripped:
    edges[loop[0]].append((loop[1],
                           hlo_loops.trip_count(comps, names, roots, loop)))
  times: dict[str, int] = collections.defaultdict(int)
  once: dict[str, int] = collections.defaultdict(int)

  def visit(comp: str, n: int, n_once: int) -> None:
    times[comp] += n
    once[comp] += n_once
    for callee, mult in edges.get(comp, ()):
      visit(callee, n * mult, n_once)

  if entry is not None:
    visit(entry, 1, 1)
  return Program(comps, types, dict(times), dict(once), fused)


def _group_size(attrs: str, num_devices: int) -> int:
  """Devices per replica group of a collective, from its attributes."""
  m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", attrs)
  if m:
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)",
                                              m.group(1))}
    return math.prod(sizes[k] for k in re.findall(r"'([^']+)'", m.group(2)))
  m = re.search(r"replica_groups=\[([0-9,]+)\]<=", attrs)  # iota form
  if m:
    return int(m.group(1).split(",")[-1])
  m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
  if m and m.group(1):
    return len(m.group(1).split(","))
  return num_devices  # {} means all devices


def collectives(program: Program, num_devices: int) -> dict[str, dict]:
  """Collectives per step: ``{kind: {count, arrays, bytes, wire_bytes}}``.

  ``count``: ops run per step (an op in a loop body once per iteration);
  ``arrays``: tensors in them (XLA combines small collectives into one op
  on a tuple); ``bytes``: per device, the larger of operand and result;
  ``wire_bytes``: what one device sends with ring algorithms in a group of
  n: all-reduce 2(n-1)/n, all-gather / reduce-scatter / all-to-all (n-1)/n
  of it, collective-permute all of it.
  """
  out = {k: {"count": 0, "arrays": 0, "bytes": 0, "wire_bytes": 0}
         for k in COLLECTIVES}
  for comp, instrs in program.comps.items():
    n_run = program.times.get(comp, 0)
    for ins in instrs:
      kind = ins.op[:-len("-start")] if ins.op.endswith("-start") else ins.op
      if kind not in COLLECTIVES or not n_run:
        continue
      sizes_in = [b for o in ins.operands
                  for b in _shape_bytes(program.types.get(o, ""))]
      # Async *-start ops return (operands..., results..., [contexts]).
      sizes_out = (_shape_bytes(ins.result)[-len(sizes_in):] if sizes_in
                   else _shape_bytes(ins.result))
      size = (sum(max(i, o) for i, o in zip(sizes_in, sizes_out))
              if sizes_in and len(sizes_in) == len(sizes_out)
              else max(sum(sizes_in), sum(sizes_out)))
      g = _group_size(ins.attrs, num_devices)
      frac = (1.0 if kind == "collective-permute" else
              2 * (g - 1) / g if kind == "all-reduce" else (g - 1) / g)
      out[kind]["count"] += n_run
      out[kind]["arrays"] += n_run * max(len(sizes_in), 1)
      out[kind]["bytes"] += n_run * size
      out[kind]["wire_bytes"] += int(n_run * size * frac)
  return out


# cuBLAS and cuDNN custom-call targets of the GPU compiler.
_CUBLAS = ("__cublas$gemm", "__cublas$lt$matmul")
_CUDNN_FORWARD = ("__cudnn$convForward", "__cudnn$convBiasActivationForward")
_CUDNN_BACKWARD_INPUT = "__cudnn$convBackwardInput"
_CUDNN_BACKWARD_FILTER = "__cudnn$convBackwardFilter"
_TARGET_RE = re.compile(r'custom_call_target="([^"]+)"')


def _matmul_kind(ins: hlo_loops.Instr) -> str:
  """'dot', 'convolution' or '' (not a matmul), custom-calls included."""
  if ins.op in ("dot", "convolution"):
    return ins.op
  if ins.op != "custom-call":
    return ""
  m = _TARGET_RE.search(ins.attrs)
  target = m.group(1) if m else ""
  if target in _CUBLAS:
    return "dot"
  if target in _CUDNN_FORWARD or target in (_CUDNN_BACKWARD_INPUT,
                                            _CUDNN_BACKWARD_FILTER):
    return "convolution"
  return ""


def _dot_flops(ins: hlo_loops.Instr, types: dict[str, str]) -> float:
  """2 x output elements x contracted size of a dot or convolution (or of
  the cuBLAS / cuDNN custom-call standing for one)."""
  kind = _matmul_kind(ins)
  out = math.prod(_dims(ins.result))  # a custom-call's first result
  lhs = _dims(types.get(ins.operands[0], "")) if ins.operands else []
  if kind == "dot":
    if ins.op == "dot":
      m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
      idx = [int(i) for i in m.group(1).split(",") if i] if m else []
    else:  # cuBLAS: the dimension numbers are in its backend config
      m = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', ins.attrs)
      idx = [int(i) for i in re.findall(r"\d+", m.group(1))] if m else []
    return 2.0 * out * math.prod(lhs[i] for i in idx if i < len(lhs))
  if kind != "convolution":
    return 0.0
  # A cuDNN backward convolution keeps the attributes of the forward one it
  # differentiates and costs as much: backward-input computes that
  # convolution's input from (output gradient, kernel), backward-filter its
  # kernel from (input, output gradient).
  target = _TARGET_RE.search(ins.attrs)
  target = target.group(1) if target else ""
  other = _dims(types.get(ins.operands[1], "")) if len(
      ins.operands) > 1 else []
  if target == _CUDNN_BACKWARD_INPUT:
    lhs, kernel, res = _dims(ins.result), other, lhs
  elif target == _CUDNN_BACKWARD_FILTER:
    kernel, res = _dims(ins.result), other
  else:
    kernel, res = other, _dims(ins.result)
  out = math.prod(res)
  # convolution: per output element, the input features times the window
  # positions that land on real input. The TPU compiler writes batched dots
  # as convolutions whose batch dimension is a padded spatial one (window =
  # the batch, most positions on padding), so padding must not count.
  m = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", ins.attrs)
  if not kernel or not m or "i" not in m.group(2) or len(m.group(2)) != len(
      kernel) or len(m.group(1)) != len(lhs) or len(m.group(3)) != len(res):
    return 0.0
  lhs_l, ker_l, out_l = m.groups()
  window = re.search(r"window=\{([^}]*)\}", ins.attrs)
  wtext = window.group(1) if window else ""
  pads = re.search(r"pad=([0-9_x-]+)", wtext)
  strides = re.search(r"stride=([0-9x]+)", wtext)
  pads = [tuple(int(v) for v in p.split("_")) for p in pads.group(1).split("x")
          ] if pads else []
  strides = [int(v) for v in strides.group(1).split("x")] if strides else []
  per_output = kernel[ker_l.index("i")]
  spatial_out = 1
  for d in sorted(c for c in ker_l if c.isdigit()):
    k, n, o = (kernel[ker_l.index(d)], lhs[lhs_l.index(d)],
               res[out_l.index(d)])
    j = int(d)
    lo = pads[j][0] if j < len(pads) else 0
    st = strides[j] if j < len(strides) else 1
    # (output, window) pairs whose input index is inside [0, n).
    per_output *= sum(max(0, min(k, n + lo - x * st) - max(0, lo - x * st))
                      for x in range(o))
    spatial_out *= o
  return 2.0 * out / max(spatial_out, 1) * per_output


def _fusion_bytes(program: Program, ins: hlo_loops.Instr) -> float:
  """Bytes a fusion reads and writes: sliced operands count their slices,
  an in-place dynamic-update-slice root its update."""
  body = program.comps.get(ins.attrs and next(
      (c for c in re.findall(r"calls=%?([\w.\-]+)", ins.attrs)), ""), [])
  params = {i.name: int(i.raw_operands or 0) for i in body
            if i.op == "parameter"}
  users: dict[str, list[hlo_loops.Instr]] = collections.defaultdict(list)
  for i in body:
    for o in i.operands:
      users[o].append(i)
  read = [float(sum(_shape_bytes(program.types.get(o, ""))))
          for o in ins.operands]
  written = float(sum(_shape_bytes(ins.result)))
  for pname, idx in params.items():
    us = users.get(pname, [])
    if idx < len(read) and us and all(
        u.op == "dynamic-slice" and u.operands[0] == pname for u in us):
      read[idx] = float(sum(sum(_shape_bytes(u.result)) for u in us))
  root = body[-1] if body else None
  if root is not None and root.op == "dynamic-update-slice":
    upd = float(sum(_shape_bytes(program.types.get(root.operands[1], ""))))
    buf = root.operands[0]
    if buf in params and params[buf] < len(read):
      read[params[buf]] = 0.0  # updated in place
    written = upd
  return sum(read) + written


def _costs(program: Program, runs: dict[str, int]) -> dict[str, float]:
  """``{flops, bytes}`` of ``runs[comp]`` runs of each computation: its
  dot/convolution FLOPs and, outside fusion bodies, the bytes of its
  instructions."""
  flops = nbytes = 0.0
  for comp, instrs in program.comps.items():
    n = runs.get(comp, 0)
    if n <= 0:
      continue
    for ins in instrs:
      if _matmul_kind(ins):
        flops += n * _dot_flops(ins, program.types)
      if comp in program.fused or ins.op in _FREE_OPS or ins.op in (
          "while", "call", "conditional"):
        continue
      if ins.op == "fusion":
        nbytes += n * _fusion_bytes(program, ins)
        continue
      # A cuBLAS / cuDNN custom-call's further results are its scratch
      # workspace, not data of the step.
      result = _shape_bytes(ins.result)
      if ins.op == "custom-call":
        result = result[:1]
      nbytes += n * (sum(sum(_shape_bytes(program.types.get(o, "")))
                         for o in ins.operands) + sum(result))
  return {"flops": flops, "bytes": nbytes}


def loop_correction(program: Program) -> dict[str, float]:
  """What ``cost_analysis`` leaves out of loops: ``{flops, bytes}``.

  For every computation that runs more often per step than XLA's cost
  analysis counts it (loop bodies and what they call), the extra runs times
  its dot/convolution FLOPs and, outside fusion bodies, the bytes of its
  instructions. See the module docstring.
  """
  return _costs(program, {c: program.times.get(c, 0) - program.once.get(c, 0)
                          for c in program.comps})


def program_costs(program: Program) -> dict[str, float]:
  """``{flops, bytes}`` of one whole step counted from the HLO, every loop
  iteration included: for compilers without ``cost_analysis`` (the GPU
  compiler's compile-only executables). Elementwise FLOPs are left out."""
  return _costs(program, program.times)


def loops(program: Program) -> list[tuple[str, int]]:
  """(body computation, runs per step) of every loop body that runs more
  than once per step."""
  return sorted((c, n) for c, n in program.times.items()
                if n > program.once.get(c, 0))
