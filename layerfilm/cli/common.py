"""The ``layerfilm`` command's shared parts: the typer app, one-line errors, progress, and the
options several commands take."""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..config import POINTS
from ..errors import LayerfilmError


def _flags_take_no_value() -> None:
    """typer 0.29's help shows a ``<bool>`` type for flags (``--drift``, even ``--help``),
    which take no value: show nothing there, as for any flag."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else shown(self, ctx)


_flags_take_no_value()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Turn a folder of training checkpoints into a lossless film of every layer.",
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int) -> None:
    typer.echo(f"layerfilm: error: {message}", err=True)
    raise typer.Exit(code)


def _one_line_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LayerfilmError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted; no output was written", 130)
        except MemoryError:
            _fail("out of memory; try a smaller --max-points", 1)
    return wrapper


def _progress(quiet: bool, remote: bool):
    """Rich progress bars on stderr (none when quiet or stderr is not a terminal); for remote
    checkpoints each shows the bytes fetched of those stored."""
    from ..checkpoints import TOTAL, human_bytes
    from ..progress import RichProgress

    def fetched() -> str:
        of = f" of {human_bytes(TOTAL.stored)}" if TOTAL.stored else ""
        return f"{human_bytes(TOTAL.fetched)}{of} fetched"

    return RichProgress(quiet or not sys.stderr.isatty(), fetched if remote else None)


def _fetched(plan) -> str:
    """`` (fetched X of Y stored, Z %, N requests)`` for remote checkpoints, else nothing."""
    traffic = getattr(plan.storage, "traffic", None) if plan else None
    if traffic is None:
        return ""
    from ..checkpoints import human_bytes

    return (f" (fetched {human_bytes(traffic.fetched)} of {human_bytes(traffic.stored)} stored, "
            f"{100 * traffic.fetched / max(traffic.stored, 1):.1f} %, in {traffic.data_requests} "
            f"data requests)")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"layerfilm {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Turn a folder of training checkpoints into a lossless film of every layer."""


CkptArg = Annotated[Optional[str], typer.Argument(
    help="Folder of checkpoints (step_000100.safetensors, checkpoint-100/model.safetensors, ...), "
         "or a URL: hf://ORG/REPO (every revision naming a step), hf://ORG/REPO@REV/DIR, "
         "s3://..., gs://..., https://...", show_default=False)]
RevisionsOpt = Annotated[Optional[str], typer.Option(
    "--revisions", metavar="GLOB", help="hf://ORG/REPO: only the branches and tags matching "
    "these globs (comma-separated, e.g. 'step*000').", show_default=False)]
KeepOpt = Annotated[bool, typer.Option(
    "--keep-downloads", help="Remote checkpoints: keep whole files that had to be downloaded "
    "(torch pickles, servers that ignore Range) for the next run.")]
StepsOpt = Annotated[Optional[str], typer.Option(
    "--steps", metavar="START:STOP:EVERY",
    help="Checkpoints to use: steps from START to STOP (both included), each at least EVERY "
         "steps after the previous one; any part may be left out (::500, 1000:).",
    show_default=False)]
LayerPatternOpt = Annotated[Optional[str], typer.Option(
    "--layer-pattern", metavar="REGEX",
    help="Group 2-D tensors into panels by this regex instead of by known block names: its "
         "'layer' group, else its first group, names the panel (e.g. '^(features\\.\\d+)\\.').",
    show_default=False)]
SchedulerOpt = Annotated[Optional[str], typer.Option(
    "--scheduler", metavar="ADDRESS",
    help="Run the work on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786) "
         "(default: $DASK_SCHEDULER_ADDRESS, else here); the film is the same bit for bit.",
    show_default=False)]
FourierRefOpt = Annotated[Optional[int], typer.Option(
    "--fourier-ref", metavar="STEP",
    help="--projection fourier: fit the plane at this checkpoint's step (default: the last).",
    show_default=False)]
RunOpt = Annotated[Optional[str], typer.Option(
    "--run", metavar="NAME",
    help="Film one training run of several in the folder: the checkpoints in the folder NAME "
         "(run1 for run1/checkpoint-50/), or named NAME before their step (runA for "
         "runA-step100.safetensors); '.' for those at the top. Two runs in one folder are "
         "refused without it.", show_default=False)]
MaxMemoryOpt = Annotated[Optional[str], typer.Option(
    "--max-memory", metavar="SIZE",
    help="Most memory that reading the drawn points may take, such as 8G, 512M or 1.5GiB (default: "
         "what is available when the checkpoints are planned); more is refused before any is read.",
    show_default=False)]
SkipBadOpt = Annotated[bool, typer.Option(
    "--skip-bad", help="Leave out checkpoints that cannot be read or no longer fit (a warning "
    "names each) instead of stopping.")]


PointsOpt = Annotated[str, typer.Option(
    help=f"What the dots are: {' | '.join(POINTS)} (neurons: each block's residual-stream rows/"
         "columns; embeddings: the token embedding alone; rows/cols: one panel per weight "
         "matrix, its rows or columns; activations: each layer's hidden states on --probe's "
         "tokens, one dot a token, needs layerfilm\\[model]).")]
ProbeOpt = Annotated[Optional[Path], typer.Option(
    help="--points activations: a text file, one sequence a line, whose tokens are the dots "
         "(docs/activations.md).", show_default=False)]
ProbePositionsOpt = Annotated[str, typer.Option(
    help="--points activations: which tokens of each probe line are dots: all, or indices such "
         "as -1 (the last) or 0,2.")]
ModelConfigOpt = Annotated[Optional[Path], typer.Option(
    help="--points activations, --prompt: a folder with the model's config.json (default: in or "
         "beside the checkpoints; nanoGPT checkpoints carry their own).", show_default=False)]
TokenizerOpt = Annotated[Optional[Path], typer.Option(
    help="--points activations, --prompt: a folder with the tokenizer's files (default: in or "
         "beside the checkpoints).", show_default=False)]
TensorOpt = Annotated[Optional[str], typer.Option(
    help="Draw only tensors whose name matches this regular expression (e.g. 'mlp.c_fc', 'wte').",
    show_default=False)]
ThresholdOpt = Annotated[Optional[float], typer.Option(
    help="Settle below a fixed rate instead: a layer has settled once its relative change per "
         "100 steps stays below this (for at least three intervals to the end).", show_default=False)]
FractionOpt = Annotated[float, typer.Option(
    help="A layer has settled once its rate stays below this share of its own early pace, for at "
         "least three intervals to the end; a layer that keeps its pace is still moving.")]
RebelOpt = Annotated[float, typer.Option(
    help="A layer is a rebel while its drift's z-score against the two layers on either side "
         "reaches this.")]
# --prompt (render and stats): run each keyframe's checkpoint (docs/model.md).
PromptOpt = Annotated[Optional[list[str]], typer.Option(
    help="Run each keyframe's checkpoint on this text and show its greedy continuation as the "
         "keyframe's caption (repeatable: one line each; needs layerfilm\\[model]; docs/model.md).",
    show_default=False)]
PromptsOpt = Annotated[Optional[Path], typer.Option(
    help="A file of prompts, one a line, as --prompt.", show_default=False)]
MaxNewTokensOpt = Annotated[int, typer.Option(
    help="--prompt: tokens generated at most, 1 to 256 (fewer where the model's context ends "
         "or it says end-of-text).")]



def _notes(quiet: bool) -> None:
    """What the checkpoint readers say while they work (the size of a whole file about to be
    downloaded) as ``note:`` lines on stderr, unless quiet."""
    import logging

    class Echo(logging.Handler):
        def emit(self, record):
            typer.echo(f"note: {record.getMessage()}", err=True)

    logger = logging.getLogger("layerfilm")
    logger.handlers = [] if quiet else [Echo()]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _given_on_command_line(ctx: typer.Context) -> set[str]:
    """The options the user typed (as opposed to defaults), by parameter name."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            given.add(name)
    return given


def _config_of(cls, params: dict, own: tuple[str, ...], **parse):
    """A ``cls`` config from a command's parameters (its ``locals()`` on entry), by name: each
    parameter gives the config field of its name, through ``parse[name]`` where the option's
    text needs parsing (``size="1280x720"`` -> ``(1280, 720)``), so a new option is only a
    parameter named like its field.  The parameters in ``own`` are the command's own
    (``--quiet``, ``--config``); any other that names no field is a mistake in the command."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    stray = set(params) - fields - set(own)
    if stray:
        raise TypeError(f"{sorted(stray)} name no field of {cls.__name__}")
    return cls(**{name: parse[name](value) if name in parse else value
                  for name, value in params.items() if name in fields})
