"""One RL iteration: rollout, reference log-probs, rewards, KL, update, with its metrics and where
the time went. With rl.dynamic_sampling (DAPO) the rollout takes rounds: further prompt batches
(`more_prompts`) until the batch is full of groups with a learning signal (rl/dynamic_sampling.py).

    rl = RLLoop(policy, mesh, rl_cfg, sampling_cfg, optimizer, reward_source, value_model=None)
    state = rl.init()
    state, kl_coef, metrics = rl.iteration(state, ref_params, kl_coef, prompts, key)

The reward source (`rewards`) turns responses into sequence rewards. All state lives in the arguments
and results; the loop object only holds the compiled functions.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np
import optax

from rlaif_jax.generation import sampler, scoring
from rlaif_jax.generation.text import PromptBatch
from rlaif_jax.infra import distributed
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import lora
from rlaif_jax.models import transformer as model_lib
from rlaif_jax.rl import dynamic_sampling, kl_control
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
    if cfg.overlong_buffer >= sampling_cfg.max_new_tokens:
      raise UserError(f'rl.overlong_buffer={cfg.overlong_buffer} must be below the response budget '
                      f'(max_new_tokens={sampling_cfg.max_new_tokens}): it is the budget\'s last '
                      f'tokens, over which the overlong penalty grows.')
    self.cfg, self.sampling_cfg, self.reward_source, self.mesh = cfg, sampling_cfg, reward_source, mesh
    temperature = sampling_cfg.temperature or 1.0
    # the k rows of a prompt share its prefill (see sampler.prefill)
    self.sample = sampler.make_sampler(policy, mesh, sampling_cfg, pad_id, cfg.samples_per_prompt)
    self.reference_scores = scoring.jit_token_scores(policy, mesh, temperature)
    # the value model is used with rl.value_model='separate' (PPO) and ignored otherwise
    self.update = update_lib.make_update(policy, optimizer, mesh, cfg, temperature, value_model)

  def init(self) -> TrainState:
    return self.update.init()

  def sample_and_score(self, policy: Any, prompts: PromptBatch, key: jax.Array,
                       ref_params: Any = None) -> dict[str, Any]:
    """One round of sampling (each prompt rl.samples_per_prompt times) and its rewards: the rows'
    prompts, `samples` (the sampler's, decode steps in `steps`), `rewards`, whether each `ended`,
    the `scores` the update optimizes (after the missing-stop and overlong penalties), and the
    seconds the sampling took. Given `ref_params`, also the reference's log-probs (`ref`), its pass
    dispatched before the reward is computed (as the rows are final without dynamic sampling)."""
    cfg = self.cfg
    k = cfg.samples_per_prompt
    tokens, valid = np.repeat(prompts.tokens, k, 0), np.repeat(prompts.valid, k, 0)
    texts = None if prompts.texts is None else [t for t in prompts.texts for _ in range(k)]
    t0 = time.perf_counter()
    out = jax.block_until_ready(self.sample(policy, tokens, valid, key))
    t1 = time.perf_counter()
    ref = None if ref_params is None else self.reference_scores(
        ref_params, tokens, valid, out.tokens, out.mask).log_probs
    rewards = self.reward_source(Responses(texts, tokens, valid, out.tokens, out.mask))
    host_tokens, host_mask, steps = distributed.to_host((out.tokens, out.mask, out.steps))
    ended = stopped(host_tokens, host_mask, self.sampling_cfg.stop_tokens)
    scores = np.asarray(rewards.normalized, np.float32)
    if cfg.missing_eos_penalty:
      scores = apply_missing_stop_penalty(scores, ended, cfg.missing_eos_penalty)
    overlong = None
    if cfg.overlong_buffer:
      overlong = dynamic_sampling.overlong_penalty(
          host_mask.sum(1), self.sampling_cfg.max_new_tokens, cfg.overlong_buffer,
          cfg.overlong_penalty)
      scores = scores + overlong
    if cfg.dynamic_sampling:  # rounds are pooled and chosen from on the host
      out = sampler.Samples(*distributed.to_host(tuple(out[:3])), None)
    return dict(prompt=tokens, prompt_valid=valid, rewards=rewards, ended=ended, scores=scores,
                mask=host_mask, overlong=overlong, samples=out, ref=ref, steps=int(steps),
                sample_seconds=t1 - t0)

  def iteration(self, state: TrainState, ref_params: Any, kl_coef: float, prompts: PromptBatch,
                key: jax.Array, more_prompts: Callable[[], PromptBatch] | None = None
                ) -> tuple[TrainState, float, dict[str, float]]:
    """One iteration on a prompt batch (each prompt repeated rl.samples_per_prompt times).
    ref_params: the reference policy's parameters, or None for a LoRA policy whose reference is its
    own base weights (adapters off). more_prompts: the next prompt batch, for rl.dynamic_sampling's
    further rounds. Returns (new state, next KL coefficient, metrics as floats)."""
    cfg = self.cfg
    k_sample, k_update = jax.random.split(key)
    policy = state.params['policy']
    if ref_params is None:  # LoRA: the reference is the policy with its adapters off
      ref_params = lora.disabled(policy)
    t0 = time.perf_counter()
    pooled = [self.sample_and_score(policy, prompts, k_sample,
                                    None if cfg.dynamic_sampling else ref_params)]
    groups = len(pooled[0]['scores']) // cfg.samples_per_prompt
    if cfg.dynamic_sampling:
      if more_prompts is None:
        raise ValueError('rl.dynamic_sampling samples further prompt batches: pass more_prompts.')
      kept = lambda: sum(int(dynamic_sampling.informative(b['scores'], cfg.samples_per_prompt).sum())
                         for b in pooled)
      while len(pooled) < cfg.max_sampling_rounds and kept() < groups:
        pooled.append(self.sample_and_score(policy, more_prompts(),
                                            jax.random.fold_in(k_sample, len(pooled))))
    summed = {k: sum(b.pop(k) for b in pooled) for k in ('sample_seconds', 'steps')}  # rounds'
    batch = pooled[0]
    if cfg.dynamic_sampling:
      # the rounds' host arrays joined along rows (the same tree each round), then the chosen rows
      batch = jax.tree.map(lambda *xs: np.concatenate(xs), *pooled)
      flags = dynamic_sampling.informative(batch['scores'], cfg.samples_per_prompt)
      rows = dynamic_sampling.rows_of(dynamic_sampling.choose_groups(flags, groups),
                                      cfg.samples_per_prompt)
      batch = jax.tree.map(lambda x: x[rows], batch)
    tokens, valid, out, ref = batch['prompt'], batch['prompt_valid'], batch['samples'], batch['ref']
    if ref is None:  # the chosen rows of the rounds
      ref = self.reference_scores(ref_params, tokens, valid, out.tokens, out.mask).log_probs
    rollout = Rollout(tokens, valid, out.tokens, out.mask, out.log_probs, ref, None,
                      np.asarray(batch['scores'], np.float32))
    rollout = jax.block_until_ready(rollout)
    t2 = time.perf_counter()
    t1 = t0 + summed['sample_seconds']  # the rest until t2: rewards and the reference pass

    state, metrics = self.update(state, rollout, kl_coef, k_update)
    metrics = {name: float(v) for name, v in distributed.to_host(metrics).items()}
    t3 = time.perf_counter()

    total = t3 - t0
    rewards, ended, mask = batch['rewards'], batch['ended'], batch['mask']
    metrics[f'kl_{cfg.kl_kind}'] = metrics['kl']  # the estimator behind `kl`, by name
    metrics.update(
        reward_raw=float(np.mean(rewards.raw)), reward=float(np.mean(rewards.normalized)),
        stopped_fraction=float(np.mean(ended)), kl_coef=float(kl_coef),
        decode_steps=summed['steps'], response_length=float(np.mean(np.sum(mask, 1))),
        time_rollout=t1 - t0, time_scoring=t2 - t1, time_update=t3 - t2, seconds=total,
        share_rollout=(t1 - t0) / total, share_scoring=(t2 - t1) / total,
        share_update=(t3 - t2) / total)
    if cfg.dynamic_sampling:
      metrics.update(sampling_rounds=len(pooled), informative_groups=float(np.mean(
          dynamic_sampling.informative(batch['scores'], cfg.samples_per_prompt))))
    if cfg.overlong_buffer:
      metrics['overlong_penalty'] = float(np.mean(batch['overlong']))
    for name, values in (rewards.terms or {}).items():  # each term (and monitored check) apart
      metrics[f'reward/{name}'] = float(np.mean(values))
    return state, kl_control.next_kl_coef(cfg, kl_coef, metrics['kl'], len(batch['scores'])), metrics
