"""A local server with only the Hugging Face Storage Bucket endpoints huggingface_hub calls
(and the Xet storage endpoints its uploads go through), recording every request.

Uploads arrive the way the real client sends them: Xet "xorbs" (content chunks, LZ4-framed
or raw) and a "shard" that says which chunks make each file; the server puts the files back
together from those, so a test can compare what arrived with the local files byte for byte.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socketserver
import struct
import tempfile
import threading
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, unquote, urlsplit

LOCALHOST = "127.0.0.1"


def xet_hash(data: bytes) -> str:
    """The Xet hash huggingface_hub lists for a file with these bytes."""
    import hf_xet

    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        return hf_xet.hash_files([f.name])[0].hash


class BucketServer:
    def __init__(self):
        self.buckets: dict[str, dict] = {}  # id -> {"private": bool, "created": float}
        self.files: dict[tuple[str, str], dict] = {}  # (bucket, path) -> data, xet, mtime
        self.log: list[tuple[str, str, int]] = []  # method, path, request body bytes
        self.xorbs: dict[str, bytes] = {}
        self.segments: dict[str, list[tuple[str, int, int]]] = {}  # file xet hash -> chunks
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                server._handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _any

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server((LOCALHOST, 0), Handler)
        self.url = f"http://{LOCALHOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def put(self, bucket: str, path: str, data: bytes) -> None:
        self.buckets.setdefault(bucket, {"private": False, "created": time.time()})
        self.files[(bucket, path)] = {"data": data, "xet": xet_hash(data), "mtime": time.time()}

    def requests(self, method: str = "", match: str = "") -> list[tuple[str, str, int]]:
        with self._lock:
            return [e for e in self.log if e[0].startswith(method) and match in e[1]]

    # ---- HTTP ----------------------------------------------------------------------------

    def _send(self, h, status: int, body=b"", headers=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        with self._lock:
            self.log.append((h.command, h.path, len(body)))
        url = urlsplit(h.path)
        path, query = unquote(url.path), parse_qs(url.query)
        authed = (h.headers.get("Authorization") or "").startswith("Bearer ")
        route = self._route(h.command, path)
        if route is None:
            return self._send(h, 404, {"error": "not implemented here"})
        name, m = route
        if name in ("create", "batch", "token") and not authed:
            return self._send(h, 401, {"error": "no token"}, {"X-Error-Code": "RepoNotFound"})
        return getattr(self, f"_{name}")(h, m, query, body)

    _ROUTES = [
        ("POST", r"/api/buckets/([^/]+/[^/]+)", "create"),
        ("GET", r"/api/buckets/([^/]+/[^/]+)", "info"),
        ("GET", r"/api/buckets/([^/]+/[^/]+)/xet-(?:read|write)-token", "token"),
        ("GET", r"/api/buckets/([^/]+/[^/]+)/tree(?:/(.*))?", "tree"),
        ("POST", r"/api/buckets/([^/]+/[^/]+)/paths-info", "paths_info"),
        ("POST", r"/api/buckets/([^/]+/[^/]+)/batch", "batch"),
        ("GET", r"/buckets/([^/]+/[^/]+)/resolve/(.+)", "resolve"),
        ("HEAD", r"/buckets/([^/]+/[^/]+)/resolve/(.+)", "resolve"),
        ("GET", r"/api/agent-harnesses", "empty"),
        ("GET", r"/v1/chunks/.*", "missing"),
        ("POST", r"/v1/xorb-grants/.*", "missing"),
        ("POST", r"/v2/shards", "missing"),
        ("POST", r"/v1/xorbs/[^/]+/([0-9a-f]+)", "xorb"),
        ("POST", r"/v1/shards", "shard"),
        ("POST", r"/v1/telemetry", "empty"),
    ]

    def _route(self, method, path):
        for m, pattern, name in self._ROUTES:
            found = re.fullmatch(pattern, path)
            if m == method and found:
                return name, found
        return None

    def _empty(self, h, m, q, body):
        self._send(h, 200, {})

    def _missing(self, h, m, q, body):
        self._send(h, 404, b"")

    def _create(self, h, m, q, body):
        bid = m.group(1)
        url = {"url": f"{self.url}/buckets/{bid}", "id": bid}
        if bid in self.buckets:
            return self._send(h, 409, {"error": "already exists", **url})
        private = (json.loads(body or b"{}").get("visibility") == "private")
        self.buckets[bid] = {"private": private, "created": time.time()}
        self._send(h, 200, url)

    def _info(self, h, m, q, body):
        bid = m.group(1)
        if bid not in self.buckets:
            return self._send(h, 404, {"error": "Bucket not found"}, {"X-Error-Code": "RepoNotFound"})
        files = [f for (b, _), f in self.files.items() if b == bid]
        self._send(h, 200, {"id": bid, "private": self.buckets[bid]["private"],
                            "createdAt": _iso(self.buckets[bid]["created"]),
                            "size": sum(len(f["data"]) for f in files), "totalFiles": len(files)})

    def _token(self, h, m, q, body):
        exp = int(time.time()) + 3600
        self._send(h, 200, {"accessToken": "xet", "exp": exp, "casUrl": self.url},
                   {"X-Xet-Cas-Url": self.url, "X-Xet-Access-Token": "xet",
                    "X-Xet-Token-Expiration": str(exp)})

    def _entry(self, path, f):
        return {"type": "file", "path": path, "size": len(f["data"]), "xetHash": f["xet"],
                "mtime": _iso(f["mtime"]), "uploadedAt": _iso(f["mtime"])}

    def _tree(self, h, m, q, body):
        bid, prefix = m.group(1), (m.group(2) or "").strip("/")
        if bid not in self.buckets:
            return self._send(h, 404, {"error": "Bucket not found"}, {"X-Error-Code": "RepoNotFound"})
        recursive = q.get("recursive", ["false"])[0] == "true"
        items, dirs = [], set()
        for (b, path), f in sorted(self.files.items()):
            if b != bid or (prefix and not path.startswith(prefix + "/")):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            if "/" in rest and not recursive:
                d = (prefix + "/" if prefix else "") + rest.split("/")[0]
                if d not in dirs:
                    dirs.add(d)
                    items.append({"type": "directory", "path": d, "uploadedAt": _iso(f["mtime"])})
                continue
            items.append(self._entry(path, f))
        if prefix and not items:
            return self._send(h, 404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})
        self._send(h, 200, items)

    def _paths_info(self, h, m, q, body):
        bid = m.group(1)
        want = json.loads(body or b"{}").get("paths", [])
        self._send(h, 200, [self._entry(p, self.files[(bid, p)]) for p in want
                            if (bid, p) in self.files])

    def _xorb(self, h, m, q, body):
        with self._lock:
            self.xorbs[m.group(1)] = body
        self._send(h, 200, {"was_inserted": True})

    def _shard(self, h, m, q, body):
        with self._lock:
            self.segments.update(_shard_files(body))
        self._send(h, 200, {"result": 1})

    def _batch(self, h, m, q, body):
        bid = m.group(1)
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            op = json.loads(line)
            if op["type"] == "addFile":
                data = self._rebuild(op["xetHash"])
                self.files[(bid, op["path"])] = {"data": data, "xet": op["xetHash"],
                                                 "mtime": op.get("mtime", 0) / 1000}
            elif op["type"] == "deleteFile":
                self.files.pop((bid, op["path"]), None)
        self._send(h, 200, {"failed": []})

    def _rebuild(self, file_hash: str) -> bytes:
        """A file's bytes from the chunks its shard entry names (an identical file uploaded
        before has no new chunks: it is found by its hash)."""
        for f in self.files.values():
            if f["xet"] == file_hash:
                return f["data"]
        out = b""
        for xorb, start, end in self.segments[file_hash]:
            out += b"".join(_chunks(self.xorbs[xorb])[start:end])
        return out

    def _resolve(self, h, m, q, body):
        f = self.files.get((m.group(1), m.group(2)))
        if f is None:
            return self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"})
        data = f["data"]
        headers = {"ETag": f'"{f["xet"]}"', "Accept-Ranges": "bytes"}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range") or "")
        if rng is None:
            return self._send(h, 200, data, headers)
        start = int(rng.group(1))
        end = min(int(rng.group(2)) if rng.group(2) else len(data) - 1, len(data) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(h, 206, data[start:end + 1], headers)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _hash_text(raw: bytes) -> str:
    return "".join("%016x" % struct.unpack("<Q", raw[i:i + 8])[0] for i in range(0, 32, 8))


def _shard_files(shard: bytes) -> dict[str, list[tuple[str, int, int]]]:
    """File hash -> its chunk ranges ``(xorb, first, end)`` from a shard's file section."""
    off, out = 48, {}
    while off + 48 <= len(shard):
        file_hash = shard[off:off + 32]
        if file_hash == b"\xff" * 32:
            break
        flags, n = struct.unpack("<II", shard[off + 32:off + 40])
        off += 48
        segs = []
        for _ in range(n):
            xorb = _hash_text(shard[off:off + 32])
            start, end = struct.unpack("<II", shard[off + 40:off + 48])
            segs.append((xorb, start, end))
            off += 48
        off += 48 * n if flags & (1 << 31) else 0
        off += 48 if flags & (1 << 30) else 0
        out[_hash_text(file_hash)] = segs
    return out


def _chunks(xorb: bytes) -> list[bytes]:
    """The uncompressed chunks of a xorb: 8-byte headers (version, compressed size,
    scheme, uncompressed size), then the data: raw, LZ4 frame, or byte-grouped LZ4."""
    out, off = [], 0
    while off + 8 <= len(xorb) and xorb[off] == 0:
        size = int.from_bytes(xorb[off + 1:off + 4], "little")
        scheme, usize = xorb[off + 4], int.from_bytes(xorb[off + 5:off + 8], "little")
        if size == 0:
            break
        data = xorb[off + 8:off + 8 + size]
        off += 8 + size
        if scheme == 1:
            data = _lz4_frame(data)
        elif scheme == 2:
            data = _ungroup(_lz4_frame(data))
        assert len(data) == usize, (scheme, len(data), usize)
        out.append(data)
    return out


def _ungroup(data: bytes) -> bytes:
    n = len(data)
    sizes = [n // 4 + (1 if k < n % 4 else 0) for k in range(4)]
    groups, at = [], 0
    for s in sizes:
        groups.append(data[at:at + s])
        at += s
    out = bytearray(n)
    for k, g in enumerate(groups):
        out[k::4] = g
    return bytes(out)


def _lz4_frame(src: bytes) -> bytes:
    assert src[:4] == bytes.fromhex("04224d18"), "not an LZ4 frame"
    flags = src[4]
    pos = 7 + (8 if flags & 0x08 else 0)
    out = bytearray()
    while True:
        size = int.from_bytes(src[pos:pos + 4], "little")
        pos += 4
        if size == 0:
            return bytes(out)
        raw, size = size & 0x80000000, size & 0x7FFFFFFF
        block = src[pos:pos + size]
        pos += size + (4 if flags & 0x10 else 0)
        out += block if raw else _lz4_block(block)


def _lz4_block(src: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(src):
        token = src[i]
        i += 1
        n = token >> 4
        if n == 15:
            while True:
                n += src[i]
                i += 1
                if src[i - 1] != 255:
                    break
        out += src[i:i + n]
        i += n
        if i >= len(src):
            break
        back = src[i] | src[i + 1] << 8
        i += 2
        n = token & 15
        if n == 15:
            while True:
                n += src[i]
                i += 1
                if src[i - 1] != 255:
                    break
        start = len(out) - back
        for k in range(n + 4):
            out.append(out[start + k])
    return bytes(out)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
