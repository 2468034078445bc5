"""What the config alone shows to be wrong, found before any stage runs (a typo in rl.algorithm fails
in a second, not after sft, label and the reward model have run). Each problem is a UserError that
names the key or file and the fix."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from rlaif_jax.infra import checkpoints, storage
from rlaif_jax.infra import sharding as shd
from rlaif_jax.infra.errors import MissingInput, UserError
from rlaif_jax.models.config import to_dtype
from rlaif_jax.rl.config import RLConfig

TRAINING = ('sft', 'reward_model', 'dpo', 'rl')
NEEDS_JUDGE = ('label', 'eval', 'validate')


def check_config(config: ml_collections.ConfigDict, stages: tuple[str, ...]) -> None:
  """Every check below that applies to config.stages; the first problem found is raised."""
  unknown = [s for s in config.stages if s not in stages]
  if unknown:
    raise UserError(f'Unknown stage(s) {unknown} in config.stages; stages are {list(stages)}.')
  if config.checkpoint.restore_from:
    checkpoints.stage_of(config.checkpoint.restore_from, check=True)
  run = set(config.stages)
  _check_dtypes(config, run)
  if 'rl' in run:
    _check_rl(config)
  if 'dpo' in run:
    from rlaif_jax.pipeline.dpo import dpo_config
    dpo_config(config.dpo)  # unknown loss or labels, beta <= 0...
    _divides(config.dpo.batch_size, config.dpo.micro_batches, 'dpo.batch_size', 'dpo.micro_batches')
  if 'reward_model' in run:
    _divides(config.reward_model.batch_size, config.reward_model.micro_batches,
             'reward_model.batch_size', 'reward_model.micro_batches')
  if config.judge.constitution and (run & {'sft', 'label', *NEEDS_JUDGE}):
    _exists(constitution_path(config.judge.constitution), 'judge.constitution')
  if 'sft' in run and config.sft.data != 'revisions':
    _exists(config.sft.data, 'sft.data')
  if 'sft' in run and config.sft.data == 'revisions' and not config.judge.constitution:
    raise UserError("sft.data='revisions' needs a constitution: set judge.constitution (e.g. "
                    "configs/constitutions/harmless.txt) or give sft.data a JSONL of demonstrations.")
  if config.check and run & {'label', 'eval', 'validate'}:
    from rlaif_jax.feedback.checks import resolve
    resolve(config.check)  # an unknown check or one that does not import
  if 'validate' in run and not config.check:
    raise UserError("The validate stage measures the judge against a check: set config.check (one "
                    "of feedback/checks.py's or 'package.module:function').")
  if 'label' in run:
    _check_label(config)
  if 'eval' in run and config.eval.get('baseline', 'reference') not in ('reference', 'source'):
    raise UserError(f"eval.baseline must be 'reference' (RL's reference policy) or 'source' "
                    f"(model.source), got {config.eval.baseline!r}.")
  if 'eval' in run and config.eval.human_pairs:
    _exists(config.eval.human_pairs, 'eval.human_pairs')


def _check_label(config: ml_collections.ConfigDict) -> None:
  from rlaif_jax.feedback.label_sources import SOURCES
  c = config.label
  if c.source not in SOURCES:
    raise UserError(f'label.source must be one of {", ".join(SOURCES)}, got {c.source!r}.')
  if c.source == 'judge' and (c.human or c.human_budget):
    raise UserError("label.human / label.human_budget are for label.source='human' or 'hybrid'; "
                    "set label.source or leave them unset.")
  if c.source != 'judge' and not c.human:
    raise UserError(f"label.source={c.source!r} needs label.human: a JSONL of human-labeled pairs, "
                    f"or 'check' to let config.check stand in for human annotators.")
  if c.human == 'check' and not config.check:
    raise UserError("label.human='check' needs config.check (the check that stands in for "
                    "annotators).")
  if c.human and c.human != 'check':
    _exists(c.human, 'label.human')
  if c.human_budget < 0 or (c.source == 'hybrid' and c.human_budget == 0):
    raise UserError(f"label.human_budget={c.human_budget}: hybrid labels need a budget > 0 of "
                    f"pairs for the human source.")
  if c.pointwise_scale <= 0:
    raise UserError(f'label.pointwise_scale must be > 0, got {c.pointwise_scale}.')


def check_batches(config: ml_collections.ConfigDict, mesh, rules) -> None:
  """Each training stage's (micro-)batches split over the devices of the mesh's batch axes (the
  steps' shardings would refuse them inside the first call, after the earlier stages ran)."""
  devices = shd.batch_shards(mesh, rules)
  run = set(config.stages)
  for stage in ('sft', 'reward_model', 'dpo'):
    if stage in run:
      c = config[stage]
      micro = c.batch_size // max(c.get('micro_batches', 1), 1)
      if micro % devices:
        raise UserError(f'{stage}.batch_size={c.batch_size} gives (micro-)batches of {micro} rows, '
                        f'which do not split over the {devices} devices of the mesh\'s batch axes; '
                        f'make {stage}.batch_size / {stage}.micro_batches a multiple of {devices}.')
  if 'rl' in run:
    cfg = RLConfig.from_config(config.rl)
    cfg.check_batch(config.rl.batch_size * cfg.samples_per_prompt, devices)


def constitution_path(path: str) -> str:
  """A constitution path as given, or relative to the repository when it is not found as given."""
  if storage.is_url(path) or os.path.isabs(path) or os.path.exists(path):
    return path
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(root, path)


def check_workdir(workdir: storage.PathLike) -> None:
  """The workdir exists (made if need be) and takes a file: an unwritable one fails now, naming the
  flag, rather than at the first checkpoint."""
  try:
    storage.makedirs(workdir)
    storage.write_text(storage.path(workdir) / '.rlaif_jax_write_test', 'ok\n')
  except OSError as e:
    raise UserError(f'--workdir={workdir}: cannot write there ({e.strerror or e}); give a folder '
                    f'(or gs:// / s3:// URL) this user can write to.') from e


def _check_dtypes(config: ml_collections.ConfigDict, run: set[str]) -> None:
  m = config.model
  for section, key in (('model', 'param_dtype'), ('model', 'dtype'), ('model', 'frozen_param_dtype'),
                       ('judge', 'param_dtype'), ('judge', 'dtype')):
    if config[section][key]:
      try:
        to_dtype(config[section][key])
      except UserError as e:
        raise UserError(f'{section}.{key}: {e}') from None
  if run & set(TRAINING) and np.dtype(to_dtype(m.param_dtype)).itemsize < 4:
    raise UserError(
        f'model.param_dtype={m.param_dtype} would keep the trained weights and AdamW moments in '
        f'{m.param_dtype}, where small updates round away; keep it float32 and set model.dtype='
        f'bfloat16 for bfloat16 compute (frozen models: model.frozen_param_dtype, judge.param_dtype).')


def _check_rl(config: ml_collections.ConfigDict) -> None:
  cfg = RLConfig.from_config(config.rl)  # unknown algorithm, reward, value model...
  from rlaif_jax.pipeline import preflight
  preflight.reward_functions(config)  # an unknown check, a function that does not import
  rows = config.rl.batch_size * cfg.samples_per_prompt
  _divides(rows, cfg.minibatches, f'rl.batch_size x rl.samples_per_prompt = {rows} rows',
           'rl.minibatches')
  _divides(rows // cfg.minibatches, cfg.micro_batches,
           f'each minibatch ({rows // cfg.minibatches} rows)', 'rl.micro_batches')


def _divides(n: int, parts: int, what: str, key: str) -> None:
  if parts < 1 or n % parts:
    raise UserError(f'{what} do not split into {key}={parts} equal parts; choose a {key} that '
                    f'divides {n}.')


def _exists(path: str, key: str) -> None:
  if not storage.exists(path):
    raise MissingInput(f'{key}={path!r} does not exist; fix the path (relative paths are from the '
                       f'directory you run in).')
