"""The RL algorithm's settings (`RLConfig`, the fields of config.rl that the update and the iteration
read) and the choices they allow."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rlaif_jax.infra.errors import UserError

ALGORITHMS = ('ppo', 'reinforce', 'rloo', 'grpo', 'online_dpo')
# Reward terms by name: a trained reward model (canonical RLAIF), the judge's expected 1-10 score
# (d-RLAIF), the judge's log P(Yes) - log P(No) of rl.question (pointwise), and beside these
# 'check:NAME' (a feedback/checks.py check, or check:package.module:function) and
# 'package.module:function' (a user's (prompt, response) -> float, as TRL's reward_funcs).
REWARDS = ('reward_model', 'judge', 'judge_yes_no')
# How per-token losses become one number: over every real token of the minibatch (DAPO, and PPO
# here), per response then over responses (GRPO's paper), or summed and divided by rows x the
# response budget (Dr. GRPO: no length normalisation).
LOSS_AGGREGATIONS = ('token_mean', 'sequence_mean', 'token_sum')
IMPORTANCE_RATIOS = ('token', 'sequence')  # sequence: GSPO's length-normalised sequence ratio
SCALE_REWARDS = ('group', 'batch', 'none')  # GRPO's advantage divisor; none = Dr. GRPO
KL_ESTIMATORS = ('k1', 'k2', 'k3', 'abs')  # see losses.kl_penalty
KL_IN = ('reward', 'loss')  # the KL leash: a penalty in the reward, or a loss term (GRPO's k3)
PREFERENCES = ('scores', 'pairwise')  # online DPO's labels: from the two scores, or the judge's pair


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """What the RL update and iteration do (config.rl holds these fields and the loop's own)."""
  algorithm: str = 'ppo'  # ppo | reinforce | rloo | grpo | online_dpo
  epochs: int = 2  # passes over each rollout batch
  minibatches: int = 2  # per epoch
  micro_batches: int = 1  # gradient accumulation: slices of each minibatch, one at a time
  clip_eps: float = 0.2
  clip_eps_low: float = 0.0  # the ratio's lower clip 1 - eps_low (0 = clip_eps)
  clip_eps_high: float = 0.0  # its upper clip 1 + eps_high (0 = clip_eps; DAPO's clip-higher: 0.28)
  # token_mean | sequence_mean | token_sum (LOSS_AGGREGATIONS); '' = by the importance ratio:
  # sequence_mean for GSPO's sequence ratio (the only one it is GSPO with), token_mean otherwise
  loss_aggregation: str = ''
  importance_ratio: str = 'token'  # token | sequence (GSPO; use clip_eps ~ 3e-4..4e-4 with it)
  scale_rewards: str = 'group'  # GRPO: group | batch | none (Dr. GRPO): what divides the advantage
  value_clip: float = 0.2
  vf_coef: float = 0.5
  entropy_coef: float = 0.0
  gamma: float = 1.0
  lam: float = 0.95
  # k1 | k2 | k3 | abs (losses.kl_penalty); '' = by where the KL goes: k3 in the loss, k1 in the
  # reward. k1 as a loss term is refused: its expected gradient on-policy is 0 (E[grad log pi] = 0)
  kl_estimator: str = ''
  # reward | loss: kl_coef x KL in the reward, or as a loss term (KL_IN); '' = by algorithm: the
  # loss for grpo (as its paper), the reward for the others
  kl_in: str = ''
  # ppo: advantages whitened over the batch's tokens; reinforce / rloo: scaled by their std over
  # the batch's responses (a sequence-level estimator, normalised at the sequence level); grpo
  # normalises within groups instead (scale_rewards).
  whiten_advantages: bool = True
  samples_per_prompt: int = 1  # RLOO and GRPO need >= 2 (rows of one prompt are adjacent)
  value_model: str = 'shared'  # PPO's value head: 'shared' (policy trunk) or 'separate' (own model)
  kl_coef: float = 0.05  # the starting (or fixed) coefficient of the per-token KL penalty
  kl_target: float = 0.0  # > 0: adaptive controller moves kl_coef so the sequence KL nears this
  kl_horizon: float = 10000.0  # the controller's horizon (in samples)
  missing_eos_penalty: float = 0.0  # subtracted from the score of a response that never stopped
  # DAPO (rl/dynamic_sampling.py): drop groups whose scores are all equal and sample further prompt
  # batches (at most max_sampling_rounds in all) until the batch is full of informative groups
  dynamic_sampling: bool = False
  max_sampling_rounds: int = 3
  overlong_buffer: int = 0  # > 0: DAPO's soft overlong penalty over the budget's last tokens
  overlong_penalty: float = 1.0  # ... reaching this at max_new_tokens
  reward: str = 'reward_model'  # the score: one reward term's name (REWARDS, check:NAME, module:fn)
  rewards: tuple = ()  # ((name, weight), ...): a weighted sum of terms instead of `reward` alone
  question: str = ''  # judge_yes_no's yes/no question about one response
  # online_dpo: two samples a prompt, labeled, then DPO steps (no reward model or value model needed)
  preference: str = 'scores'  # scores: P(a better) = s((score_a - score_b) / preference_temperature);
  #                             pairwise: the judge's debiased soft preference of the pair
  preference_temperature: float = 1.0
  dpo_loss: str = 'sigmoid'  # sigmoid (DPO) | ipo (as the dpo stage's dpo.loss)
  dpo_labels: str = 'soft'  # soft | hard (the side preferred)
  dpo_beta: float = 0.1  # DPO's beta: the strength of the implicit KL leash to the reference

  @classmethod
  def from_config(cls, c: Mapping[str, Any]) -> 'RLConfig':
    """The RLConfig fields of config.rl (its other fields are the loop's: iterations, batch size...)."""
    return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise UserError(f'Unknown rl.algorithm {self.algorithm!r}; choose one of {ALGORITHMS}.')
    terms = self.reward_terms  # unknown names, bad weights
    if any(name == 'judge_yes_no' for name, _ in terms) and not self.question.strip():
      raise UserError("rl.reward 'judge_yes_no' asks the judge a yes/no question about each "
                      "response: set rl.question (e.g. 'Does the response use exclamation marks?').")
    if self.value_model not in ('shared', 'separate'):
      raise UserError(f"Unknown rl.value_model {self.value_model!r}; use 'shared' or 'separate'.")
    if min(self.epochs, self.minibatches, self.micro_batches) < 1:
      raise UserError(f'rl.epochs, rl.minibatches and rl.micro_batches must be >= 1, got '
                      f'{self.epochs}, {self.minibatches}, {self.micro_batches}.')
    if self.algorithm == 'rloo' and self.samples_per_prompt < 2:
      raise UserError('rl.algorithm=rloo needs rl.samples_per_prompt >= 2 (the leave-one-out '
                      'baseline averages the other samples of the same prompt).')
    if self.algorithm == 'grpo' and self.samples_per_prompt < 2:
      raise UserError('rl.algorithm=grpo needs rl.samples_per_prompt >= 2 (advantages are '
                      'normalised within the group of samples of each prompt).')
    if self.algorithm == 'online_dpo' and self.samples_per_prompt != 2:
      raise UserError('rl.algorithm=online_dpo needs rl.samples_per_prompt=2 (each prompt\'s two '
                      'samples are the pair the judge labels).')
    if (self.algorithm == 'online_dpo' and self.preference == 'pairwise'
        and terms != (('judge', 1.0),)):
      raise UserError("rl.preference='pairwise' asks the judge about each pair: set rl.reward='judge'.")
    if self.dpo_beta <= 0:
      raise UserError(f'rl.dpo_beta must be > 0, got {self.dpo_beta}.')
    if self.preference_temperature <= 0:
      raise UserError(f'rl.preference_temperature must be > 0, got {self.preference_temperature}.')
    for name, value, choices in (('loss_aggregation', self.aggregation, LOSS_AGGREGATIONS),
                                 ('preference', self.preference, PREFERENCES),
                                 ('dpo_loss', self.dpo_loss, ('sigmoid', 'ipo')),
                                 ('dpo_labels', self.dpo_labels, ('soft', 'hard')),
                                 ('importance_ratio', self.importance_ratio, IMPORTANCE_RATIOS),
                                 ('scale_rewards', self.scale_rewards, SCALE_REWARDS),
                                 ('kl_in', self.kl_location, KL_IN),
                                 ('kl_estimator', self.kl_kind, KL_ESTIMATORS)):
      if value not in choices:
        raise UserError(f'Unknown rl.{name} {value!r}; choose one of {choices}.')
    if self.kl_location == 'loss' and self.kl_kind == 'k1':
      raise UserError("rl.kl_estimator='k1' as a loss term (rl.kl_in='loss') has zero expected "
                      "gradient on-policy (E[grad log pi] = 0), so the KL leash would do nothing; "
                      "use rl.kl_estimator='k3' (GRPO's) or 'k2', or put it in the reward "
                      "(rl.kl_in='reward').")
    if self.importance_ratio == 'sequence' and self.aggregation != 'sequence_mean':
      raise UserError(f"rl.importance_ratio='sequence' (GSPO) weighs each response once, as its one "
                      f"ratio does; rl.loss_aggregation={self.aggregation!r} would weigh responses "
                      f"by their length: use 'sequence_mean' (or leave it '', which picks it).")
    if self.dynamic_sampling and self.samples_per_prompt < 2:
      raise UserError('rl.dynamic_sampling drops groups whose samples all scored the same: it needs '
                      'rl.samples_per_prompt >= 2.')
    if self.max_sampling_rounds < 1 or self.overlong_buffer < 0 or self.overlong_penalty < 0:
      raise UserError(f'rl.max_sampling_rounds must be >= 1 and rl.overlong_buffer, '
                      f'rl.overlong_penalty >= 0; got {self.max_sampling_rounds}, '
                      f'{self.overlong_buffer}, {self.overlong_penalty}.')
    if min(self.clip_eps, self.clip_eps_low, self.clip_eps_high) < 0:
      raise UserError('rl.clip_eps, rl.clip_eps_low and rl.clip_eps_high must be >= 0.')

  @property
  def reward_terms(self) -> tuple[tuple[str, float], ...]:
    """((name, weight), ...) of the reward RL optimizes: rl.rewards, or rl.reward with weight 1."""
    if not self.rewards:
      reward_kind(self.reward, 'rl.reward')
      return ((self.reward, 1.0),)
    terms = []
    for term in self.rewards:
      if (not isinstance(term, (tuple, list)) or len(term) != 2 or not isinstance(term[0], str)
          or isinstance(term[1], (bool, str)) or not isinstance(term[1], (int, float))):
        raise UserError(f"rl.rewards entry {term!r} is not a (name, weight) pair; write e.g. "
                        f"rl.rewards=(('judge_yes_no', 1.0), ('check:brevity', 0.05)).")
      reward_kind(term[0], 'rl.rewards')
      terms.append((term[0], float(term[1])))
    names = [n for n, _ in terms]
    if len(set(names)) < len(names):
      raise UserError(f'rl.rewards names a term twice ({names}); give each term once with its weight.')
    if not any(w for _, w in terms):
      raise UserError('rl.rewards has no term with a non-zero weight; give at least one.')
    return tuple(terms)

  @property
  def reward_kinds(self) -> frozenset[str]:
    """The kinds (`reward_kind`) of the reward's terms: what the reward needs loaded."""
    return frozenset(reward_kind(name) for name, _ in self.reward_terms)

  @property
  def aggregation(self) -> str:
    """How per-token losses are aggregated: rl.loss_aggregation, or by the ratio when ''."""
    return self.loss_aggregation or ('sequence_mean' if self.importance_ratio == 'sequence'
                                     else 'token_mean')

  @property
  def kl_location(self) -> str:
    """Where the KL leash goes ('reward' or 'loss'): rl.kl_in, or by algorithm when ''."""
    return self.kl_in or ('loss' if self.algorithm == 'grpo' else 'reward')

  @property
  def kl_kind(self) -> str:
    """The KL estimator: rl.kl_estimator, or by where the KL goes when ''."""
    return self.kl_estimator or ('k3' if self.kl_location == 'loss' else 'k1')

  @property
  def clip_range(self) -> tuple[float, float]:
    """(eps_low, eps_high): the ratio is clipped to [1 - eps_low, 1 + eps_high]."""
    return self.clip_eps_low or self.clip_eps, self.clip_eps_high or self.clip_eps

  def check_batch(self, rows: int, batch_devices: int = 1) -> None:
    """A clear error, before anything compiles, when `rows` rollout rows do not split into the
    minibatches and micro-batches, or a micro-batch into the devices its rows are spread over
    (`batch_devices`: the mesh's batch axes; rows that do not divide them would be replicated on
    every device instead of split)."""
    unit = 'rows'
    if self.algorithm == 'online_dpo':  # minibatches and micro-batches take whole pairs
      rows, unit = rows // 2, 'pairs'
    if rows % self.minibatches:
      raise UserError(f'A rollout of {rows} {unit} (prompts x samples_per_prompt) does not split '
                      f'into rl.minibatches={self.minibatches}; make the batch a multiple of it.')
    per = rows // self.minibatches
    if per % self.micro_batches:
      raise UserError(f'A minibatch of {per} {unit} does not split into rl.micro_batches='
                      f'{self.micro_batches}; make the minibatch a multiple of it.')
    micro = per // self.micro_batches
    if micro % batch_devices:
      raise UserError(f'A micro-batch of {micro} {unit} does not split over the {batch_devices} '
                      f'devices of the mesh\'s batch axes (it would be copied to every device); make '
                      f'{unit} per micro-batch a multiple of {batch_devices}.')


def reward_kind(name: str, key: str = 'rl.reward') -> str:
  """What a reward term's name asks for: 'reward_model', 'judge', 'judge_yes_no', 'check' or
  'function'; a one-line UserError naming `key` for a name of none of these forms (found from the
  config alone; which checks exist and whether a function imports, `pipeline.preflight` checks)."""
  if name in REWARDS:
    return name
  if name.startswith('check:') and len(name) > len('check:'):
    return 'check'
  module, sep, attr = name.partition(':')
  if sep and attr.isidentifier() and all(p.isidentifier() for p in module.split('.')):
    return 'function'
  raise UserError(f"Unknown {key} {name!r}; use one of {', '.join(REWARDS)}, 'check:NAME' (a check "
                  f"of feedback/checks.py) or 'package.module:function' taking (prompt, response) "
                  f"-> float.")


def values_from_first_step(cfg: RLConfig) -> bool:
  """Whether a PPO update left to find the old values takes them from its first step's own forward
  pass: with one minibatch of the whole rollout (and no micro-batches) that step runs the value
  model on exactly the inputs and parameters the old values come from, so a separate pass would
  only repeat it. Otherwise the update runs a forward pass for them first."""
  return cfg.algorithm == 'ppo' and cfg.minibatches == 1 and cfg.micro_batches == 1
