"""rlaif_jax: reinforcement learning from AI feedback in JAX/Flax.

  pip install -e .            # CPU (what the demo and the tests use)
  pip install -e '.[tpu]'     # on every worker of a TPU VM pod
  pip install -e '.[cuda]'    # on GPU nodes (CUDA 12 wheels of jax)
  pip install -e '.[test]'    # adds pytest and the PyTorch reference used by parity tests
"""

from setuptools import find_packages, setup

JAX = '0.10.2'

setup(
    name='rlaif_jax',
    version='0.1.0',
    description='RLAIF (AI-feedback preference labels, reward models, PPO) in JAX/Flax NNX',
    packages=find_packages(include=['rlaif_jax', 'rlaif_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        f'jax=={JAX}',
        f'jaxlib=={JAX}',
        'flax==0.12.8',
        'optax==0.2.8',
        'orbax-checkpoint==0.12.8',
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
        'tpu': [f'jax[tpu]=={JAX}'],
        'cuda': [f'jax[cuda12]=={JAX}'],
        'test': ['pytest>=8', 'torch==2.13.0', 'accelerate>=1.0'],  # accelerate: transformers' GGUF reader
    },
)
