"""render(config) and measure(config): the composition of the stages.

plan (discover + extract) -> layouts (the cloud stream, projected; drift in the same pass) ->
film (interpolate, raster, shade, compose) -> encode.  Checkpoints are streamed one at a time;
only the 2-D keyframe layouts stay in memory, and frames stream into ffmpeg as they are made.
Besides the order of the stages it holds only what needs several of them: the one check that
needs the plan (``--loss-strip`` without a loss curve), the film made again at another size
for ``--stills``, and every output put in place together (:class:`~layerfilm.atomic.Staged`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from . import atomic, cluster, completions, drift, encode, film, header, layouts, manifest, shade, stats, stills, viewer
from .config import RenderConfig, StatsConfig
from .errors import CheckpointError
from .activations import make_plan
from .plan import Plan
from .progress import QUIET, Progress


@dataclasses.dataclass
class RenderResult:
    output: Path
    frames: int
    keyframes: int
    seconds: dict[str, float]  # load+project, render, encode (summed over jobs), wall
    bytes: int
    nonfinite: int
    command: list[str]
    jobs: int = 1
    plan: Plan | None = None  # what was drawn (the manifest lists its checkpoints)
    panels: tuple[dict, ...] = ()  # what each panel's projection did (layouts.Keyframes.panels)
    drawing: dict | None = None  # how it was drawn (film.Film.describe): the manifest keeps it
    manifest: dict | None = None  # the manifest written beside the film
    spoken: list | None = None  # --prompt: what each keyframe's checkpoint said (completions.Said)
    # The digests of the drawn bytes of each local safetensors file, made as the film read them
    # (layouts.Keyframes.read; file as text -> digests): the manifest reads nothing again.
    read: dict = dataclasses.field(default_factory=dict)
    preview: encode.preview.Preview | None = None  # the lossy --preview written beside the film
    story: dict | None = None  # what happened in the run (stats.story), when the drift was measured
    page: dict | None = None  # --html: the viewer page written beside the film (path, bytes, keyframes kept)


def _stage_folder(staged: atomic.Staged, path: Path | None) -> Path | None:
    """Where an output folder (``--frames``, ``--stills``) is written until the commit."""
    return staged.folder(path) if path is not None else None


def _changed_later(plan: Plan, said: set[str], progress: Progress) -> None:
    """Name a checkpoint file that changed or vanished after the film read it (a trainer's
    ``save_total_limit`` deleting an old checkpoint): the film shows the bytes it read, and its
    manifest marks the file ``changed_while_read`` with no digest."""
    late = [path for path in plan.changed() if path not in said]
    if late:
        more = f" (and {len(late) - 1} more)" if len(late) > 1 else ""
        progress.warn(f"{late[0]}{more} changed or vanished after it was read: the film shows what "
                      "was read; its manifest records no digest of it")


def _about_the_probe(plan: Plan, texts: tuple[str, ...], progress: Progress) -> None:
    """``--points activations``: name each ``--label-tokens`` text that no dot of the probe
    reads; for a remote series, say what running the model fetches."""
    if plan.probe is None:
        return
    for text in texts:
        if not plan.probe.labelled((text,)):
            progress.warn(f"--label-tokens {text!r}: no dot of the probe is that token")
    completions.say_fetch(plan, plan.probe.runner(plan), progress, "--points activations",
                          "; none if its layouts are cached")


def _before_layouts(plan: Plan, cfg: RenderConfig, prompts: list[str], progress: Progress):
    """What is said and checked before any layout is made: skipped checkpoints, the probe,
    a loss strip without a loss; then each keyframe's answers to ``prompts`` and the captions
    they make (both ``None`` without prompts)."""
    for path, why in plan.skipped:
        progress.warn(f"skipped {path}: {why}")
    _about_the_probe(plan, cfg.label_tokens, progress)
    if cfg.loss_strip and plan.loss is None:
        raise CheckpointError("--loss-strip: no loss curve found beside the checkpoints "
                              "(metrics.jsonl, metrics.csv, trainer_state.json, or a loss in "
                              "the safetensors metadata); pass --metrics FILE", cfg.checkpoints)
    if not prompts:
        return None, None
    spoken = completions.run_prompts(plan, prompts, cfg.max_new_tokens, cfg.model_config,
                                     cfg.tokenizer, progress)
    given = header.load_captions(cfg.captions) if cfg.captions is not None else None
    return spoken, completions.captions(spoken, given)


def _tell(result: RenderResult, cfg: RenderConfig, measured, preview_file: Path | None, size) -> None:
    """What the manifest adds about the film: the run's story (from the drift the film
    measured) and the ``--preview`` written beside it."""
    if measured is not None:
        result.story = stats.story(measured, drift.Settling.of(cfg), cfg.rebel_z)
    if preview_file is not None:
        result.preview = encode.preview.Preview(cfg.preview, preview_file.stat().st_size,
                                                encode.preview.command(size, cfg.fps))


def render(config: RenderConfig, progress: Progress = QUIET,
           recorded: tuple[dict, Path] | None = None) -> RenderResult:
    """Render the film described by ``config`` to ``config.output`` (see :class:`RenderConfig`;
    validated here unless it already was), with its manifest and its ``--frames`` and
    ``--stills`` folders, in this process or on the Dask cluster ``config.scheduler`` names.
    They are all put in place together once every one is written; any failure leaves the
    older ones as they were.

    ``recorded``: the manifest (and its path) the film is made again from (``--from-manifest``,
    checked beforehand by :func:`~layerfilm.manifest.check_inputs`): the drawn bytes read
    are checked against it (:func:`~layerfilm.manifest.check_read`) before the first frame."""
    cfg = config.validated()
    t0 = time.perf_counter()
    with atomic.Staged() as staged, cluster.runner(cluster.scheduler_address(cfg.scheduler)) as run:
        spec = film.FilmSpec.of(cfg)
        prompts = cfg.all_prompts
        plan = make_plan(cfg, cfg.metrics, film.panels_fit(spec, len(prompts)))
        spoken, captions = _before_layouts(plan, cfg, prompts, progress)
        keys, measured = layouts.layouts_and_drift(plan, cfg.projection, cfg.seed, progress, cfg.cache,
                                                   cfg.needs_drift, cfg.fourier_ref, run)
        said = set(plan.changed())  # the layouts' store named these (not cached)
        read = dict(keys.read)  # what the pass that read the checkpoints made of their bytes
        if recorded is not None:
            manifest.check_read(*recorded, plan, read)
        if cfg.order == "settle":
            plan, keys, measured = film.settle_order(plan, keys, measured, drift.Settling.of(cfg))
        picture = film.prepare(plan, keys, spec, measured, captions)
        loaded = time.perf_counter() - t0

        palette = shade.palette(cfg.cmap)
        keep = (stills.Stills(picture.keyframe_frames(), stills.tile_keyframes(len(plan.refs), cfg.stills_every),
                              picture.n_frames, picture.size, lambda size: film.keyframe_maker(
                                  film.prepare(plan, keys, dataclasses.replace(spec, size=size), measured, captions)))
                if cfg.stills_dir is not None else None)
        png_dir, still_dir = _stage_folder(staged, cfg.frames_dir), _stage_folder(staged, cfg.stills_dir)
        film_file = staged.file(cfg.output)
        preview_file = staged.file(cfg.preview) if cfg.preview is not None else None
        out = encode.Output(film_file, cfg.format, cfg.fps, palette, cfg.jobs, png_dir, cfg.output,
                            preview_file, cfg.preview)
        done = encode.encode_film(picture, out, run, keep, progress)
        if keep is not None:
            keep.write(still_dir, palette)
        seconds = {"load+project": loaded, "render": done.render_s, "encode": done.encode_s,
                   "wall": time.perf_counter() - t0}
        result = RenderResult(cfg.output, picture.n_frames, len(plan.refs), seconds, film_file.stat().st_size,
                              keys.nonfinite, done.command, done.jobs, plan, keys.panels, picture.describe(),
                              spoken=spoken, read=read)
        _tell(result, cfg, measured, preview_file, picture.size)
        if cfg.html is not None:
            page = viewer.of_film(picture, plan, keys.panels, measured, cfg, captions)
            result.page = {"path": str(cfg.html), "bytes": viewer.write(staged.file(cfg.html), page),
                           "keyframes": len(page["kept"])}
        result.manifest = manifest.write(cfg, result, staged)
        _changed_later(plan, said, progress)
        staged.commit()
    return result


def view(config: RenderConfig, out: Path, recorded: dict | None = None,
         progress: Progress = QUIET) -> dict:
    """``layerfilm view``: the viewer page of the film ``config`` describes (read from its
    manifest ``recorded``), written to ``out``: the same plan, the layouts and drift from the
    cache (computed when not cached), the same film prepared, no frame encoded.  ``--prompt``
    captions are what the manifest recorded (the model is not run again).  Returns the page's
    ``{"path", "bytes", "keyframes"}``."""
    cfg = config.validated()
    spec = film.FilmSpec.of(cfg)
    with cluster.runner(cluster.scheduler_address(cfg.scheduler)) as run:
        plan = make_plan(cfg, cfg.metrics, film.panels_fit(spec, len(cfg.all_prompts)))
        captions = viewer.recorded_captions(recorded, cfg.captions) if recorded else None
        keys, measured = layouts.layouts_and_drift(plan, cfg.projection, cfg.seed, progress, cfg.cache,
                                                   True, cfg.fourier_ref, run)
    if cfg.order == "settle":
        plan, keys, measured = film.settle_order(plan, keys, measured, drift.Settling.of(cfg))
    picture = film.prepare(plan, keys, spec, measured, captions)
    page = viewer.of_film(picture, plan, keys.panels, measured, cfg, captions)
    return {"path": str(out), "bytes": viewer.write(out, page), "keyframes": len(page["kept"])}


@dataclasses.dataclass(frozen=True)
class StatsResult:
    stats: stats.LayerStats
    csv: Path
    heatmap: Path
    layouts: str  # where the layout columns came from, or why they are empty
    plan: Plan | None = None  # what was measured (``plan.skipped``: checkpoints left out)
    completions: Path | None = None  # --prompt: completions.csv


def measure(config: StatsConfig, progress: Progress = QUIET) -> StatsResult:
    """``layerfilm stats``: per-layer statistics of the run, written as a CSV and a heatmap PNG
    into ``config.out`` (created if needed), over the keyframes and panels a render with the
    same selection draws."""
    cfg = config.validated()
    with cluster.runner(cluster.scheduler_address(cfg.scheduler)) as run:
        plan = make_plan(cfg)
        for path, why in plan.skipped:
            progress.warn(f"skipped {path}: {why}")
        prompts = cfg.all_prompts
        spoken = (completions.run_prompts(plan, prompts, cfg.max_new_tokens, cfg.model_config,
                                          cfg.tokenizer, progress) if prompts else None)
        result = stats.weight_stats(plan.refs, plan.layers, progress, run, plan)
        keys = layouts.load_cached(plan, cfg.projection, cfg.seed, cfg.fourier_ref, progress)
        if keys is not None:
            where = "from the layout cache"
        elif cfg.layouts:
            keys = layouts.cached_keyframe_layouts(plan, cfg.projection, cfg.seed, progress,
                                                   fourier_ref=cfg.fourier_ref, run=run)
            where = "computed (--layouts)"
        else:
            where = ("empty: no cached layouts for these options (render the film first with the "
                     "same --points/--tensor/--max-points/--seed/--projection/--steps/--layer-pattern, "
                     "or pass --layouts)")
    if keys is not None:
        result = result.with_layouts(keys.P, plan.starts)
    cfg.out.mkdir(exist_ok=True)
    csv_path, png_path = cfg.out / "layer_stats.csv", cfg.out / "layer_change.png"
    settling = drift.Settling.of(cfg)
    stats.write_csv(result, settling, csv_path)
    stats.write_heatmap(result, settling, png_path, f"{plan.name}: relative change per 100 steps",
                        cfg.rebel_z)
    said_path = None
    if spoken is not None:
        said_path = cfg.out / "completions.csv"
        stats.write_completions(completions.rows(spoken), said_path)
    return StatsResult(result, csv_path, png_path, where, plan, said_path)
