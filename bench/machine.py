"""The machine a benchmark ran on, for its table: results hold only where they were measured (the
same benchmark gives other ratios on AMD EPYC and Intel Xeon hosts)."""

import os
import platform


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo, else the platform's processor string)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.lower().startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def describe() -> str:
  """'CPU <model>, N cores' for a table's header line."""
  return f'CPU {cpu_model()}, {os.cpu_count()} cores'
