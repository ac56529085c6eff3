"""``layerfilm publish``: lossless films, their manifests, stills and stats to the Hugging Face Hub.

Everything goes up in one commit, with a README card written from the manifests: what the
film shows, the model's config when known, the options and command that render it again,
GIF/WebP shown inline and the other formats linked.  ``huggingface_hub`` is imported only here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

from . import __version__, cache
from .config import (SUFFIXES, PublishConfig, RenderConfig, option_names, options_from_table,
                     options_toml)
from .errors import ConfigError, LayerfilmError, first_line
from .manifest import FRAMES_MANIFEST, manifest_path
from .untrusted import load_json

INLINE = (".gif", ".webp")  # formats a Markdown image shows (and every browser plays)
COMPANION_SUFFIXES = (".png", ".jpg", ".jpeg", ".csv", ".json", ".svg")
# Folders beside films/<run>.webm that belong to it: films/<run>-stills, films/<run>-stats.
COMPANION_DIRS = ("-stills", "-stats", ".stills", ".stats")


@dataclasses.dataclass(frozen=True)
class Upload:
    local: Path
    in_repo: str
    data: bytes | None = None  # what goes up instead of the local file's bytes (a manifest made portable)

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.local.stat().st_size

    def source(self) -> str | bytes:
        """What huggingface_hub uploads: the bytes, or the local file's path."""
        return self.data if self.data is not None else str(self.local)

    def on_disk(self, folder: Path) -> "Upload":
        """The same upload as a file (in ``folder`` when it has its own bytes), for the APIs
        that take paths only."""
        if self.data is None:
            return self
        path = folder / f"{len(list(folder.iterdir()))}-{self.local.name}"
        path.write_bytes(self.data)
        return Upload(path, self.in_repo)


@dataclasses.dataclass
class Film:
    """One film and what was found beside it."""

    path: Path
    in_repo: str
    manifest: dict[str, Any] | None
    companions: list[Upload]
    preview: Upload | None = None  # the lossy --preview the manifest names, when it is there
    page: Upload | None = None  # the --html viewer page the manifest names, when it is there

    @property
    def run(self) -> str:
        """The run's name: its checkpoint folder's, else the film's stem."""
        if self.manifest:
            return Path(self.manifest["checkpoints"]["folder"]).name
        return self.path.stem


def collect(films: list[Path], path_in_repo: str = "") -> list[Film]:
    """The films and their companions: ``FILM.json``; files beside the film named
    ``<stem>.*``/``<stem>-*``/``<stem>_*`` with a still or stats suffix; the files of folders
    ``<stem>-stills``/``<stem>-stats``; and extra output folders named in the manifest (except
    ``--frames``: every frame is too much).  Repo paths keep the layout beside the film."""
    prefix = path_in_repo.strip("/")
    given = {Path(f).resolve() for f in films}
    out: list[Film] = []
    for film in map(Path, films):
        if not film.is_file():
            raise LayerfilmError("no such film", film)
        if film.suffix.lower() not in SUFFIXES:
            raise ConfigError(f"not a film (use one of {', '.join(SUFFIXES)})", film)
        doc = None
        side = manifest_path(film)
        if side.is_file():
            try:
                doc = load_json(side.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise LayerfilmError(f"cannot read the manifest: {e}", side) from None
            _check_film_matches(film, side, doc)

        def in_repo(p: Path) -> str:
            rel = Path(os.path.relpath(p, film.parent)).as_posix()
            if rel.startswith("../"):  # a --stills folder elsewhere: keep its name only
                rel = f"{p.parent.name}/{p.name}"
            return f"{prefix}/{rel}" if prefix else rel

        # Keyed by the absolute path: the same still reached as films/a-stills/first.png (beside
        # the film) and /home/you/films/a-stills/first.png (the manifest's --stills) is one file.
        found: dict[Path, Path] = {}
        stem = film.name[: -len(film.suffix)]
        for p in sorted(film.parent.iterdir()):
            if p.is_file() and p.resolve() not in given and p != side \
                    and p.name[len(stem):len(stem) + 1] in (".", "-", "_") and p.name.startswith(stem) \
                    and p.suffix.lower() in COMPANION_SUFFIXES and not _is_other_manifest(p):
                found.setdefault(Path(os.path.abspath(p)), p)
        folders = [film.parent / f"{stem}{s}" for s in COMPANION_DIRS]
        if doc is not None:
            frames = (doc.get("options") or {}).get("frames_dir")
            for name, value in (doc.get("options") or {}).items():
                if isinstance(value, str) and name.endswith("_dir") and value != frames:
                    folders.append(Path(value))
        for folder in folders:
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    if p.is_file() and p.suffix.lower() in COMPANION_SUFFIXES and p.name != FRAMES_MANIFEST:
                        found.setdefault(Path(os.path.abspath(p)), p)
        preview, page = _beside(doc, "preview", (".mp4",)), _beside(doc, "page", (".html", ".htm"))
        for p in (preview, page):
            if p is not None:
                found.pop(Path(os.path.abspath(p)), None)
        companions = [Upload(p, in_repo(p)) for p in found.values()]
        if doc is not None:
            doc = portable(doc, film.parent)
            companions.insert(0, Upload(side, in_repo(side), (json.dumps(doc, indent=2) + "\n").encode()))
        lossy = Upload(preview, in_repo(preview)) if preview is not None else None
        viewer = Upload(page, in_repo(page)) if page is not None else None
        out.append(Film(film, in_repo(film), doc, companions + [u for u in (lossy, viewer) if u],
                        lossy, viewer))
    return out


def _beside(doc: Any, key: str, suffixes: tuple[str, ...]) -> Path | None:
    """The file a manifest's ``key`` entry names (the lossy ``preview``, the viewer ``page``),
    when it is there with the size recorded and one of ``suffixes`` (a manifest edited to name
    another file -- a key, a config -- never has it uploaded)."""
    entry = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return None
    path = Path(entry["path"])
    if path.suffix.lower() not in suffixes:
        return None
    try:
        return path if path.is_file() and path.stat().st_size == entry.get("bytes") else None
    except OSError:
        return None


def portable(doc: Any, base: Path) -> Any:
    """``doc`` with every absolute local path made relative to ``base`` (the published
    folder): what is uploaded names no one's home or scratch folders, and the links still
    hold beside the film.  A path further away than ``base``'s own folder (``../../...``)
    keeps only its name: the way there would spell out this machine's folders."""
    if isinstance(doc, dict):
        return {k: portable(v, base) for k, v in doc.items()}
    if isinstance(doc, list):
        return [portable(v, base) for v in doc]
    if isinstance(doc, str) and os.path.isabs(doc):
        rel = Path(os.path.relpath(doc, os.path.abspath(base))).as_posix()
        return Path(doc).name if rel.startswith("../../") or rel == "../.." else rel
    return doc


def _check_film_matches(film: Path, side: Path, doc: Any) -> None:
    """Refuse a film whose bytes are not those its manifest describes (the film replaced or
    cut after the manifest was written): the card would publish another film's numbers."""
    recorded = doc.get("film") if isinstance(doc, dict) else None
    if not isinstance(recorded, dict):
        return  # not a layerfilm manifest: nothing it claims about the film
    size = film.stat().st_size
    if "bytes" in recorded and recorded["bytes"] != size:
        why = f"{size:,} bytes, the manifest says {recorded['bytes']:,}"
    elif "sha256" in recorded and cache.sha256_file(film, use_cache=False) != recorded["sha256"]:
        why = "sha256 differs"
    else:
        return
    raise LayerfilmError(f"does not match its manifest {side.name} ({why}); render it again or "
                         "remove the manifest", film)


def _is_other_manifest(p: Path) -> bool:
    """``films/a.gif.json`` when only ``films/a.webm`` is published."""
    return p.suffix == ".json" and Path(p.stem).suffix.lower() in SUFFIXES


def uploads(films: list[Film]) -> list[Upload]:
    """Every file to upload, each once; two files for one repo path are an error."""
    by_path: dict[str, Upload] = {}
    for film in films:
        for up in [Upload(film.path, film.in_repo), *film.companions]:
            seen = by_path.setdefault(up.in_repo, up).local
            if seen.resolve() != up.local.resolve():
                raise ConfigError(f"{seen} and {up.local} would both be uploaded as {up.in_repo!r}; "
                                  "publish them separately or use --path-in-repo")
    if "README.md" in by_path:
        raise ConfigError("README.md is written by layerfilm publish; rename that file",
                          by_path["README.md"].local)
    return list(by_path.values())


def card(films: list[Film], repo_id: str, how: str | None = None) -> str:
    """The repo's README: one section per run, the inline formats shown, the others linked."""
    runs: dict[str, list[Film]] = {}
    for film in films:
        runs.setdefault(film.run, []).append(film)
    title = ", ".join(runs)
    lines = [
        "---",
        "tags:",
        "- layerfilm",
        "- training-dynamics",
        "- video",
        "---",
        "",
        f"# Training films: {title}",
        "",
        "Lossless films of how every layer of a neural network moved while it trained, made with "
        f"layerfilm {__version__}. Each panel is one block "
        "(`embed` is the token embedding, `L0`, `L1`, ... the blocks in order); each dot is one "
        "neuron's weight vector in the residual stream (a row or column of a weight matrix), "
        "followed one-to-one from checkpoint to checkpoint; the 2-D layout is PCA per layer, "
        "aligned from one checkpoint to the next by Procrustes (never rescaled: the bar under each "
        "panel gives its scale in weight units). Colour is how many dots overlap, on one log "
        "scale for the whole film (the legend runs from one lone dot to the densest pixel). A "
        "panel's border brightens and the line under it moves while the layer changes fast; "
        "'settled' marks the step from which its rate stayed below a quarter of its early pace "
        "to the end (a layer that keeps its pace is still moving), 'rebel' a "
        "layer moving against its neighbours. The header shows the training step, tokens seen, "
        "learning rate and loss when they are known.",
        "",
    ]
    for run, members in runs.items():
        lines += [f"## {run}", ""]
        members = sorted(members, key=lambda f: f.path.suffix.lower() not in INLINE)
        for film in members:
            if film.path.suffix.lower() in INLINE:
                lines += [f"![{run}: training film]({_url(film.in_repo)})", ""]
        for film in members:
            lines.append(f"- [{film.in_repo}]({_url(film.in_repo)}): {_describe(film)}")
        previews = list(dict.fromkeys(f.preview.in_repo for f in members if f.preview is not None))
        for in_repo in previews:
            lines.append(f"- [{in_repo}]({_url(in_repo)}): **lossy preview** (H.264 MP4, plays on "
                         f"phones and forums; labelled \"lossy preview\" in its corner), "
                         f"{_size_of(members, in_repo)}")
        for in_repo in dict.fromkeys(f.page.in_repo for f in members if f.page is not None):
            lines.append(f"- [{in_repo}]({_url(in_repo)}): **viewer page** (one self-contained HTML "
                         "file: download and open it to scrub by step, enlarge a panel, hover a "
                         "panel for its numbers and a dot for what it is)")
        lines.append("")
        doc = next((f.manifest for f in members if f.manifest), None)
        if doc is not None and isinstance(doc.get("story"), dict):
            lines += story_lines(doc["story"])
        if doc is not None:
            files = doc["checkpoints"].get("files") or []
            if files:
                lines += [f"Checkpoints: {len(files)}, steps {files[0]['step']:,} to "
                          f"{files[-1]['step']:,} (what identifies each file in the `.json` manifest).", ""]
            if doc.get("model_config"):
                lines += ["Model config (`config.json` beside the checkpoints):", "", "```json",
                          json.dumps(doc["model_config"], indent=2, sort_keys=True), "```", ""]
        # Each file once, by its path in the repository (two films of a run share its stills).
        companions = list({u.in_repo: u for f in members for u in f.companions}.values())
        stills = [u for u in companions if u.local.suffix.lower() in (".png", ".jpg", ".jpeg")]
        other = [u for u in companions
                 if u not in stills and u.in_repo not in previews and not u.in_repo.endswith(".html")
                 and not u.in_repo.endswith(tuple(f"{s}.json" for s in SUFFIXES))]
        if stills:
            lines += ["Stills:", ""] + [f"![{Path(u.in_repo).name}]({_url(u.in_repo)})" for u in stills] + [""]
        if other:
            lines += ["Data: " + ", ".join(f"[{Path(u.in_repo).name}]({_url(u.in_repo)})" for u in other), ""]
        for film in members:
            if film.manifest:
                lines += _render_again(film)
    how = how or f"--repo-id {repo_id}"
    lines += [f"Published with `layerfilm publish {how}` (layerfilm {__version__}).", ""]
    return "\n".join(lines)


def _size_of(members: list[Film], in_repo: str) -> str:
    up = next(f.preview for f in members if f.preview is not None and f.preview.in_repo == in_repo)
    return f"{up.size / 1e6:.1f} MB"


def _steps(a: int, b: int) -> str:
    return f"step {a:,}" if a == b else f"steps {a:,}–{b:,}"


def story_lines(story: dict) -> list[str]:
    """The card's short account of what happened in a run, from its manifest's ``story``
    (:func:`layerfilm.stats.story`: the numbers ``layerfilm stats`` reports)."""
    out = ["What happened (measured on the drawn weights, as `layerfilm stats` reports it):", ""]
    settled, moving = story.get("settled") or [], story.get("still_moving") or []
    if settled:
        first, last = settled[0], settled[-1]
        line = f"- **Settled** first: {first['layer']} at step {first['step']:,}"
        if len(settled) > 1:
            line += f"; last: {last['layer']} at step {last['step']:,}"
        line += (f"; still moving at the end: {', '.join(moving)}." if moving else ".")
        out.append(line)
    else:
        out.append(f"- **No layer settled** (settled: {story.get('settling', '')}): every one kept "
                   "moving to the end.")
    rebels = story.get("rebels") or []
    if rebels:
        out.append(f"- **Rebels** (moving against their neighbours, |z| ≥ {story.get('rebel_z', 3):g}): "
                   + "; ".join(f"{r['layer']} at {_steps(*r['steps'])} (z {r['z']:+.1f} at step {r['at']:,})"
                               for r in rebels) + ".")
    else:
        out.append(f"- **No rebel**: no layer moved against its neighbours (|z| ≥ {story.get('rebel_z', 3):g}).")
    most = story.get("moved_most") or []
    if most:
        out.append("- **The whole model moved most** from "
                   + ", ".join(f"step {m['from']:,} to {m['to']:,} ({100 * m['rate_per_100']:.3g} % per 100 steps)"
                               for m in most) + ".")
    return out + [""]


def _url(in_repo: str) -> str:
    return "/".join(part.replace(" ", "%20") for part in in_repo.split("/"))


def _describe(film: Film) -> str:
    kind = {".webm": "lossless VP9 WebM (plays in Chrome and Firefox)", ".gif": "GIF",
            ".webp": "lossless animated WebP", ".mp4": "lossless H.264 RGB MP4 (mpv, VLC)",
            ".mkv": "lossless FFV1 MKV (archival)"}[film.path.suffix.lower()]
    size = film.path.stat().st_size / 1e6
    if not film.manifest:
        return f"{kind}, {size:.1f} MB"
    f = film.manifest["film"]
    return (f"{kind}, {f['size'][0]}x{f['size'][1]}, {f['frames']:,} frames at {f['fps']} fps "
            f"({f['duration_s']:.1f} s), {size:.1f} MB, sha256 `{f['sha256'][:16]}`")


def _render_again(film: Film) -> list[str]:
    """The options (as the TOML file ``--config`` reads) and the commands that render it again."""
    doc = film.manifest
    known = {k: v for k, v in doc["options"].items() if k in option_names()}
    try:
        values = options_from_table(known, Path("manifest.json"), nullable=True)
        config = RenderConfig(**{k: v for k, v in values.items()})
        # The manifest's paths are relative to the film's folder (portable); TOML writes paths
        # absolute, which here would be this machine's working folder: keep them relative.
        here = os.path.abspath(".")
        toml = "\n".join(line.replace(json.dumps(here + os.sep)[:-1], '"', 1).replace(
            json.dumps(here), '"."', 1) for line in options_toml(config).rstrip("\n").splitlines())
    except LayerfilmError:
        toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in known.items() if v is not None)
    folder = Path(doc["checkpoints"]["folder"]).name
    name = film.path.name
    return [
        f"Render `{name}` again (layerfilm {doc.get('layerfilm')}, ffmpeg "
        f"{(doc.get('encoder') or {}).get('ffmpeg', '?')}): save these options as `layerfilm.toml`",
        "",
        "```toml",
        toml,
        "```",
        "",
        "and run",
        "",
        "```sh",
        f"layerfilm render {folder} {name}",
        f"# or, with the checkpoints in place, bit for bit:  layerfilm render --from-manifest {name}.json",
        "```",
        "",
    ]


@dataclasses.dataclass
class Published:
    url: str
    commit_url: str | None
    files: list[Upload]
    card: str


def publish(config: PublishConfig, say: Callable[[str], None] = print) -> Published:
    """Upload ``config.films`` and their companions plus a README card to ``config.repo_id`` in
    one commit (created if needed).  ``dry_run`` only lists the files and prints the card."""
    cfg = config.validated()
    if cfg.bucket:
        return publish_to_bucket(cfg, say)
    repo_id, repo_type, private, message = cfg.repo_id, cfg.repo_type, cfg.private, cfg.message
    found = collect(list(cfg.films), cfg.path_in_repo)
    files = uploads(found)
    text = card(found, repo_id)
    message = message or "layerfilm: " + ", ".join(f.in_repo for f in found)
    if cfg.dry_run:
        say(f"would upload to {repo_id} ({repo_type}{', private' if private else ''}) in one commit "
            f"{message!r}:")
        for up in files:
            say(f"  {up.in_repo:<40} {up.local} ({up.size:,} bytes)")
        say(f"  {'README.md':<40} (the card below, {len(text.encode()):,} bytes)")
        say("")
        say(text)
        return Published("", None, files, text)

    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    token = huggingface_hub.get_token()
    if not token:
        raise LayerfilmError("no Hugging Face token: run `hf auth login` (or `huggingface-cli login`) "
                             "or set HF_TOKEN")
    api = huggingface_hub.HfApi(token=token)
    ops = [huggingface_hub.CommitOperationAdd(path_in_repo=u.in_repo, path_or_fileobj=u.source())
           for u in files]
    ops.append(huggingface_hub.CommitOperationAdd(path_in_repo="README.md",
                                                  path_or_fileobj=text.encode()))
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=True if private else None,
                              exist_ok=True)
        info = api.create_commit(repo_id, ops, commit_message=message, repo_type=repo_type)
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", "?")
        detail = getattr(e, "server_message", None) or str(e).splitlines()[0]
        raise LayerfilmError(f"the Hub refused the upload to {repo_id} (HTTP {status}): "
                             f"{' '.join(str(detail).split())}") from None
    except Exception as e:  # network errors come from httpx/requests, whichever the hub uses
        raise LayerfilmError(f"upload to {repo_id} failed: {type(e).__name__}: {first_line(e)}") from None
    return Published(str(url), getattr(info, "commit_url", None), files, text)


def publish_to_bucket(cfg: PublishConfig, say: Callable[[str], None] = print) -> Published:
    """Upload the films, their companions and a ``README.md`` card into a Hugging Face Storage
    Bucket (``cfg.bucket``: ``USER/NAME[/prefix]``, created if missing, private on request),
    with huggingface_hub's bucket API.  Files whose content is already there (same Xet hash)
    are not sent again; nothing new means no upload at all."""
    parts = cfg.bucket.strip("/").split("/")
    bucket_id, base = "/".join(parts[:2]), "/".join(parts[2:])
    found = collect(list(cfg.films), cfg.path_in_repo)  # paths relative to the card, in base/
    files = [dataclasses.replace(u, in_repo=f"{base}/{u.in_repo}" if base else u.in_repo)
             for u in uploads(found)]
    card_path = f"{base}/README.md" if base else "README.md"
    text = card(found, bucket_id, f"--bucket {cfg.bucket}")
    where = f"hf://buckets/{bucket_id}"
    if cfg.dry_run:
        say(f"would upload to {where}{' (private)' if cfg.private else ''}:")
        for up in files:
            say(f"  {up.in_repo:<40} {up.local} ({up.size:,} bytes)")
        say(f"  {card_path:<40} (the card below, {len(text.encode()):,} bytes)")
        say("")
        say(text)
        return Published("", None, files, text)

    import tempfile

    import huggingface_hub
    from huggingface_hub import errors

    token = huggingface_hub.get_token()
    if not token:
        raise LayerfilmError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_bucket(bucket_id, private=True if cfg.private else None, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            readme = Path(tmp) / "README.md"
            readme.write_text(text, encoding="utf-8")
            todo = [u.on_disk(Path(tmp)) for u in files] + [Upload(readme, card_path)]
            there = {f.path: f.xet_hash for f in api.get_bucket_paths_info(
                bucket_id, [u.in_repo for u in todo]) if hasattr(f, "xet_hash")}
            new = [u for u, h in zip(todo, _xet_hashes([u.local for u in todo]))
                   if there.get(u.in_repo) != h]
            if new:
                api.batch_bucket_files(bucket_id, add=[(str(u.local), u.in_repo) for u in new])
    except (errors.HfHubHTTPError, errors.BucketBatchError) as e:
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", "?")
        detail = getattr(e, "server_message", None) or first_line(e)
        raise LayerfilmError(f"the Hub refused the upload to {where} (HTTP {status}): "
                             f"{' '.join(str(detail).split())}") from None
    except Exception as e:  # network errors and the like, from whichever client does the work
        raise LayerfilmError(f"upload to {where} failed: {type(e).__name__}: {first_line(e)}") from None
    bucket_url = str(getattr(url, "url", url))
    if not new:
        say(f"nothing new: all {len(todo)} files are already in {where} with the same content")
    else:
        say(f"uploaded {len(new)} of {len(todo)} files to {where}"
            + (f" ({len(todo) - len(new)} already there with the same content)" if len(new) < len(todo) else ""))
    return Published(bucket_url, None, [u for u in new if u.in_repo != card_path], text)


def _xet_hashes(paths: list[Path]) -> list[str]:
    """Each file's Xet content hash, computed here (what a bucket lists for the same bytes)."""
    import hf_xet

    return [info.hash for info in hf_xet.hash_files([str(p) for p in paths])]
