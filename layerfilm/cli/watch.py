"""``layerfilm watch``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import ConfigError
from ..watch import SETTLE
from .common import _notes, _one_line_errors, _progress, app
from .render import render_config


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             options_metavar="CHECKPOINTS OUTPUT [RENDER OPTIONS] [OPTIONS]")
@_one_line_errors
def watch(
    ctx: typer.Context,
    idle_exit: Annotated[Optional[float], typer.Option(
        help="Stop after this many seconds without a new complete checkpoint (default: watch "
             "until Ctrl-C).", show_default=False)] = None,
    interval: Annotated[Optional[float], typer.Option(
        help="Seconds between looks at the checkpoints (default: 2 for a folder, 60 for hf:// "
             "and s3://, where each look lists them).", show_default=False)] = None,
    settle: Annotated[float, typer.Option(
        help="A checkpoint file is read only once it has not changed for this many seconds "
             "(0: as soon as its format shows it complete).")] = SETTLE,
    once: Annotated[bool, typer.Option(
        "--once", help="Bring OUTPUT up to date with the checkpoints complete now, then stop "
        "(what the training callbacks run after each save).")] = False,
) -> None:
    """Render CHECKPOINTS into OUTPUT, then again as each new checkpoint is complete.

    OUTPUT (and OUTPUT.json) is always a complete film of the run so far, replaced at once.

    A checkpoint still being written is waited for, never read; Ctrl-C leaves the last film.

    Takes every option of layerfilm render except --frames, --stills and --from-manifest.
    """
    from ..watch import watch as watch_run

    command = typer.main.get_command(app)
    rendering = command.commands["render"].make_context("layerfilm watch", list(ctx.args),
                                                        parent=ctx.parent)
    params = rendering.params
    for option, name in (("--frames", "frames_dir"), ("--stills", "stills_dir"),
                         ("--from-manifest", "from_manifest")):
        if params.get(name) is not None:
            raise ConfigError(f"{option} is not available in layerfilm watch: render it once the "
                              f"run has ended (layerfilm render ... {option} ...)")
    config, _ = render_config(rendering, params, "watch")
    if config is None:  # --print-config
        return
    for value, option in ((idle_exit, "--idle-exit"), (interval, "--interval"), (settle, "--settle")):
        if value is not None and value < 0:
            raise ConfigError(f"{option} must be at least 0, got {value:g}")
    quiet = params["quiet"]
    _notes(quiet)
    try:
        updates = watch_run(config, interval=interval, settle=settle, idle_exit=idle_exit, once=once,
                            progress=_progress(quiet, False), say=typer.echo)
    except KeyboardInterrupt:
        raise typer.Exit(130)  # the watch said what OUTPUT holds
    if updates and updates[-1].error is not None:
        raise typer.Exit(1)  # its last film could not be made (the one before is in place)
