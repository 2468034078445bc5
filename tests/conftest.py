"""Test setup: 8 fake CPU devices (set before jax is imported) and small checkpoints written locally."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # also where the TPU compiler (tpu extra) is installed
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
# the planner compiles for TPU topologies without a TPU: no metadata server to ask, no chips to lock
os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope='session')
def tokenizer_dir(tmp_path_factory):
  return helpers.write_tokenizer(str(tmp_path_factory.mktemp('tokenizer')))


@pytest.fixture(scope='session')
def tiny_hf_folder(tmp_path_factory, tokenizer_dir):
  """A random tiny untied LlamaForCausalLM written by transformers (PyTorch) as a HF folder."""
  return helpers.write_torch_llama(str(tmp_path_factory.mktemp('tiny_llama')), tokenizer_dir)


@pytest.fixture(scope='session')
def smollm2():
  """(model, tokenizer) of the embedded default, loaded once per session."""
  from rlaif_jax.models import loading
  return loading.load_model('smollm2')
