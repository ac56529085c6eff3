"""The ``layerfilm`` command: parses options, builds a config, calls the pipeline.

Every :class:`~layerfilm.errors.LayerfilmError` becomes one line on stderr and
a non-zero exit code; Ctrl-C exits with 130 and leaves no partial film.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import (COLOR_SCALES, CONFIG_FILE, ORDERS, POINTS, PROJECTIONS, REBEL_Z, SCALES,
                     SETTLE_FRACTION, SUFFIXES, TIMELINES, InfoConfig, RenderConfig, StatsConfig, option_names,
                     options_toml, parse_size, resolve)
from .errors import ConfigError, LayerfilmError
from .progress import RichProgress

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


CkptArg = Annotated[Path, typer.Argument(
    help="Folder of checkpoints (step_000100.safetensors, checkpoint-100/model.safetensors, ...).",
    show_default=False)]
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
         "[default: $DASK_SCHEDULER_ADDRESS, else here]; the film is the same bit for bit.",
    show_default=False)]
FourierRefOpt = Annotated[Optional[int], typer.Option(
    "--fourier-ref", metavar="STEP",
    help="--projection fourier: fit the plane at this checkpoint's step [default: the last].",
    show_default=False)]
SkipBadOpt = Annotated[bool, typer.Option(
    "--skip-bad", help="Leave out checkpoints that cannot be read or no longer fit (a warning "
    "names each) instead of stopping.")]


PointsOpt = Annotated[str, typer.Option(
    help=f"What the dots are: {' | '.join(POINTS)} (neurons: each block's residual-stream rows/"
         "columns; embeddings: the token embedding alone; rows/cols: one panel per weight "
         "matrix, its rows or columns).")]
TensorOpt = Annotated[Optional[str], typer.Option(
    help="Draw only tensors whose name matches this regular expression (e.g. 'mlp.c_fc', 'wte').",
    show_default=False)]
ThresholdOpt = Annotated[Optional[float], typer.Option(
    help="Settle by rate instead: a layer has settled once its relative change per 100 steps "
         "stays below this.", show_default=False)]
FractionOpt = Annotated[float, typer.Option(
    help="A layer has settled at the first keyframe by which it has covered this share of its "
         "whole path (the sum of its relative changes).")]
RebelOpt = Annotated[float, typer.Option(
    help="A layer is a rebel while its drift's z-score against the two layers on either side "
         "reaches this.")]


@app.command()
@_one_line_errors
def render(
    ctx: typer.Context,
    checkpoints: Annotated[Optional[Path], typer.Argument(
        help="Folder of checkpoints (step_000100.safetensors, checkpoint-100/model.safetensors, "
             "...).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Argument(
        help=f"Film to write; the suffix picks the lossless format: {', '.join(SUFFIXES)}.",
        show_default=False)] = None,
    fps: Annotated[int, typer.Option(help="Frames per second of the film.")] = 25,
    frames_per_keyframe: Annotated[Optional[int], typer.Option(
        help="Frames between two checkpoints (default: fps, i.e. one checkpoint per second).",
        show_default=False)] = None,
    size: Annotated[str, typer.Option(help="Frame size WIDTHxHEIGHT in pixels.")] = "1280x720",
    projection: Annotated[str, typer.Option(
        help=f"2-D layout of each layer: {' | '.join(PROJECTIONS)} (umap is warm-started "
             "from the previous checkpoint's layout; slower).")] = "pca",
    max_points: Annotated[int, typer.Option(
        help="Most points drawn per layer; larger layers are subsampled with a fixed seed, "
             "the same points in every checkpoint.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed for subsampling and UMAP.")] = 0,
    cmap: Annotated[str, typer.Option(help="Any matplotlib colormap, for point density.")] = "inferno",
    color_scale: Annotated[str, typer.Option(
        help=f"Density to colour: {' | '.join(COLOR_SCALES)}; one range for the whole film.")] = "log",
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", help="Render and encode the film in this many chunks in parallel, joined "
        "without re-encoding (.webp always uses 1).")] = 1,
    frames_dir: Annotated[Optional[Path], typer.Option(
        "--frames", help="Also write every frame as a lossless PNG (frame_000000.png, ...) into "
        "this new or empty folder.", show_default=False)] = None,
    cache: Annotated[bool, typer.Option(
        help="Reuse keyframe layouts cached on disk (keyed by the checkpoints' path, size and "
             "mtime and the layout options), so re-rendering with another colormap, size or "
             "format skips loading and projection. Cache: $LAYERFILM_CACHE_DIR or "
             "~/.cache/layerfilm.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    points: PointsOpt = "neurons",
    tensor: TensorOpt = None,
    loss_strip: Annotated[bool, typer.Option(
        "--loss-strip", help="A strip under the panels with the training loss and a cursor that "
        "follows the film.")] = False,
    metrics: Annotated[Optional[Path], typer.Option(
        help="Loss log to use (JSONL/CSV with step and loss, or trainer_state.json) instead of "
             "the one found beside the checkpoints.", show_default=False)] = None,
    drift: Annotated[bool, typer.Option(
        "--drift", help="A bar under each panel: the layer's relative weight change per 100 steps "
        "(log scale, one scale for the film).")] = False,
    order: Annotated[str, typer.Option(
        help=f"Panel order: {' | '.join(ORDERS)} (settle: by settling step, earliest first).")
    ] = "film",
    settle_threshold: ThresholdOpt = None,
    settle_fraction: FractionOpt = SETTLE_FRACTION,
    rebel_z: RebelOpt = REBEL_Z,
    stills_dir: Annotated[Optional[Path], typer.Option(
        "--stills", help="Also write first.png, last.png and contact_sheet.png (keyframes) into "
        "this new or empty folder.", show_default=False)] = None,
    stills_every: Annotated[Optional[int], typer.Option(
        help="Contact sheet: one tile every N keyframes (and the last) [default: about 12 tiles].",
        show_default=False)] = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file instead of ./{CONFIG_FILE} or "
        "[tool.layerfilm] in ./pyproject.toml; options given here override it.",
        show_default=False)] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved options as TOML and exit.")] = False,
    from_manifest: Annotated[Optional[Path], typer.Option(
        "--from-manifest", help="Render the film described by this manifest (OUT.json) again, "
        "bit for bit; then [OUTPUT] (default: the manifest's film) or [CHECKPOINTS] [OUTPUT].",
        show_default=False)] = None,
    steps: StepsOpt = None,
    timeline: Annotated[str, typer.Option(
        help=f"Where keyframes sit in the film: {' | '.join(TIMELINES)} (keyframe: evenly; "
             "step: frames between checkpoints in proportion to their training steps, so "
             "unevenly spaced checkpoints keep true time).")] = "keyframe",
    point_size: Annotated[Optional[float], typer.Option(
        help="Dot size in pixels (the width of its footprint at half height) for every panel "
             "[default: from each panel's size and number of dots].", show_default=False)] = None,
    scale: Annotated[str, typer.Option(
        help=f"Panel scale: {' | '.join(SCALES)} (shared: every panel at one common scale, so "
             "sizes compare).")] = "panel",
    cues: Annotated[bool, typer.Option(
        help="Per panel: border and activity line following its rate of change, 'settled' and "
             "'rebel' marks.")] = True,
    title: Annotated[Optional[str], typer.Option(
        help="Header title [default: the checkpoint folder's name].", show_default=False)] = None,
    caption: Annotated[Optional[str], typer.Option(
        help="A footer line, e.g. what the model is.", show_default=False)] = None,
    captions: Annotated[Optional[Path], typer.Option(
        help='JSONL of {"step": N, "text": "..."}: each text shown from step N on (e.g. a sample '
             "completion per checkpoint).", show_default=False)] = None,
    tokens_per_step: Annotated[Optional[int], typer.Option(
        help="Training tokens per step, for the header's tokens seen [default: from names or "
             "trainer_state.json].", show_default=False)] = None,
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    fourier_ref: FourierRefOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Render CHECKPOINTS into the lossless film OUTPUT, one panel per layer.

    Options come from the command line, else from the config file, else their defaults.

    A manifest OUTPUT.json is written beside the film.
    """
    from . import manifest
    from .pipeline import render as run

    cli_config = RenderConfig(
        checkpoints=checkpoints, output=output, fps=fps, frames_per_keyframe=frames_per_keyframe,
        size=parse_size(size), projection=projection, max_points=max_points, seed=seed, cmap=cmap,
        color_scale=color_scale, jobs=jobs, cache=cache, frames_dir=frames_dir, points=points,
        tensor=tensor, loss_strip=loss_strip, metrics=metrics, drift=drift, order=order,
        settle_threshold=settle_threshold, settle_fraction=settle_fraction, rebel_z=rebel_z,
        stills_dir=stills_dir, stills_every=stills_every,
        steps=steps, timeline=timeline, point_size=point_size, scale=scale, cues=cues, title=title,
        caption=caption, captions=captions, tokens_per_step=tokens_per_step,
        layer_pattern=layer_pattern, skip_bad=skip_bad, fourier_ref=fourier_ref, scheduler=scheduler,
    )
    given = _given_on_command_line(ctx)
    if from_manifest is not None:
        if config_file is not None:
            raise ConfigError("--config and --from-manifest cannot be used together")
        recorded = manifest.load(from_manifest)
        config = manifest.config_from(recorded, from_manifest, cli_config, given)
        source = f"{from_manifest} < command line"
    else:
        config, path = resolve(cli_config, given, config_file)
        source = f"defaults < {path} < command line" if path else "defaults < command line"
    if print_config:
        typer.echo(options_toml(config, [f"layerfilm {__version__} render options ({source})"]),
                   nl=False)
        return
    for name, value in (("CHECKPOINTS", config.checkpoints), ("OUTPUT", config.output)):
        if value is None:
            raise ConfigError(f"Missing argument '{name}' (see layerfilm render --help)")
    if from_manifest is not None:
        for warning in manifest.check_inputs(recorded, from_manifest, config):
            typer.echo(f"warning: {warning}", err=True)
    result = run(config, RichProgress(quiet or not sys.stderr.isatty()))
    written = manifest.write(config, result)
    mb = result.bytes / 1e6
    s = result.seconds
    typer.echo(
        f"wrote {result.output} ({result.frames} frames, {result.frames / config.fps:.1f} s, "
        f"{mb:.1f} MB) in {s['wall']:.1f} s "
        f"[load+project {s['load+project']:.1f} s, render {s['render']:.1f} s, "
        f"encode {s['encode']:.1f} s{f', {result.jobs} jobs' if result.jobs > 1 else ''}]"
    )
    if config.jobs > 1 and result.jobs == 1:
        typer.echo(f"note: {config.format} chunks cannot be joined without re-encoding; used 1 job",
                   err=True)
    if result.nonfinite:
        typer.echo(f"warning: {result.nonfinite} point(s) had NaN/Inf weights and were not drawn",
                   err=True)
    if from_manifest is not None:
        same = manifest.same_film(recorded, written)
        if same is True:
            typer.echo(f"identical to the film recorded in {from_manifest} (sha256 {written['film']['sha256'][:16]}...)")
        elif same is False:
            typer.echo(f"warning: the film differs from the one recorded in {from_manifest}", err=True)


def _given_on_command_line(ctx: typer.Context) -> set[str]:
    """The options the user typed (as opposed to defaults), by parameter name."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT"):
            given.add(name)
    return given


@app.command()
@_one_line_errors
def info(
    ctx: typer.Context,
    checkpoints: CkptArg,
    max_points: Annotated[int, typer.Option(help="As for render: most points drawn per layer.")] = 2000,
    fps: Annotated[int, typer.Option(help="As for render, to show the film's length.")] = 25,
    frames_per_keyframe: Annotated[Optional[int], typer.Option(
        help="As for render [default: fps].", show_default=False)] = None,
    points: PointsOpt = "neurons",
    tensor: TensorOpt = None,
    steps: StepsOpt = None,
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    projection: Annotated[str, typer.Option(
        help="As for render: which axes the variance column describes.")] = "pca",
    fourier_ref: FourierRefOpt = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file (as render does) instead of "
        f"./{CONFIG_FILE} or [tool.layerfilm] in ./pyproject.toml; options given here override "
        "it.", show_default=False)] = None,
) -> None:
    """Show the checkpoints, steps and layers that render would draw (with the same config
    file), and how much of each panel's variance its two drawn axes hold."""
    from .describe import describe

    cli_config = InfoConfig(checkpoints=checkpoints, fps=fps, frames_per_keyframe=frames_per_keyframe,
                            max_points=max_points, points=points, tensor=tensor, steps=steps,
                            layer_pattern=layer_pattern, skip_bad=skip_bad, projection=projection,
                            fourier_ref=fourier_ref)
    config, _ = resolve(cli_config, _given_on_command_line(ctx), config_file)
    for line in describe(config):
        typer.echo(line)


@app.command()
@_one_line_errors
def stats(
    ctx: typer.Context,
    checkpoints: Annotated[Optional[Path], typer.Argument(
        help="Folder of checkpoints (step_000100.safetensors, checkpoint-100/model.safetensors, "
             "...).", show_default=False)] = None,
    out: Annotated[Path, typer.Option(
        help="Folder for layer_stats.csv and layer_change.png (created if needed).")
    ] = Path("layerfilm-stats"),
    settle_threshold: ThresholdOpt = None,
    settle_fraction: FractionOpt = SETTLE_FRACTION,
    rebel_z: RebelOpt = REBEL_Z,
    points: PointsOpt = "neurons",
    tensor: TensorOpt = None,
    max_points: Annotated[int, typer.Option(help="As for render: most points per layer.")] = 2000,
    seed: Annotated[int, typer.Option(help="As for render.")] = 0,
    projection: Annotated[str, typer.Option(
        help="As for render: whose cached layouts give the layout columns.")] = "pca",
    layouts: Annotated[bool, typer.Option(
        "--layouts", help="Compute the keyframe layouts when none are cached (as render does).")
    ] = False,
    fourier_ref: FourierRefOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    steps: StepsOpt = None,
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file (as render does) instead of "
        f"./{CONFIG_FILE} or [tool.layerfilm] in ./pyproject.toml; stats uses the options it "
        "shares with render; options given here override it.", show_default=False)] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved options stats shares with render as TOML "
        "and exit.")] = False,
) -> None:
    """Per-layer drift of CHECKPOINTS: a CSV, a heatmap PNG, each layer's settling step and
    the layers that move against their neighbours.

    Options come from the command line, else from the config file, else their defaults.
    """
    from rich.console import Console
    from rich.table import Table

    from .pipeline import measure
    from .stats import summary

    cli_config = StatsConfig(checkpoints=checkpoints, out=out, settle_threshold=settle_threshold,
                             settle_fraction=settle_fraction, rebel_z=rebel_z,
                             points=points, tensor=tensor, max_points=max_points, seed=seed,
                             projection=projection, fourier_ref=fourier_ref, layouts=layouts,
                             steps=steps, layer_pattern=layer_pattern, skip_bad=skip_bad)
    config, path = resolve(cli_config, _given_on_command_line(ctx), config_file)
    if print_config:
        source = f"defaults < {path} < command line" if path else "defaults < command line"
        typer.echo(options_toml(config, [f"layerfilm {__version__} stats options ({source})"],
                                option_names(StatsConfig)), nl=False)
        return
    if config.checkpoints is None:
        raise ConfigError("Missing argument 'CHECKPOINTS' (see layerfilm stats --help)")
    result = measure(config, RichProgress(quiet or not sys.stderr.isatty()))
    title, columns, rows, lines = summary(result.stats, config)
    table = Table(title=title)
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)
    for line in lines:
        typer.echo(line)
    typer.echo(f"layout columns: {result.layouts}")
    s = result.stats
    typer.echo(f"wrote {result.csv} ({len(s.steps) * len(s.labels)} rows) and {result.heatmap}")


@app.command()
@_one_line_errors
def publish(
    films: Annotated[list[Path], typer.Argument(
        help="Films to publish; their manifests (FILM.json), stills and stats beside them go too.",
        show_default=False)],
    repo_id: Annotated[str, typer.Option("--repo-id", help="The Hub repository, USER/NAME.",
                                         show_default=False)],
    repo_type: Annotated[str, typer.Option(help="model | dataset.")] = "model",
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    path_in_repo: Annotated[str, typer.Option(
        help="Folder in the repository for the films (default: its top).")] = "",
    message: Annotated[Optional[str], typer.Option(
        "--message", "-m", help="Commit message [default: layerfilm: FILM, ...].",
        show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be uploaded and print the card; upload nothing.")] = False,
) -> None:
    """Upload lossless films to the Hugging Face Hub in one commit, with a README card.

    The token is the one `hf auth login` saved, or $HF_TOKEN.
    """
    from .config import PublishConfig
    from .publish import publish as upload

    config = PublishConfig(films=tuple(films), repo_id=repo_id, repo_type=repo_type, private=private,
                           path_in_repo=path_in_repo, message=message, dry_run=dry_run)
    done = upload(config.validated(), typer.echo)
    if not dry_run:
        typer.echo(f"published {len(done.files)} files and README.md to {done.url}"
                   + (f" ({done.commit_url})" if done.commit_url else ""))


@app.command("cache")
@_one_line_errors
def cache_command(
    clear: Annotated[bool, typer.Option("--clear", help="Delete every cached entry.")] = False,
) -> None:
    """Show where the layout cache is, what it holds and its size cap; --clear empties it.

    The cap is $LAYERFILM_CACHE_SIZE (e.g. 500M, 10G; default 2G): storing an entry removes
    the least recently used ones until the rest fits.
    """
    from . import cache

    if clear:
        files, size = cache.clear()
        typer.echo(f"removed {files} files ({size / 1e6:.1f} MB) from {cache.cache_dir()}")
        return
    found = cache.entries()
    layouts = [e for e in found if e[0].name.startswith("layouts-")]
    total = sum(size for _, size, _ in found)
    typer.echo(f"cache       {cache.cache_dir()}")
    typer.echo(f"holds       {len(layouts)} layout entries, {len(found) - len(layouts)} file digests, "
               f"{total / 1e6:.1f} MB")
    typer.echo(f"size cap    {cache.size_cap() / 1e6:,.0f} MB ($LAYERFILM_CACHE_SIZE; least recently used "
               "entries go first)")


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
        # exit handlers can otherwise turn the interrupt into death by SIGINT, exit -2.)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main_entry()
