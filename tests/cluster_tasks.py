"""Small task functions the cluster tests send to real dask workers (which import this module
from the tests folder)."""

import os
import time
from pathlib import Path


def scaled(factor, x, advance=None):
    return factor * x


def slow_marked(folder, x, advance=None):
    """Say which process runs item ``x`` (a file named after it holding the pid), then take a
    while: a test can kill that worker mid-task."""
    Path(folder, f"{x}.pid").write_text(str(os.getpid()))
    time.sleep(0.4)
    return x * x


def fails(_, x, advance=None):
    from layerfilm.errors import CheckpointError

    if x == 3:
        raise CheckpointError("truncated: nothing to read", "ckpts/step_3.safetensors")
    return x
