"""``layerfilm info``, ``stats``, ``publish`` and ``cache``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__
from ..config import (
    CONFIG_FILE,
    REBEL_Z,
    SETTLE_FRACTION,
    InfoConfig,
    StatsConfig,
    as_location,
    option_names,
    options_toml,
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
    SchedulerOpt,
    RevisionsOpt,
    RunOpt,
    SkipBadOpt,
    StepsOpt,
    TensorOpt,
    TokenizerOpt,
    ThresholdOpt,
    _config_of,
    _given_on_command_line,
    _notes,
    _one_line_errors,
    _progress,
    app,
)


@app.command()
@_one_line_errors
def info(
    ctx: typer.Context,
    checkpoints: CkptArg,
    max_points: Annotated[int, typer.Option(help="As for render: most points drawn per layer.")] = 2000,
    seed: Annotated[int, typer.Option(
        help="As for render: which points a larger layer's sample draws, so which bytes are read.")] = 0,
    fps: Annotated[int, typer.Option(help="As for render, to show the film's length.")] = 25,
    frames_per_keyframe: Annotated[Optional[int], typer.Option(
        help="As for render (default: fps).", show_default=False)] = None,
    metrics: Annotated[Optional[Path], typer.Option(
        help="As for render: the loss log to show instead of the one found beside the checkpoints.",
        show_default=False)] = None,
    points: PointsOpt = "neurons",
    probe: ProbeOpt = None,
    probe_positions: ProbePositionsOpt = "all",
    model_config: ModelConfigOpt = None,
    tokenizer: TokenizerOpt = None,
    tensor: TensorOpt = None,
    steps: StepsOpt = None,
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    run: RunOpt = None,
    projection: Annotated[str, typer.Option(
        help="As for render: which axes the variance column describes.")] = "pca",
    fourier_ref: FourierRefOpt = None,
    revisions: RevisionsOpt = None,
    keep_downloads: KeepOpt = False,
    max_memory: MaxMemoryOpt = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file (as render does) instead of "
        f"./{CONFIG_FILE} or \\[tool.layerfilm] in ./pyproject.toml; options given here override "
        "it.", show_default=False)] = None,
) -> None:
    """Show the checkpoints, steps and layers that render would draw (with the same config
    file), how many bytes a render reads, and how much of each panel's variance its two drawn
    axes hold."""
    params = dict(locals())  # the parameters, before any other name is bound
    from ..info import report

    cli_config = _config_of(InfoConfig, params, ("ctx", "config_file"), checkpoints=as_location)
    config, _ = resolve(cli_config, _given_on_command_line(ctx), config_file)
    _notes(False)
    for line in report(config):
        typer.echo(line)


@app.command()
@_one_line_errors
def stats(
    ctx: typer.Context,
    checkpoints: CkptArg = None,
    out: Annotated[Path, typer.Option(
        help="Folder for layer_stats.csv and layer_change.png (created if needed).")
    ] = Path("layerfilm-stats"),
    settle_threshold: ThresholdOpt = None,
    settle_fraction: FractionOpt = SETTLE_FRACTION,
    rebel_z: RebelOpt = REBEL_Z,
    points: PointsOpt = "neurons",
    probe: ProbeOpt = None,
    probe_positions: ProbePositionsOpt = "all",
    model_config: ModelConfigOpt = None,
    tokenizer: TokenizerOpt = None,
    tensor: TensorOpt = None,
    max_points: Annotated[int, typer.Option(help="As for render: most points per layer.")] = 2000,
    seed: Annotated[int, typer.Option(help="As for render.")] = 0,
    projection: Annotated[str, typer.Option(
        help="As for render: whose cached layouts give the layout columns.")] = "pca",
    layouts: Annotated[bool, typer.Option(
        "--layouts", help="Compute the keyframe layouts when none are cached (as render does).")
    ] = False,
    fourier_ref: FourierRefOpt = None,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    max_new_tokens: MaxNewTokensOpt = 12,
    scheduler: SchedulerOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    steps: StepsOpt = None,
    layer_pattern: LayerPatternOpt = None,
    skip_bad: SkipBadOpt = False,
    run: RunOpt = None,
    revisions: RevisionsOpt = None,
    keep_downloads: KeepOpt = False,
    max_memory: MaxMemoryOpt = None,
    config_file: Annotated[Optional[Path], typer.Option(
        "--config", help=f"Read options from this TOML file (as render does) instead of "
        f"./{CONFIG_FILE} or \\[tool.layerfilm] in ./pyproject.toml; stats uses the options it "
        "shares with render; options given here override it.", show_default=False)] = None,
    print_config: Annotated[bool, typer.Option(
        "--print-config", help="Print the resolved options stats shares with render as TOML "
        "and exit.")] = False,
) -> None:
    """Per-layer drift of CHECKPOINTS: a CSV, a heatmap PNG, each layer's settling step and
    the layers that move against their neighbours; with --prompt, what each keyframe said
    (completions.csv).

    Options come from the command line, else from the config file, else their defaults.
    """
    params = dict(locals())  # the parameters, before any other name is bound
    from rich.console import Console
    from rich.table import Table

    from ..pipeline import measure
    from ..stats import summary

    cli_config = _config_of(StatsConfig, params, ("ctx", "quiet", "config_file", "print_config"),
                            checkpoints=as_location, prompt=lambda v: tuple(v or ()))
    config, path = resolve(cli_config, _given_on_command_line(ctx), config_file)
    if print_config:
        source = f"defaults < {path} < command line" if path else "defaults < command line"
        typer.echo(options_toml(config, [f"layerfilm {__version__} stats options ({source})"],
                                option_names(StatsConfig)), nl=False)
        return
    if config.checkpoints is None:
        raise ConfigError("Missing argument 'CHECKPOINTS' (see layerfilm stats --help)")
    _notes(quiet)
    result = measure(config, _progress(quiet, not isinstance(config.checkpoints, Path)))
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
    if result.completions is not None:
        typer.echo(f"wrote {result.completions} ({len(s.steps)} keyframes x "
                   f"{len(config.all_prompts)} prompts)")


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
        "--message", "-m", help="Commit message (default: layerfilm: FILM, ...).",
        show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List what would be uploaded and print the card; upload nothing.")] = False,
) -> None:
    """Upload lossless films to a Hugging Face Hub repository (one commit) or Storage Bucket,
    with a README card.

    The token is the one `hf auth login` saved, or $HF_TOKEN.
    """
    from ..config import PublishConfig
    from ..publish import publish as upload

    config = PublishConfig(films=tuple(films), repo_id=repo_id, bucket=bucket, repo_type=repo_type,
                           private=private, path_in_repo=path_in_repo, message=message,
                           dry_run=dry_run)
    done = upload(config.validated(), typer.echo)
    if bucket and not dry_run:
        typer.echo(f"bucket: {done.url}")
    elif not dry_run:
        typer.echo(f"published {len(done.files)} files and README.md to {done.url}"
                   + (f" ({done.commit_url})" if done.commit_url else ""))


@app.command()
@_one_line_errors
def view(
    manifest: Annotated[Path, typer.Argument(
        help="A film's manifest (OUT.json, written beside it by render).")],
    out: Annotated[Optional[Path], typer.Option(
        help="Where to write the page (default: the manifest's name with .html).",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Write the viewer page of the film a manifest describes: one self-contained HTML file
    (the same keyframes, interpolation and numbers as the film; layouts from the cache)."""
    import dataclasses

    from .. import manifest as manifests
    from ..config import RenderConfig
    from ..pipeline import view as make_page

    doc = manifests.load(manifest)
    config = manifests.config_from(doc, manifest, RenderConfig(), ())
    out = out if out is not None else manifest.with_suffix(".html")
    config = dataclasses.replace(config, html=out)
    _notes(quiet)
    page = make_page(config, out, doc, _progress(quiet, not isinstance(config.checkpoints, Path)))
    typer.echo(f"wrote {page['path']} (viewer page, {page['bytes'] / 1e6:.1f} MB, "
               f"{page['keyframes']} keyframes)")


@app.command("cache")
@_one_line_errors
def cache_command(
    clear: Annotated[bool, typer.Option("--clear", help="Delete every cached entry.")] = False,
) -> None:
    """Show where the layout cache is, what it holds and its size cap; --clear empties it.

    The cap is $LAYERFILM_CACHE_SIZE (e.g. 500M, 10G; default 2G): storing an entry removes
    the least recently used ones until the rest fits.  Unfinished writes (.part files a killed
    render left) are counted, removed by --clear, and swept by renders after an hour.
    """
    from .. import cache

    if clear:
        files, size = cache.clear()
        typer.echo(f"removed {files} files ({size / 1e6:.1f} MB) from {cache.cache_dir()}")
        return
    found = cache.entries()
    layouts = [e for e in found if e[0].name.startswith(("layouts-", "chunk-"))]
    parts = cache.leftovers()
    total = sum(size for _, size, _ in found)
    typer.echo(f"cache       {cache.cache_dir()}")
    typer.echo(f"holds       {len(layouts)} layout entries, {len(found) - len(layouts)} others (drift, digests), "
               f"{total / 1e6:.1f} MB")
    typer.echo(f"unfinished  {len(parts)} .part files, {sum(size for _, size, _ in parts) / 1e6:.1f} MB"
               + (" (layerfilm cache --clear removes them)" if parts else ""))
    typer.echo(f"size cap    {cache.size_cap() / 1e6:,.0f} MB ($LAYERFILM_CACHE_SIZE; least recently used "
               "entries go first)")
