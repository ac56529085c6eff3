"""Real servers for the remote-storage tests, started on 127.0.0.1 and stopped by the tests:
moto's S3 server, olah's Hub mirror (offline mode, serving local git repositories), and a
small recording proxy in front of either that can inject faults."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, what: str, method: str = "GET", limit: float = 60) -> None:
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            req = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() - t0 > limit:
            stop(proc)
            raise RuntimeError(f"{what} did not answer within {limit:.0f} s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server on a free local port: ``(process, url)``."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{LOCALHOST}:{port}"
    _wait(url + "/moto-api/reset", proc, "moto", method="POST")
    return proc, url


def start_olah(workdir: Path, mirrors: Path) -> tuple[subprocess.Popen, str]:
    """olah in offline mode serving the git repositories under ``mirrors``
    (``models/ORG/NAME``); ``testorg/private-*`` is refused as a private repository would be."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "olah.toml").write_text(
        f'[basic]\nhost = "{LOCALHOST}"\nport = {port}\nrepos-path = "{workdir / "cache"}"\n'
        f'mirrors-path = ["{mirrors}"]\n\n[accessibility]\noffline = true\nproxy = [\n'
        '  { repo = "*", allow = true },\n  { repo = "*/*", allow = true },\n'
        '  { repo = "testorg/private-*", allow = false },\n]\n')
    exe = shutil.which("olah-cli") or str(Path(sys.executable).parent / "olah-cli")
    proc = subprocess.Popen([exe, "-c", str(workdir / "olah.toml")], cwd=workdir,
                            stdout=open(workdir / "olah.out", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "HF_ENDPOINT": ""})
    url = f"http://{LOCALHOST}:{port}"
    _wait_any(url, proc)
    return proc, url


def _wait_any(url: str, proc: subprocess.Popen, limit: float = 60) -> None:
    """Until olah answers anything at all (a 404 for an unknown repository is fine)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"olah exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/api/models/testorg/none/refs", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("olah did not answer")


# ---- git repositories with one branch per checkpoint, as olah serves them ---------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def new_repo(mirrors: Path, repo_id: str) -> Path:
    repo = mirrors / "models" / repo_id
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "t")
    return repo


def commit_files(repo: Path, files: dict[str, Path | bytes], branch: str | None = None,
                 lfs: bool = True, message: str = "checkpoint") -> str:
    """Replace the work tree's files by ``files`` (name -> source file or bytes) on a new
    branch from main (or on the current one), as git-lfs would store them (a pointer in git,
    the bytes in .git/lfs/objects), and commit; returns the commit sha."""
    if branch is not None:
        git(repo, "checkout", "-q", "main")
        git(repo, "checkout", "-q", "-B", branch)
    for old in repo.iterdir():
        if old.name != ".git":
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    for name, src in files.items():
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if lfs and not name.endswith(".json"):
            oid = hashlib.sha256(data).hexdigest()
            obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            obj.parent.mkdir(parents=True, exist_ok=True)
            obj.write_bytes(data)
            target.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
                              f"size {len(data)}\n")
        else:
            target.write_bytes(data)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


# ---- a recording, fault-injecting proxy --------------------------------------------------------

class Proxy:
    """Forwards every request to ``upstream`` and records ``(method, path, Range, status, body
    bytes)``.  ``fail(status, n, match)`` answers the next ``n`` GETs whose path contains
    ``match`` with ``status`` instead; ``mode`` "full200" drops their Range header (the
    server then sends the whole file), "shift" asks the server for a range 8 bytes later."""

    def __init__(self, upstream: str):
        host, port = upstream.split("://", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.log: list[tuple[str, str, str | None, int, int]] = []
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server((LOCALHOST, 0), Handler)
        self.url = f"http://{LOCALHOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def fail(self, status: int | str, n: int = 1, match: str = "") -> None:
        with self._lock:
            self._faults.append({"status": status, "n": n, "match": match})

    def clear(self):
        with self._lock:
            self.log.clear()
            self._faults.clear()

    def gets(self, match: str = "") -> list[tuple]:
        """The GETs recorded whose path contains ``match``."""
        with self._lock:
            return [e for e in self.log if e[0] == "GET" and match in e[1]]

    def _fault(self, handler) -> dict | None:
        with self._lock:
            for f in self._faults:
                if f["n"] != 0 and handler.command == "GET" and f["match"] in handler.path:
                    f["n"] -= 1
                    return f
        return None

    def _handle(self, h) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else None
        rng = h.headers.get("Range")
        fault = self._fault(h)
        if fault is not None and isinstance(fault["status"], int):
            msg = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
            h.send_response(fault["status"])
            h.send_header("Content-Length", str(len(msg)))
            h.send_header("X-Error-Code", "RepoNotFound") if fault["status"] == 401 else None
            h.end_headers()
            h.wfile.write(msg)
            self._record(h.command, h.path, rng, fault["status"], len(msg))
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("connection",)}
        if fault is not None and fault["status"] == "full200":
            headers.pop("Range", None)
        if fault is not None and fault["status"] == "shift" and rng:
            a, b = rng[6:].split("-")
            headers["Range"] = f"bytes={int(a) + 8}-{int(b) + 8}"
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(h.command, h.path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        h.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                h.send_header(k, v)
        length = r.getheader("Content-Length") if h.command == "HEAD" else str(len(data))
        if length is not None:
            h.send_header("Content-Length", length)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
        self._record(h.command, h.path, rng, r.status, len(data) if h.command != "HEAD" else 0)

    def _record(self, *entry) -> None:
        with self._lock:
            self.log.append(entry)


def s3_put(url: str, bucket: str, files: dict[str, Path | bytes]) -> None:
    """Create ``bucket`` on the S3 server at ``url`` and upload ``files`` (key -> data)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=url, key="testing", secret="testing",
                           skip_instance_cache=True)
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    for key, src in files.items():
        fs.pipe(f"{bucket}/{key}", src if isinstance(src, bytes) else Path(src).read_bytes())


def tree(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its relative POSIX path."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def dump(obj) -> bytes:
    return json.dumps(obj).encode()
