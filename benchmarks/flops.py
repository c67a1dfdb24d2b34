"""FLOPs of a jitted function counted from its jaxpr (matmuls and convolutions).

An independent check of XLA's cost analysis: every ``dot_general`` and
``conv_general_dilated`` in the traced program (forward, backward and optimizer
alike) counts 2 x multiply-adds; loops multiply their body by the trip count.
Element-wise work (softmax, norms, GELU, Adam) is not counted, so the result is
a little below XLA's figure, which includes it.

Each operation is put in a kind by the ``jax.named_scope`` it was traced under
(the model names its parts: ``attn_scores`` and ``attn_linear`` inside window
attention, ``mlp``, ``vgg`` in the loss); convs outside those are ``conv``, other
matmuls ``other_linear``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core

# Named scopes (innermost match wins) -> kind.
KINDS = ("vgg", "attn_scores", "attn_linear", "mlp")


def _kind(eqn, default: str) -> str:
  stack = str(eqn.source_info.name_stack)
  for k in KINDS:
    if k in stack:
      return k
  return default


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  del lb
  rhs_free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
  return 2 * math.prod(lhs) * math.prod(rhs_free)


def _conv_flops(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  out_features = rhs[dn.rhs_spec[0]]
  # Each output element: (kernel elements per output feature) multiply-adds.
  # (Feature groups already shrink the kernel's input dimension.)
  per_out = math.prod(rhs) // out_features
  return 2 * math.prod(out) * per_out


def _sub_jaxprs(eqn):
  """(jaxpr, multiplier) for every sub-program of a higher-order primitive."""
  name = eqn.primitive.name
  for key, val in eqn.params.items():
    vals = val if isinstance(val, (tuple, list)) else (val,)
    for v in vals:
      j = v.jaxpr if isinstance(v, jex_core.ClosedJaxpr) else v
      if isinstance(j, jex_core.Jaxpr):
        if name == "cond" and key == "branches":
          yield j, 1.0 / len(vals)  # one branch runs (averaged: equal sizes)
        elif name == "scan":
          yield j, eqn.params["length"]
        elif name == "while":
          if key == "body_jaxpr":
            raise ValueError("while loop with an unknown trip count")
        else:
          yield j, 1


def count_jaxpr(jaxpr, mult: float = 1.0, acc: dict | None = None,
                loops_once: bool = False) -> dict:
  """Adds the FLOPs of ``jaxpr`` (times ``mult``) into ``acc`` by kind.

  ``loops_once``: count a loop body once, as XLA's cost analysis does.
  """
  acc = {} if acc is None else acc
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      k = _kind(eqn, "other_linear")
      acc[k] = acc.get(k, 0) + mult * _dot_flops(eqn)
    elif name == "conv_general_dilated":
      k = _kind(eqn, "conv")
      acc[k] = acc.get(k, 0) + mult * _conv_flops(eqn)
    else:
      for sub, m in _sub_jaxprs(eqn):
        if loops_once and name == "scan":
          m = 1
        count_jaxpr(sub, mult * m, acc, loops_once)
  return acc


def count_step_flops(fn: Callable[..., Any], args: tuple) -> dict:
  """FLOPs of ``fn(*args)`` (args may be ``jax.ShapeDtypeStruct``s).

  Returns {'total', 'by_kind': {kind: FLOPs}, 'total_loops_once'}.
  """
  closed = jax.make_jaxpr(fn)(*args)
  by_kind = count_jaxpr(closed.jaxpr)
  by_kind = {k: float(v) for k, v in sorted(by_kind.items())}
  once = count_jaxpr(closed.jaxpr, loops_once=True)
  return {"total": float(sum(by_kind.values())), "by_kind": by_kind,
          "total_loops_once": float(sum(once.values()))}
