"""The pipeline's settings, one source of truth per setting.

- ``fields``: what a setting field may declare (fixed choices, list values, ``neutral`` metadata) and the base
  class that enforces it;
- ``arguments``: the argument dataclasses HfArgumentParser reads (every flag, its default, help and metadata);
- ``presets``: the ``--quick`` preset;
- ``checks``: the run-level checks across settings, and the library configs' own checks run early;
- ``control_domain``: ``--control_domain`` parsing;
- ``parsing``: recipes and the command line into a RunConfig.

Users import from ``hf_dpkd.run_config``, which re-exports these.
"""
