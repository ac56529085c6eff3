"""s3:// checkpoints against moto's real S3 server on 127.0.0.1, through a recording proxy that
can inject faults: the film equals the local render of the same files, only drawn bytes are
fetched, every ranged answer is checked, 503s are retried, a re-render fetches nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm.cli import app

from conftest import decode, write_run
from servers import Proxy, s3_put, start_moto, stop, tree

pytest.importorskip("s3fs")
pytest.importorskip("moto")
runner = CliRunner()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    proc, url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield url
    stop(proc)


@pytest.fixture
def s3(moto, monkeypatch):
    """A proxy in front of moto, and the environment that points fsspec at it."""
    proxy = Proxy(moto)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("FSSPEC_S3_SKIP_INSTANCE_CACHE", "true")
    monkeypatch.setattr("layerfilm.checkpoints.transfer.BACKOFF", 0.01)
    yield proxy
    proxy.close()


def _bucket(moto, name, folder):
    s3_put(moto, name, {f"run/{k}": p for k, p in tree(folder).items()})


def cli(*args):
    return runner.invoke(app, [*map(str, args)])


def data_gets(proxy, key="run/"):
    """GETs of object contents (listings are GETs of the bucket with a query)."""
    return [e for e in proxy.gets(key) if "?" not in e[1] and "list-type" not in e[1]]


def test_s3_film_equals_local_and_reads_only_drawn_bytes(tmp_path, moto, s3, sent_by_file):
    run = write_run(tmp_path / "run", n=4, d=64, blocks=2, vocab=3000)
    _bucket(moto, "films-a", run)
    local = cli("render", run, tmp_path / "local.gif", "--fps", "2", "--size", "160x90", "-q",
                "--max-points", "40", "--no-cache")
    assert local.exit_code == 0, local.output
    remote = cli("render", "s3://films-a/run", tmp_path / "remote.gif", "--fps", "2", "--size",
                 "160x90", "-q", "--max-points", "40")
    assert remote.exit_code == 0, remote.output
    assert np.array_equal(decode(tmp_path / "local.gif"), decode(tmp_path / "remote.gif"))
    assert [np.array_equal(a, b) for a, b in zip(sent_by_file["local.gif"],
                                                  sent_by_file["remote.gif"])] == [True] * 7
    gets = data_gets(s3)
    assert gets and all(e[2] and e[2].startswith("bytes=") and e[3] == 206 for e in gets)
    stored = sum(p.stat().st_size for p in run.glob("*.safetensors"))
    fetched = sum(e[4] for e in gets)
    doc = json.loads((tmp_path / "remote.gif.json").read_text())
    assert doc["checkpoints"]["folder"] == "s3://films-a/run"
    assert doc["checkpoints"]["remote"]["bytes_fetched"] == fetched
    assert doc["checkpoints"]["remote"]["bytes_stored"] == stored
    # 40 of 3,000 embedding rows and 40 of each block's 768 (rows 8 kB apart or less are
    # fetched as one block, so a little more than the rows themselves).
    assert fetched < 0.4 * stored, (fetched, stored)
    for f in run.glob("*.safetensors"):  # no byte fetched twice
        spans = sorted(tuple(map(int, e[2][6:].split("-"))) for e in gets if f.name in e[1])
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), spans
    assert "fetched" in remote.output and "of " + "" in remote.output
    files = doc["checkpoints"]["files"]
    assert [f["path"] for f in files] == sorted(p.name for p in run.glob("*.safetensors"))
    assert all(len(f["ETag"]) == 32 for f in files)  # S3's ETag identifies each object

    # A re-render: the layouts, headers and logs are cached under the objects' ETags.
    s3.clear()
    again = cli("render", "s3://films-a/run", tmp_path / "again.webm", "--fps", "2", "--size",
                "160x90", "-q", "--max-points", "40")
    assert again.exit_code == 0, again.output
    assert data_gets(s3) == []
    assert all("list-type" in e[1] for e in s3.gets()), s3.gets()


def test_s3_retries_503_and_distrusts_wrong_ranges(tmp_path, moto, s3):
    run = write_run(tmp_path / "run", n=3)
    _bucket(moto, "films-b", run)
    s3.fail(503, n=2, match="step_000100")
    s3.fail("shift", n=1, match="step_000200")
    result = cli("render", "s3://films-b/run", tmp_path / "f.gif", "--fps", "2", "--size",
                 "128x72", "-q", "--no-cache")
    assert result.exit_code == 0, result.output
    on_100 = data_gets(s3, "step_000100")
    assert [e[3] for e in on_100[:3]] == [503, 503, 206]
    assert on_100[2][2] == on_100[0][2]  # the same range asked again
    shifted = data_gets(s3, "step_000200")
    assert shifted[0][2] == shifted[1][2] and shifted[1][3] == 206  # refused, asked again
    doc = json.loads((tmp_path / "f.gif.json").read_text())
    assert doc["checkpoints"]["remote"]["retries"] == 3
    local = cli("render", run, tmp_path / "l.gif", "--fps", "2", "--size", "128x72", "-q",
                "--no-cache")
    assert local.exit_code == 0
    assert np.array_equal(decode(tmp_path / "l.gif"), decode(tmp_path / "f.gif"))


def test_s3_server_ignoring_range_is_read_whole_once(tmp_path, moto, s3):
    run = write_run(tmp_path / "run", n=3)
    _bucket(moto, "films-c", run)
    s3.fail("full200", n=-1, match="run/step_")
    result = cli("render", "s3://films-c/run", tmp_path / "f.gif", "--fps", "2", "--size",
                 "128x72", "-q", "--no-cache")
    assert result.exit_code == 0, result.output
    for f in sorted(run.glob("*.safetensors")):
        gets = data_gets(s3, f.name)
        # The header is read from the start of the whole-file answer; the drawn rows come
        # from one whole download, never from a 200 taken as the range asked for.
        assert [e[3] for e in gets] == [200] * len(gets) and len(gets) <= 3, gets
        assert any(e[4] == f.stat().st_size for e in gets)
    local = cli("render", run, tmp_path / "l.gif", "--fps", "2", "--size", "128x72", "-q",
                "--no-cache")
    assert local.exit_code == 0, local.output
    assert np.array_equal(decode(tmp_path / "l.gif"), decode(tmp_path / "f.gif"))


@pytest.mark.parametrize("status, words", [(404, "not found"), (403, "access denied")])
def test_s3_unreadable_object_is_one_line_or_skipped(tmp_path, moto, s3, status, words):
    run = write_run(tmp_path / "run", n=4)
    _bucket(moto, f"films-{status}", run)
    s3.fail(status, n=-1, match="step_000200")
    out = tmp_path / "f.gif"
    result = cli("render", f"s3://films-{status}/run", out, "--fps", "2", "--size", "128x72",
                 "-q", "--no-cache")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"layerfilm: error: s3://films-{status}/run/step_000200.safetensors: ") and words in lines[0]
    assert not out.exists() and not (tmp_path / "f.gif.json").exists()
    skipped = cli("render", f"s3://films-{status}/run", out, "--fps", "2", "--size", "128x72",
                  "-q", "--no-cache", "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert f"warning: skipped s3://films-{status}/run/step_000200.safetensors: " in skipped.output


def test_s3_info_missing_bucket_and_bad_options(tmp_path, moto, s3, monkeypatch):
    run = write_run(tmp_path / "run", n=3)
    _bucket(moto, "films-d", run)
    info = cli("info", "s3://films-d/run")
    assert info.exit_code == 0, info.output
    assert "source      s3://films-d/run" in info.output
    assert "a render reads" in info.output and "this look fetched" in info.output
    missing = cli("info", "s3://films-d/nothing-here")
    assert missing.exit_code == 1
    assert missing.output.strip() == "layerfilm: error: s3://films-d/nothing-here: no such folder"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text("[storage_options]\nnot_an_option = 1\n")
    bad = cli("info", "s3://films-d/run")
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1, bad.output


def test_storage_options_from_the_config_file_and_kept_out_of_manifests(tmp_path, moto, s3,
                                                                        monkeypatch):
    run = write_run(tmp_path / "run", n=3)
    _bucket(moto, "films-e", run)
    for var in ("FSSPEC_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "layerfilm.toml").write_text(
        f'[storage_options]\nendpoint_url = "{s3.url}"\nkey = "testing"\nsecret = "testing"\n')
    result = cli("render", "s3://films-e/run", "f.gif", "--fps", "2", "--size", "128x72", "-q")
    assert result.exit_code == 0, result.output
    assert data_gets(s3)  # through the proxy named in the file
    doc = json.loads((tmp_path / "f.gif.json").read_text())
    assert doc["options"]["storage_options"] == {"endpoint_url": s3.url}  # no key, no secret


def test_https_folder_listing_and_a_server_without_range(tmp_path):
    """``python -m http.server`` lists folders as HTML and ignores Range: the whole-file
    fallback, through fsspec's HTTP filesystem."""
    import subprocess
    import sys

    from servers import LOCALHOST, _wait, free_port

    run = write_run(tmp_path / "www" / "run", n=3)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", LOCALHOST,
                             "--directory", str(tmp_path / "www")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://{LOCALHOST}:{port}/", proc, "http.server")
        url = f"http://{LOCALHOST}:{port}/run"
        result = cli("render", url, tmp_path / "f.gif", "--fps", "2", "--size", "128x72", "-q")
        assert result.exit_code == 0, result.output
        local = cli("render", run, tmp_path / "l.gif", "--fps", "2", "--size", "128x72", "-q",
                    "--no-cache")
        assert local.exit_code == 0
        assert np.array_equal(decode(tmp_path / "l.gif"), decode(tmp_path / "f.gif"))
        missing = cli("info", f"http://{LOCALHOST}:{port}/nothing")
        assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_protocol_without_its_library_is_one_line():
    result = cli("info", "gs://bucket/run")
    assert result.exit_code == 1
    assert result.output.strip().startswith("layerfilm: error: gs://bucket/run: gs:// needs gcsfs:")
    assert "pip install 'layerfilm[remote]' gcsfs" in result.output or "layerfilm[gcs]" in result.output


def test_a_reader_of_one_panel_fetches_only_its_rows(tmp_path, moto, s3):
    """The Fourier plane is fitted from the token embedding alone: only the embedding's rows
    of that checkpoint are fetched, not every drawn row of the file (a whole checkpoint is
    fetched in one go only where every panel is read: the projection's own prefetch)."""
    from layerfilm import extract, layouts
    from layerfilm.config import Remote, Selection
    from layerfilm.plan import make_plan

    run = write_run(tmp_path / "run", n=2, d=64, blocks=2, vocab=3000)
    _bucket(moto, "films-f", run)
    plan = make_plan(Selection(checkpoints=Remote("s3://films-f/run"), max_points=40))
    embeds = [l for l, layer in enumerate(plan.layers) if extract.is_token_embedding(layer)]
    assert embeds and len(plan.layers) > len(embeds)
    s3.clear()
    fitted = layouts.fit_fourier(plan, embeds, 1)
    assert sorted(fitted) == embeds
    ckpt = plan.refs[1].open()
    embed = plan.layers[embeds[0]].sources[0]
    (lo, _), (_, hi) = ckpt.byte_ranges(embed.tensor)[0], ckpt.byte_ranges(embed.tensor)[-1]
    spans = [tuple(map(int, e[2][6:].split("-"))) for e in data_gets(s3) if "step_000100" in e[1]]
    assert spans and all(lo <= s and e < hi for s, e in spans), (spans, lo, hi)
    drawn = sum(e - s for name, index, axis in plan.drawn() for s, e in ckpt.byte_ranges(name, index, axis))
    assert sum(e - s + 1 for s, e in spans) < 0.5 * drawn


def test_watch_follows_a_bucket_as_checkpoints_are_uploaded(tmp_path, moto, s3):
    """``layerfilm watch s3://...``: each look lists the bucket; a checkpoint uploaded between
    looks joins the film, one already seen complete is not fetched again to check it, and the
    last film is the plain render's."""
    import threading

    from layerfilm.config import RenderConfig
    from layerfilm.watch import watch

    src = write_run(tmp_path / "src", n=3)
    files = tree(src)
    names = sorted(files)
    s3_put(moto, "live", {f"run/{k}": files[k] for k in names[:2]})
    out = tmp_path / "live.gif"
    config = RenderConfig(checkpoints="s3://live/run", output=out, size=(160, 90),
                          frames_per_keyframe=2, fps=4).validated()
    said: list[str] = []
    looks = []

    def sleep(seconds):
        looks.append(len(said))
        if len(looks) == 2:  # after two looks at two checkpoints, the third arrives
            threading.Thread(target=s3_put, args=(moto, "live", {f"run/{names[2]}": files[names[2]]})
                             ).run()
        if len(looks) > 8:
            raise AssertionError(f"no end: {said}")

    s3.clear()
    # Time is counted in looks: the watch ends three looks after the last new checkpoint.
    updates = watch(config, interval=0, settle=0, idle_exit=3, say=said.append, sleep=sleep,
                    clock=lambda: float(len(looks)))
    assert [u.steps for u in updates] == [(0, 100), (0, 100, 200)], said
    assert all(u.error is None for u in updates)
    # Headers read to check a checkpoint complete: once per checkpoint, not once per look.
    heads = [e for e in data_gets(s3) if e[1].endswith(names[0])]
    assert len(heads) <= 3, heads  # the check, the render's plan and its read of the rows
    plain = tmp_path / "plain.gif"
    assert cli("render", "s3://live/run", plain, "--size", "160x90", "--frames-per-keyframe", "2",
               "--fps", "4").exit_code == 0
    assert out.read_bytes() == plain.read_bytes()
    assert len(decode(out)) == 5
