"""The RL algorithm's settings (`RLConfig`, the fields of config.rl that the update and the iteration
read) and the choices they allow."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rlaif_jax.infra.errors import UserError

ALGORITHMS = ('ppo', 'reinforce', 'rloo')
REWARDS = ('reward_model', 'judge')


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """What the RL update and iteration do (config.rl holds these fields and the loop's own)."""
  algorithm: str = 'ppo'  # ppo | reinforce | rloo
  epochs: int = 2  # passes over each rollout batch
  minibatches: int = 2  # per epoch
  micro_batches: int = 1  # gradient accumulation: slices of each minibatch, one at a time
  clip_eps: float = 0.2
  value_clip: float = 0.2
  vf_coef: float = 0.5
  entropy_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  kl_estimator: str = 'k1'
  whiten_advantages: bool = True
  samples_per_prompt: int = 1  # RLOO needs >= 2 (rows of one prompt are adjacent)
  value_model: str = 'shared'  # PPO's value head: 'shared' (policy trunk) or 'separate' (own model)
  kl_coef: float = 0.05  # the starting (or fixed) coefficient of the per-token KL penalty
  kl_target: float = 0.0  # > 0: adaptive controller moves kl_coef so the sequence KL nears this
  kl_horizon: float = 10000.0  # the controller's horizon (in samples)
  missing_eos_penalty: float = 0.0  # subtracted from the score of a response that never stopped
  reward: str = 'reward_model'  # the score: 'reward_model' (canonical RLAIF) or 'judge' (d-RLAIF)

  @classmethod
  def from_config(cls, c: Mapping[str, Any]) -> 'RLConfig':
    """The RLConfig fields of config.rl (its other fields are the loop's: iterations, batch size...)."""
    return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise UserError(f'Unknown rl.algorithm {self.algorithm!r}; choose one of {ALGORITHMS}.')
    if self.reward not in REWARDS:
      raise UserError(f'Unknown rl.reward {self.reward!r}; choose one of {REWARDS}.')
    if self.value_model not in ('shared', 'separate'):
      raise UserError(f"Unknown rl.value_model {self.value_model!r}; use 'shared' or 'separate'.")
    if min(self.epochs, self.minibatches, self.micro_batches) < 1:
      raise UserError(f'rl.epochs, rl.minibatches and rl.micro_batches must be >= 1, got '
                      f'{self.epochs}, {self.minibatches}, {self.micro_batches}.')
    if self.algorithm == 'rloo' and self.samples_per_prompt < 2:
      raise UserError('rl.algorithm=rloo needs rl.samples_per_prompt >= 2 (the leave-one-out '
                      'baseline averages the other samples of the same prompt).')


def values_from_first_step(cfg: RLConfig) -> bool:
  """Whether a PPO update left to find the old values takes them from its first step's own forward
  pass: with one minibatch of the whole rollout (and no micro-batches) that step runs the value
  model on exactly the inputs and parameters the old values come from, so a separate pass would
  only repeat it. Otherwise the update runs a forward pass for them first."""
  return cfg.algorithm == 'ppo' and cfg.minibatches == 1 and cfg.micro_batches == 1
