"""Validation of the configs in :mod:`~layerfilm.config.schema`: one check per field name, in
one table (:data:`_CHECKS`).  An error carries the field, so a value that came from a config file
is blamed on that file and key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .values import (COLOR_SCALES, ORDERS, POINTS, PROJECTIONS, REPO_ID, REPO_TYPES, SCALES, SUFFIXES,
                     TIMELINES, URL, Remote, parse_memory, parse_positions, parse_steps)


# ---- validation: one check per field name ---------------------------------------------------

_CHECKS: dict[str, Callable[[object], None]] = {}


def _check(*names: str):
    def register(fn):
        for name in names:
            _CHECKS[name] = fn
        return fn
    return register


def _fail(field: str, message: str, path: Path | None = None):
    raise ConfigError(message, path, field=field)


def _one_of(field: str, option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(field, f"{option} must be one of {', '.join(allowed)}, got {value!r}")


def _regex(field: str, text: str, what: str) -> None:
    try:
        re.compile(text)
    except re.error as e:
        _fail(field, f"{what} {text!r} is not {'a valid' if field == 'layer_pattern' else 'a'} "
                     f"regular expression: {e}")


def _new_or_empty_folder(field: str, option: str, d: Path) -> None:
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        _fail(field, f"{option} needs a new or empty folder", d)
    if not d.resolve().parent.exists():
        _fail(field, f"the parent folder of {option} does not exist", d)


@_check("output")
def _output(c) -> None:
    out = c.output
    if out is None:
        return  # not given yet (--print-config); the CLI asks for it before rendering
    if out.suffix.lower() not in SUFFIXES:
        _fail("output", f"unknown output format {out.suffix or '(no suffix)'!r}; use one of "
                        f"{', '.join(SUFFIXES)}", out)
    if out.exists() and out.is_dir():
        _fail("output", "output is a directory; give a file name such as out.webm", out)
    if not out.parent.exists() and str(out.parent) not in ("", "."):
        _fail("output", "the output's folder does not exist", out.parent)


@_check("fps")
def _fps(c) -> None:
    if not 1 <= c.fps <= 240:
        _fail("fps", f"--fps must be between 1 and 240, got {c.fps}")


@_check("frames_per_keyframe")
def _frames_per_keyframe(c) -> None:
    if c.frames_per_keyframe is not None and not 1 <= c.frames_per_keyframe <= 10_000:
        _fail("frames_per_keyframe",
              f"--frames-per-keyframe must be between 1 and 10000, got {c.frames_per_keyframe}")


@_check("size")
def _size(c) -> None:
    w, h = c.size
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        _fail("size", f"--size must be between 64x64 and 8192x8192, got {w}x{h}")


@_check("projection")
def _projection(c) -> None:
    _one_of("projection", "--projection", c.projection, PROJECTIONS)


@_check("fourier_ref")
def _fourier_ref(c) -> None:
    if c.fourier_ref is not None and c.fourier_ref < 0:
        _fail("fourier_ref", f"--fourier-ref must be a training step (0 or more), got {c.fourier_ref}")


@_check("max_points")
def _max_points(c) -> None:
    if c.max_points < 3:
        _fail("max_points", f"--max-points must be at least 3, got {c.max_points}")


@_check("seed")
def _seed(c) -> None:
    if c.seed < 0:  # numpy's generators take non-negative seeds only
        _fail("seed", f"--seed must be 0 or more, got {c.seed}")


@_check("color_scale")
def _color_scale(c) -> None:
    _one_of("color_scale", "--color-scale", c.color_scale, COLOR_SCALES)


@_check("frames_dir")
def _frames_dir(c) -> None:
    if c.frames_dir is not None:
        _new_or_empty_folder("frames_dir", "--frames", c.frames_dir)
        if getattr(c, "scheduler", None):
            _fail("frames_dir", "--frames writes every frame as a PNG on this machine; render them "
                                "without --scheduler", c.frames_dir)


@_check("jobs")
def _jobs(c) -> None:
    if not 1 <= c.jobs <= 64:
        _fail("jobs", f"--jobs must be between 1 and 64, got {c.jobs}")


@_check("points")
def _points(c) -> None:
    _one_of("points", "--points", c.points, POINTS)


@_check("tensor")
def _tensor(c) -> None:
    if c.tensor is not None:
        _regex("tensor", c.tensor, "--tensor")


@_check("order")
def _order(c) -> None:
    _one_of("order", "--order", c.order, ORDERS)


@_check("settle_threshold")
def _settle_threshold(c) -> None:
    if c.settle_threshold is not None and not (0 < c.settle_threshold < float("inf")):
        _fail("settle_threshold",
              f"--settle-threshold must be a positive number, got {c.settle_threshold}")


@_check("settle_fraction")
def _settle_fraction(c) -> None:
    if not (0 < c.settle_fraction < 1):
        _fail("settle_fraction",
              f"--settle-fraction must be above 0 and below 1, got {c.settle_fraction}")


@_check("rebel_z")
def _rebel_z(c) -> None:
    if not (0 < c.rebel_z < float("inf")):
        _fail("rebel_z", f"--rebel-z must be a positive number, got {c.rebel_z}")


@_check("metrics")
def _metrics(c) -> None:
    if c.metrics is not None and not c.metrics.is_file():
        _fail("metrics", "--metrics: no such file", c.metrics)


@_check("stills_dir")
def _stills_dir(c) -> None:
    d = c.stills_dir
    if d is not None:
        _new_or_empty_folder("stills_dir", "--stills", d)
        if c.frames_dir is not None and d.resolve() == c.frames_dir.resolve():
            _fail("stills_dir", "--stills and --frames need different folders", d)


@_check("preview")
def _preview(c) -> None:
    p = c.preview
    if p is None:
        return
    if p.suffix.lower() != ".mp4":
        _fail("preview", f"--preview writes an H.264 .mp4; give a name ending in .mp4, got {p.name!r}", p)
    if p.is_dir():
        _fail("preview", "--preview is a folder; give a file name such as preview.mp4", p)
    if not p.resolve().parent.is_dir():
        _fail("preview", "the folder of --preview does not exist", p)
    if c.output is not None and p.resolve() == c.output.resolve():
        _fail("preview", "--preview must not be the film itself", p)


@_check("html")
def _html(c) -> None:
    p = c.html
    if p is None:
        return
    if p.suffix.lower() not in (".html", ".htm"):
        _fail("html", f"--html writes a web page; give a name ending in .html, got {p.name!r}", p)
    if p.is_dir():
        _fail("html", "--html is a folder; give a file name such as film.html", p)
    if not p.resolve().parent.is_dir():
        _fail("html", "the folder of --html does not exist", p)


@_check("stills_every")
def _stills_every(c) -> None:
    if c.stills_every is not None and c.stills_every < 1:
        _fail("stills_every", f"--stills-every must be at least 1, got {c.stills_every}")


@_check("steps")
def _steps(c) -> None:
    if c.steps is not None:
        start, stop, every = parse_steps(c.steps)
        if start is not None and stop is not None and start > stop:
            _fail("steps", f"--steps START must not exceed STOP, got {start}:{stop}")
        if every is not None and every < 1:
            _fail("steps", f"--steps EVERY must be at least 1, got {every}")


@_check("timeline")
def _timeline(c) -> None:
    _one_of("timeline", "--timeline", c.timeline, TIMELINES)


@_check("point_size")
def _point_size(c) -> None:
    if c.point_size is not None and not 0.5 <= c.point_size <= 48:
        _fail("point_size", f"--point-size must be between 0.5 and 48 pixels, got {c.point_size}")


@_check("scale")
def _scale(c) -> None:
    _one_of("scale", "--scale", c.scale, SCALES)


@_check("title", "caption")
def _one_line(c) -> None:
    for name in ("title", "caption"):
        text = getattr(c, name, None)
        if text is not None and (not text.strip() or any(ch in text for ch in "\n\r\t")):
            _fail(name, f"--{name} must be one line of text, got {text!r}")


@_check("captions")
def _captions(c) -> None:
    if c.captions is not None and not c.captions.is_file():
        _fail("captions", "--captions: no such file", c.captions)


MAX_PROMPTS = 8  # one caption line each: more would crowd the frame
MAX_NEW_TOKENS = 256


@_check("prompt", "prompts")
def _prompts(c) -> None:
    for text in c.prompt:
        if not text.strip() or any(ch in text for ch in "\n\r"):
            _fail("prompt", f"--prompt must be one line of text, got {text!r}")
    if c.prompts is not None:
        try:
            c.prompts.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            _fail("prompts", f"--prompts: cannot read it ({getattr(e, 'strerror', None) or e})", c.prompts)
    n = len(c.all_prompts)
    if c.prompts is not None and n == len(c.prompt):
        _fail("prompts", "--prompts: no prompts in it (one a line)", c.prompts)
    if n > MAX_PROMPTS:
        _fail("prompt", f"at most {MAX_PROMPTS} prompts (one caption line each), got {n}")


@_check("max_new_tokens")
def _max_new_tokens(c) -> None:
    if not 1 <= c.max_new_tokens <= MAX_NEW_TOKENS:
        _fail("max_new_tokens", f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, "
                                f"got {c.max_new_tokens}")


@_check("model_config", "tokenizer")
def _model_folders(c) -> None:
    if c.model_config is not None and not (c.model_config / "config.json").is_file():
        _fail("model_config", "--model-config needs a folder with the model's config.json", c.model_config)
    if c.tokenizer is not None and not c.tokenizer.is_dir():
        _fail("tokenizer", "--tokenizer needs a folder with the tokenizer's files", c.tokenizer)


@_check("probe", "probe_positions", "label_tokens")
def _probe(c) -> None:
    acts = c.points == "activations"
    if acts and c.probe is None:
        _fail("probe", "--points activations needs --probe FILE: the text whose tokens are the "
                       "dots, one sequence a line")
    if not acts:
        if c.probe is not None:
            _fail("probe", f"--probe is for --points activations (got --points {c.points})")
        if getattr(c, "label_tokens", ()):
            _fail("label_tokens", "--label-tokens marks probe tokens: it needs --points activations")
        return
    if not c.probe.is_file():
        _fail("probe", "--probe: no such file", c.probe)
    if c.tensor is not None or c.layer_pattern is not None:
        _fail("probe", "--tensor and --layer-pattern pick weights; --points activations draws "
                       "one panel per layer's output")
    try:
        parse_positions(c.probe_positions)
    except ValueError as e:
        _fail("probe_positions", str(e))
    for text in getattr(c, "label_tokens", ()):
        if not text.strip() or "\n" in text:
            _fail("label_tokens", f"--label-tokens: each must be a token's text, got {text!r}")


@_check("tokens_per_step")
def _tokens_per_step(c) -> None:
    if c.tokens_per_step is not None and c.tokens_per_step < 1:
        _fail("tokens_per_step", f"--tokens-per-step must be at least 1, got {c.tokens_per_step}")


@_check("run")
def _run(c) -> None:
    if c.run is not None and not c.run.strip().strip("/"):
        _fail("run", "--run needs a run's name (a folder, a name before the step, or '.' for "
                     "the checkpoints at the top)")


@_check("layer_pattern")
def _layer_pattern(c) -> None:
    if c.layer_pattern is not None:
        _regex("layer_pattern", c.layer_pattern, "--layer-pattern")


@_check("out")
def _out(c) -> None:
    if c.out.exists() and not c.out.is_dir():
        _fail("out", "--out must be a folder", c.out)
    if not c.out.exists() and not c.out.resolve().parent.is_dir():
        _fail("out", "the parent folder of --out does not exist", c.out)


@_check("cmap")
def _cmap(c) -> None:
    import matplotlib

    if c.cmap not in matplotlib.colormaps:
        _fail("cmap", f"--cmap {c.cmap!r} is not a matplotlib colormap (try inferno, viridis, "
                      "magma, turbo)")


@_check("checkpoints")
def _checkpoints(c) -> None:
    if isinstance(c.checkpoints, Remote) and not URL.match(c.checkpoints.url):
        _fail("checkpoints", f"not a URL: {c.checkpoints.url!r}")


@_check("revisions")
def _revisions(c) -> None:
    if c.revisions is not None and not any(p.strip() for p in c.revisions.split(",")):
        _fail("revisions", f"--revisions needs one or more globs (e.g. 'step*'), got {c.revisions!r}")


@_check("storage_options")
def _storage_options(c) -> None:
    so = c.storage_options
    if so is not None and not (isinstance(so, dict) and all(isinstance(k, str) for k in so)):
        _fail("storage_options", "storage_options must be a table of fsspec options "
                                 "(e.g. [storage_options] endpoint_url = \"...\")")


@_check("repo_id")
def _repo_id(c) -> None:
    if c.bucket is not None:
        if c.repo_id:
            _fail("repo_id", "give --repo-id or --bucket, not both")
        return
    if not c.repo_id:
        _fail("repo_id", "give --repo-id USER/NAME (a repository) or --bucket USER/NAME (a "
                         "Storage Bucket)")
    if not REPO_ID.fullmatch(c.repo_id):
        _fail("repo_id", f"--repo-id must look like USER/NAME, got {c.repo_id!r}")


@_check("max_memory")
def _max_memory(c) -> None:
    if c.max_memory is not None:
        parse_memory(c.max_memory)


@_check("bucket")
def _bucket(c) -> None:
    if c.bucket is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(/[^/]+)*/?",
                                                 c.bucket):
        _fail("bucket", f"--bucket must look like USER/NAME or USER/NAME/FOLDER, got {c.bucket!r}")


@_check("repo_type")
def _repo_type(c) -> None:
    _one_of("repo_type", "--repo-type", c.repo_type, REPO_TYPES)


# Cheap checks first; the colormap check imports matplotlib.
_ORDER = ("checkpoints", "revisions", "storage_options", "output", "fps", "frames_per_keyframe",
          "size", "projection", "fourier_ref", "max_points", "seed", "color_scale", "frames_dir", "jobs",
          "points", "tensor", "order", "settle_threshold", "settle_fraction", "rebel_z", "metrics",
          "stills_dir", "stills_every", "preview", "html", "steps", "timeline", "point_size", "scale", "title",
          "caption", "captions", "prompt", "prompts", "max_new_tokens", "model_config", "tokenizer",
          "probe", "probe_positions", "label_tokens",
          "tokens_per_step", "layer_pattern", "run", "out", "repo_id", "bucket", "repo_type",
          "max_memory", "cmap")
assert set(_ORDER) == set(_CHECKS)


def validate(config) -> None:
    """Check every field of ``config`` that has a check; raise :class:`ConfigError` (with
    ``field`` set) for the first that cannot work."""
    names = {f.name for f in dataclasses.fields(config)}
    for name in _ORDER:
        if name in names:
            _CHECKS[name](config)
