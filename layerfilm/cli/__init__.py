"""The ``layerfilm`` command: parses options, builds a config, calls the pipeline.

Every :class:`~layerfilm.errors.LayerfilmError` becomes one line on stderr and
a non-zero exit code; Ctrl-C exits with 130 and leaves no partial film.
"""

from __future__ import annotations

import os
import sys

import typer

from .commands import cache_command, info, publish, stats
from .common import app
from .render import render
from .watch import watch

__all__ = ["app", "main_entry", "render", "info", "stats", "publish", "cache_command", "watch"]


def main_entry() -> None:
    """The ``layerfilm`` console script: usage errors (a mistyped option, a value that is not a
    number) also come out as one line, like every other error.  SIGTERM (``kill``, make, CI
    time-outs) is handled like Ctrl-C, so ffmpeg is stopped and no partial file is left."""
    import signal

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False, prog_name="layerfilm")
    except (typer.Abort, KeyboardInterrupt):
        sys.stderr.write("layerfilm: error: interrupted; no output was written\n")
        code = 130
    except Exception as e:
        # click's UsageError/BadParameter (typer vendors click, so match by interface).
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        message = " ".join(e.format_message().split())
        if not message:  # no arguments at all: the help was just printed
            sys.exit(e.exit_code)
        sys.stderr.write(f"layerfilm: error: {message} (see layerfilm --help)\n")
        sys.exit(e.exit_code)
    if code == 130:
        # Interrupted, and everything written cleaned up: leave now, with 130.  (A Dask client's
        # exit handlers can otherwise turn the interrupt into death by SIGINT, exit -2.)  Exit
        # handlers do not run on this way out: the run's temporary downloads go first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        from ..checkpoints.remote import clean_up_now

        clean_up_now()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main_entry()

