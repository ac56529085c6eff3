"""Manifests: the JSON sidecar ``OUT.json`` that says exactly how a film was made.

A manifest records layerfilm's version, every checkpoint drawn (path, step, size, sha256 of
the file), the loss log and model config read, every resolved option (generic over
:class:`~layerfilm.config.RenderConfig`'s fields), the ffmpeg version and the exact encoder
arguments, and the film's frame count, fps, duration, size and sha256.  It is written after
the film is in place, atomically, so a manifest always describes a finished film.

``layerfilm render --from-manifest OUT.json [OUT]`` renders the same film again (bit for
bit with the same layerfilm and ffmpeg), after checking that the checkpoints are unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

from . import __version__, atomic, cache, config as config_mod, encode
from .config import RenderConfig
from .errors import CheckpointError, ConfigError, LayerfilmError

FORMAT = 1  # manifest layout version
FRAMES_MANIFEST = "manifest.json"  # the manifest inside a --frames folder
MODEL_CONFIG = "config.json"  # a model config beside the checkpoints, recorded when small
_MODEL_CONFIG_MAX = 256 * 1024


def manifest_path(film: str | os.PathLike) -> Path:
    """Where a film's manifest goes: ``films/a.webm`` -> ``films/a.webm.json``."""
    film = Path(film)
    return film.with_name(film.name + ".json")


def _file_entry(path: Path, folder: Path, use_cache: bool) -> dict[str, Any]:
    return {"path": Path(os.path.relpath(path, folder)).as_posix(), "bytes": path.stat().st_size,
            "sha256": cache.sha256_file(path, use_cache)}


def build(config: RenderConfig, result) -> dict[str, Any]:
    """The manifest of a finished render (``result`` is the pipeline's ``RenderResult``)."""
    plan = result.plan
    folder = Path(config.checkpoints)
    checkpoints = []
    for ref in plan.refs:
        for path in ref.files():  # a sharded or Distributed Checkpoint is several files
            entry = _file_entry(path, folder, config.cache)
            checkpoints.append({"path": entry["path"], "step": int(ref.step), "bytes": entry["bytes"],
                                "sha256": entry["sha256"]})
    loss = None
    if plan.loss is not None:
        source = plan.loss.path
        loss = ({"source": "file", **_file_entry(Path(source), folder, config.cache)}
                if source is not None and Path(source).is_file() else {"source": plan.loss.source})
    enc = encode.FORMATS[config.format]
    return {
        "layerfilm_manifest": FORMAT,
        "layerfilm": __version__,
        "film": {
            "path": os.path.abspath(config.output),
            "format": config.format,
            "bytes": result.bytes,
            "sha256": cache.sha256_file(config.output, use_cache=False),
            "frames": result.frames,
            "fps": config.fps,
            "duration_s": round(result.frames / config.fps, 6),
            "size": list(config.size),
            "keyframes": result.keyframes,
        },
        "drawing": getattr(result, "drawing", None),
        "checkpoints": {"folder": os.path.abspath(folder), "files": checkpoints, "loss": loss},
        "model_config": _model_config(folder, [r.path for r in plan.refs]),
        "options": {k: v for k, v in config_mod.options_dict(config).items() if k not in config_mod.RUN_ONLY},
        # Per panel: how its layouts were made (method, exact solves and corrections of tracked
        # planes, the lowest audited share of the exact top-two variance, the share of the
        # panel's variance on the drawn axes, a Fourier plane's frequency and reference step).
        "projection": {"method": config.projection, "panels": list(result.panels)},
        "encoder": {
            "ffmpeg": encode.ffmpeg_version(),
            "command": encode.encoder_command(enc, config.size, config.fps, exe="ffmpeg"),
            "jobs": result.jobs,
            "join": (encode.join_command("CHUNKS.txt", "OUTPUT", config.format, exe="ffmpeg")
                     if result.jobs > 1 else None),
        },
    }


def _model_config(folder: Path, files: list[Path]) -> dict[str, Any] | None:
    """A small ``config.json`` in the checkpoint folder or beside the last checkpoint."""
    for candidate in (folder / MODEL_CONFIG, files[-1].parent / MODEL_CONFIG):
        try:
            if candidate.is_file() and candidate.stat().st_size <= _MODEL_CONFIG_MAX:
                doc = json.loads(candidate.read_text(encoding="utf-8"))
                if isinstance(doc, dict):
                    return doc
        except (OSError, ValueError):
            continue
    return None


def write(config: RenderConfig, result) -> dict[str, Any]:
    """Write the manifest beside the film (and into the ``--frames`` folder); returns it.

    If it cannot be written, a stale manifest from an earlier render is removed, so a
    manifest never describes another film than the one beside it.
    """
    doc = build(config, result)
    targets = [(manifest_path(config.output), doc)]
    if config.frames_dir is not None:
        frames = {"dir": os.path.abspath(config.frames_dir), "pattern": encode.FRAME_PATTERN,
                  "count": result.frames}
        targets.append((Path(config.frames_dir) / FRAMES_MANIFEST, {**doc, "frames": frames}))
    for target, data in targets:
        try:
            atomic.write_bytes(target, (json.dumps(data, indent=2) + "\n").encode())
        except OSError as e:
            target.unlink(missing_ok=True)
            raise LayerfilmError(f"cannot write the manifest: {e.strerror or e}", target) from None
    return doc


def load(path: Path) -> dict[str, Any]:
    """Read a manifest; a missing, unreadable or foreign file is a one-line :class:`ConfigError`."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such manifest", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the manifest: {e}", path) from None
    except ValueError as e:
        raise ConfigError(f"not a layerfilm manifest (invalid JSON: {e})", path) from None
    if not isinstance(doc, dict) or "layerfilm_manifest" not in doc:
        raise ConfigError("not a layerfilm manifest (no 'layerfilm_manifest' key)", path)
    if doc["layerfilm_manifest"] != FORMAT:
        raise ConfigError(f"manifest format {doc['layerfilm_manifest']!r} is not supported "
                          f"(this layerfilm reads format {FORMAT})", path)
    for key in ("film", "checkpoints", "options"):
        if not isinstance(doc.get(key), dict):
            raise ConfigError(f"manifest has no {key!r} section", path)
    return doc


def config_from(doc: dict[str, Any], path: Path, cli: RenderConfig,
                given: Iterable[str]) -> RenderConfig:
    """The config a manifest describes, with the options ``given`` on the command line on top.

    ``cli.checkpoints``/``cli.output`` are the positionals typed: one names the new film,
    two the checkpoint folder and the film.  Missing ones come from the manifest.  Extra
    outputs (``--frames DIR``, ...) are written again only when given on the command line.
    """
    given = set(given)
    values = config_mod.options_from_table(doc["options"], path, nullable=True)
    outputs = set(config_mod.output_options())
    values = {k: v for k, v in values.items() if k not in outputs}
    checkpoints, output = cli.checkpoints, cli.output
    if output is None:
        checkpoints, output = None, checkpoints
    checkpoints = checkpoints or Path(doc["checkpoints"]["folder"])
    output = output or Path(doc["film"]["path"])
    config = config_mod.with_options(cli, values, keep=given)
    config = dataclasses.replace(config, checkpoints=checkpoints, output=output)
    return config_mod.validated_from(config, {k: path for k in values if k not in given})


def check_inputs(doc: dict[str, Any], path: Path, config: RenderConfig) -> list[str]:
    """Refuse (:class:`CheckpointError`) when a checkpoint or loss log the manifest lists is
    missing or changed; return warnings for other differences (versions)."""
    folder = Path(config.checkpoints)
    files = list(doc["checkpoints"].get("files") or [])
    loss = doc["checkpoints"].get("loss") or {}
    if loss.get("source") == "file":
        files.append(loss)
    for entry in files:
        p = folder / entry["path"]
        if not p.is_file():
            raise CheckpointError(f"listed in {path} but missing; cannot reproduce the film", p)
        if p.stat().st_size != entry["bytes"] or cache.sha256_file(p, config.cache) != entry["sha256"]:
            raise CheckpointError(f"changed since {path} was written (sha256 differs); "
                                  "the film would not be the same", p)
    warnings = []
    if doc.get("layerfilm") != __version__:
        warnings.append(f"{path} was written by layerfilm {doc.get('layerfilm')}, this is "
                        f"{__version__}: the film may differ")
    recorded = (doc.get("encoder") or {}).get("ffmpeg")
    if recorded and recorded != encode.ffmpeg_version():
        warnings.append(f"{path} was encoded by ffmpeg {recorded}, this is "
                        f"{encode.ffmpeg_version()}: the bytes may differ")
    return warnings


def same_film(recorded: dict[str, Any], written: dict[str, Any]) -> bool | None:
    """Whether a re-render produced the recorded film's bytes (``None``: another format)."""
    if recorded["film"].get("format") != written["film"]["format"]:
        return None
    return recorded["film"].get("sha256") == written["film"]["sha256"]
