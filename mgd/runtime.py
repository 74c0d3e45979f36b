"""Process-wide settings of every training process, applied before torch is imported.

* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that wait for work sleep instead of spinning; on
  a CPU shared with other jobs, spinning threads starve the one they wait for (docs/demo.md,
  *Time*, has the measurement).
* ``PYTORCH_JIT=0``: TorchScript runs as Python. The scripted focal loss that RetinaNet trains
  with (fvcore's ``sigmoid_focal_loss_jit``) gives, from its second call on, gradients that
  differ in the last bits from its first call's (the profiling executor switches to an
  optimised graph), so a resumed process, whose first call comes at another iteration, would
  not continue the uninterrupted run bit for bit. As Python, every call computes alike.

A value already in the environment is kept. Importing nothing, this module is safe to use
before torch. ``python -m mgd.runtime NAME`` prints one default (the Makefile exports
``OMP_WAIT_POLICY`` from it to every command it runs: scripts and tests load torch too).
"""
import os
import sys

__all__ = ["RUNTIME_DEFAULTS", "apply_runtime_defaults"]

RUNTIME_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "PYTORCH_JIT": "0"}


def apply_runtime_defaults() -> None:
    """Set :data:`RUNTIME_DEFAULTS` in ``os.environ`` where unset (call before importing torch)."""
    for name, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(name, value)


if __name__ == "__main__":
    print(RUNTIME_DEFAULTS[sys.argv[1]])
