"""One RL iteration: rollout, reference log-probs, rewards, KL, update, with its metrics and where
the time went.

    rl = RLLoop(policy, mesh, rl_cfg, sampling_cfg, optimizer, reward_source, value_model=None)
    state = rl.init()
    state, kl_coef, metrics = rl.iteration(state, ref_params, kl_coef, prompts, key)

The reward source (`rewards`) turns responses into sequence rewards. All state lives in the arguments
and results; the loop object only holds the compiled functions.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
import optax

from rlaif_jax.generation import sampler, scoring
from rlaif_jax.generation.text import PromptBatch
from rlaif_jax.infra import distributed
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import lora
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.rl import kl_control
from rlaif_jax.rl import update as update_lib
from rlaif_jax.rl.config import RLConfig
from rlaif_jax.rl.rewards import RewardSource, Responses, apply_missing_stop_penalty, stopped
from rlaif_jax.rl.rollout import Rollout
from rlaif_jax.training.state import TrainState


class RLLoop:
  """Compiled pieces of an RL iteration for one policy (and optional separate value model)."""

  def __init__(self, policy: model_lib.Transformer, mesh: jax.sharding.Mesh, cfg: RLConfig,
               sampling_cfg: sampler.SamplingConfig, optimizer: optax.GradientTransformation,
               reward_source: RewardSource, value_model: model_lib.Transformer | None = None,
               pad_id: int = 0):
    if sampling_cfg.top_k or sampling_cfg.top_p < 1.0:
      raise UserError(
          f'RL samples with top_k={sampling_cfg.top_k}, top_p={sampling_cfg.top_p}, but the update '
          f'scores tokens under the full softmax, which biases the importance ratio; set '
          f'rl.sampling.top_k=0 and rl.sampling.top_p=1.0 (temperature is fine).')
    self.cfg, self.sampling_cfg, self.reward_source, self.mesh = cfg, sampling_cfg, reward_source, mesh
    temperature = sampling_cfg.temperature or 1.0
    # the k rows of a prompt share its prefill (see sampler.prefill)
    self.sample = sampler.make_sampler(policy, mesh, sampling_cfg, pad_id, cfg.samples_per_prompt)
    self.reference_scores = scoring.jit_token_scores(policy, mesh, temperature)
    # the value model is used with rl.value_model='separate' (PPO) and ignored otherwise
    self.update = update_lib.make_update(policy, optimizer, mesh, cfg, temperature, value_model)

  def init(self) -> TrainState:
    return self.update.init()

  def iteration(self, state: TrainState, ref_params: Any, kl_coef: float, prompts: PromptBatch,
                key: jax.Array) -> tuple[TrainState, float, dict[str, float]]:
    """One iteration on a prompt batch (each prompt repeated rl.samples_per_prompt times).
    ref_params: the reference policy's parameters, or None for a LoRA policy whose reference is its
    own base weights (adapters off). Returns (new state, next KL coefficient, metrics as floats)."""
    cfg = self.cfg
    k = cfg.samples_per_prompt
    tokens, valid = np.repeat(prompts.tokens, k, 0), np.repeat(prompts.valid, k, 0)
    texts = None if prompts.texts is None else [t for t in prompts.texts for _ in range(k)]
    k_sample, k_update = jax.random.split(key)
    policy = state.params['policy']

    t0 = time.perf_counter()
    out = jax.block_until_ready(self.sample(policy, tokens, valid, k_sample))
    t1 = time.perf_counter()

    if ref_params is None:  # LoRA: the reference is the policy with its adapters off
      ref_params = lora.disabled(policy)
    ref = self.reference_scores(ref_params, tokens, valid, out.tokens, out.mask).log_probs
    # The sampler's log-probs are the policy's (same temperature): no scoring pass for them. PPO's
    # old values are left to the update, which takes them from its first forward pass when it can.
    rewards = self.reward_source(Responses(texts, tokens, valid, out.tokens, out.mask))
    host_tokens, host_mask, steps = distributed.to_host((out.tokens, out.mask, out.steps))
    ended = stopped(host_tokens, host_mask, self.sampling_cfg.stop_tokens)
    scores = rewards.normalized
    if cfg.missing_eos_penalty:
      scores = apply_missing_stop_penalty(scores, ended, cfg.missing_eos_penalty)
    rollout = Rollout(tokens, valid, out.tokens, out.mask, out.log_probs, ref, None,
                      np.asarray(scores, np.float32))
    rollout = jax.block_until_ready(rollout)
    t2 = time.perf_counter()

    state, metrics = self.update(state, rollout, kl_coef, k_update)
    metrics = {name: float(v) for name, v in distributed.to_host(metrics).items()}
    t3 = time.perf_counter()

    total = t3 - t0
    metrics[f'kl_{cfg.kl_estimator}'] = metrics['kl']  # the estimator behind `kl`, by name
    metrics.update(
        reward_raw=float(np.mean(rewards.raw)), reward=float(np.mean(rewards.normalized)),
        stopped_fraction=float(np.mean(ended)), kl_coef=float(kl_coef),
        decode_steps=int(steps), response_length=float(np.mean(np.sum(host_mask, 1))),
        time_rollout=t1 - t0, time_scoring=t2 - t1, time_update=t3 - t2, seconds=total,
        share_rollout=(t1 - t0) / total, share_scoring=(t2 - t1) / total,
        share_update=(t3 - t2) / total)
    for name, values in (rewards.terms or {}).items():  # each term (and monitored check) apart
      metrics[f'reward/{name}'] = float(np.mean(values))
    return state, kl_control.next_kl_coef(cfg, kl_coef, metrics['kl'], len(scores)), metrics
