"""Counting a compiled program's loops as often as they run.

XLA's cost analysis (`compiled.cost_analysis()`, where the planner's FLOPs and HBM bytes come from)
counts a while loop's body once, whatever its trip count: the layer scan, the LM head's row chunks,
the RL update's epochs, minibatches and micro-batches, and the loops XLA's SPMD partitioner makes
itself (a matmul over an FSDP-sharded weight becomes a windowed einsum: a loop over the shards).
`loop_factors` reads the compiled program's HLO text (after the compiler's passes and SPMD
partitioning: one device's share), takes each loop's trip count from XLA's own annotation where the
compiler wrote one (the CPU and GPU compilers do) or else from its condition (`counter < N`, the
counter starting from a constant and stepping by a constant, as `lax.scan`, `fori_loop` and the
partitioner's loops are built), and runs XLA's generic HloCostAnalysis (the CPU client's) on the
program and on each loop body as a program of its own. The factors are the program's count with
every body times its trips (nested loops multiply) over its count with each body once; the planner
multiplies the TPU compiler's own numbers by them. The generic analysis gives the TPU's FLOPs to
the digit, so FLOPs are counted in full; its bytes differ from the TPU's (TPU-specific fusions and
prefetch copies are counted its own way), so the bytes factor is the loops' share of the traffic
as the generic analysis sees it. Nothing is compiled again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax

_HEADER = re.compile(r'^(ENTRY )?%(\S+) \(.*\) -> .*\{$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = .*? ([a-z][\w-]*)\((.*?)\)(?:, |$)')
_NAME = re.compile(r'%([\w.\-]+)')
_FOLLOW = ('copy', 'bitcast', 'convert', 'reshape')  # ops that pass a scalar counter through


@dataclasses.dataclass
class Computation:
  name: str
  lines: list[str]  # header, instructions, closing brace
  ops: dict[str, tuple[str, list[str], str]]  # instruction -> (opcode, operand names, its line)
  root: str


def _parse(text: str) -> tuple[str, dict[str, Computation], str]:
  """(the module's header line, its computations in order, the entry's name)."""
  header, comps, entry, current = '', {}, '', None
  for line in text.splitlines():
    if line.startswith('HloModule '):
      header = line
    elif current is None:
      m = _HEADER.match(line)
      if m:
        current = Computation(m.group(2), [line], {}, '')
        entry = m.group(2) if m.group(1) else entry
    else:
      current.lines.append(line)
      if line == '}':
        comps[current.name] = current
        current = None
        continue
      m = _INSTRUCTION.match(line)
      if m:
        current.ops[m.group(1)] = (m.group(2), _NAME.findall(m.group(3)), line)
        if line.lstrip().startswith('ROOT '):
          current.root = m.group(1)
  return header, comps, entry


def _module_header(header: str) -> str:
  """The module's header for another entry: its name and partition counts (the layouts, aliasing
  and donation it states are the old entry's)."""
  keep = re.findall(r'(?:num_partitions|replica_count)=\d+', header)
  return ', '.join([header.split(',')[0]] + keep)


def _while_loops(comp: Computation) -> list[tuple[str, str, str]]:
  """(instruction, condition, body) of each while loop in a computation."""
  loops = []
  for name, (opcode, _, line) in comp.ops.items():
    if opcode == 'while':
      cond, body = (re.search(rf'{k}=%([\w.\-]+)', line).group(1) for k in ('condition', 'body'))
      loops.append((name, cond, body))
  return loops


def _value(comp: Computation, name: str):
  """A scalar's value as an int, ('counter', k, offset) for tuple element k of the computation's
  parameter plus a constant, or None."""
  opcode, operands, line = comp.ops.get(name, ('', [], ''))
  if opcode in _FOLLOW and len(operands) == 1:
    return _value(comp, operands[0])
  if opcode == 'constant':
    m = re.search(r'constant\((-?\d+)\)', line)
    return int(m.group(1)) if m else None
  if opcode == 'get-tuple-element' and comp.ops.get(operands[0], ('',))[0] == 'parameter':
    return ('counter', int(re.search(r'index=(\d+)', line).group(1)), 0)
  if opcode in ('add', 'subtract') and len(operands) == 2:
    a, b = (_value(comp, o) for o in operands)
    sign = 1 if opcode == 'add' else -1
    if isinstance(a, tuple) and isinstance(b, int):
      return a[:2] + (a[2] + sign * b,)
    if opcode == 'add' and isinstance(b, tuple) and isinstance(a, int):
      return b[:2] + (b[2] + a,)
  return None


def trip_count(comps: dict[str, Computation], parent: str, loop: str, cond: str, body: str) -> int:
  """The trip count of a `lax.scan` / `fori_loop`-shaped while loop: the one XLA's loop analysis
  wrote on the loop (`known_trip_count`, as the CPU and GPU compilers do), else read from it: the
  condition compares a counter with a constant, the counter starts from a constant and the body
  adds a constant."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', comps[parent].ops[loop][2])
  if known:
    return int(known.group(1))
  c = comps[cond]
  opcode, operands, line = c.ops[c.root]
  direction = re.search(r'direction=(\w+)', line)
  if opcode != 'compare' or not direction:
    raise NotImplementedError(f'while loop {loop}: its condition {cond} is not a comparison')
  a, b = (_value(c, o) for o in operands)
  direction = direction.group(1)
  if isinstance(b, tuple) and isinstance(a, int):  # N > i is i < N
    a, b = b, a
    direction = {'GT': 'LT', 'GE': 'LE', 'LT': 'GT', 'LE': 'GE'}.get(direction, direction)
  if not (isinstance(a, tuple) and isinstance(b, int) and direction in ('LT', 'LE')):
    raise NotImplementedError(f'while loop {loop}: condition {cond} is not `counter < constant`')
  index, limit = a[1], b - a[2] + (1 if direction == 'LE' else 0)
  init_tuple = comps[parent].ops[comps[parent].ops[loop][1][0]]
  start = _value(comps[parent], init_tuple[1][index]) if init_tuple[0] == 'tuple' else None
  b_comp = comps[body]
  root = b_comp.ops[b_comp.root]
  step = _value(b_comp, root[1][index]) if root[0] == 'tuple' else None
  if not (isinstance(start, int) and isinstance(step, tuple) and step[1] == index and step[2] > 0):
    raise NotImplementedError(f'while loop {loop}: its counter does not start from a constant '
                              f'and step by a constant')
  return max(0, math.ceil((limit - start) / step[2]))


def loop_factors(hlo_text: str) -> tuple[float, float]:
  """How many times XLA's (FLOPs, HBM bytes) of a compiled program (its `as_text()`) its loops in
  full come to."""
  from jax._src.lib import _jax
  from jaxlib import _hlo
  header, comps, entry = _parse(hlo_text)
  header = _module_header(header)
  client = jax.local_devices(backend='cpu')[0].client
  order = list(comps)

  def reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
      n = todo.pop()
      if n in seen:
        continue
      seen.add(n)
      todo += [c for line in comps[n].lines[1:] for c in _NAME.findall(line) if c in comps]
    return seen

  @functools.cache
  def once(name: str) -> tuple[float, float]:
    """XLA's count for the program that `name` is the entry of (its loops' bodies once)."""
    keep = reachable(name)
    parts = [header, '']
    for n in order:
      if n in keep:
        lines = list(comps[n].lines)
        lines[0] = ('ENTRY ' if n == name else '') + lines[0].removeprefix('ENTRY ')
        parts += lines + ['']
    cost = _jax.hlo_module_cost_analysis(client, _hlo.hlo_module_from_text('\n'.join(parts)))
    return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))

  @functools.cache
  def extra(name: str) -> tuple[float, float]:
    """What XLA's count of `name` leaves out: each loop body's further trips, nested ones too."""
    flops = bytes_ = 0.0
    loops = _while_loops(comps[name])
    for loop, cond, body in loops:
      trips = trip_count(comps, name, loop, cond, body)
      b_once, b_extra = once(body), extra(body)
      flops += (trips - 1) * b_once[0] + trips * b_extra[0]
      bytes_ += (trips - 1) * b_once[1] + trips * b_extra[1]
    looped = {c for _, cond, body in loops for c in (cond, body)}
    called = {c for _, _, line in comps[name].ops.values() for c in _NAME.findall(line)
              if c in comps and c not in looped and c != name}
    for c in called:  # a loop inside a call, a conditional's branch, ...: as often as they run
      f, b = extra(c)
      flops, bytes_ = flops + f, bytes_ + b
    return flops, bytes_

  total, more = once(entry), extra(entry)
  return (total[0] + more[0]) / max(total[0], 1.0), (total[1] + more[1]) / max(total[1], 1.0)
