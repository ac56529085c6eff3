"""layerfilm publish: the real huggingface_hub client against a small Hub on 127.0.0.1.

The server answers just the endpoints the client calls for create_repo + create_commit
(repo create, README validation, preupload, the LFS batch API and its upload URL, commit)
and records every request; the tests assert on what it received.  No network.
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from layerfilm.cli import app

from conftest import write_run

runner = CliRunner()
TOKEN = "hf_test_token_123"
BINARY = (".webm", ".gif", ".webp", ".mp4", ".mkv", ".png")  # the Hub stores these with LFS


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.blobs: dict[str, bytes] = {}  # LFS uploads by sha256
        self.refuse: int | None = None  # answer every request with this status

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        return [f"{r['method']} {r['path']}" for r in self.requests]

    def commit(self) -> tuple[dict, dict[str, dict]]:
        """The one commit received: its header and its operations by path."""
        commits = [r for r in self.requests if "/commit/" in r["path"]]
        assert len(commits) == 1, self.paths()
        lines = [json.loads(line) for line in commits[0]["body"].splitlines() if line.strip()]
        assert lines[0]["key"] == "header"
        return lines[0]["value"], {op["value"]["path"]: op for op in lines[1:]}


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, doc) -> None:
        self.server.requests[-1]["status"] = status
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        hub, path = self.server, self.path.split("?")[0]
        body = self._body()
        hub.requests.append({"method": method, "path": path, "body": body.decode("latin-1"),
                             "auth": self.headers.get("Authorization")})
        if hub.refuse:
            return self._reply(hub.refuse, {"error": "You don't have the rights to create a repo here"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" and not path.startswith("/lfs-upload/"):
            return self._reply(401, {"error": "Invalid credentials"})
        if method == "POST" and path == "/api/repos/create":
            req = json.loads(body)
            prefix = "datasets/" if req.get("type") == "dataset" else ""
            return self._reply(200, {"url": f"{hub.url}/{prefix}{req['organization']}/{req['name']}"})
        if method == "POST" and path == "/api/validate-yaml":
            return self._reply(200, {"errors": [], "warnings": []})
        if method == "POST" and "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(BINARY) else "regular",
                 "shouldIgnore": False} for f in files]})
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            objects = json.loads(body)["objects"]
            return self._reply(200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}} for o in objects]})
        if method == "PUT" and path.startswith("/lfs-upload/"):
            hub.blobs[path.rsplit("/", 1)[1]] = body
            return self._reply(200, {})
        if method == "POST" and "/commit/" in path:  # /api/{type}s/{user}/{name}/commit/{rev}
            kind, repo = path.split("/")[2], "/".join(path.split("/")[3:5])
            prefix = "" if kind == "models" else f"{kind}/"
            return self._reply(200, {"commitUrl": f"{hub.url}/{prefix}{repo}/commit/{'a' * 40}",
                                     "commitOid": "a" * 40, "success": True})
        return self._reply(404, {"error": f"no route for {method} {path}"})


@pytest.fixture
def hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_publish(args, hub, tmp_path, token=TOKEN, cwd=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "layerfilm", "publish", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=cwd)


@pytest.fixture
def films(tmp_path):
    """A run rendered to films/grok.webm and .gif (with manifests), stills and stats beside them."""
    run = write_run(tmp_path / "grok", n=3)
    (run / "config.json").write_text('{"n_layer": 2, "n_embd": 16, "vocab_size": 40}')
    out = tmp_path / "films"
    out.mkdir()
    for suffix in (".webm", ".gif"):
        result = runner.invoke(app, ["render", str(run), str(out / f"grok{suffix}"), "--fps", "2",
                                     "--size", "128x72", "-q"])
        assert result.exit_code == 0, result.output
    stills = out / "grok-stills"
    stills.mkdir()
    (stills / "first.png").write_bytes(b"\x89PNG first")
    (stills / "last.png").write_bytes(b"\x89PNG last")
    (out / "grok-stats").mkdir()
    (out / "grok-stats" / "layer_stats.csv").write_text("step,layer,drift\n0,L0,0.0\n")
    (out / "notes.txt").write_text("not a companion")
    return out


def test_publish_uploads_everything_in_one_commit(tmp_path, hub, films):
    result = run_publish([films / "grok.webm", films / "grok.gif", "--repo-id", "alice/grok-films",
                          "--repo-type", "dataset", "--private", "--path-in-repo", "clips",
                          "--message", "Grokking films"], hub, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "published 7 files and README.md to" in result.stdout
    paths = hub.paths()
    assert paths[0] == "POST /api/repos/create"
    assert json.loads(hub.requests[0]["body"]) == {"name": "grok-films", "organization": "alice",
                                                   "visibility": "private", "type": "dataset"}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests if not r["path"].startswith("/lfs"))
    assert sum("/commit/" in p for p in paths) == 1
    assert "POST /api/datasets/alice/grok-films/preupload/main" in paths
    assert "POST /datasets/alice/grok-films.git/info/lfs/objects/batch" in paths
    assert [r["status"] for r in hub.requests] == [200] * len(paths), paths  # nothing unexpected

    header, ops = hub.commit()
    assert header["summary"] == "Grokking films"
    expected = {
        "clips/grok.webm": films / "grok.webm", "clips/grok.gif": films / "grok.gif",
        "clips/grok.webm.json": films / "grok.webm.json", "clips/grok.gif.json": films / "grok.gif.json",
        "clips/grok-stills/first.png": films / "grok-stills" / "first.png",
        "clips/grok-stills/last.png": films / "grok-stills" / "last.png",
        "clips/grok-stats/layer_stats.csv": films / "grok-stats" / "layer_stats.csv",
    }
    assert sorted(ops) == sorted([*expected, "README.md"])
    for in_repo, local in expected.items():
        data = local.read_bytes()
        op = ops[in_repo]
        if in_repo.endswith(BINARY):  # via LFS: the commit names the blob, the blob arrived intact
            assert op["key"] == "lfsFile"
            oid = hashlib.sha256(data).hexdigest()
            assert op["value"]["oid"] == oid and op["value"]["size"] == len(data)
            assert hub.blobs[oid] == data
        elif in_repo.endswith(".json"):  # a manifest: the same, its local paths made relative
            assert op["key"] == "file"
            sent, here = json.loads(base64.b64decode(op["value"]["content"])), json.loads(data)
            assert (sent["film"]["path"], sent["checkpoints"]["folder"]) == (local.name[:-5], "../grok")
            sent["film"]["path"], sent["checkpoints"]["folder"] = here["film"]["path"], here["checkpoints"]["folder"]
            assert sent == here
        else:
            assert op["key"] == "file" and base64.b64decode(op["value"]["content"]) == data

    card = base64.b64decode(ops["README.md"]["value"]["content"]).decode()
    assert card.startswith("---\ntags:\n- layerfilm\n")
    assert "![grok: training film](clips/grok.gif)" in card  # GIF inline
    assert "- [clips/grok.webm](clips/grok.webm): lossless VP9 WebM" in card  # WebM linked
    assert "![clips/grok.webm]" not in card
    assert "128x72, 5 frames at 2 fps (2.5 s)" in card
    assert '"n_embd": 16' in card  # the model's config.json
    assert "layerfilm render grok grok.webm" in card and "--from-manifest grok.webm.json" in card
    assert "fps = 2" in card and "size = [128, 72]" in card
    assert "layerfilm 0.1.0" in card
    assert "![first.png](clips/grok-stills/first.png)" in card
    assert "[layer_stats.csv](clips/grok-stats/layer_stats.csv)" in card
    assert "notes.txt" not in card


def test_dry_run_lists_and_prints_the_card_without_a_request(tmp_path, hub, films):
    result = run_publish([films / "grok.gif", "--repo-id", "alice/x", "--dry-run"], hub, tmp_path,
                         token=None)
    assert result.returncode == 0, result.stderr
    assert hub.requests == []
    out = result.stdout
    assert "would upload to alice/x (model) in one commit 'layerfilm: grok.gif':" in out
    for name in ("grok.gif ", "grok.gif.json", "grok-stills/first.png", "grok-stats/layer_stats.csv",
                 "README.md"):
        assert name in out
    assert "grok.webm " not in out and "grok.webm.json" not in out  # only the film given
    assert "# Training films: grok" in out and "![grok: training film](grok.gif)" in out


def test_missing_token_is_one_line(tmp_path, hub, films):
    result = run_publish([films / "grok.gif", "--repo-id", "alice/x"], hub, tmp_path, token=None)
    assert result.returncode == 1 and hub.requests == []
    assert result.stderr.strip().splitlines() == [
        "layerfilm: error: no Hugging Face token: run `hf auth login` (or `huggingface-cli login`) "
        "or set HF_TOKEN"]


@pytest.mark.parametrize("refuse, token", [(403, TOKEN), (None, "hf_wrong")])
def test_refused_upload_is_one_line(tmp_path, hub, films, refuse, token):
    hub.refuse = refuse
    result = run_publish([films / "grok.gif", "--repo-id", "alice/x"], hub, tmp_path, token=token)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layerfilm: error: the Hub refused the upload to "
                                                   "alice/x (HTTP "), result.stderr
    assert ("403" if refuse else "401") in lines[0]
    assert not [r for r in hub.requests if "/commit/" in r["path"]]


@pytest.mark.parametrize("args, message", [
    (["--repo-id", "nouser"], "--repo-id must look like USER/NAME"),
    (["--repo-id", "a/b", "--repo-type", "space"], "--repo-type must be one of model, dataset"),
])
def test_bad_publish_options(tmp_path, films, args, message):
    result = runner.invoke(app, ["publish", str(films / "grok.gif"), *args])
    assert result.exit_code == 2 and message in result.output


def test_missing_film_and_name_clash(tmp_path, films):
    result = runner.invoke(app, ["publish", str(films / "nope.webm"), "--repo-id", "a/b", "--dry-run"])
    assert result.exit_code == 1 and "nope.webm: no such film" in result.output
    other = tmp_path / "other"
    other.mkdir()
    (other / "grok.gif").write_bytes((films / "grok.gif").read_bytes()[:-1])
    result = runner.invoke(app, ["publish", str(films / "grok.gif"), str(other / "grok.gif"),
                                 "--repo-id", "a/b", "--dry-run"])
    assert result.exit_code == 2 and "would both be uploaded as 'grok.gif'" in result.output


def test_stills_folder_named_in_the_manifest_goes_too(tmp_path):
    run = write_run(tmp_path / "run", n=3)
    out = tmp_path / "films"
    out.mkdir()
    result = runner.invoke(app, ["render", str(run), str(out / "r.webm"), "--fps", "2", "--size",
                                 "128x72", "--stills", str(tmp_path / "shots"), "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["publish", str(out / "r.webm"), "--repo-id", "a/b", "--dry-run"])
    assert result.exit_code == 0, result.output
    for name in ("shots/first.png", "shots/last.png", "shots/contact_sheet.png", "r.webm.json"):
        assert f"  {name} " in result.output
    assert "![contact_sheet.png](shots/contact_sheet.png)" in result.output


def test_a_film_that_does_not_match_its_manifest_is_refused(tmp_path, films):
    film = films / "grok.gif"
    data = film.read_bytes()
    film.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the same size, other bytes
    result = runner.invoke(app, ["publish", str(film), "--repo-id", "a/b", "--dry-run"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"layerfilm: error: {film}: does not match its manifest grok.gif.json (sha256 differs); "
        "render it again or remove the manifest"]
    film.write_bytes(data[:-1])  # cut short
    result = runner.invoke(app, ["publish", str(film), "--repo-id", "a/b", "--dry-run"])
    assert result.exit_code == 1
    assert f"does not match its manifest grok.gif.json ({len(data) - 1:,} bytes, the manifest " \
           f"says {len(data):,})" in result.output


def test_what_is_published_names_no_local_folder(tmp_path, hub):
    """Manifests and the card's options name the checkpoints, stills and loss log relative to
    the published folder, not where they were on this machine."""
    run = write_run(tmp_path / "grok", n=3)
    (tmp_path / "loss.jsonl").write_text("".join(f'{{"step": {s}, "loss": {3 - s / 100}}}\n'
                                                 for s in (0, 100, 200)))
    out = tmp_path / "films"
    out.mkdir()
    result = runner.invoke(app, ["render", str(run), str(out / "grok.gif"), "--fps", "2", "--size",
                                 "128x72", "--stills", str(tmp_path / "shots"), "--loss-strip",
                                 "--metrics", str(tmp_path / "loss.jsonl"), "-q"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path) in (out / "grok.gif.json").read_text()  # as written, for this machine
    result = run_publish([out / "grok.gif", "--repo-id", "alice/x"], hub, tmp_path)
    assert result.returncode == 0, result.stderr
    header, ops = hub.commit()
    sent = {path: hub.blobs[op["value"]["oid"]] if op["key"] == "lfsFile"
            else base64.b64decode(op["value"]["content"]) for path, op in ops.items()}
    assert sorted(sent) == ["README.md", "grok.gif", "grok.gif.json", "shots/contact_sheet.png",
                            "shots/first.png", "shots/last.png"]
    local = [str(tmp_path), str(tmp_path.resolve())] + ([str(Path.home())] if len(Path.home().parts) > 1 else [])
    for path, data in sent.items():
        assert not [d for d in local if d.encode() in data], path
    manifest = json.loads(sent["grok.gif.json"])
    assert manifest["checkpoints"]["folder"] == "../grok"
    assert manifest["checkpoints"]["loss"]["path"] == "../loss.jsonl"
    assert manifest["options"]["stills_dir"] == "../shots"


def _sent(hub) -> dict[str, bytes]:
    """Every file of the one commit, by repository path, with the bytes that arrived."""
    header, ops = hub.commit()
    return {path: hub.blobs[op["value"]["oid"]] if op["key"] == "lfsFile"
            else base64.b64decode(op["value"]["content"]) for path, op in ops.items()}


def _story_from_csv(path: Path, rebel_z: float = 3.0):
    """What the card should say, worked out from ``layerfilm stats``'s CSV alone: the layers
    in settling order, the (layer, step) pairs with |rebel_z| >= 3, and the three intervals
    (ending at a step) in which all drawn weights together changed most per 100 steps."""
    import csv

    rows = list(csv.DictReader(path.open()))
    settle = {r["layer"]: int(r["settle_step"]) for r in rows if r["settle_step"]}
    rebels = {(r["layer"], int(r["step"])) for r in rows
              if r["rebel_z"] and abs(float(r["rebel_z"])) >= rebel_z}
    steps = sorted({int(r["step"]) for r in rows})
    norm = {(r["layer"], int(r["step"])): float(r["weight_norm"]) for r in rows}
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    whole = {}
    for a, b in zip(steps, steps[1:]):
        moved = sum((float(r["rel_change_prev"]) * norm[r["layer"], a]) ** 2
                    for r in rows if int(r["step"]) == b and r["rel_change_prev"])
        size = sum(norm[l, a] ** 2 for l in layers)
        whole[b] = (moved / size) ** 0.5 * 100 / (b - a)
    top = sorted(whole, key=lambda s: -whole[s])[:3]
    return sorted(settle, key=lambda l: (settle[l], layers.index(l))), rebels, top


def test_published_sample_names_no_local_path_tells_its_story_and_lists_stills_once(
        tmp_path, hub, monkeypatch):
    """The sample rendered from a working folder with relative paths (as make batch does: the
    manifest then names the stills both beside the film and by its absolute --stills path),
    with a preview, a loss log given by path and stats beside it: nothing uploaded holds a
    local path; the card's summary is what `layerfilm stats` says; each still is shown once."""
    from conftest import SAMPLE

    work = tmp_path / "work"
    (work / "films").mkdir(parents=True)
    monkeypatch.chdir(work)
    common = ["--fps", "2", "--size", "320x180", "-q"]
    for film, extra in (("films/grok.gif", ["--stills", "films/grok-stills", "--preview",
                                            "films/grok.mp4", "--metrics", str(SAMPLE / "metrics.jsonl"),
                                            "--loss-strip", "--html", "films/grok.html"]),
                        ("films/grok.webm", [])):
        r = runner.invoke(app, ["render", str(SAMPLE), film, *common, *extra])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["stats", str(SAMPLE), "--out", "films/grok-stats", "-q"])
    assert r.exit_code == 0, r.output
    result = run_publish(["films/grok.webm", "films/grok.gif", "--repo-id", "alice/grok"], hub,
                         tmp_path, cwd=work)
    assert result.returncode == 0, result.stderr
    sent = _sent(hub)
    assert "grok.mp4" in sent and sent["grok.mp4"] == (work / "films" / "grok.mp4").read_bytes()
    local = {str(tmp_path), str(tmp_path.resolve()), str(work), str(SAMPLE), str(SAMPLE.resolve()),
             str(Path(__file__).resolve().parents[1]), os.getcwd()}
    if len(Path.home().parts) > 1:
        local.add(str(Path.home()))
    for path, data in sent.items():
        leaks = [d for d in local if d.encode() in data]
        assert not leaks, (path, leaks)
    manifest = json.loads(sent["grok.gif.json"])
    assert manifest["checkpoints"]["folder"] == "sample_checkpoints"  # far away: the name only
    assert manifest["preview"]["path"] == "grok.mp4"
    assert manifest["options"]["stills_dir"] == "grok-stills"

    card = sent["README.md"].decode()
    for still in ("first.png", "last.png", "contact_sheet.png"):
        assert card.count(f"(grok-stills/{still})") == 1, still
    assert "[grok.mp4](grok.mp4): **lossy preview**" in card
    assert sent["grok.html"] == (work / "films" / "grok.html").read_bytes()
    assert card.count("(grok.html)") == 1 and "[grok.html](grok.html): **viewer page**" in card
    assert manifest["page"]["path"] == "grok.html"
    assert 'stills_dir = "grok-stills"' in card and 'preview = "grok.mp4"' in card

    order, rebels, top = _story_from_csv(work / "films" / "grok-stats" / "layer_stats.csv")
    assert rebels  # the sample's embedding at step 2,400
    told = card[card.index("What happened"):card.index("Checkpoints:")]
    if order:
        assert f"first: {order[0]} at step" in told
    else:
        assert "**No layer settled**" in told
    said_rebels = {(m[0], int(m[1].replace(",", ""))) for m in
                   __import__("re").findall(r"(\w+) at steps? [\d,–]+ \(z [+-][\d.]+ at step ([\d,]+)\)", told)}
    assert {layer for layer, _ in said_rebels} == {layer for layer, _ in rebels}
    assert said_rebels <= rebels  # each rebel's strongest step is one where stats flags it
    most = told[told.index("moved most"):]
    ends = [int(m.replace(",", "")) for m in __import__("re").findall(r"to ([\d,]+) \(", most)]
    assert ends == top


def test_card_names_the_layers_that_settled_first_and_last_as_stats_does(tmp_path):
    from test_stats import _freezing_run

    run = _freezing_run(tmp_path / "freeze")
    out = tmp_path / "films"
    out.mkdir()
    r = runner.invoke(app, ["render", str(run), str(out / "f.gif"), "--fps", "2", "--size", "128x72", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["stats", str(run), "--out", str(out / "f-stats"), "-q"])
    assert r.exit_code == 0, r.output
    order, rebels, top = _story_from_csv(out / "f-stats" / "layer_stats.csv")
    assert len(order) >= 2
    r = runner.invoke(app, ["publish", str(out / "f.gif"), "--repo-id", "a/b", "--dry-run"])
    assert r.exit_code == 0, r.output
    import csv
    settle = {row["layer"]: int(row["settle_step"])
              for row in csv.DictReader((out / "f-stats" / "layer_stats.csv").open()) if row["settle_step"]}
    assert (f"first: {order[0]} at step {settle[order[0]]:,}; last: {order[-1]} at step "
            f"{settle[order[-1]]:,}") in r.output


def test_portable_keeps_only_the_name_of_a_path_far_from_the_film():
    from layerfilm.publish import portable

    doc = {"a": "/home/you/films/stills", "b": "/home/you/grok", "c": ["/data/runs/x/config"],
           "model": {"_name_or_path": "/home/you/models/gpt2"}, "d": "relative/x", "e": "/home/you/films"}
    assert portable(doc, Path("/home/you/films")) == {
        "a": "stills", "b": "../grok", "c": ["config"], "model": {"_name_or_path": "../models/gpt2"},
        "d": "relative/x", "e": "."}


def test_a_manifest_edited_to_name_another_file_as_preview_or_page_uploads_neither(tmp_path):
    """publish uploads the preview and page a manifest names; one edited to name another file
    of the same size (a key, a config) has it left out: only an .mp4 preview and an .html page."""
    from conftest import SAMPLE

    from layerfilm.publish import collect

    film = tmp_path / "grok.gif"
    r = runner.invoke(app, ["render", str(SAMPLE), str(film), "--fps", "2", "--size", "160x90", "-q",
                            "--steps", "::2500", "--preview", str(tmp_path / "grok.mp4"),
                            "--html", str(tmp_path / "grok.html")])
    assert r.exit_code == 0, r.output
    side = tmp_path / "grok.gif.json"
    doc = json.loads(side.read_text())
    uploads = {u.local for f in collect([film]) for u in f.companions}
    assert {tmp_path / "grok.mp4", tmp_path / "grok.html"} <= uploads
    secrets = tmp_path / "elsewhere"
    secrets.mkdir()
    for key in ("preview", "page"):
        secret = secrets / f"id_{key}"
        secret.write_bytes(b"s" * doc[key]["bytes"])
        doc[key]["path"] = str(secret)
    side.write_text(json.dumps(doc))
    found = collect([film])
    uploads = {u.local for f in found for u in f.companions}
    assert not any(str(p).startswith(str(secrets)) for p in uploads)
    assert found[0].preview is None and found[0].page is None
