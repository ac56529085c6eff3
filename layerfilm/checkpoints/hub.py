"""Checkpoints on the Hugging Face Hub: every branch or tag of a repository that names a step
(``hf://ORG/REPO``), or one revision's tree of ``checkpoint-N/`` folders
(``hf://ORG/REPO@REV/sub/dir``).

The repository looks like a folder with one sub-folder per revision: ``/step1000/model.safetensors``
is ``model.safetensors`` at the commit the ref ``step1000`` pointed to when it was listed, so
discovery and every reader work unchanged and a film is made from fixed commits.  Ranged reads
are plain HTTP GETs of ``resolve/<commit>/<file>`` with huggingface_hub's session and headers
(token, ``HF_ENDPOINT``), checked by :mod:`.remote` (``HfFileSystem`` would hand back the wrong
bytes from a server that ignores ``Range``).  Torch pickles are downloaded whole with
``hf_hub_download`` into huggingface_hub's own cache.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import os
from pathlib import Path, PurePath, PurePosixPath
from typing import Any
from urllib.parse import quote

from .discover import parse_step
from ..untrusted import within
from .remote import RemoteStorage, log, on_exit
from .transfer import Answer, Entry, RemoteError, Transient, human_bytes, retrying, status_error

ROOT = PurePosixPath("/")
_LOGIN = "log in with `hf auth login` or set HF_TOKEN"
_TREE_WORKERS = 8


def revision_step(name: str) -> int | None:
    """The training step a ref name carries (``step1000``, ``step1000-tokens4B``,
    ``stage1-step1000-tokens5B``, ``step-001000-2BT``, ``128000``), or ``None`` (``main``)."""
    return parse_step(ROOT / _encode(name) / "x", ROOT)


def _encode(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F")


def _decode(part: str) -> str:
    return part.replace("%2F", "/").replace("%25", "%")


class HubClient(RemoteStorage):
    """What the Hub's storages share (:class:`HubStorage`, :class:`~.buckets.BucketStorage`):
    the endpoint and token, the API client, a file request's headers, and API calls counted,
    retried when worth it, with their failures as one line (``_failure`` names the ones a
    storage knows better)."""

    def __init__(self, token: str | None, endpoint: str | None, keep_downloads: bool):
        self.token = token
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        super().__init__(keep_downloads)

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)

    def _headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return build_hf_headers(token=self.token)

    def _failure(self, error: Exception, what: str, revision: str | None) -> Exception | None:
        """The one-line error for an API failure this storage knows, else ``None``."""
        return None

    def _call(self, what: str, fn, revision: str | None = None):
        """An API call, retried when worth it, its failures as one-line :class:`RemoteError`."""
        from huggingface_hub import errors

        def once():
            self.traffic.add(requests=1)
            try:
                return fn()
            except (errors.HfHubHTTPError, errors.EntryNotFoundError) as e:
                known = self._failure(e, what, revision)
                if known is not None:
                    raise known from None
                if not isinstance(e, errors.HfHubHTTPError):
                    raise
                status = getattr(e.response, "status_code", None) if e.response is not None else None
                if isinstance(status, int):
                    raise status_error(status, "", f" ({what})") from None
                raise

        return retrying(once, what, self.traffic)


class HubStorage(HubClient):
    """A Hub repository's revisions as folders.

    ``revisions`` pins ref names to commits (a re-render from a manifest); ``only`` is the one
    revision of an ``@REV`` URL; ``patterns`` are ``--revisions`` globs.
    """

    def __init__(self, repo_id: str, repo_type: str = "model", *, only: str | None = None,
                 patterns: tuple[str, ...] = (), revisions: dict[str, str] | None = None,
                 token: str | None = None, endpoint: str | None = None,
                 keep_downloads: bool = False):
        self.repo_id, self.repo_type = repo_id, repo_type
        self.only, self.patterns = only, tuple(patterns)
        self.pins = dict(revisions or {})
        self.refs: dict[str, str] | None = None  # ref name -> commit, once listed
        self.skipped_refs: list[tuple[PurePosixPath, str]] = []
        self._trees: dict[str, dict[str, Any]] = {}
        super().__init__(token, endpoint, keep_downloads)

    def _portable(self, state: dict) -> dict:
        state.pop("_trees", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._trees = {}

    # ---- names -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"hf://{kind}{self.repo_id}"

    def display(self, path: PurePath) -> str:
        parts = PurePosixPath(path).parts[1:]
        if not parts:
            return self.url
        return f"{self.url}@{_decode(parts[0])}" + "".join(f"/{p}" for p in parts[1:])

    def revision_of(self, path: PurePath) -> tuple[str, str]:
        """``(ref name, commit)`` of the revision a path lies in."""
        name = _decode(PurePosixPath(path).parts[1])
        return name, self.commits()[name]

    # ---- the API ---------------------------------------------------------------------------

    def _failure(self, error: Exception, what: str, revision: str | None) -> Exception | None:
        from huggingface_hub import errors

        if isinstance(error, errors.GatedRepoError):
            return RemoteError(f"{self.url} is gated: accept its conditions at "
                               f"{self.endpoint}/{self.repo_id}, then {_LOGIN}")
        if isinstance(error, errors.RevisionNotFoundError) or (
                # The repository answered before: a mirror saying so for a revision.
                isinstance(error, errors.RepositoryNotFoundError) and revision is not None
                and self.refs is not None):
            return RemoteError(f"no revision {revision!r} in {self.url}")
        if isinstance(error, errors.RepositoryNotFoundError):
            return RemoteError(f"{self.url}: no such repository, or it is private or gated and "
                               f"you have no access: {_LOGIN} (with an account that can see it)")
        if isinstance(error, errors.EntryNotFoundError):
            return RemoteError(f"{self.url}: no such repository or path")
        return None

    def commits(self) -> dict[str, str]:
        """Ref name -> commit sha of every revision filmed (listed once)."""
        if self.refs is not None:
            return self.refs
        if self.pins:
            self.refs = dict(self.pins)
            return self.refs
        found = self._call(f"refs of {self.url}",
                           lambda: self._api().list_repo_refs(self.repo_id, repo_type=self.repo_type))
        listed: dict[str, str] = {}
        for ref in list(found.branches) + list(found.tags):
            listed.setdefault(ref.name, ref.target_commit)
        self.refs = {}  # the repository is visible from here on
        if self.only is not None:
            if self.only in listed:
                self.refs = {self.only: listed[self.only]}
            elif all(c in "0123456789abcdef" for c in self.only.lower()) and len(self.only) >= 7:
                self.refs = {self.only: self.only}  # a commit sha
            else:
                names = ", ".join(sorted(listed)[:8]) + (", ..." if len(listed) > 8 else "")
                raise RemoteError(f"no revision {self.only!r} in {self.url} (it has {names})")
            return self.refs
        for name, commit in sorted(listed.items()):
            if self.patterns and not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
                continue
            if revision_step(name) is None:
                self.skipped_refs.append((ROOT / _encode(name), "no training step in the revision name"))
                continue
            self.refs[name] = commit
        return self.refs

    def _tree(self, name: str) -> dict[str, Any]:
        """Every file and folder of a revision (one recursive listing)."""
        with self._lock:
            tree = self._trees.get(name)
        if tree is None:
            commit = self.commits()[name]
            items = self._call(f"files of {self.display(ROOT / _encode(name))}",
                               lambda: list(self._api().list_repo_tree(
                                   self.repo_id, revision=commit, recursive=True,
                                   repo_type=self.repo_type)), revision=name)
            tree = {str(i.path).strip("/"): i for i in items}
            with self._lock:
                self._trees[name] = tree
        return tree

    def _list(self, folder: PurePath) -> list[Entry]:
        parts = PurePosixPath(folder).parts[1:]
        if not parts:
            names = list(self.commits())
            if len(names) > 1:  # every revision's files, in parallel
                with concurrent.futures.ThreadPoolExecutor(min(_TREE_WORKERS, len(names))) as pool:
                    list(pool.map(self._tree, names))
            return [Entry(_encode(n), True) for n in names]
        name = _decode(parts[0])
        if name not in self.commits():
            raise FileNotFoundError(f"no revision {name!r}")
        prefix = "/".join(parts[1:])
        commit = self.commits()[name]
        out, seen = [], False
        for path, item in self._tree(name).items():
            parent, _, base = path.rpartition("/")
            if path == prefix:
                seen = True
            if parent != prefix:
                continue
            seen = True
            if not hasattr(item, "size"):
                out.append(Entry(base, True))
                continue
            lfs = getattr(item, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            info = (("revision", name), ("commit", commit),
                    *((("lfs_sha256", sha),) if sha else ()), ("blob_id", str(item.blob_id)))
            out.append(Entry(base, False, int(item.size), f"{commit}|{sha or item.blob_id}", info))
        if not seen and prefix:
            raise FileNotFoundError(f"no folder {prefix!r} at {name}")
        return out

    # ---- data ------------------------------------------------------------------------------

    def file_url(self, path: PurePath) -> str:
        name, commit = self.revision_of(path)
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        inside = "/".join(PurePosixPath(path).parts[2:])
        return f"{self.endpoint}/{kind}{self.repo_id}/resolve/{commit}/{quote(inside)}"

    def _fetch(self, path: PurePath, start: int, end: int | None, entry: Entry) -> Answer:
        return http_get(self.file_url(path), self._headers(), start, end)

    def local_path(self, path: PurePath) -> Path:
        """Torch pickles: the whole file, through ``hf_hub_download`` into huggingface_hub's
        cache (removed after use unless ``--keep-downloads`` or it was there before)."""
        if self.is_dir(path):
            return super().local_path(path)
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        name, commit = self.revision_of(path)
        inside = "/".join(PurePosixPath(path).parts[2:])
        # A listed name joined into huggingface_hub's cache folder: checked as every such name is.
        within(ROOT, inside, self.display(path), "file name")
        kwargs = dict(repo_id=self.repo_id, filename=inside, revision=commit, repo_type=self.repo_type)
        cached = try_to_load_from_cache(**kwargs)
        if isinstance(cached, str):
            return Path(cached)
        size = self.size(path)
        log.info("%s is a torch pickle: downloading all %s of it into the Hugging Face cache%s",
                 self.display(path), human_bytes(size),
                 "" if self.keep_downloads else " (removed after use; --keep-downloads keeps it)")

        def once():
            self.traffic.add(data_requests=1)
            return hf_hub_download(**kwargs, endpoint=self.endpoint, token=self.token)

        try:
            local = Path(retrying(once, f"download of {self.display(path)}", self.traffic))
        except OSError as e:
            if isinstance(e, (RemoteError, Transient)):
                raise
            raise RemoteError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
        self.traffic.add(fetched=size)
        if not self.keep_downloads:
            _DISPOSABLE.append(local)
            while len(_DISPOSABLE) > 2:  # torch maps the file: removing it after load is safe
                _remove_download(_DISPOSABLE.pop(0))
        return local


def http_get(url: str, headers: dict[str, str], start: int, end: int | None) -> Answer:
    """A (ranged) GET with huggingface_hub's session: the answer, its body read lazily."""
    from huggingface_hub import get_session

    headers = {**headers, "Accept-Encoding": "identity"}
    if end is not None:
        headers["Range"] = f"bytes={start}-{end - 1}"
    cm = get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=60)
    r = cm.__enter__()
    body = _Body(r, cm)
    if r.status_code in (401, 403):
        body.close()
        raise status_error(r.status_code, "", f": {_LOGIN}")
    length = r.headers.get("Content-Length")
    return Answer(r.status_code, r.headers.get("Content-Range"),
                  int(length) if length and length.isdigit() else None, body)


class _Body:
    """An httpx response's body as chunks; ``close()`` ends the request."""

    def __init__(self, response, cm):
        self._r, self._cm, self._open = response, cm, True

    def __iter__(self):
        try:
            yield from self._r.iter_bytes(1 << 20)
        finally:
            self.close()

    def close(self):
        if self._open:
            self._open = False
            self._cm.__exit__(None, None, None)


_DISPOSABLE: list[Path] = []


def _remove_download(link: Path) -> None:
    try:
        blob = link.resolve()
        link.unlink(missing_ok=True)
        if blob != link:
            blob.unlink(missing_ok=True)
    except OSError:
        pass


@on_exit
def _dispose() -> None:
    """Remove the pickles downloaded into the Hugging Face cache for this run only."""
    while _DISPOSABLE:
        _remove_download(_DISPOSABLE.pop())


def parse_url(url: str) -> tuple[str, str, str | None, str]:
    """``hf://[datasets/]ORG/REPO[@REV][/sub/dir]`` -> ``(repo_id, repo_type, revision, sub)``.

    Without ``@REV`` and a sub-folder: every revision (``revision`` is ``None``); with a
    sub-folder but no ``@REV``: ``main``."""
    rest = url.split("://", 1)[1].strip("/")
    repo_type = "model"
    for kind in ("datasets", "spaces", "models"):
        if rest.startswith(kind + "/"):
            repo_type, rest = kind[:-1], rest[len(kind) + 1:]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise RemoteError("an hf:// URL names a repository: hf://ORG/REPO[@REVISION][/FOLDER]")
    org, name = parts[0], parts[1]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        revision = _decode(revision)
    sub = "/".join(parts[2:])
    if revision is None and sub:
        revision = "main"
    return f"{org}/{name}", repo_type, revision, sub
