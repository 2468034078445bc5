"""Orbax checkpoints for the training stages: everything needed to resume exactly.

A stage's `Checkpoints` is an Orbax `CheckpointManager` over `<dir>/<step>/` holding two items:
`state`, the array pytree (parameters, optimizer state, step counter, PRNG key data), saved
asynchronously and restored straight into the shardings of the current mesh (which may differ
from the one that saved it), and `meta`, a JSON dict (KL coefficient, the data iterator's state,
counters). Saves happen every `interval` steps (and on `force`), the last `keep` are kept, and a
checkpoint directory only counts once Orbax has finalized it, so a kill mid-save loses nothing.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra import storage
from rlaif_jax.infra.errors import MissingInput, UserError

_ITEMS = ('state', 'meta')


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding stand-ins for a pytree of arrays (what restore fills in); NumPy leaves (host
  values every process holds, such as PRNG key data) stay NumPy."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                      if isinstance(x, jax.Array) else x, tree)


def leaf_name(path) -> str:
  """'train/params/policy/blocks/attn/q_proj' for a key path into a state tree."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def without(tree: Any, frozen: Callable[[str], bool] | None) -> Any:
  """`tree` with the leaves whose names `frozen` picks left out (None): what a checkpoint holds when
  those leaves never change and come back from elsewhere (a LoRA model's base weights)."""
  if frozen is None:
    return tree
  return jax.tree_util.tree_map_with_path(lambda p, x: None if frozen(leaf_name(p)) else x, tree)


def put_back(restored: Any, like: Any, frozen: Callable[[str], bool] | None) -> Any:
  """The restored tree with the left-out leaves taken from `like` (the values in use now)."""
  if frozen is None:
    return restored
  saved = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x if frozen(leaf_name(p)) else saved[p], like)


class Checkpoints:
  """Periodic, asynchronous, keep-last-N checkpoints of one stage. `frozen` names leaves of the
  state that are never saved: restore takes them from the state it is given."""

  def __init__(self, directory: storage.PathLike, interval: int = 1, keep: int = 2, async_save: bool = True,
               frozen: Callable[[str], bool] | None = None):
    if interval < 1 or keep < 1:
      raise UserError(f'checkpoint.interval and checkpoint.keep must be >= 1, got {interval}, {keep}.')
    self.directory = storage.path(directory)
    self.frozen = frozen
    options = ocp.CheckpointManagerOptions(save_interval_steps=interval, max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    """Save if `step` is on the interval (or forced); returns whether a save started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(without(state, self.frozen)),
                              meta=ocp.args.JsonSave(meta))
    return self.manager.save(step, args=args, force=force)

  def restore(self, like: Any, step: int | None = None) -> tuple[int, Any, dict] | None:
    """(step, state, meta) of `step` (default: the latest), placed like the pytree `like`
    (arrays or ShapeDtypeStructs with shardings); None when there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    target = jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else abstract(x),
                          without(like, self.frozen))
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return step, put_back(out.state, like, self.frozen), dict(out.meta)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def stage_of(path: storage.PathLike, check: bool = False) -> str | None:
  """The stage a checkpoint path belongs to: WORKDIR/<stage>/checkpoints[/<step>] -> <stage>.
  With check=True, a path that does not exist or does not look like that is an error."""
  if not path:
    return None
  p = storage.path(path)
  if p.name.isdigit():
    p = p.parent
  if check and (not storage.path(path).is_dir() or p.name != 'checkpoints'):
    raise MissingInput(f'checkpoint.restore_from={path!r}: not an existing checkpoint folder; '
                       f'give WORKDIR/<stage>/checkpoints or WORKDIR/<stage>/checkpoints/<step>.')
  return p.parent.name if p.name == 'checkpoints' else None


def restore_from(path: storage.PathLike, like: Any, frozen: Callable[[str], bool] | None = None
                 ) -> tuple[int, Any, dict]:
  """Start from a given checkpoint: a stage's checkpoint directory (its latest step) or one step's
  directory inside it (`frozen` as for `Checkpoints`). A missing or empty path is a clear error."""
  path = storage.path(path)
  if not path.is_dir():
    raise MissingInput(f'checkpoint.restore_from: no checkpoint directory {path}; give a '
                       f'stage checkpoint folder (e.g. WORKDIR/rl/checkpoints) or one of its steps.')
  parent, step = (path.parent, int(path.name)) if path.name.isdigit() else (path, None)
  ckpt = Checkpoints(parent, async_save=False, frozen=frozen)
  try:
    out = ckpt.restore(like, step)
  finally:
    ckpt.close()
  if out is None:
    raise MissingInput(f'checkpoint.restore_from: {path} holds no finished checkpoint.')
  return out


def save_params(directory: storage.PathLike, params: Any, info: dict, marker: str = 'DONE.json') -> None:
  """A finished model: parameters (Orbax, from any mesh) and `info` as JSON in `marker`, written
  last, so a directory with the marker holds a complete model."""
  directory = storage.path(directory)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(directory / 'params', nnx.to_pure_dict(params), force=True)
  ckpt.wait_until_finished()
  storage.write_json(directory / marker, info)


def read_marker(directory: storage.PathLike, marker: str = 'DONE.json') -> dict | None:
  """The info of a finished directory (see `save_params`), None when it is not finished."""
  path = storage.path(directory) / marker
  return storage.read_json(path) if path.exists() else None


def restore_params(directory: storage.PathLike, model: Any, mesh: jax.sharding.Mesh, marker: str = 'DONE.json',
                   what: str = 'model') -> tuple[Any, dict]:
  """(parameters placed with the model's shardings on `mesh`, info) from `save_params`."""
  directory = storage.path(directory)
  info = read_marker(directory, marker)
  if info is None:
    raise MissingInput(f'No complete {what} in {directory} (missing {marker}); run the stage '
                       f'that writes it first, or fix the path.')
  params = nnx.state(model, nnx.Param)
  sh = shd.state_shardings(params, mesh, model.cfg.logical_axis_rules)
  target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                        nnx.to_pure_dict(params), nnx.to_pure_dict(sh))
  ckpt = ocp.StandardCheckpointer()
  path = directory / 'params'
  saved = set(traverse_util.flatten_dict(ckpt.metadata(path).item_metadata.tree))
  # an entry the checkpoint lacks keeps the model's own values: the scalar head of a policy
  # restored as a value model, the base weights under LoRA adapters saved alone
  target = traverse_util.unflatten_dict({k: v for k, v in traverse_util.flatten_dict(target).items()
                                         if k in saved})
  nnx.replace_by_pure_dict(params, ckpt.restore(path, target))
  return params, info

