"""The generic jitted train step: gradients (accumulated over micro-batches when asked), an optimizer
update that skips non-finite steps, and the jit with explicit shardings that donates the state. The
SFT and reward-model steps are this step with their losses; the RL update uses its pieces."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlaif_jax.infra import sharding as shd
from rlaif_jax.models import lora
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.training.state import TrainState, init_state, train_state_shardings
from rlaif_jax.infra.errors import UserError


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
      raise UserError(f'A batch of {b} rows does not split into {micro_batches} micro-batches; '
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


def make_train_step(model: model_lib.Transformer, optimizer: optax.GradientTransformation,
              mesh: jax.sharding.Mesh, loss: Callable[[model_lib.Transformer, Any], tuple],
              micro_batches: int = 1):
  """`step(state, batch) -> (state, metrics)` for `loss(model, batch) -> (loss, metrics dict)` (a
  mean over the batch rows): jitted with explicit shardings (batch leaves split on their leading
  axis), donates the state, skips non-finite updates (metrics['skipped']); with micro_batches > 1
  the gradient is accumulated over that many slices of the batch. `step.init()` gives the initial
  TrainState, sharded as the step expects, so the first call compiles once."""
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  if model.cfg.lora_rank:  # only the adapters train (models/lora.py)
    optimizer = lora.only_adapters(optimizer)

  def step(state: TrainState, batch: Any):
    frozen = lora.freeze_base if model.cfg.lora_rank else (lambda p: p)
    fn = lambda params, b: loss(nnx.merge(graphdef, frozen(params), rest), b)
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
