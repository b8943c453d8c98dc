"""Run a timing benchmark with glibc's allocator in its steady state.

glibc hands large freed blocks straight back to the OS (above a threshold that starts at 128 KiB and adapts
up to 32 MiB), so a fresh process pays page faults for every large activation on every forward, and how
many depends on what ran before: on the 2-core dev machine the float mobilenet_v2 forward over 8 batches
of 8 took 1.13-1.19 s in a fresh process and 0.37-0.40 s once anything else had run. Pinning the
thresholds keeps freed memory in the process, as a long-running job's allocator ends up doing; the float
model and every quantizer then run under the same conditions.
"""

from __future__ import annotations

import os
import sys

_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def reexec_with_steady_allocator() -> None:
    """Re-execute this script with the allocator settings unless they are already in the environment."""
    if all(os.environ.get(k) == v for k, v in _SETTINGS.items()):
        return
    os.environ.update(_SETTINGS)
    os.execv(sys.executable, [sys.executable, *sys.argv])
