"""``layerfilm render``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..config import (
    COLOR_SCALES,
    CONFIG_FILE,
    ORDERS,
    PROJECTIONS,
    REBEL_Z,
    SCALES,
    SETTLE_FRACTION,
    SUFFIXES,
    TIMELINES,
    RenderConfig,
    as_location,
    options_toml,
    parse_size,
    resolve,
)
from ..errors import ConfigError
from .common import (
    CkptArg,
    FourierRefOpt,
    FractionOpt,
    KeepOpt,
    LayerPatternOpt,
    MaxMemoryOpt,
    MaxNewTokensOpt,
    ModelConfigOpt,
    PointsOpt,
    ProbeOpt,
    ProbePositionsOpt,
    PromptOpt,
    PromptsOpt,
    RebelOpt,
    RevisionsOpt,
    SchedulerOpt,
    RunOpt,
    SkipBadOpt,
    TokenizerOpt,
    StepsOpt,
    TensorOpt,
    ThresholdOpt,
    _fetched,
    _given_on_command_line,
    _notes,
    _one_line_errors,
    _config_of,
    _progress,
    app,
)

# render's parameters that are not RenderConfig fields: every other one is the field of its name.
OWN = ("ctx", "quiet", "config_file", "print_config", "from_manifest")


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
    settle_threshold: ThresholdOpt = None,
    settle_fraction: FractionOpt = SETTLE_FRACTION,
    rebel_z: RebelOpt = REBEL_Z,
    stills_dir: Annotated[Optional[Path], typer.Option(
        "--stills", help="Also write first.png, last.png and contact_sheet.png (keyframes) into "
        "this new or empty folder.", show_default=False)] = None,
    stills_every: Annotated[Optional[int], typer.Option(
        help="Contact sheet: one tile every N keyframes (and the last) (default: about 12 tiles).",
        show_default=False)] = None,
    preview: Annotated[Optional[Path], typer.Option(
        help="Also write a small lossy H.264 copy (.mp4, at most about 7 MB a minute at 720p, "
             "labelled 'lossy preview') from the same frames, for sites that take no large or "
             "lossless video.", show_default=False)] = None,
    html: Annotated[Optional[Path], typer.Option(
        help="Also write a viewer page (one self-contained .html file: play, scrub, enlarge a "
             "panel, hover for its numbers and a dot's identity), drawn from the film's own "
             "keyframes.", show_default=False)] = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file instead of ./{CONFIG_FILE} or "
        "\\[tool.layerfilm] in ./pyproject.toml; options given here override it.",
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
             "(default: from each panel's size and number of dots).", show_default=False)] = None,
    scale: Annotated[str, typer.Option(
        help=f"Panel scale: {' | '.join(SCALES)} (shared: every panel at one common scale, so "
             "sizes compare).")] = "panel",
    cues: Annotated[bool, typer.Option(
        help="Per panel: border and activity line following its rate of change, 'settled' and "
             "'rebel' marks.")] = True,
    title: Annotated[Optional[str], typer.Option(
        help="Header title (default: the checkpoint folder's name).", show_default=False)] = None,
    caption: Annotated[Optional[str], typer.Option(
        help="A footer line, e.g. what the model is.", show_default=False)] = None,
    captions: Annotated[Optional[Path], typer.Option(
        help='JSONL of {"step": N, "text": "..."}: each text shown from step N on (e.g. a sample '
             "completion per checkpoint).", show_default=False)] = None,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    max_new_tokens: MaxNewTokensOpt = 12,
    model_config: ModelConfigOpt = None,
    tokenizer: TokenizerOpt = None,
    probe: ProbeOpt = None,
    probe_positions: ProbePositionsOpt = "all",
    label_tokens: Annotated[Optional[list[str]], typer.Option(
        help="--points activations: draw these tokens' text beside their dots (comma-separated "
             "or repeated; the first few dots of each).", show_default=False)] = None,
    tokens_per_step: Annotated[Optional[int], typer.Option(
        help="Training tokens per step, for the header's tokens seen (default: from names or "
             "trainer_state.json).", show_default=False)] = None,
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    run: RunOpt = None,
    fourier_ref: FourierRefOpt = None,
    scheduler: SchedulerOpt = None,
    revisions: RevisionsOpt = None,
    keep_downloads: KeepOpt = False,
    max_memory: MaxMemoryOpt = None,
    verify_inputs: Annotated[bool, typer.Option(
        "--verify-inputs", help="Record (and with --from-manifest check) the sha256 of every "
        "checkpoint file in full, not only of the bytes drawn.")] = False,
) -> None:
    """Render CHECKPOINTS into the lossless film OUTPUT, one panel per layer.

    Options come from the command line, else from the config file, else their defaults.

    A manifest OUTPUT.json is written beside the film.
    """
    config, recorded = render_config(ctx, locals())
    if config is None:
        return
    from .. import manifest
    from ..pipeline import render as render_film

    if from_manifest is not None:
        for warning in manifest.check_inputs(recorded, from_manifest, config):
            typer.echo(f"warning: {warning}", err=True)
    _notes(quiet)
    remote = not isinstance(config.checkpoints, Path)
    result = render_film(config, _progress(quiet, remote),
                         recorded=(recorded, from_manifest) if from_manifest is not None else None)
    written = result.manifest
    mb = result.bytes / 1e6
    s = result.seconds
    typer.echo(
        f"wrote {result.output} ({result.frames} frames, {result.frames / config.fps:.1f} s, "
        f"{mb:.1f} MB) in {s['wall']:.1f} s "
        f"[load+project {s['load+project']:.1f} s, render {s['render']:.1f} s, "
        f"encode {s['encode']:.1f} s{f', {result.jobs} jobs' if result.jobs > 1 else ''}]"
        + _fetched(result.plan))
    if result.preview is not None:
        typer.echo(f"wrote {result.preview.path} (lossy preview, H.264, "
                   f"{result.preview.bytes / 1e6:.1f} MB)")
    if result.page is not None:
        typer.echo(f"wrote {result.page['path']} (viewer page, {result.page['bytes'] / 1e6:.1f} MB)")
    pinned = pinned_line(result.drawing)
    if pinned:
        typer.echo(pinned)
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


def split_labels(given: list[str] | None) -> tuple[str, ...]:
    """``--label-tokens`` as given (repeated, each comma-separated) -> the token texts."""
    return tuple(t.strip() for text in given or () for t in text.split(",") if t.strip())


def render_config(ctx: typer.Context, params: dict, command: str = "render"
                  ) -> tuple[RenderConfig | None, dict | None]:
    """The render options of a command line parsed by :func:`render` (``params``, its
    parameters by name; ``ctx``, its context): the config file and ``--from-manifest`` applied,
    and ``(config, recorded manifest or None)``; ``(None, None)`` when ``--print-config``
    printed them (nothing else to do).  ``command`` names the command in messages."""
    from .. import manifest

    cli_config = _config_of(RenderConfig, params, OWN, checkpoints=as_location, size=parse_size,
                              prompt=lambda v: tuple(v or ()), label_tokens=split_labels)
    given = _given_on_command_line(ctx)
    config_file, from_manifest = params["config_file"], params["from_manifest"]
    recorded = None
    if from_manifest is not None:
        if config_file is not None:
            raise ConfigError("--config and --from-manifest cannot be used together")
        recorded = manifest.load(from_manifest)
        config = manifest.config_from(recorded, from_manifest, cli_config, given)
        source = f"{from_manifest} < command line"
    else:
        config, path = resolve(cli_config, given, config_file)
        source = f"defaults < {path} < command line" if path else "defaults < command line"
    if params["print_config"]:
        typer.echo(options_toml(config, [f"layerfilm {__version__} {command} options ({source})"]),
                   nl=False)
        return None, None
    for name, value in (("CHECKPOINTS", config.checkpoints), ("OUTPUT", config.output)):
        if value is None:
            raise ConfigError(f"Missing argument '{name}' (see layerfilm {command} --help)")
    return config, recorded


def pinned_line(drawing: dict | None) -> str:
    """One line naming each panel with dots drawn pinned to its edge and how many (frame, dot)
    pairs (as the manifest counts them), or ``""`` when none is: a reader should not need the
    manifest to learn that the picture holds dots beyond the panel's range."""
    panels = (drawing or {}).get("panels", {})
    named = [f"{label} {p['pinned_to_edge']:,}" for label, p in panels.items() if p["pinned_to_edge"]]
    if not named:
        return ""
    return ("dots drawn pinned to their panel's edge, beyond its range (frame x dot pairs): "
            + ", ".join(named))
