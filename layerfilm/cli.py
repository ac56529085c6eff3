"""The ``layerfilm`` command: parses options, builds a config, calls the pipeline.

Every :class:`~layerfilm.errors.LayerfilmError` becomes one line on stderr and
a non-zero exit code; Ctrl-C exits with 130 and leaves no partial film.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import (COLOR_SCALES, CONFIG_FILE, ORDERS, POINTS, PROJECTIONS, REBEL_Z, SCALES,
                     SETTLE_FRACTION, SUFFIXES, TIMELINES, InfoConfig, RenderConfig, StatsConfig, option_names,
                     options_toml, parse_size, resolve)
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


class _RichProgress:
    """Rich progress bars, one per stage, on stderr; quiet when stderr is not a terminal."""

    def __init__(self, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet)

    @contextlib.contextmanager
    def stage(self, name: str, total: int):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(name, total=total)
            yield lambda n=1: bar.advance(task, n)


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
        layer_pattern=layer_pattern, skip_bad=skip_bad,
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
    result = run(config, _RichProgress(quiet or not sys.stderr.isatty()))
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
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file (as render does) instead of "
        f"./{CONFIG_FILE} or [tool.layerfilm] in ./pyproject.toml; options given here override "
        "it.", show_default=False)] = None,
) -> None:
    """Show the checkpoints, steps and layers that render would draw (with the same config
    file)."""
    from .plan import make_plan

    cli_config = InfoConfig(checkpoints=checkpoints, fps=fps, frames_per_keyframe=frames_per_keyframe,
                            max_points=max_points, points=points, tensor=tensor, steps=steps,
                            layer_pattern=layer_pattern, skip_bad=skip_bad)
    config, _ = resolve(cli_config, _given_on_command_line(ctx), config_file)
    plan = make_plan(config, config.metrics)
    steps_ = plan.steps
    gaps = sorted({int(b - a) for a, b in zip(steps_[:-1], steps_[1:])})
    every = f"every {gaps[0]}" if len(gaps) == 1 else f"gaps {gaps[0]}..{gaps[-1]}"
    fps = config.fps
    fpk = config.keyframe_frames
    frames = (len(steps_) - 1) * fpk + 1
    kinds = sorted({r.kind for r in plan.refs})
    out = typer.echo
    out(f"folder      {checkpoints}")
    out(f"format      {'; '.join(kinds)}")
    out(f"keyframes   {len(steps_)} checkpoints, steps {steps_[0]:,} .. {steps_[-1]:,} ({every})")
    out(f"first/last  {_rel(plan.refs[0].path, checkpoints)} .. {_rel(plan.refs[-1].path, checkpoints)}")
    loss = plan.loss
    out(f"loss        {f'{len(loss.steps)} values from {loss.source}' if loss else 'none found'}")
    out(f"film        {frames} frames, {frames / fps:.1f} s at {fps} fps, {fpk} frames per checkpoint")
    if len(gaps) > 1:
        out("            (uneven gaps: --timeline step spaces keyframes by training step)")
    out(f"panels      {len(plan.layers)}")
    out("")
    out(f"  {'panel':<10} {'drawn':>7} {'of':>7} {'width':>6}  tensors (rows R / columns C)")
    for layer in plan.layers:
        tensors = ", ".join(
            f"{s.tensor[len(layer.prefix):] if layer.prefix and s.tensor.startswith(layer.prefix) else s.tensor}"
            f" {'R' if s.axis == 0 else 'C'}" for s in layer.sources)
        out(f"  {layer.label:<10} {layer.n_points:>7,} {layer.total:>7,} {layer.dim:>6}  {tensors}")
    for path, why in plan.skipped:
        out(f"skipped     {path}: {why}")


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (a checkpoint folder's own name when it is one)."""
    try:
        return str(path.relative_to(root)) if path != root else path.name
    except ValueError:
        return str(path)


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
                             projection=projection, layouts=layouts, steps=steps,
                             layer_pattern=layer_pattern, skip_bad=skip_bad)
    config, path = resolve(cli_config, _given_on_command_line(ctx), config_file)
    if print_config:
        source = f"defaults < {path} < command line" if path else "defaults < command line"
        typer.echo(options_toml(config, [f"layerfilm {__version__} stats options ({source})"],
                                option_names(StatsConfig)), nl=False)
        return
    if config.checkpoints is None:
        raise ConfigError("Missing argument 'CHECKPOINTS' (see layerfilm stats --help)")
    result = measure(config, _RichProgress(quiet or not sys.stderr.isatty()))
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
    _warn_skipped(result.plan)


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
