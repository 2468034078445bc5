"""What the stages of one run share (`RunContext`): the config, the workdir, the mesh and rules, the
PRNG key of each stage, the prompts, and which checkpoint each model loads from.

The policy a stage starts from is the newest of rl/policy, dpo/policy, sft/policy and
config.model.source; the reference policy is sft/policy or config.model.source. A LoRA policy's
folder holds its adapters alone and names the folder (or source) of its base weights.
"""

from __future__ import annotations

import jax
import numpy as np
import ml_collections
from etils import epath
from flax import nnx

from rlaif_jax.data import constitution_files, prompts as prompts_lib
from rlaif_jax.feedback.judge import Judge
from rlaif_jax.feedback.requests import JudgeConfig
from rlaif_jax.generation.sampler import SamplingConfig
from rlaif_jax.infra import checkpoints, distributed, storage
from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import UserError
from rlaif_jax.models import loading
from rlaif_jax.models import lora as lora_lib
from rlaif_jax.pipeline import checks

# Every stage, in the order a run takes them; a stage's PRNG key is folded from its index here.
# (a stage's PRNG key is its index here: new stages go last, so the others keep theirs)
STAGE_ORDER = ('generate', 'sft', 'label', 'reward_model', 'dpo', 'rl', 'eval', 'export', 'validate')
DONE = 'DONE.json'


class RunContext:
  """The config, workdir, mesh and rules of a run, and a SIGTERM flag the stages poll."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: storage.PathLike):
    self.config, self.workdir = config, storage.path(workdir)
    self.mesh = shd.make_mesh(dict(config.mesh))
    self.rules = shd.rules_from_config(config.logical_axis_rules)
    self.key = jax.random.key(config.seed)
    self.terminate = False
    self.skipped: set[str] = set()  # stages found complete in this run
    self._prompts = None

  def path(self, *parts: str) -> epath.Path:
    return self.workdir.joinpath(*parts)

  def preempted(self) -> bool:
    """Has SIGTERM reached any process? Collective (every process asks after the same step), so all
    processes save the same step and stop together."""
    return distributed.any_process(self.terminate)

  def stage_key(self, stage: str) -> jax.Array:
    return jax.random.fold_in(self.key, STAGE_ORDER.index(stage))

  # ------------------------------------------------------------------------ models
  def load(self, source: str, scalar_head: bool = False, frozen: bool = False,
           param_dtype: str = '', dtype: str = '', lm_head: bool = True,
           restore_from: epath.Path | None = None, marker: str = DONE, what: str = 'model',
           lora: bool = False):
    """(model, tokenizer) from `source` (default: config.model.source) with the run's dtypes: a
    model that trains keeps model.param_dtype (float32 master parameters); a frozen one is stored in
    model.frozen_param_dtype when that is set. Both compute in model.dtype. lm_head=False: a
    scalar-only model (reward, value) without the [E, V] head or its optimizer moments.

    restore_from: a finished stage's parameters (`checkpoints.save_params`), restored straight onto
    the mesh; the source then gives only the architecture and tokenizer, its weights are not read.
    A scalar head the checkpoint lacks (a policy restored as a value model) starts at zero.
    lora: the policy, with config.model's LoRA adapters (lora_rank > 0)."""
    m = self.config.model
    stored = param_dtype or (m.frozen_param_dtype if frozen else '') or m.param_dtype
    overrides = dict(scalar_head=scalar_head, lm_head=lm_head, param_dtype=stored,
                     dtype=dtype or m.dtype, remat=m.remat, scan_layers=m.scan_layers,
                     attention=m.get('attention', 'auto'),
                     logit_chunk_rows=m.get('logit_chunk_rows', 0),
                     **(dict(lora_rank=m.lora_rank, lora_alpha=m.lora_alpha,
                             lora_targets=tuple(m.lora_targets)) if lora else {}),
                     logical_axis_rules=self.rules)
    if restore_from is None:
      return loading.load_model(source or m.source, self.mesh, **overrides)
    info = checkpoints.read_marker(restore_from, marker)
    if info is not None and 'lora_base' in info:  # adapters alone, over base weights from elsewhere
      if not overrides.get('lora_rank'):
        raise UserError(f'{restore_from} holds LoRA adapters without their base weights; load it '
                        f'with the LoRA settings it was trained with (model.lora_rank > 0).')
      base = self.path(info['lora_base']) if info['lora_base'] else None
      model, tokenizer = self.load(source, scalar_head, frozen, param_dtype, dtype, lm_head,
                                   restore_from=base, what=what, lora=lora)
      params, self.restored_info = checkpoints.restore_params(restore_from, model, self.mesh,
                                                              marker, what)
      return nnx.merge(nnx.graphdef(model), params), tokenizer
    cfg, _, tokenizer = loading.load_weights(source or m.source, **overrides)  # weights stay lazy
    abstract = loading.abstract_model(cfg)
    params, self.restored_info = checkpoints.restore_params(restore_from, abstract, self.mesh,
                                                            marker, what)
    # entries the checkpoint lacks are still abstract: LoRA adapters start fresh (a policy trained
    # without them, now given some), anything else (a scalar head) at zero
    flat = [(shd._path_name(p), p, v) for p, v in nnx.to_flat_state(params)]
    missing = {name for name, _, v in flat if isinstance(v.get_value(), jax.ShapeDtypeStruct)}
    fresh = lora_lib.fresh(params, {name for name, _, _ in flat} - missing)
    shardings = {shd._path_name(p): v.get_value() for p, v in nnx.to_flat_state(
        shd.state_shardings(params, self.mesh, self.rules))}

    def filled(name, var):
      x = var.get_value()
      host = fresh[name] if name in fresh else np.zeros(x.shape, x.dtype)
      return var.replace(jax.make_array_from_callback(x.shape, shardings[name], lambda i: host[i]))
    params = nnx.from_flat_state([(p, filled(name, v) if name in missing else v)
                                  for name, p, v in flat])
    return nnx.merge(nnx.graphdef(abstract), params), tokenizer

  def policy_dir(self, reference: bool = False) -> epath.Path | None:
    """Where the current (or, with reference=True, the reference) policy's parameters are."""
    stage = self._policy_stage(reference)
    return None if stage is None else self.path(stage, 'policy')

  def _policy_stage(self, reference: bool = False) -> str | None:
    for stage in (('sft',) if reference else ('rl', 'dpo', 'sft')):
      if checkpoints.read_marker(self.path(stage, 'policy')) is not None:
        return stage
    return None

  def lora_base(self) -> str:
    """Where the base weights under the current policy's LoRA adapters are: a finished stage's
    policy folder relative to the workdir, or '' for config.model.source."""
    stage = self._policy_stage()
    if stage is None:
      return ''
    return checkpoints.read_marker(self.path(stage, 'policy')).get('lora_base', f'{stage}/policy')

  def policy(self, reference: bool = False, scalar_head: bool = False, frozen: bool = False):
    """(model with the current or reference policy's parameters, tokenizer); frozen: a copy that
    is not trained (see `load`)."""
    return self.load(self.config.model.source, scalar_head, frozen,
                     restore_from=self.policy_dir(reference), what='policy', lora=True)

  def judge(self, task: str | None = None) -> Judge:
    j = self.config.judge
    model, tokenizer = self.load(j.source, frozen=True, param_dtype=j.param_dtype, dtype=j.dtype)
    cfg = JudgeConfig(task=task or j.task, preamble=j.preamble, debias=j.debias,
                      chat_template=j.chat_template, max_response_tokens=j.max_response_tokens,
                      max_context_tokens=j.max_context_tokens, share_prefix=j.share_prefix)
    return Judge(model, tokenizer, self.mesh, cfg, name=j.source or self.config.model.source)

  def constitution(self) -> list[str] | None:
    """config.judge.constitution's principles (a relative path may be relative to the repository)."""
    path = self.config.judge.constitution
    return constitution_files.read_constitution(checks.constitution_path(path)) if path else None

  # ------------------------------------------------------------------------ data
  def prompts(self) -> tuple[list[str], list[str]]:
    """(train, held-out) prompts."""
    if self._prompts is None:
      d = self.config.data
      self._prompts = prompts_lib.split(prompts_lib.load_prompts(d, self.workdir), d.num_heldout,
                                        self.config.seed)
    return self._prompts

  def sampling(self, s: ml_collections.ConfigDict) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                          top_p=s.top_p, decode_chunk=s.get('decode_chunk', 0))
