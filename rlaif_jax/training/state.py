"""The train state (parameters, optimizer state, step counter) of one model or of several trained
together, its shardings, and the optimizer (AdamW with warmup and cosine decay after clipping)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlaif_jax.infra import sharding as shd


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
