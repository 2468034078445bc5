"""The whole tiny pipeline as 2 processes of 4 fake CPU devices, joined by jax.distributed on localhost
(gloo), against 1 process of 8 devices with the same config; and SIGTERM to one process of the two.

The mesh is fsdp=8: parameters, optimizer state and batches are sharded over devices of both
processes, so every host-side read must gather and every file must be written once.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rlaif_jax.infra import metrics
from rlaif_jax.models import safetensors_io
from tests import helpers
from rlaif_jax.pipeline import label

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, 'tests', 'audited_main.py')
# the 2-process runs sum across processes with gloo: a different order of float additions
RTOL, ATOL = 2e-4, 2e-5
# trained parameters: Adam divides by sqrt(v), so a parameter whose gradient is near zero moves by up
# to the learning rate (1e-3 in configs/tiny.py) per step whatever the rounding did to that gradient.
# On an Intel Xeon host 1 of 16,576 lm_head entries of the rl policy differed by 3.0e-5 (3% of one
# step) after 6 iterations; a sharding bug moves many entries by whole steps.
PARAM_ATOL = 5e-5


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _args(workdir, source, *extra):
  return [sys.executable, MAIN, '--config=configs/tiny.py', f'--workdir={workdir}',
          f'--config.model.source={source}', '--config.mesh.data=1', '--config.mesh.fsdp=8', *extra]


def _env(devices, log, **extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'SLURM_', 'OMPI_'))}
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             WRITES_LOG=str(log), **extra)
  return env


def _start_two(workdir, source, tmp, tag, *extra):
  port = _free_port()
  return [subprocess.Popen(_args(workdir, source, *extra), cwd=ROOT,
                           stdout=open(tmp / f'{tag}{i}.out', 'w'), stderr=open(tmp / f'{tag}{i}.err', 'w'),
                           env=_env(4, tmp / f'{tag}{i}.writes', JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
                                    JAX_NUM_PROCESSES='2', JAX_PROCESS_ID=str(i)))
          for i in range(2)]


def _wait(procs, tmp, tag, timeout=900):
  codes = [p.wait(timeout=timeout) for p in procs]
  return codes, [(tmp / f'{tag}{i}.err').read_text()[-3000:] for i in range(len(procs))]


def _written(tmp, tag, workdir):
  """Files of the workdir that a process opened for writing (temporary names folded into theirs)."""
  lines = (tmp / f'{tag}.writes').read_text().split() if (tmp / f'{tag}.writes').exists() else []
  return {p.removesuffix('.tmp') for p in lines if p.startswith(str(workdir))}


def _params(folder):
  """A finished model's parameters (Orbax) as NumPy, whatever mesh saved them."""
  path = os.path.join(folder, 'params')
  meta = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta,
                          is_leaf=lambda x: hasattr(x, 'shape'))
  return ocp.PyTreeCheckpointer().restore(path, restore_args=as_numpy)


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}/'))
    return out
  return {prefix.rstrip('/'): np.asarray(tree)}


def _rows(workdir, stage):
  return helpers.metric_rows(workdir, stage)


def _assert_rows_close(a, b, what):
  assert len(a) == len(b) and len(a) > 0, what
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys(), what
    for k in ra:
      if isinstance(ra[k], float):
        np.testing.assert_allclose(rb[k], ra[k], rtol=RTOL, atol=ATOL, err_msg=f'{what} {k}')
      else:
        assert rb[k] == ra[k], (what, k)


def _assert_params_close(a_folder, b_folder, what):
  a, b = _flat(_params(a_folder)), _flat(_params(b_folder))
  assert a.keys() == b.keys() and a, what
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=PARAM_ATOL, err_msg=f'{what} {k}')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tiny_hf_folder):
  """The tiny pipeline, every stage, as 1 process of 8 devices and as 2 processes of 4."""
  tmp = tmp_path_factory.mktemp('multiprocess')
  one, two = tmp / 'one', tmp / 'two'
  r = subprocess.run(_args(one, tiny_hf_folder), cwd=ROOT, env=_env(8, tmp / 'one.writes'),
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  codes, errs = _wait(_start_two(two, tiny_hf_folder, tmp, 'two'), tmp, 'two')
  assert codes == [0, 0], errs
  return tmp, one, two


def test_two_processes_run_every_stage_like_one(runs, tiny_hf_folder):
  tmp, one, two = runs
  a, b = label.read_labels(one / 'label' / label.CHUNKS), label.read_labels(two / 'label' / label.CHUNKS)
  assert len(a) == len(b) == 16
  for ra, rb in zip(a, b):
    assert (ra['prompt'], ra['response_a'], ra['response_b']) == (rb['prompt'], rb['response_a'],
                                                                   rb['response_b'])
    np.testing.assert_allclose(rb['p_a_better'], ra['p_a_better'], rtol=RTOL, atol=ATOL)
  for stage in ('sft', 'reward_model', 'rl'):
    _assert_rows_close(_rows(one, stage), _rows(two, stage), stage)
  _assert_params_close(one / 'reward_model' / 'model', two / 'reward_model' / 'model', 'reward model')
  _assert_params_close(one / 'rl' / 'policy', two / 'rl' / 'policy', 'rl policy')
  ev_a, ev_b = (json.loads((w / 'eval' / 'eval.json').read_text()) for w in (one, two))
  for k in ('win_rate', 'wins', 'ties', 'losses', 'harmless_rate_policy', 'prompts'):
    np.testing.assert_allclose(ev_b[k], ev_a[k], rtol=RTOL, atol=ATOL, err_msg=k)
  ta = safetensors_io.read(str(one / 'export' / 'model.safetensors'))
  tb = safetensors_io.read(str(two / 'export' / 'model.safetensors'))
  assert sorted(ta) == sorted(tb)
  for name in ta:  # the trained policy, exported
    np.testing.assert_allclose(tb[name], ta[name], rtol=RTOL, atol=PARAM_ATOL, err_msg=name)
  # the policy moved: the comparison is not of two untouched copies of the base model
  base = safetensors_io.read(os.path.join(tiny_hf_folder, 'model.safetensors'))
  assert not np.allclose(ta['model.layers.0.mlp.down_proj.weight'],
                         base['model.layers.0.mlp.down_proj.weight'])

  w0, w1 = _written(tmp, 'two0', two), _written(tmp, 'two1', two)
  assert {'summary.json', 'metrics.jsonl', 'eval/eval.json', 'export/model.safetensors'} <= {
      os.path.relpath(p, two) for p in w0}
  assert not w0 & w1, sorted(w0 & w1)[:10]


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes(runs, tiny_hf_folder):
  tmp, _, straight = runs
  work = tmp / 'preempted'
  extra = ('--config.checkpoint.interval=100',)
  procs = _start_two(work, tiny_hf_folder, tmp, 'pre', *extra)
  t0 = time.time()
  while len(metrics.read(str(work), 'rl')) < 2:
    assert all(p.poll() is None for p in procs), _wait(procs, tmp, 'pre')[1]
    assert time.time() - t0 < 600
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)  # one host only, as a spot VM's notice reaches one worker
  codes, errs = _wait(procs, tmp, 'pre', timeout=300)
  assert codes == [143, 143], errs
  outs = [(tmp / f'pre{i}.out').read_text() for i in range(2)]
  assert 'SIGTERM: saved the checkpoint of step' in outs[0]
  saved = sorted(int(p.name) for p in (work / 'rl' / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved and 2 <= saved[-1] < 6, saved  # one step, beyond the interval's, saved by both
  assert [r['step'] for r in metrics.read(str(work), 'rl')] == list(range(1, saved[-1] + 1))

  codes, errs = _wait(_start_two(work, tiny_hf_folder, tmp, 'resumed', *extra), tmp, 'resumed')
  assert codes == [0, 0], errs
  assert '[rl] resumed at step' in (tmp / 'resumed0.out').read_text()
  _assert_rows_close(_rows(straight, 'rl'), _rows(work, 'rl'), 'rl after resume')
  _assert_params_close(straight / 'rl' / 'policy', work / 'rl' / 'policy', 'resumed policy')


RECIPES = ("--config.stages=('label','dpo','rl')", '--config.dpo.steps=4', '--config.dpo.batch_size=8',
           '--config.model.lora_rank=4', '--config.model.dtype=bfloat16',
           '--config.rl.algorithm=online_dpo', '--config.rl.samples_per_prompt=2',
           '--config.rl.reward=judge', '--config.rl.preference=pairwise', '--config.rl.iterations=3')


def test_dpo_online_dpo_and_lora_in_bfloat16_on_two_processes_like_one(tmp_path, tiny_hf_folder):
  """The preference recipes on the pod path: AI labels -> the dpo stage -> online DPO with the
  judge in the loop, a LoRA policy, bfloat16 compute, as 2 processes x 4 devices and 1 x 8. The
  reference log-probs file, the adapters-only policies and the metrics agree within the float32
  tolerance (measured: bfloat16 needs no looser one here); only process 0 writes."""
  one, two = tmp_path / 'one', tmp_path / 'two'
  r = subprocess.run(_args(one, tiny_hf_folder, *RECIPES), cwd=ROOT,
                     env=_env(8, tmp_path / 'one.writes'), capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  codes, errs = _wait(_start_two(two, tiny_hf_folder, tmp_path, 'two', *RECIPES), tmp_path, 'two')
  assert codes == [0, 0], errs
  for stage in ('dpo', 'rl'):
    _assert_rows_close(_rows(one, stage), _rows(two, stage), stage)
  ref_a, ref_b = (json.loads((w / 'dpo' / 'reference.json').read_text()) for w in (one, two))
  for side in ('ref_a', 'ref_b'):
    np.testing.assert_allclose(ref_b[side], ref_a[side], rtol=RTOL, atol=ATOL, err_msg=side)
  for stage in ('dpo', 'rl'):
    info = json.loads((two / stage / 'policy' / 'DONE.json').read_text())
    assert info['lora_base'] == '', stage  # adapters alone, over model.source
    _assert_params_close(one / stage / 'policy', two / stage / 'policy', stage)
    names = _flat(_params(two / stage / 'policy'))
    assert names and all('_lora_' in n for n in names), sorted(names)[:5]
  assert [r['step'] for r in _rows(two, 'rl')] == [1, 2, 3]
  w0, w1 = _written(tmp_path, 'two0', two), _written(tmp_path, 'two1', two)
  assert 'dpo/reference.json' in {os.path.relpath(p, two) for p in w0}
  assert not w0 & w1, sorted(w0 & w1)[:10]
