"""The ``layerfilm`` command: parses options, builds a config, calls the pipeline.

Every :class:`~layerfilm.errors.LayerfilmError` becomes one line on stderr and
a non-zero exit code; Ctrl-C exits with 130 and leaves no partial film.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import (COLOR_SCALES, CONFIG_FILE, ORDERS, POINTS, PROJECTIONS, SETTLE_THRESHOLD,
                     SUFFIXES, TIMELINES, InfoConfig, RenderConfig, StatsConfig, as_location,
                     option_names, options_toml, parse_size, resolve)
from .errors import ConfigError, LayerfilmError

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
    from .checkpoints import TOTAL, human_bytes
    from .progress import RichProgress

    def fetched() -> str:
        of = f" of {human_bytes(TOTAL.stored)}" if TOTAL.stored else ""
        return f"{human_bytes(TOTAL.fetched)}{of} fetched"

    return RichProgress(quiet or not sys.stderr.isatty(), fetched if remote else None)


def _fetched(plan) -> str:
    """`` (fetched X of Y stored, Z %, N requests)`` for remote checkpoints, else nothing."""
    traffic = getattr(plan.storage, "traffic", None) if plan else None
    if traffic is None:
        return ""
    from .checkpoints import human_bytes

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
ThresholdOpt = Annotated[float, typer.Option(
    help="A layer has settled once its relative change per 100 steps stays below this.")]


@app.command()
@_one_line_errors
def render(
    ctx: typer.Context,
    checkpoints: CkptArg = None,
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
    settle_threshold: ThresholdOpt = SETTLE_THRESHOLD,
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
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    revisions: RevisionsOpt = None,
    keep_downloads: KeepOpt = False,
    verify_inputs: Annotated[bool, typer.Option(
        "--verify-inputs", help="Record (and with --from-manifest check) the sha256 of every "
        "checkpoint file in full, not only of the bytes drawn.")] = False,
) -> None:
    """Render CHECKPOINTS into the lossless film OUTPUT, one panel per layer.

    Options come from the command line, else from the config file, else their defaults.

    A manifest OUTPUT.json is written beside the film.
    """
    from . import manifest
    from .pipeline import render as run

    cli_config = RenderConfig(
        checkpoints=as_location(checkpoints), output=output, fps=fps, frames_per_keyframe=frames_per_keyframe,
        size=parse_size(size), projection=projection, max_points=max_points, seed=seed, cmap=cmap,
        color_scale=color_scale, jobs=jobs, cache=cache, frames_dir=frames_dir, points=points,
        tensor=tensor, loss_strip=loss_strip, metrics=metrics, drift=drift, order=order,
        settle_threshold=settle_threshold, stills_dir=stills_dir, stills_every=stills_every,
        steps=steps, timeline=timeline,
        layer_pattern=layer_pattern, skip_bad=skip_bad, revisions=revisions,
        keep_downloads=keep_downloads, verify_inputs=verify_inputs,
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
    _notes(quiet)
    remote = not isinstance(config.checkpoints, Path)
    result = run(config, _progress(quiet, remote))
    written = manifest.write(config, result)
    mb = result.bytes / 1e6
    s = result.seconds
    typer.echo(
        f"wrote {result.output} ({result.frames} frames, {result.frames / config.fps:.1f} s, "
        f"{mb:.1f} MB) in {s['wall']:.1f} s "
        f"[load+project {s['load+project']:.1f} s, render {s['render']:.1f} s, "
        f"encode {s['encode']:.1f} s{f', {result.jobs} jobs' if result.jobs > 1 else ''}]"
        + _fetched(result.plan))
    if config.jobs > 1 and result.jobs == 1:
        typer.echo(f"note: {config.format} chunks cannot be joined without re-encoding; used 1 job",
                   err=True)
    _warn_skipped(result.plan)
    if result.nonfinite:
        typer.echo(f"warning: {result.nonfinite} point(s) had NaN/Inf weights and were not drawn",
                   err=True)
    if from_manifest is not None:
        same = manifest.same_film(recorded, written)
        if same is True:
            typer.echo(f"identical to the film recorded in {from_manifest} (sha256 {written['film']['sha256'][:16]}...)")
        elif same is False:
            typer.echo(f"warning: the film differs from the one recorded in {from_manifest}", err=True)


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


def _warn_skipped(plan) -> None:
    """One ``warning: skipped FILE: problem`` line per checkpoint ``--skip-bad`` left out."""
    for path, why in plan.skipped if plan else ():
        typer.echo(f"warning: skipped {path}: {why}", err=True)


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
    revisions: RevisionsOpt = None,
    keep_downloads: KeepOpt = False,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file (as render does) instead of "
        f"./{CONFIG_FILE} or [tool.layerfilm] in ./pyproject.toml; options given here override "
        "it.", show_default=False)] = None,
) -> None:
    """Show the checkpoints, steps and layers that render would draw (with the same config
    file)."""
    from .plan import describe, make_plan

    cli_config = InfoConfig(checkpoints=as_location(checkpoints), fps=fps,
                            frames_per_keyframe=frames_per_keyframe, max_points=max_points,
                            points=points, tensor=tensor, steps=steps, layer_pattern=layer_pattern,
                            skip_bad=skip_bad, revisions=revisions, keep_downloads=keep_downloads)
    config, _ = resolve(cli_config, _given_on_command_line(ctx), config_file)
    _notes(False)
    plan = make_plan(config, config.metrics)
    for line in describe(plan, config.fps, config.keyframe_frames):
        typer.echo(line)


@app.command()
@_one_line_errors
def stats(
    ctx: typer.Context,
    checkpoints: CkptArg = None,
    out: Annotated[Path, typer.Option(
        help="Folder for layer_stats.csv and layer_change.png (created if needed).")
    ] = Path("layerfilm-stats"),
    settle_threshold: ThresholdOpt = SETTLE_THRESHOLD,
    points: PointsOpt = "neurons",
    tensor: TensorOpt = None,
    max_points: Annotated[int, typer.Option(help="As for render: most points per layer.")] = 2000,
    seed: Annotated[int, typer.Option(help="As for render.")] = 0,
    projection: Annotated[str, typer.Option(
        help="As for render: whose cached layouts give the layout columns.")] = "pca",
    layouts: Annotated[bool, typer.Option(
        "--layouts", help="Compute the keyframe layouts when none are cached (as render does).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    steps: StepsOpt = None,
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    revisions: RevisionsOpt = None,
    keep_downloads: KeepOpt = False,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file (as render does) instead of "
        f"./{CONFIG_FILE} or [tool.layerfilm] in ./pyproject.toml; stats uses the options it "
        "shares with render; options given here override it.", show_default=False)] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved options stats shares with render as TOML "
        "and exit.")] = False,
) -> None:
    """Per-layer drift of CHECKPOINTS: a CSV, a heatmap PNG and each layer's settling step.

    Options come from the command line, else from the config file, else their defaults.
    """
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from .pipeline import measure

    cli_config = StatsConfig(checkpoints=as_location(checkpoints), out=out, settle_threshold=settle_threshold,
                             points=points, tensor=tensor, max_points=max_points, seed=seed,
                             projection=projection, layouts=layouts, steps=steps,
                             layer_pattern=layer_pattern, skip_bad=skip_bad, revisions=revisions,
                             keep_downloads=keep_downloads)
    config, path = resolve(cli_config, _given_on_command_line(ctx), config_file)
    if print_config:
        source = f"defaults < {path} < command line" if path else "defaults < command line"
        typer.echo(options_toml(config, [f"layerfilm {__version__} stats options ({source})"],
                                option_names(StatsConfig)), nl=False)
        return
    if config.checkpoints is None:
        raise ConfigError("Missing argument 'CHECKPOINTS' (see layerfilm stats --help)")
    settle_threshold = config.settle_threshold
    _notes(quiet)
    result = measure(config, _progress(quiet, not isinstance(config.checkpoints, Path)))
    s = result.stats
    settle = s.settle_steps(settle_threshold)
    rate = s.rate
    late = rate[:, max(1, len(s.steps) * 3 // 4):]
    table = Table(title=f"settling: relative change per 100 steps stays below {settle_threshold:g}")
    for name, justify in (("layer", "left"), ("points", "right"), ("|W| first -> last", "right"),
                          ("change vs first", "right"), ("late rate", "right"),
                          ("settles at step", "right")):
        table.add_column(name, justify=justify)
    for l, label in enumerate(s.labels):
        table.add_row(label, f"{s.points[l]:,}", f"{s.norm[l, 0]:.3g} -> {s.norm[l, -1]:.3g}",
                      f"{s.rel_first[l, -1]:.3g}", f"{np.nanmedian(late[l]):.3g}",
                      "never" if np.isnan(settle[l]) else f"{int(settle[l]):,}")
    console = Console(width=max(100, Console().width))
    console.print(table)
    order = [l for l in np.argsort(settle, kind="stable") if np.isfinite(settle[l])]
    if order:
        first = settle[order[0]]
        names = ", ".join(s.labels[l] for l in order if settle[l] == first)
        typer.echo(f"settles first: {names} (step {int(first):,})")
    else:
        typer.echo(f"no layer settles below {settle_threshold:g} per 100 steps")
    typer.echo(f"layout columns: {result.layouts}")
    typer.echo(f"wrote {result.csv} ({len(s.steps) * len(s.labels)} rows) and {result.heatmap}")
    _warn_skipped(result.plan)


@app.command()
@_one_line_errors
def publish(
    films: Annotated[list[Path], typer.Argument(
        help="Films to publish; their manifests (FILM.json), stills and stats beside them go too.",
        show_default=False)],
    repo_id: Annotated[str, typer.Option("--repo-id", help="The Hub repository, USER/NAME.",
                                         show_default=False)] = "",
    bucket: Annotated[Optional[str], typer.Option(
        "--bucket", metavar="USER/NAME[/FOLDER]", help="A Hugging Face Storage Bucket instead of a "
        "repository (created if missing); files already there are not sent again.",
        show_default=False)] = None,
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
    """Upload lossless films to a Hugging Face Hub repository (one commit) or Storage Bucket,
    with a README card.

    The token is the one `hf auth login` saved, or $HF_TOKEN.
    """
    from .config import PublishConfig
    from .publish import publish as upload

    config = PublishConfig(films=tuple(films), repo_id=repo_id, bucket=bucket, repo_type=repo_type,
                           private=private, path_in_repo=path_in_repo, message=message,
                           dry_run=dry_run)
    done = upload(config.validated(), typer.echo)
    if bucket and not dry_run:
        typer.echo(f"bucket: {done.url}")
    elif not dry_run:
        typer.echo(f"published {len(done.files)} files and README.md to {done.url}"
                   + (f" ({done.commit_url})" if done.commit_url else ""))


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
        sys.exit(130)
    except Exception as e:
        # click's UsageError/BadParameter (typer vendors click, so match by interface).
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        message = " ".join(e.format_message().split())
        if not message:  # no arguments at all: the help was just printed
            sys.exit(e.exit_code)
        sys.stderr.write(f"layerfilm: error: {message} (see layerfilm --help)\n")
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main_entry()
