"""One device mesh (axes data, fsdp, tensor) and a logical-axis rules table, both from the config.

Parameters and activations are annotated with logical names (`embed`, `heads`, `batch`, ...); the rules
table maps each name to mesh axes (or None = replicated). A name with no rule is an error, never a
silent replication; a dimension that its mesh axes do not divide is an error that names the fix.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from rlaif_jax.infra.errors import UserError

from rlaif_jax.infra.axis_rules import DEFAULT_RULES, MESH_AXES  # noqa: F401 (re-exported)


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
  """Normalise a rules table from a config (list of pairs, lists instead of tuples) to tuples."""
  out = []
  for pair in rules:
    if len(pair) != 2:
      raise UserError(f'Bad logical-axis rule {pair!r}: each rule is (logical_name, mesh_axes).')
    name, axes = pair
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes)
      bad = [a for a in axes if a not in MESH_AXES]
    else:
      bad = [] if axes is None or axes in MESH_AXES else [axes]
    if bad:
      raise UserError(f'Logical-axis rule for {name!r} names mesh axes {bad}; mesh axes are '
                      f'{MESH_AXES} (or None for replicated).')
    out.append((str(name), axes))
  return tuple(out)


def platform() -> str:
  """The platform a program being traced is for: the devices of the mesh set by `jax.set_mesh`
  (the planner compiles for TPU devices from a CPU host), else the backend JAX runs on. Every
  platform-specific choice of the model code asks this, never `jax.default_backend()`."""
  device = getattr(jax.sharding.get_abstract_mesh(), 'abstract_device', None)
  return getattr(device, 'platform', None) or jax.default_backend()


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """Mesh from {'data': d, 'fsdp': f, 'tensor': t}; one entry may be -1 to take the remaining devices."""
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise UserError(f'Unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}.')
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f'Mesh {dict(shape)}: only one axis may be -1 (fill the remaining devices).')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if known <= 0 or len(devices) % known:
      raise UserError(f'Mesh {dict(shape)} does not fit {len(devices)} devices: the fixed axes '
                      f'({known}) must divide the device count. Set --config.mesh.* to fit.')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise UserError(f'Mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but '
                    f'{len(devices)} are available. Set --config.mesh.* so the product matches, '
                    f'or use -1 on one axis.')
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(axes: Sequence[str | None], rules: Sequence[tuple[str, Any]],
                    shape: Sequence[int] | None = None, mesh: Mesh | None = None,
                    what: str = 'array', strict: bool = True) -> PartitionSpec:
  """Logical names -> PartitionSpec. With shape and mesh, checks each dimension divides its axes.

  strict=False (activations) replicates a dimension its axes do not divide instead of raising.
  """
  table = dict(rules)
  spec, used = [], set()
  for i, name in enumerate(axes):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise UserError(f'{what}: logical axis {name!r} has no rule in the logical-axis rules table; '
                      f'add ({name!r}, <mesh axes or None>) to config.logical_axis_rules.')
    mesh_axes = table[name]
    if mesh_axes is None:
      spec.append(None)
      continue
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    mesh_axes = tuple(a for a in mesh_axes if a not in used)  # a mesh axis is used at most once
    if mesh is not None:
      mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape and mesh.shape[a] > 1)
    if shape is not None and mesh is not None and mesh_axes:
      n = math.prod(mesh.shape[a] for a in mesh_axes)
      if shape[i] % n:
        if not strict:
          spec.append(None)
          continue
        raise UserError(
            f'{what}: dimension {i} ({name}={shape[i]}) cannot be split evenly over mesh axes '
            f'{mesh_axes} of size {n}. Fix: set config.mesh so the size of {"x".join(mesh_axes)} '
            f'divides {shape[i]}, or map {name!r} to other mesh axes (or None) in '
            f'config.logical_axis_rules.')
    used.update(mesh_axes)
    spec.append(mesh_axes if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
  return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: Sequence[str | None], rules: Sequence[tuple[str, Any]]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op when no mesh is set."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(axes, rules, x.shape, mesh, what='activation', strict=False)
  return jax.lax.with_sharding_constraint(x, spec)


def _path_name(path) -> str:
  return '/'.join(str(getattr(p, 'key', getattr(p, 'idx', p))) for p in path)


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for an nnx State (abstract or concrete), from each Variable's `logical_axes`."""

  def one(path, var):
    if not isinstance(var, nnx.Variable):
      return NamedSharding(mesh, PartitionSpec())
    meta = var.get_metadata()
    if 'logical_axes' not in meta:
      raise UserError(f'Parameter {_path_name(path)} has no logical_axes annotation; every '
                      f'parameter needs one so the rules table can shard it.')
    spec = logical_to_spec(meta['logical_axes'], rules, var.get_value().shape, mesh,
                           what=f'parameter {_path_name(path)}')
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]], shape: Sequence[int]) -> NamedSharding:
  """Sharding of a [B, ...] input batch: batch over its rule's axes, the rest replicated."""
  axes = ('batch',) + (None,) * (len(shape) - 1)
  return NamedSharding(mesh, logical_to_spec(axes, rules, shape, mesh, what='input batch'))


def model_shardings(model: nnx.Module, mesh: Mesh) -> tuple[Any, NamedSharding, NamedSharding]:
  """(state shardings, [B, ...] batch sharding, replicated sharding) for a model on a mesh; the
  model's rules table is `model.cfg.logical_axis_rules`."""
  rules = model.cfg.logical_axis_rules
  batch = NamedSharding(mesh, logical_to_spec(('batch',), rules, None, mesh))
  return state_shardings(nnx.state(model), mesh, rules), batch, NamedSharding(mesh, PartitionSpec())


def batch_shards(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> int:
  """How many ways the `batch` rule splits a batch on this mesh (batches must be a multiple)."""
  spec = logical_to_spec(('batch',), rules, None, mesh)
  return math.prod(mesh.shape[a] for a in jax.tree.leaves(tuple(spec)))


def fill_batch(rows: list, multiple: int) -> list:
  """Repeat the first row until len(rows) is a multiple of `multiple` (callers drop the extras)."""
  return rows + [rows[0]] * (-len(rows) % multiple)


def global_arrays(args: tuple, in_shardings: tuple) -> tuple:
  """Host (NumPy) inputs as global arrays with their shardings, for multi-process runs: every
  process holds the same full host value and contributes the shards of its own devices."""

  def put(sh, subtree):
    return jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sh, lambda i: x[i])
                        if isinstance(x, np.ndarray) else x, subtree)

  return tuple(jax.tree.map(put, sh, a, is_leaf=lambda x: isinstance(x, NamedSharding))
               for sh, a in zip(in_shardings, args))


def on_mesh(jitted: Callable, mesh: Mesh, in_shardings: tuple | None = None) -> Callable:
  """Call a jitted step with the mesh set (activation constraints need it); keeps `.jitted` for
  compile counting (`fn.jitted._cache_size()`). With several processes, host inputs are made global
  arrays first (`in_shardings`: the jit's, one entry per argument)."""

  def call(*args):
    if in_shardings is not None and jax.process_count() > 1:
      args = global_arrays(args, in_shardings)
    with jax.set_mesh(mesh):
      return jitted(*args)

  call.jitted = jitted
  return call


def create_sharded(make: Callable[[], nnx.Module], mesh: Mesh,
                   rules: Sequence[tuple[str, Any]]) -> nnx.Module:
  """Build a module whose parameters are born sharded: eval_shape, then a jitted init."""
  abstract = nnx.eval_shape(make)
  graphdef, abstract_state = nnx.split(abstract)
  out = state_shardings(abstract_state, mesh, rules)

  @jax.jit
  def init():
    return nnx.split(make())[1]

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=out)()
  return nnx.merge(graphdef, state)


def put_sharded(graphdef: Any, abstract_state: Any, arrays: Mapping[str, np.ndarray], mesh: Mesh,
                rules: Sequence[tuple[str, Any]]) -> nnx.Module:
  """Place host arrays (keyed by 'a/b/c' state path) on the mesh; each device gets only its slice."""
  shardings = state_shardings(abstract_state, mesh, rules)

  def one(path, var, sh):
    name = _path_name(path)
    if name not in arrays:
      raise KeyError(f'No weight for parameter {name}.')
    host = arrays[name]
    if tuple(host.shape) != tuple(var.get_value().shape):
      raise UserError(f'Weight {name} has shape {tuple(host.shape)}, the model expects '
                      f'{tuple(var.get_value().shape)}.')
    dtype = var.get_value().dtype
    arr = jax.make_array_from_callback(host.shape, sh.get_value(),
                                       lambda idx: np.asarray(host[idx], dtype=dtype))
    return var.replace(arr)

  state = jax.tree_util.tree_map_with_path(
      one, abstract_state, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def flat_names(state: Any) -> list[str]:
  """'a/b/c' path of every Variable in a State."""
  leaves = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  return [_path_name(p) for p, _ in leaves]
