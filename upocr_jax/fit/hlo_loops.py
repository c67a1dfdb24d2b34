"""Trip counts of HLO while loops from their condition, start and step.

The TPU compiler drops the known_trip_count attribute that the CPU and GPU
compilers keep, so :mod:`upocr_jax.fit.hlo` counts such loops from their text
here: the condition ``i < N``, the counter's initial value in the while's
tuple and its increment in the body.
"""

from __future__ import annotations

import dataclasses
import re


@dataclasses.dataclass
class Instr:
  """One HLO instruction."""
  name: str
  op: str
  result: str          # the result type text
  operands: list[str]  # operand names
  attrs: str
  raw_operands: str = ""  # e.g. the index of a parameter


def _fused_body(ins: Instr, comps: dict[str, list[Instr]]) -> list[Instr]:
  """The instructions of the computation a fusion calls ([] otherwise): the
  CPU compiler wraps a loop's compare and add in fusions of their own."""
  callee = re.search(r"calls=%?([\w.\-]+)", ins.attrs)
  return comps.get(callee.group(1), []) if ins.op == "fusion" and callee \
      else []


def _is_less_than(ins: Instr, comps: dict[str, list[Instr]]) -> bool:
  """A compare with direction LT, or a fusion wrapping one (CPU)."""
  if ins.op == "compare":
    return "direction=LT" in ins.attrs
  return any(i.op == "compare" and "direction=LT" in i.attrs
             for i in _fused_body(ins, comps))


def _tuple_index(ins: Instr | None) -> int | None:
  """K of ``get-tuple-element(param), index=K``, else None."""
  m = re.search(r"\bindex=(\d+)", ins.attrs) if ins else None
  return int(m.group(1)) if m and ins.op == "get-tuple-element" else None


def _source(named: dict[str, Instr], name: str) -> Instr | None:
  """The instruction ``name``, seen through copies (the CPU compiler copies
  loop counters)."""
  ins = named.get(name)
  while ins is not None and ins.op == "copy" and ins.operands:
    ins = named.get(ins.operands[0])
  return ins


def _int_constant(ins: Instr | None) -> int | None:
  value = ins.raw_operands.strip() if ins and ins.op == "constant" else ""
  return int(value) if value.lstrip("-").isdigit() else None


def _add_operands(comps: dict[str, list[Instr]], ins: Instr | None
                  ) -> list[str] | None:
  """Operands of an ``add``, or of a fusion that wraps just one (CPU)."""
  if ins is None:
    return None
  if ins.op == "add":
    return ins.operands
  body = _fused_body(ins, comps)
  if [i.op for i in body if i.op != "parameter"] == ["add"]:
    return ins.operands
  return None


def trip_count(comps: dict[str, list[Instr]],
               names: dict[str, dict[str, Instr]], roots: dict[str, str],
               loop: tuple[str, str, str, str]) -> int:
  """Trip count of a counted loop ``for (i = start; i < N; i += step)``
  from its condition, body and initial tuple (the TPU compiler drops the
  known_trip_count attribute that the CPU and GPU compilers keep). lax.scan
  and fori_loop count from 0 by 1; the TPU compiler's windowed einsums
  (all-gather or reduce-scatter fused into a dot over N shards, as FSDP
  makes) step by 2. A start or step that is not a literal counts as 0 and
  1. 1 (counted once, as cost_analysis does) when the condition is not of
  that form.

  ``names`` maps each computation's instruction names to instructions;
  ``loop`` is (caller, body, condition, initial tuple) of the while.
  """
  caller, body, condition, init = loop
  named = names.get(condition, {})
  for ins in comps.get(condition, []):
    if not _is_less_than(ins, comps):
      continue
    limit = next((v for v in (_int_constant(named.get(o))
                              for o in ins.operands[1:]) if v is not None),
                 None)
    if limit is None:
      continue
    k = next((i for i in (_tuple_index(_source(named, o))
                          for o in ins.operands) if i is not None), None)
    return max(0, -(-(limit - _start(names.get(caller, {}), init, k)) //
                    _step(comps, names.get(body, {}), roots.get(body), k)))
  return 1


def _start(named: dict[str, Instr], init: str, k: int | None) -> int:
  """The literal initial value of element ``k`` of a while's tuple, or 0."""
  tup = named.get(init)
  if k is None or tup is None or tup.op != "tuple" or k >= len(tup.operands):
    return 0
  value = _int_constant(_source(named, tup.operands[k]))
  return value if value is not None else 0


def _step(comps: dict[str, list[Instr]], named: dict[str, Instr],
          root: str | None, k: int | None) -> int:
  """The literal step of element ``k`` of a loop body's result tuple
  (``add(get-tuple-element(param, k), constant)``), or 1."""
  tup = named.get(root) if root else None
  if k is None or tup is None or tup.op != "tuple" or k >= len(tup.operands):
    return 1
  operands = _add_operands(comps, _source(named, tup.operands[k]))
  if operands is None:
    return 1
  ops = [_source(named, o) for o in operands]
  if not any(_tuple_index(o) == k for o in ops):
    return 1
  step = next((v for v in map(_int_constant, ops) if v is not None), None)
  return step if step and step > 0 else 1
