"""Manifests: the JSON sidecar ``OUT.json`` that says exactly how a film was made.

A manifest records layerfilm's version, every checkpoint drawn (path, step, size, sha256 of
the file), the loss log and model config read, every resolved option (generic over
:class:`~layerfilm.config.RenderConfig`'s fields), the ffmpeg version and the exact encoder
arguments, and the film's frame count, fps, duration, size and sha256.  It is built from the
finished film's bytes and put in place together with the film (see
:class:`~layerfilm.atomic.Staged`), so a manifest always describes the film beside it.

``layerfilm render --from-manifest OUT.json [OUT]`` renders the same film again (bit for
bit with the same layerfilm and ffmpeg), after checking that the checkpoints are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path, PurePath
from typing import Any, Iterable

import numpy as np

from . import __version__, atomic, cache, checkpoints, completions, config as config_mod, encode
from .config import Remote, RenderConfig
from .errors import CheckpointError, ConfigError, LayerfilmError
from .untrusted import load_json, within

FORMAT = 2  # manifest layout version (1: every file's full sha256; still read)
FRAMES_MANIFEST = "manifest.json"  # the manifest inside a --frames folder


def manifest_path(film: str | os.PathLike) -> Path:
    """Where a film's manifest goes: ``films/a.webm`` -> ``films/a.webm.json``."""
    film = Path(film)
    return film.with_name(film.name + ".json")


def _rel(path: PurePath, root: PurePath) -> str:
    return PurePath(os.path.relpath(path, root)).as_posix() if isinstance(path, Path) \
        else path.relative_to(root).as_posix()


def identities(plan, verify: bool = False, memo: bool = True, digest: str = "xxh3",
               read: dict[str, dict] | None = None, drawn: bool = True) -> list[dict[str, Any]]:
    """One entry per file of every checkpoint drawn: its path (relative to the folder), step,
    size, and what identifies its contents without reading what the film does not draw.

    Local safetensors files: modification time, the sha256 of the header and a digest of the
    bytes the film reads (over the drawn rows' byte ranges in file order): ``read_xxh3``
    (XXH3-128, from the xxhash package: fifteen times sha256's speed here), or with
    ``digest="sha256"`` the ``read_sha256`` that manifests before it recorded; other local
    files (torch pickles, indexes, DCP): the sha256 of the file.  Remote files: what the server
    lists (the Hub's commit and LFS sha256 or git blob id, an S3 ETag).  ``verify``: the sha256
    of every file in full as well (``--verify-inputs``).

    The digests of the drawn bytes are the ones the render made as it read them (``read``:
    ``layouts.Keyframes.read``), else the ones an earlier render of the same files and points
    remembered (``memo``), else -- nothing read them in this render -- they are read here (see
    :func:`_drawn_digests`).  ``drawn=False``: none (``--from-manifest`` checks them once the
    render has read the bytes, :func:`check_read`).

    Size and time are the ones the plan took before reading (what the cache keys say was
    read); a local file that is not the same now (or changed while it was hashed) gets no
    digest, which would be of other bytes than the film's, but ``changed_while_read``.
    """
    out, what = [], _drawn_key(plan.drawn())
    for k in range(len(plan.refs)):
        files = plan.identities[k]
        if plan.storage is not checkpoints.LOCAL:
            out.extend(_checkpoint_entries(plan, k, what, verify, memo, digest, read, drawn))
            continue
        try:
            entries = None if plan.changed(k) else \
                _checkpoint_entries(plan, k, what, verify, memo, digest, read, drawn)
        except CheckpointError:
            if not plan.changed(k):
                raise
            entries = None  # rewritten while it was hashed: unreadable for a moment
        if entries is None or plan.changed(k):  # checked again: the hashing took time
            entries = [{**_base_entry(plan, k, path, ident), CHANGED: True} for path, ident in files]
        out.extend(entries)
    return out


CHANGED = "changed_while_read"


def _base_entry(plan, k: int, path: PurePath, ident: str) -> dict[str, Any]:
    """Path, step, tokens and (local files) size and time as they were before reading."""
    ref = plan.refs[k]
    entry: dict[str, Any] = {"path": _rel(path, plan.folder), "step": int(ref.step)}
    if ref.tokens is not None:
        entry["tokens"] = int(ref.tokens)
    if plan.storage is checkpoints.LOCAL:
        size, mtime_ns = checkpoints.LocalStorage.size_and_time(ident)
        entry.update(bytes=size, mtime_ns=mtime_ns)
    return entry


def _checkpoint_entries(plan, k: int, what: str, verify: bool, memo: bool, digest: str,
                        read: dict[str, dict] | None, drawn: bool) -> list[dict[str, Any]]:
    """The entries of checkpoint ``k``'s files (see :func:`identities`; ``what``: the drawn
    points' key, :func:`_drawn_key`)."""
    storage, ref, files = plan.storage, plan.refs[k], plan.identities[k]
    local = storage is checkpoints.LOCAL
    known: dict[str, dict] | None = None
    if local and drawn:
        known = _drawn_digests(plan, k, what, memo, digest, read)
    elif local and any(p.suffix == ".safetensors" for p, _ in files):
        # Those to be checked once read (check_read) get nothing here, not their full sha256.
        known = {str(p): {} for p in checkpoints.drawn_ranges(ref.open(), []) or {}}
    out = []
    for path, ident in files:
        entry = _base_entry(plan, k, path, ident)
        if local:
            if known and str(path) in known:
                entry.update(known[str(path)])
            if verify or not known or str(path) not in known:
                entry["sha256"] = cache.sha256_file(Path(path), memo)
        else:
            entry.update(storage.file_info(path))
            if verify:
                entry["sha256"] = _remote_sha256(storage, path)
        out.append(entry)
    return out


def _drawn_digests(plan, k: int, what: str, memo: bool, digest: str,
                   read: dict[str, dict] | None) -> dict[str, dict] | None:
    """The digests of the drawn bytes of local checkpoint ``k``'s files that a format reads by
    ranges (safetensors; file as text -> ``header_sha256``, ``read_<digest>``, ``read_bytes``;
    ``None`` when none of its files is a safetensors file), from the first that has them:

    1. the render, which hashed them as it read them (``read``: a reader hashes all of a
       checkpoint's files or none, so one of them there means all are);
    2. the memo of an earlier render of the same files (size and time) and points;
    3. the files, read here: only when nothing read them in this render (its layouts and drift
       came from the cache) and no memo has them (or it is not to be trusted: ``--from-manifest``
       checks bytes changed in place, size and time kept).  Those are added to ``read``."""
    files = plan.identities[k]
    key = f"{plan.identity(k)}|{what}|{digest}"
    name = f"read_{digest}"
    if read is not None:
        made = {str(p): read[str(p)] for p, _ in files if name in read.get(str(p), {})}
        if made:
            if memo and not plan.changed(k):  # so that a re-render from the cache reads nothing
                _remember_digests(key, made)
            return made
    known = _known_digests(key) if memo else None
    if known is None and any(p.suffix == ".safetensors" for p, _ in files):
        ranges = checkpoints.drawn_ranges(plan.refs[k].open(), plan.drawn()) or {}
        known = {str(p): _read_digests(Path(p), r, digest) for p, r in ranges.items()}
        if memo and not plan.changed(k):  # digests of the bytes the key names, nothing else
            _remember_digests(key, known)
        if read is not None:
            read.update(known)
    return known


def _drawn_key(drawn) -> str:
    h = hashlib.sha256()
    for name, index, axis in drawn:
        h.update(f"{name}|{axis}|".encode())
        h.update(b"" if index is None else np.ascontiguousarray(index, dtype=np.int64).tobytes())
    return h.hexdigest()


def _digest_memo(key: str) -> Path:
    return cache.cache_dir() / "read-digests" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _known_digests(key: str) -> dict | None:
    """The digests of a checkpoint's drawn bytes remembered from an earlier render of the same
    files (same size and time) and the same points, so a re-render reads nothing for them."""
    found = cache.read_entry(_digest_memo(key))
    try:
        return None if found is None else json.loads(bytes(found))
    except ValueError:
        return None


def _remember_digests(key: str, digests: dict) -> None:
    try:
        cache.write_entry(_digest_memo(key), json.dumps(digests).encode())
    except OSError:
        pass  # the memo only saves time


def _read_digests(path: Path, ranges: list[tuple[int, int]], digest: str) -> dict[str, Any]:
    """sha256 of the header (the first range), and ``digest`` (``"xxh3"``: XXH3-128, or
    ``"sha256"``) of every drawn byte, in file order."""
    header, rest = ranges[0], ranges[1:]
    first = checkpoints.LOCAL.read(path, *header)
    h = checkpoints.READ_DIGESTS[digest]()
    for chunk in checkpoints.LOCAL.read_ranges(path, rest):
        h.update(chunk)
    return {"header_sha256": hashlib.sha256(first).hexdigest(), f"read_{digest}": h.hexdigest(),
            "read_bytes": sum(e - s for s, e in rest)}


def _remote_sha256(storage, path) -> str:
    h, size, step = hashlib.sha256(), storage.size(path), 64 << 20
    for start in range(0, size, step):
        h.update(storage.read_ranges(path, [(start, min(size, start + step))])[0])
    return h.hexdigest()


def _source(plan) -> dict[str, Any]:
    """Where the checkpoints were read from, and how much of them was fetched."""
    storage = plan.storage
    out: dict[str, Any] = {"url": plan.url}
    if hasattr(storage, "commits"):
        used = {storage.revision_of(r.path)[0] for r in plan.refs}
        out["revisions"] = {n: c for n, c in storage.commits().items() if n in used}
    traffic = getattr(storage, "traffic", None)
    if traffic is not None:
        out.update(bytes_stored=plan.stored_bytes(), **traffic.as_dict())
    return out


def build(config: RenderConfig, result, film: Path | None = None) -> dict[str, Any]:
    """The manifest of a finished render (``result`` is the pipeline's ``RenderResult``) whose
    film's bytes are now at ``film`` (default: ``config.output``)."""
    plan = result.plan
    files = identities(plan, config.verify_inputs, config.cache, read=result.read)
    loss = None
    if plan.loss is not None:
        source = plan.loss.path
        if source is not None and config.metrics is not None:
            loss = {"source": "file", "path": os.path.abspath(source),
                    "bytes": Path(source).stat().st_size,
                    "sha256": cache.sha256_file(Path(source), config.cache)}
        elif source is not None and plan.storage.is_file(source):
            loss = {"source": "file", **_loss_entry(plan, source, config.cache)}
        else:
            loss = {"source": plan.loss.source}
    enc = encode.FORMATS[config.format]
    folder = plan.url or os.path.abspath(plan.folder)
    return {
        "layerfilm_manifest": FORMAT,
        "layerfilm": __version__,
        "film": {
            "path": os.path.abspath(config.output),
            "format": config.format,
            "bytes": result.bytes,
            "sha256": cache.sha256_file(film or config.output, use_cache=False),
            "frames": result.frames,
            "fps": config.fps,
            "duration_s": round(result.frames / config.fps, 6),
            "size": list(config.size),
            "keyframes": result.keyframes,
        },
        **({"preview": encode.preview.entry(result.preview, config.size, config.fps)}
           if getattr(result, "preview", None) is not None else {}),
        **({"page": {"path": os.path.abspath(result.page["path"]), "bytes": result.page["bytes"],
                     "keyframes": result.page["keyframes"]}}
           if getattr(result, "page", None) is not None else {}),
        "drawing": getattr(result, "drawing", None),
        # What happened in the run, measured on the drawn weights (stats.story): settling
        # steps, rebels, the intervals the whole model moved most; the published card says it.
        **({"story": result.story} if getattr(result, "story", None) is not None else {}),
        "checkpoints": {"folder": folder, "files": files, "loss": loss,
                        **({"remote": _source(plan)} if plan.url else {})},
        "model_config": completions.config_doc(plan),
        **completions.manifest_entries(plan, getattr(result, "spoken", None), config.max_new_tokens,
                                       [_rel(ref.path, plan.folder) for ref in plan.refs]),
        "options": recorded_options(config),
        # Per panel: how its layouts were made (method, exact solves, corrections and exact
        # checks of tracked planes, a lower bound on the share of the exact top-two variance the
        # drawn plane held at every keyframe, the share of the panel's variance on the drawn
        # axes, a Fourier plane's frequency and reference step).
        "projection": {"method": config.projection, "panels": list(result.panels)},
        "encoder": {
            "ffmpeg": encode.ffmpeg_version(),
            "command": encode.encoder_command(enc, config.size, config.fps, exe="ffmpeg"),
            "jobs": result.jobs,
            "join": (encode.join_command("CHUNKS.txt", "OUTPUT", config.format, exe="ffmpeg")
                     if result.jobs > 1 else None),
        },
    }


def recorded_options(config: RenderConfig) -> dict[str, Any]:
    """The options a manifest records: every resolved one that shapes the film, no secrets."""
    return {k: v for k, v in _public(config_mod.options_dict(config)).items()
            if k not in config_mod.RUN_ONLY}


def _loss_entry(plan, path, memo: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": _rel(path, plan.folder)}
    if plan.storage is checkpoints.LOCAL:
        entry.update(bytes=Path(path).stat().st_size, sha256=cache.sha256_file(Path(path), memo))
    else:
        entry.update(plan.storage.file_info(path))
    return entry


_SECRET = re.compile(r"key|secret|token|password|credential|sas|signature|auth", re.I)


def _public(options: dict[str, Any]) -> dict[str, Any]:
    """Options without secrets: ``storage_options`` entries that look like credentials are left
    out (they come from the environment or the config file again)."""
    so = options.get("storage_options")
    if isinstance(so, dict):
        options = {**options, "storage_options": {k: v for k, v in so.items()
                                                  if not _SECRET.search(k)} or None}
    return options


def write(config: RenderConfig, result, staged: atomic.Staged) -> dict[str, Any]:
    """Stage the manifest beside the film (and in the ``--frames`` folder), built from the
    staged film's bytes, to be put in place with the film; returns it.  Until then the older
    film and manifest stay as they were, so a manifest never describes another film than the
    one beside it."""
    doc = build(config, result, staged.where(config.output))
    targets = [(staged.file(manifest_path(config.output)), doc)]
    if config.frames_dir is not None:
        frames = {"dir": os.path.abspath(config.frames_dir), "pattern": encode.FRAME_PATTERN,
                  "count": result.frames}
        targets.append((staged.where(config.frames_dir) / FRAMES_MANIFEST, {**doc, "frames": frames}))
    for target, data in targets:
        try:
            atomic.write_bytes(target, (json.dumps(data, indent=2) + "\n").encode())
        except OSError as e:
            raise LayerfilmError(f"cannot write the manifest: {e.strerror or e}", target) from None
    return doc


def load(path: Path) -> dict[str, Any]:
    """Read a manifest; a missing, unreadable or foreign file is a one-line :class:`ConfigError`."""
    try:
        doc = load_json(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such manifest", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the manifest: {e}", path) from None
    except ValueError as e:
        raise ConfigError(f"not a layerfilm manifest (invalid JSON: {e})", path) from None
    if not isinstance(doc, dict) or "layerfilm_manifest" not in doc:
        raise ConfigError("not a layerfilm manifest (no 'layerfilm_manifest' key)", path)
    if doc["layerfilm_manifest"] not in (1, FORMAT):
        raise ConfigError(f"manifest format {doc['layerfilm_manifest']!r} is not supported "
                          f"(this layerfilm reads formats 1 and {FORMAT})", path)
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
    checkpoints = checkpoints or _recorded_location(doc)
    output = output or Path(doc["film"]["path"])
    config = config_mod.with_options(cli, values, keep=given)
    config = dataclasses.replace(config, checkpoints=checkpoints, output=output)
    return config_mod.validated_from(config, {k: path for k in values if k not in given})


def _recorded_location(doc: dict[str, Any]) -> Path | Remote:
    """The manifest's checkpoints: a folder, or a URL with its Hub revisions pinned to the
    commits that were read."""
    folder = doc["checkpoints"]["folder"]
    if not checkpoints.is_url(folder):
        return Path(folder)
    revisions = (doc["checkpoints"].get("remote") or {}).get("revisions") or {}
    return Remote(folder, tuple(sorted(revisions.items())))


_COMPARED = ("bytes", "sha256", "header_sha256", "read_xxh3", "read_sha256", "lfs_sha256",
             "blob_id", "commit", "ETag", "etag", "generation")


def check_inputs(doc: dict[str, Any], path: Path, config: RenderConfig) -> list[str]:
    """Refuse (:class:`CheckpointError`) when a checkpoint or loss log the manifest lists is
    missing or changed; return warnings for other differences (versions).

    The identities are computed again as the manifest recorded them (see :func:`identities`),
    all but the digests of the drawn bytes of local safetensors files (``header_sha256``,
    ``read_xxh3``): the render reads those bytes anyway, and :func:`check_read` checks what it
    read before a frame is made (a value changed in place, size and time kept, is found).  Full
    files are hashed here where the manifest has their sha256.  An older manifest's
    ``read_sha256`` is checked here, by reading the drawn bytes before the render does."""
    from .activations import make_plan

    recorded = list(doc["checkpoints"].get("files") or [])
    where = str(config.checkpoints)
    if not isinstance(config.checkpoints, Remote):
        for entry in recorded:
            p = within(Path(config.checkpoints), str(entry["path"]), path, "file entry")
            if not p.is_file():
                raise CheckpointError(f"listed in {path} but missing; cannot reproduce the film", p)
    loss = doc["checkpoints"].get("loss") or {}
    local = not isinstance(config.checkpoints, Remote)
    if loss.get("source") == "file" and "sha256" in loss and (local or config.metrics is not None):
        lp = config.metrics if config.metrics is not None else \
            within(Path(config.checkpoints), str(loss["path"]), path, "loss log entry")
        if not lp.is_file():
            raise CheckpointError(f"listed in {path} but missing; cannot reproduce the film", lp)
        if cache.sha256_file(lp, False) != loss["sha256"]:
            raise CheckpointError(f"changed since {path} was written (sha256 differs); "
                                  "the film would not be the same", lp)
    plan = make_plan(config, config.metrics)
    completions.check_recorded(doc, path, plan, config.all_prompts)
    verify = any("sha256" in e and "read_sha256" not in e and "read_xxh3" not in e
                 for e in recorded) or config.verify_inputs
    legacy = any("read_sha256" in e for e in recorded)  # checked here, as it always was
    digest = "sha256" if legacy else "xxh3"
    now = {e["path"]: e for e in identities(plan, verify, memo=False, digest=digest, drawn=legacy)}
    for entry in recorded:
        fresh = now.get(entry["path"])
        target = f"{where.rstrip('/')}/{entry['path']}"
        if fresh is None:
            raise CheckpointError(f"listed in {path} but not among the checkpoints now; cannot "
                                  "reproduce the film", target)
        _compare(entry, fresh, path, target)
    warnings = []
    if doc.get("layerfilm") != __version__:
        warnings.append(f"{path} was written by layerfilm {doc.get('layerfilm')}, this is "
                        f"{__version__}: the film may differ")
    recorded = (doc.get("encoder") or {}).get("ffmpeg")
    if recorded and recorded != encode.ffmpeg_version():
        warnings.append(f"{path} was encoded by ffmpeg {recorded}, this is "
                        f"{encode.ffmpeg_version()}: the bytes may differ")
    return warnings


def check_read(doc: dict[str, Any], path: Path, plan, read: dict[str, dict]) -> None:
    """Refuse (:class:`CheckpointError` naming the file) when the drawn bytes the render read
    of a local safetensors file are not the ones the manifest ``doc`` (at ``path``) recorded
    (``header_sha256``, ``read_xxh3``), or the file changed while it was read.

    ``read``: the digests the render made as it read (``layouts.Keyframes.read``), so nothing
    is read again; a checkpoint the render did not read (layouts and drift from the cache,
    whose keys cannot tell a value changed in place) is read here, never taken from the memo,
    and its digests are added to ``read`` for the new manifest.  The render calls this before
    the first frame is made, inside its :class:`~layerfilm.atomic.Staged`: a refusal leaves
    no film and no manifest."""
    recorded = {e["path"]: e for e in doc["checkpoints"].get("files") or [] if "read_xxh3" in e}
    if not recorded or plan.storage is not checkpoints.LOCAL:
        return
    what, where = _drawn_key(plan.drawn()), plan.where.rstrip("/")
    for k in range(len(plan.refs)):
        files = [(_rel(p, plan.folder), str(p)) for p, _ in plan.identities[k]]
        if not any(rel in recorded for rel, _ in files):
            continue
        known = None if plan.changed(k) else _drawn_digests(plan, k, what, False, "xxh3", read)
        for rel, full in files:
            if rel not in recorded:
                continue
            target = f"{where}/{rel}"
            if known is None or plan.changed(k):
                raise CheckpointError("changed while it was read; cannot reproduce the film", target)
            if full not in known:  # no longer a file read by ranges
                raise CheckpointError(f"changed since {path} was written (read_xxh3 differs); "
                                      "the film would not be the same", target)
            _compare(recorded[rel], known[full], path, target)


def _compare(entry: dict[str, Any], fresh: dict[str, Any], path: Path, target: str) -> None:
    """Refuse a file whose recorded identity ``entry`` differs from ``fresh``, its identity now."""
    if entry.get(CHANGED) or fresh.get(CHANGED):
        raise CheckpointError(f"changed while {'the film' if entry.get(CHANGED) else 'it'} "
                              "was read; cannot reproduce the film", target)
    for key in _COMPARED:
        if key in entry and key in fresh and entry[key] != fresh[key]:
            raise CheckpointError(f"changed since {path} was written ({key} differs); "
                                  "the film would not be the same", target)


def same_film(recorded: dict[str, Any], written: dict[str, Any]) -> bool | None:
    """Whether a re-render produced the recorded film's bytes (``None``: another format)."""
    if recorded["film"].get("format") != written["film"]["format"]:
        return None
    return recorded["film"].get("sha256") == written["film"]["sha256"]
