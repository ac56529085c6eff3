"""Hugging Face Storage Buckets: `layerfilm publish --bucket` with the real huggingface_hub
client against a local server implementing only the bucket (and Xet upload) endpoints it
calls, and checkpoints read from `hf://buckets/...` through the same server; the S3-compatible
route is `s3://` against moto (see test_remote_s3.py for that server)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm.cli import app

from bucket_server import BucketServer
from conftest import decode, write_run
from servers import s3_put, start_moto, stop, tree

pytest.importorskip("hf_xet")
runner = CliRunner()


@pytest.fixture
def server(monkeypatch, tmp_path):
    s = BucketServer()
    monkeypatch.setenv("HF_ENDPOINT", s.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import huggingface_hub.constants as constants

    # huggingface_hub reads these when imported: point them at this test's server and home.
    monkeypatch.setattr(constants, "ENDPOINT", s.url)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(tmp_path / "hf-home" / "xet"), raising=False)
    monkeypatch.setattr("layerfilm.checkpoints.transfer.BACKOFF", 0.01)
    yield s
    s.close()


@pytest.fixture
def films(tmp_path, run_dir):
    out = tmp_path / "films"
    out.mkdir()
    for name in ("a.gif", "a.webm"):
        r = runner.invoke(app, ["render", str(run_dir), str(out / name), "--fps", "2", "--size",
                                "128x72", "-q"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["stats", str(run_dir), "--out", str(out / "a-stats"), "-q"])
    assert r.exit_code == 0, r.output
    return out


def test_publish_to_a_bucket_uploads_the_files_and_then_nothing_new(server, films):
    args = ["publish", str(films / "a.gif"), str(films / "a.webm"), "--bucket", "you/films/runs"]
    first = runner.invoke(app, args + ["--private"])
    assert first.exit_code == 0, first.output
    assert f"bucket: {server.url}/buckets/you/films" in first.output
    assert server.buckets["you/films"]["private"] is True
    expected = {"runs/" + k: p.read_bytes() for k, p in tree(films).items()}
    got = {path: f["data"] for (b, path), f in server.files.items() if b == "you/films"}
    card = got.pop("runs/README.md").decode()
    n_files = len(expected)
    for name in [n for n in expected if n.endswith(".json")]:  # manifests: local paths made relative
        sent, here = json.loads(got.pop(name)), json.loads(expected.pop(name))
        assert (sent["film"]["path"], sent["checkpoints"]["folder"]) == (name[5:-5], "../run")
        assert sent["film"]["sha256"] == here["film"]["sha256"]
    assert got == expected  # every other byte that arrived is the local file's
    assert "![run: training film](a.gif)" in card and "[a.webm](a.webm)" in card
    assert "layerfilm publish --bucket you/films/runs" in card
    xorbs = len(server.requests("POST", "/v1/xorbs/"))
    assert xorbs >= 1
    server.log.clear()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"nothing new: all {n_files + 1} files are already in hf://buckets/you/films" \
        in again.output
    assert server.requests("POST", "/v1/xorbs/") == [] and server.requests("POST", "/batch") == []
    assert server.requests("POST", "/v1/shards") == []  # no file data at all


def test_publish_to_a_bucket_sends_only_what_changed(server, films, tmp_path):
    args = ["publish", str(films / "a.webm"), "--bucket", "you/films"]
    assert runner.invoke(app, args).exit_code == 0
    stats = films / "a-stats" / "layer_stats.csv"
    stats.write_text(stats.read_text() + "# edited\n")
    server.log.clear()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "uploaded 1 of" in result.output
    batch = [e for e in server.requests("POST", "/batch")]
    assert len(batch) == 1
    assert server.files[("you/films", "a-stats/layer_stats.csv")]["data"] == stats.read_bytes()


def test_bucket_dry_run_and_errors(server, films, monkeypatch):
    dry = runner.invoke(app, ["publish", str(films / "a.gif"), "--bucket", "you/films/x", "--dry-run"])
    assert dry.exit_code == 0 and "would upload to hf://buckets/you/films:" in dry.output
    assert "x/a.gif" in dry.output and "x/README.md" in dry.output
    assert server.requests() == []
    both = runner.invoke(app, ["publish", str(films / "a.gif"), "--bucket", "you/films",
                               "--repo-id", "you/films"])
    assert both.exit_code == 2 and "not both" in both.output
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    none = runner.invoke(app, ["publish", str(films / "a.gif"), "--bucket", "you/films"])
    assert none.exit_code == 1 and none.output.strip() == \
        "layerfilm: error: no Hugging Face token: run `hf auth login` or set HF_TOKEN"


def test_render_from_a_bucket_equals_the_local_render(server, tmp_path):
    run = write_run(tmp_path / "run", n=3, name="checkpoint-{step}/model.safetensors")
    for path, p in tree(run).items():
        server.put("you/ckpts", f"runs/run/{path}", p.read_bytes())
    local = runner.invoke(app, ["render", str(run), str(tmp_path / "l.gif"), "--fps", "2",
                                "--size", "128x72", "-q", "--no-cache"])
    remote = runner.invoke(app, ["render", "hf://buckets/you/ckpts/runs/run", str(tmp_path / "b.gif"),
                                 "--fps", "2", "--size", "128x72", "-q"])
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert np.array_equal(decode(tmp_path / "l.gif"), decode(tmp_path / "b.gif"))
    gets = server.requests("GET", "/buckets/you/ckpts/resolve/")
    assert gets  # ranged reads of the files, each answered 206 by this server
    doc = json.loads((tmp_path / "b.gif.json").read_text())
    assert doc["checkpoints"]["folder"] == "hf://buckets/you/ckpts/runs/run"
    assert all(f["xet_hash"] == server.files[("you/ckpts", "runs/run/" + f["path"])]["xet"]
               for f in doc["checkpoints"]["files"])
    server.log.clear()  # a re-render: the identities say nothing changed, nothing is fetched
    again = runner.invoke(app, ["render", "hf://buckets/you/ckpts/runs/run", str(tmp_path / "c.webm"),
                                "--fps", "2", "--size", "128x72", "-q"])
    assert again.exit_code == 0 and server.requests("GET", "/resolve/") == []
    missing = runner.invoke(app, ["info", "hf://buckets/you/nothing/run"])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    assert "hf://buckets/you/nothing/run: no such bucket" in missing.output


def test_bucket_through_its_s3_compatible_api(tmp_path, monkeypatch):
    """Buckets speak S3: the same checkpoints under s3:// with the bucket's endpoint (moto's S3
    server standing in for it), configured by storage_options in the config file."""
    pytest.importorskip("s3fs")
    proc, url = start_moto(tmp_path / "moto.log")
    try:
        run = write_run(tmp_path / "run", n=3)
        s3_put(url, "you-ckpts", {f"run/{k}": p for k, p in tree(run).items()})
        monkeypatch.chdir(tmp_path)
        (tmp_path / "layerfilm.toml").write_text(
            f'[storage_options]\nendpoint_url = "{url}"\nkey = "hf_test"\nsecret = "hf_test"\n')
        result = runner.invoke(app, ["render", "s3://you-ckpts/run", "b.gif", "--fps", "2",
                                     "--size", "128x72", "-q"])
        local = runner.invoke(app, ["render", str(run), "l.gif", "--fps", "2", "--size", "128x72",
                                    "-q", "--no-cache"])
        assert result.exit_code == 0 and local.exit_code == 0, result.output
        assert np.array_equal(decode(tmp_path / "l.gif"), decode(tmp_path / "b.gif"))
    finally:
        stop(proc)
