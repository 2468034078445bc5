"""Training pieces shared by the SFT, reward-model and RL steps: the optimizer, the train state and
its shardings, a gradient step that skips non-finite updates, and a generic jitted train step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlaif_jax import model as model_lib
from rlaif_jax import sharding as shd


def make_optimizer(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                   weight_decay: float = 0.0, clip_norm: float = 1.0) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, after global-norm gradient clipping."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                                max(total_steps, warmup_steps + 1))
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, weight_decay=weight_decay))


class TrainState(NamedTuple):
  params: Any  # nnx.State of the model's parameters
  opt_state: Any
  step: jax.Array


Models = Any  # a Transformer, or a dict of them trained together (policy + separate value model)


def model_params(models: Models) -> Any:
  """The trainable parameters: an nnx.State, or a dict of them for a dict of models."""
  if isinstance(models, dict):
    return {name: nnx.state(m, nnx.Param) for name, m in models.items()}
  return nnx.state(models, nnx.Param)


def init_state(models: Models, optimizer: optax.GradientTransformation) -> TrainState:
  params = model_params(models)
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def train_state_shardings(models: Models, optimizer: optax.GradientTransformation,
                          mesh: jax.sharding.Mesh) -> TrainState:
  """Shardings of a TrainState: parameters by each model's rules, optimizer moments like the
  parameters they track, counters replicated."""
  abstract = jax.eval_shape(lambda: init_state(models, optimizer))
  if isinstance(models, dict):
    param_sh = {name: shd.state_shardings(abstract.params[name], mesh, m.cfg.logical_axis_rules)
                for name, m in models.items()}
  else:
    param_sh = shd.state_shardings(abstract.params, mesh, models.cfg.logical_axis_rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, abstract.opt_state, param_sh,
                                 transform_non_params=lambda _: replicated,
                                 is_leaf=lambda x: isinstance(x, nnx.Variable))
  return TrainState(param_sh, opt_sh, replicated)


def apply_gradients(optimizer: optax.GradientTransformation, state: TrainState, grads: Any,
                    loss: jax.Array) -> tuple[TrainState, jax.Array]:
  """One optimizer step; when the loss or any gradient is not finite the step is skipped (params and
  optimizer state unchanged, the step counter still advances). Returns (state, skipped as 0/1)."""
  finite = jnp.isfinite(loss)
  for g in jax.tree.leaves(grads):
    finite &= jnp.all(jnp.isfinite(g))

  def apply(params, opt_state):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # a conditional, not a select over every leaf: XLA compiles that select very slowly (16x)
  params, opt_state = jax.lax.cond(finite, apply, lambda p, o: (p, o), state.params, state.opt_state)
  return TrainState(params, opt_state, state.step + 1), 1.0 - finite.astype(jnp.float32)


def split_micro_batches(batch: Any, micro_batches: int) -> Any:
  """[B, ...] leaves -> [k, B / k, ...]: micro-batch i takes rows i, i + k, i + 2k, ... so that each
  one stays spread over every device the batch axis is split across (contiguous blocks of rows would
  each sit on a few devices only)."""
  def one(x):
    b = x.shape[0]
    if b % micro_batches:
      raise ValueError(f'A batch of {b} rows does not split into {micro_batches} micro-batches; '
                       f'make the batch size a multiple of the micro_batches setting.')
    return x.reshape(b // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1)
  return jax.tree.map(one, batch)


def accumulated_value_and_grad(fn: Callable[[Any, Any], tuple], params: Any, batch: Any,
                               micro_batches: int = 1, weights: jax.Array | None = None):
  """`jax.value_and_grad(fn, has_aux=True)(params, batch)` computed over `micro_batches` slices of
  the batch in a `lax.scan` (gradient accumulation: activations of one slice live at a time).

  fn(params, batch) -> (loss, metrics). The loss, metrics and gradients are sums over micro-batches
  weighted by `weights` [k] (default 1/k, exact for a mean over equal rows; for a masked token mean
  pass each slice's share of the tokens)."""
  grad_fn = jax.value_and_grad(fn, has_aux=True)
  if micro_batches == 1:
    return grad_fn(params, batch)
  micro = split_micro_batches(batch, micro_batches)
  if weights is None:
    weights = jnp.full((micro_batches,), 1.0 / micro_batches, jnp.float32)

  def add(total, xs):
    mb, w = xs
    out = grad_fn(params, mb)
    return jax.tree.map(lambda t, x: t + w * x, total, out), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro)))
  total, _ = jax.lax.scan(add, zeros, (micro, weights))
  return total


def make_step(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
              mesh: jax.sharding.Mesh, loss: Callable[[model_lib.Transformer, Any], tuple],
              micro_batches: int = 1):
  """`step(state, batch) -> (state, metrics)` for `loss(model, batch) -> (loss, metrics dict)` (a
  mean over the batch rows): jitted with explicit shardings (batch leaves split on their leading
  axis), donates the state, skips non-finite updates (metrics['skipped']); with micro_batches > 1
  the gradient is accumulated over that many slices of the batch. `step.init()` gives the initial
  TrainState, sharded as the step expects, so the first call compiles once."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)

  def step(state: TrainState, batch: Any):
    fn = lambda params, b: loss(nnx.merge(graphdef, params, rest), b)
    (value, metrics), grads = accumulated_value_and_grad(fn, state.params, batch, micro_batches)
    state, metrics['skipped'] = apply_gradients(optimizer, state, grads, value)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return state, metrics

  state_sh = train_state_shardings(model, optimizer, mesh)
  rules = model.cfg.logical_axis_rules
  batch_sh = jax.sharding.NamedSharding(mesh, shd.logical_to_spec(('batch',), rules, None, mesh))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  jitted = jax.jit(step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                   donate_argnums=(0,))
  call = shd.on_mesh(jitted, mesh, (state_sh, batch_sh))
  call.init = lambda: jax.device_put(init_state(model, optimizer), state_sh)
  call.state_shardings = state_sh
  return call
