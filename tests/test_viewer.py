"""The viewer page (``--html``, ``layerfilm view``) in a real browser: headless Chromium driven
over the DevTools protocol on 127.0.0.1.  Skipped, saying why, only where Chromium is absent."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from layerfilm import drift, film, interpolate, layouts, viewer
from layerfilm._draw_kernels import CUTOFF
from layerfilm._kernels import hermite_numpy
from layerfilm.activations import make_plan
from layerfilm.cli import app
from layerfilm.config import RenderConfig

SAMPLE = Path(__file__).resolve().parent.parent / "sample_checkpoints"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SIZE = (640, 360)

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (make test installs Debian's package): "
                             "the viewer page is not opened in a browser")


class Browser:
    """One headless Chromium and one page, over the DevTools protocol (websocket-client).
    Every wait is bounded in time; ``errors`` collects exceptions and console errors."""

    def __init__(self, profile: Path, timeout: float = 30.0):
        import websocket

        self.timeout = timeout
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1280,720", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        for _ in range(100):
            pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
            pages = [p for p in pages if p.get("type") == "page"]
            if pages:
                break
            time.sleep(0.05)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self.n, self.errors, self.requests = 0, [], []
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=720,
                  deviceScaleFactor=1, mobile=False)

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("exception", {}).get("description")
                               or params["exceptionDetails"].get("text"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(str(params["args"]))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)
        raise TimeoutError(method)

    def js(self, expr: str):
        out = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expr}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def open(self, path: Path) -> None:
        self.errors.clear()
        self.requests.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        deadline = time.monotonic() + self.timeout
        while not self.js("!!(window.layerfilm && window.layerfilm.ready)"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never became ready; errors: {self.errors}")
            time.sleep(0.05)

    def screenshot(self) -> np.ndarray:
        """The canvas as drawn on screen: (H, W, 3) uint8."""
        from PIL import Image

        b = self.js("(() => { const r = document.querySelector('canvas').getBoundingClientRect();"
                    " return [r.left, r.top, r.width, r.height]; })()")
        png = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": b[0], "y": b[1], "width": b[2], "height": b[3], "scale": 1})
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(png["data"]))).convert("RGB"))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The sample rendered with --html (GIF, 640x360), and the film it drew, prepared again
    here from its (cached) layouts: ``(folder, config, Film, plan, keys, drift)``."""
    out = tmp_path_factory.mktemp("page")
    res = CliRunner().invoke(app, ["render", str(SAMPLE), str(out / "s.gif"), "--size", "640x360",
                                   "--html", str(out / "s.html")])
    assert res.exit_code == 0, res.output
    cfg = RenderConfig(checkpoints=SAMPLE, output=out / "s.gif", size=SIZE, html=out / "s.html").validated()
    plan = make_plan(cfg)
    keys, measured = layouts.layouts_and_drift(plan, cfg.projection, cfg.seed, use_cache=True)
    picture = film.prepare(plan, keys, film.FilmSpec.of(cfg), measured)
    return out, cfg, picture, plan, keys, measured


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (make test installs Debian's package)")
    profile = Path(tempfile.mkdtemp(prefix="lf-chromium-"))
    b = Browser(profile)
    yield b
    b.close()
    shutil.rmtree(profile, ignore_errors=True)


def film_pixels(picture, P: np.ndarray, l: int) -> np.ndarray:
    """Panel ``l``'s dots ``P`` (n, 2) in the film's frame pixels, computed here from the
    grid: the rect's centre, its scale, y up, pinned at the rect shrunk by the edge pad."""
    g = picture.grid
    x0, y0, x1, y1 = g.rects[l].astype(np.float64)
    s = float(g.scale[l])
    pad = np.ceil(g.sigma[l] * CUTOFF * 0.6) + 1.0
    u, v = P[:, 0].astype(np.float64) * s, -P[:, 1].astype(np.float64) * s
    r = np.maximum(np.abs(u) / ((x1 - x0) / 2 - pad), np.abs(v) / ((y1 - y0) / 2 - pad))
    f = np.where(r > 1, r, 1.0)
    return np.stack([u / f + (x0 + x1) / 2, v / f + (y0 + y1) / 2], axis=1)


def test_page_is_self_contained_and_recorded(rendered):
    out, *_ = rendered
    text = (out / "s.html").read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text
    assert "src=" not in text  # no script or image fetched
    doc = json.loads((out / "s.gif.json").read_text())
    assert doc["page"] == {"path": str(out / "s.html"), "bytes": (out / "s.html").stat().st_size, "keyframes": 51}


@needs_chromium
def test_page_loads_without_errors(rendered, browser):
    out, *_ = rendered
    browser.open(out / "s.html")
    browser.js("layerfilm.setFrame(300)")
    browser.js("document.getElementById('play').click()")
    time.sleep(0.5)
    browser.js("document.getElementById('play').click()")
    assert browser.js("layerfilm.frame()") > 300  # it played
    assert browser.errors == []
    assert all(u.startswith(("file:", "data:")) for u in browser.requests), browser.requests


@needs_chromium
def test_keyframe_shows_the_films_frame(rendered, browser):
    out, cfg, picture, plan, keys, _ = rendered
    data = viewer.read_data(out / "s.html")
    browser.open(out / "s.html")
    maker = film.FrameMaker(picture)
    for k in (0, 24, 50):
        f = int(picture.times[k])
        browser.js(f"layerfilm.setFrame({f})")
        shot = browser.screenshot()
        assert shot.shape[:2] == (SIZE[1], SIZE[0])
        frame = maker(f)  # the film's own frame k (palette indices)
        for l, p in enumerate(data["panels"]):
            a, b = plan.starts[l], plan.starts[l + 1]
            page_xy = np.array(browser.js(f"layerfilm.positions({l})")).reshape(-1, 2)
            # quantization: half a step of 65534 over the panel's range, plus float32 rounding
            tol = np.array(p["a"]) / viewer.QMAX + 1e-6
            assert np.all(np.abs(page_xy - keys.P[k, a:b]) <= tol), (k, l)
            page_px = np.array(browser.js(f"layerfilm.pixels({l})")).reshape(-1, 2)
            assert np.abs(page_px - film_pixels(picture, keys.P[k, a:b], l)).max() < 0.01, (k, l)
            x0, y0, x1, y1 = picture.grid.rects[l]
            lit_film = (frame[y0:y1, x0:x1] >= 16) & (frame[y0:y1, x0:x1] <= 252)
            lit_page = shot[y0:y1, x0:x1].max(axis=2) > 0
            for lit in (lit_film, lit_page):
                assert lit.sum() > 20
            yf, xf = np.nonzero(lit_film)
            yp, xp = np.nonzero(lit_page)
            assert abs(xf.mean() - xp.mean()) < 0.5 and abs(yf.mean() - yp.mean()) < 0.5, (k, l)
            assert abs(xf.min() - xp.min()) <= 1 and abs(xf.max() - xp.max()) <= 1, (k, l)
            assert abs(yf.min() - yp.min()) <= 1 and abs(yf.max() - yp.max()) <= 1, (k, l)
            assert (lit_film ^ lit_page).sum() <= 0.05 * lit_film.sum(), (k, l)
    assert browser.errors == []


@needs_chromium
def test_between_keyframes_is_the_films_interpolation(rendered, browser):
    out, cfg, picture, plan, keys, _ = rendered
    data = viewer.read_data(out / "s.html")
    browser.open(out / "s.html")
    times = picture.times
    for k, frac in ((0, 0.37), (23, 0.5), (49, 0.91)):
        t = float(times[k] + frac * (times[k + 1] - times[k]))
        for l, p in enumerate(data["panels"]):
            a, b = plan.starts[l], plan.starts[l + 1]
            page_xy = np.array(browser.js(f"layerfilm.positions({l}, {t})")).reshape(-1, 2)
            q = np.frombuffer(base64.b64decode(p["q"]), "<u2").reshape(len(times), -1, 2)
            sent = viewer.dequantize(q, np.array(p["a"]))
            # the page's own keyframes through the film's curve: the same to float32 rounding
            assert np.allclose(page_xy, hermite_numpy(sent, times, k, t), rtol=1e-6, atol=1e-6 * max(p["a"]))
            # and the film's positions at that time, to the quantization
            film_xy = interpolate.Interpolator(keys.P[:, a:b], times).at(t)
            assert np.all(np.abs(page_xy - film_xy) <= 2 * np.array(p["a"]) / viewer.QMAX + 1e-6)


@needs_chromium
def test_hover_shows_numbers_and_identity(rendered, browser):
    from tokenizers import Tokenizer

    out, cfg, picture, plan, keys, measured = rendered
    browser.open(out / "s.html")
    settle = measured.settle_steps(drift.Settling.of(cfg))
    f = int(picture.times[50])
    browser.js(f"layerfilm.setFrame({f})")
    box = browser.js("(() => { const r = document.querySelector('canvas').getBoundingClientRect();"
                     " return [r.left, r.top, r.width / 640]; })()")
    for l, layer in enumerate(plan.layers):
        px = np.array(browser.js(f"layerfilm.pixels({l})")).reshape(-1, 2)
        # the dot farthest from its neighbours, so the nearest dot to the pointer is that one
        d = np.linalg.norm(px[:, None] - px[None], axis=2) + np.eye(len(px)) * 1e9
        i = int(d.min(axis=1).argmax())
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0] + px[i, 0] * box[2],
                     y=box[1] + px[i, 1] * box[2])
        panel = browser.js("document.querySelector('#tip .panel-info').textContent")
        dot = browser.js("document.querySelector('#tip .dot-info').textContent")
        assert browser.js("layerfilm.hover().panel") == l
        assert panel.startswith(f"{layer.label} ({layer.n_points} dots)")
        want = "still moving" if np.isnan(settle[l]) else f"settled at step {int(settle[l]):,}"
        assert want in panel
        share = keys.panels[l]
        assert f"variance on its axes {round(100 * share['share_min'])}-{round(100 * share['share_max'])}%" in panel
        rebels = viewer._rebel_intervals(measured.steps, measured.rebel[l], cfg.rebel_z)
        assert ("rebel steps" in panel) == bool(rebels) and ("never a rebel" in panel) == (not rebels)
        k = i
        for s in layer.sources:
            if k < len(s.index):
                break
            k -= len(s.index)
        if l == 0:  # the token embedding: the token id and its text, by the sample's tokenizer
            text = Tokenizer.from_file(str(SAMPLE / "tokenizer.json")).decode([int(s.index[k])])
            assert dot == f"token {s.index[k]} {json.dumps(text)}"
        else:
            assert dot == f"{s.tensor} {'row' if s.axis == 0 else 'column'} {s.index[k]}"
        assert browser.js("document.querySelector('#tip svg polyline') !== null")
    # click enlarges the panel under the pointer, and a second click goes back
    browser.js("document.querySelector('canvas').dispatchEvent(new MouseEvent('click', "
               f"{{clientX: {box[0] + picture.grid.rects[1][0] + 5}, clientY: {box[1] + picture.grid.rects[1][1] + 5}}}))")
    shot = browser.screenshot()
    assert shot[:, :, :].max(axis=2).astype(bool).sum() > 0
    browser.js("document.querySelector('canvas').click()")
    assert browser.errors == []


def test_view_makes_the_same_page(rendered):
    out, *_ = rendered
    res = CliRunner().invoke(app, ["view", str(out / "s.gif.json"), "--out", str(out / "v.html")])
    assert res.exit_code == 0, res.output
    assert viewer.read_data(out / "v.html") == viewer.read_data(out / "s.html")
    assert (out / "v.html").read_bytes() == (out / "s.html").read_bytes()


def test_html_option_is_checked(tmp_path):
    res = CliRunner().invoke(app, ["render", str(SAMPLE), str(tmp_path / "s.gif"), "--html",
                                   str(tmp_path / "s.txt")])
    assert res.exit_code != 0 and ".html" in res.output
    assert list(tmp_path.iterdir()) == []


def test_size_of_a_128_panel_page(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from bench import make_series
    from layerfilm import pipeline

    series = make_series(tmp_path / "series", blocks=127, d=128, keyframes=3)
    cfg = RenderConfig(checkpoints=series, output=tmp_path / "b.webm", size=(1920, 1080),
                       html=tmp_path / "b.html", cache=False)
    page = pipeline.view(cfg, tmp_path / "b.html")
    data = viewer.read_data(tmp_path / "b.html")
    dots = sum(p["n"] for p in data["panels"])
    assert len(data["panels"]) == 128 and dots > 128_000
    fixed = page["bytes"] - 3 * dots * viewer.BYTES_PER_KEYFRAME_DOT
    per = dots * viewer.BYTES_PER_KEYFRAME_DOT
    kept = len(viewer.kept_keyframes(180, dots))
    projected = fixed + kept * per
    print(f"\n128 panels, {dots} dots, 3 keyframes: {page['bytes'] / 1e6:.2f} MB; per keyframe "
          f"{per / 1e6:.2f} MB ({viewer.BYTES_PER_KEYFRAME_DOT:.2f} B per keyframe x dot); "
          f"180 keyframes would be {(fixed + 180 * per) / 1e6:.1f} MB, kept {kept}: {projected / 1e6:.1f} MB")
    assert projected < 50e6


def test_quantize_and_subsample():
    rng = np.random.default_rng(0)
    P = rng.standard_normal((5, 40, 2)).astype(np.float32) * np.array([3.0, 0.5], np.float32)
    P[2, 7, 1] = np.nan
    q, a = viewer.quantize(P)
    back = viewer.dequantize(q, a)
    assert np.isnan(back[2, 7]).all() and np.isfinite(np.delete(back.reshape(-1, 2), 2 * 40 + 7, 0)).all()
    ok = np.isfinite(P).all(axis=-1)  # a dot with one non-finite coordinate is not drawn
    assert np.abs(back[ok] - P[ok]).max() <= (a / viewer.QMAX).max() + 1e-6
    assert list(viewer.kept_keyframes(10, 100)) == list(range(10))
    kept = viewer.kept_keyframes(180, 130_000)
    assert kept[0] == 0 and kept[-1] == 179 and len(kept) * 130_000 * viewer.BYTES_PER_KEYFRAME_DOT <= viewer.MAX_POSITION_BYTES
