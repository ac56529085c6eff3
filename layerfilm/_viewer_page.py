"""The viewer page's style and script (see :mod:`layerfilm.viewer`): plain JavaScript, no
library, nothing fetched.  The interpolation is ``_kernels.hermite_kernel`` line for line, the
panel transform and the pinning to a panel's edge ``_draw_kernels.splat_kernel``'s, the colour
``_shade_kernels.shade_levels``' log scale with the film's span."""

STYLE = """
body{margin:0;background:#000;color:#ddd;font:14px system-ui,sans-serif}
#top{display:flex;gap:1em;align-items:center;padding:4px 8px;flex-wrap:wrap}
#top b{color:#fff} #fields span{margin-right:1em} #note{color:#fb4;font-size:12px}
#bar{display:flex;gap:8px;align-items:center;padding:2px 8px}
#bar input{flex:1} #stage{position:relative;width:fit-content;max-width:100%}
canvas{display:block;max-width:100%;max-height:calc(100vh - 90px);width:auto;height:auto}
#tip{position:absolute;pointer-events:none;background:rgba(20,20,28,.92);border:1px solid #555;
 padding:4px 6px;font-size:12px;white-space:pre;display:none;z-index:2}
#cap{padding:2px 8px;white-space:pre-wrap;color:#ccc}
"""

SCRIPT = r"""
(function () {
'use strict';
const D = JSON.parse(document.getElementById('lf-data').textContent);
function bytes(s) { const b = atob(s), u = new Uint8Array(b.length);
  for (let i = 0; i < b.length; i++) u[i] = b.charCodeAt(i); return u; }
const W = D.size[0], H = D.size[1], KK = D.times.length, QMAX = 65534;
const times = Float64Array.from(D.times), pal = bytes(D.palette), LEVELS = pal.length / 3;
const panels = D.panels.map(function (p) {
  const q = new Uint16Array(bytes(p.q).buffer), P = new Float32Array(q.length);
  for (let i = 0; i < q.length; i += 2) for (let c = 0; c < 2; c++) {
    P[i + c] = q[i] === 65535 || q[i + 1] === 65535 ? NaN : (q[i + c] / QMAX * 2 - 1) * p.a[c]; }
  return Object.assign({}, p, {P: P, out: new Float32Array(p.n * 2), px: new Float64Array(p.n * 2)});
});
const ids = D.identities.map(function (d) {
  return d.ids ? new Int32Array(bytes(d.ids).buffer) : null; });

// _kernels.hermite_kernel: segment k holding t, Catmull-Rom tangents, one-sided at the ends.
function segment(t) { let k = 0;
  while (k + 1 < KK && times[k + 1] <= t) k++;
  return Math.min(Math.max(k, 0), KK - 2); }
const fr = Math.fround;
function positions(l, t) {
  const p = panels[l], n = p.n, P = p.P, out = p.out;
  if (KK < 2) { out.set(P.subarray(0, 2 * n)); return out; }
  const k = segment(t), t0 = times[k], t1 = times[k + 1], h = t1 - t0, s = (t - t0) / h;
  const s2 = s * s, s3 = s2 * s;
  const h00 = 2 * s3 - 3 * s2 + 1, h10 = s3 - 2 * s2 + s, h01 = -2 * s3 + 3 * s2, h11 = s3 - s2;
  const km = k > 0 ? k - 1 : k, kp = k + 2 < KK ? k + 2 : k + 1;
  const a0 = h10 * h / (times[k + 1] - times[km]), a1 = h11 * h / (times[kp] - times[k]);
  const o0 = k * 2 * n, o1 = (k + 1) * 2 * n, om = km * 2 * n, op = kp * 2 * n;
  for (let j = 0; j < 2 * n; j++) {
    const p0 = P[o0 + j], p1 = P[o1 + j];
    out[j] = h00 * p0 + fr(p1 - P[om + j]) * a0 + h01 * p1 + fr(P[op + j] - p0) * a1;  // float32 differences, as numba's
  }
  return out;
}
// The film's panel transform (Rasterizer.xform, splat_kernel): y up in data, pinned to the edge.
function toPixels(p, xy, zoom) {
  const x = zoom || p.xform, px = p.px;
  for (let i = 0; i < p.n; i++) {
    let u = xy[2 * i] * x[0], v = xy[2 * i + 1] * x[2];
    if (!(isFinite(u) && isFinite(v))) { px[2 * i] = NaN; px[2 * i + 1] = NaN; continue; }
    const r = Math.max(Math.abs(u) / x[4], Math.abs(v) / x[5]);
    if (r > 1) { u /= r; v /= r; }
    px[2 * i] = u + x[1]; px[2 * i + 1] = v + x[3];
  }
  return px;
}
const counts = new Float32Array(W * H);
function splat(px, n, rect, sigma) {
  const R = Math.min(Math.ceil(D.cutoff * sigma), 63), g = 1 / (2 * sigma * sigma), fl = D.floor;
  const ex = new Float64Array(2 * R + 1), ey = new Float64Array(2 * R + 1);
  for (let i = 0; i < n; i++) {
    const fx = px[2 * i], fy = px[2 * i + 1];
    if (!(fx === fx && fy === fy)) continue;
    const cx = Math.floor(fx) - R, cy = Math.floor(fy) - R;
    for (let j = 0; j <= 2 * R; j++) { let d = cx + j + 0.5 - fx; ex[j] = Math.exp(-d * d * g);
      d = cy + j + 0.5 - fy; ey[j] = Math.exp(-d * d * g); }
    const ax = Math.max(0, rect[0] - cx), bx = Math.min(2 * R + 1, rect[2] - cx);
    const ay = Math.max(0, rect[1] - cy), by = Math.min(2 * R + 1, rect[3] - cy);
    for (let b = ay; b < by; b++) { if (ey[b] < fl) continue;
      const row = (cy + b) * W + cx;
      for (let a = ax; a < bx; a++) { const w = ex[a] * ey[b]; if (w >= fl) counts[row + a] += w; } }
  }
}
const cv = document.createElement('canvas'); cv.width = W; cv.height = H;
const ctx = cv.getContext('2d'), img = ctx.createImageData(W, H);
const logSpan = Math.log(D.span / D.floor);
function shadeAll() {
  const d = img.data;
  for (let i = 0; i < W * H; i++) {
    const c = counts[i], o = 4 * i;
    if (c > 0) {
      const v = D.log ? Math.log(Math.max(c, D.floor) / D.floor) / logSpan : c / D.span;
      const j = 3 * Math.min(Math.floor(v * (LEVELS - 1) + 0.5), LEVELS - 1);
      d[o] = pal[j]; d[o + 1] = pal[j + 1]; d[o + 2] = pal[j + 2]; counts[i] = 0;
    } else { d[o] = 0; d[o + 1] = 0; d[o + 2] = 0; }
    d[o + 3] = 255;
  }
}
let frame = 0, playing = false, zoomed = -1;
function zoomOf(l) {  // panel l drawn as large as the canvas allows, its dots grown with it
  const p = panels[l], r = p.rect, w = r[2] - r[0], h = r[3] - r[1];
  const z = Math.min((W - 40) / w, (H - 40) / h), x = p.xform;
  const rect = [Math.round(W / 2 - z * w / 2), Math.round(H / 2 - z * h / 2), 0, 0];
  rect[2] = rect[0] + Math.round(z * w); rect[3] = rect[1] + Math.round(z * h);
  return {z: z, rect: rect, xform: [x[0] * z, (rect[0] + rect[2]) / 2, x[2] * z, (rect[1] + rect[3]) / 2,
    (x[4] + 0.5) * z - 0.5, (x[5] + 0.5) * z - 0.5], sigma: Math.min(p.sigma * Math.sqrt(z), 6)};
}
function draw() {
  const t = frame;
  for (let l = 0; l < panels.length; l++) {
    const p = panels[l];
    if (zoomed >= 0 && l !== zoomed) continue;
    const zm = zoomed === l ? zoomOf(l) : null;
    const px = toPixels(p, positions(l, t), zm ? zm.xform : null);
    splat(px, p.n, zm ? zm.rect : p.rect, zm ? zm.sigma : p.sigma);
  }
  shadeAll();
  ctx.putImageData(img, 0, 0);
  ctx.font = '11px sans-serif'; ctx.textBaseline = 'bottom';
  for (let l = 0; l < panels.length; l++) {
    if (zoomed >= 0 && l !== zoomed) continue;
    const r = zoomed === l ? zoomOf(l).rect : panels[l].rect;
    ctx.strokeStyle = '#333'; ctx.strokeRect(r[0] - 0.5, r[1] - 0.5, r[2] - r[0] + 1, r[3] - r[1] + 1);
    ctx.fillStyle = '#ccc'; ctx.fillText(panels[l].label, r[0], r[1] - 2);
  }
  header();
}
// Header and footer: the film's field texts at this frame's step, the caption in force.
const top = document.createElement('div'); top.id = 'top';
top.innerHTML = '<b id="title"></b><span id="fields"></span><span id="note"></span>';
const bar = document.createElement('div'); bar.id = 'bar';
bar.innerHTML = '<button id="play">play</button><input id="time" type="range" min="0" step="1">' +
  '<span id="stepno"></span>';
const stage = document.createElement('div'); stage.id = 'stage';
const tip = document.createElement('div'); tip.id = 'tip';
const cap = document.createElement('div'); cap.id = 'cap';
stage.appendChild(cv); stage.appendChild(tip);
[top, bar, stage, cap].forEach(function (e) { document.body.appendChild(e); });
const slider = document.getElementById('time'), playBtn = document.getElementById('play');
slider.max = D.n_frames - 1; slider.value = 0;
document.getElementById('title').textContent = D.title;
if (D.kept.length < D.keyframes) document.getElementById('note').textContent =
  'keyframes subsampled for size: ' + D.kept.length + ' of ' + D.keyframes +
  ' (between them the motion is interpolated over the kept ones; the film has them all)';
function header() {
  const f = Math.round(frame), step = D.frame_steps[f];
  document.getElementById('fields').innerHTML = '';
  for (const name in D.header) { const s = document.createElement('span');
    s.className = 'field-' + name; s.textContent = D.header[name][f];
    document.getElementById('fields').appendChild(s); }
  document.getElementById('stepno').textContent = 'step ' + step.toLocaleString('en-US');
  let text = '';
  for (const c of D.captions) if (c[0] <= step) text = c[1];
  cap.textContent = text + (D.caption ? (text ? '\n' : '') + D.caption : '');
}
slider.addEventListener('input', function () { setFrame(+slider.value); });
let last = 0;
function tick(ts) {
  if (!playing) return;
  if (last) { frame += (ts - last) / 1000 * D.fps;
    if (frame >= D.n_frames - 1) { frame = D.n_frames - 1; playing = false; playBtn.textContent = 'play'; } }
  last = ts; slider.value = Math.round(frame); draw();
  if (playing) requestAnimationFrame(tick);
}
playBtn.addEventListener('click', function () {
  playing = !playing; playBtn.textContent = playing ? 'pause' : 'play'; last = 0;
  if (playing) { if (frame >= D.n_frames - 1) frame = 0; requestAnimationFrame(tick); } });
function setFrame(f) { frame = Math.min(Math.max(f, 0), D.n_frames - 1); slider.value = Math.round(frame); draw(); }
// Hover: the panel's numbers, the nearest dot's identity.
function canvasXY(ev) { const b = cv.getBoundingClientRect();
  return [(ev.clientX - b.left) * W / b.width, (ev.clientY - b.top) * H / b.height]; }
function panelAt(x, y) {
  for (let l = 0; l < panels.length; l++) {
    if (zoomed >= 0 && l !== zoomed) continue;
    const r = zoomed === l ? zoomOf(l).rect : panels[l].rect;
    if (x >= r[0] - 2 && x < r[2] + 2 && y >= r[1] - 2 && y < r[3] + 2) return l; }
  return -1;
}
function dotAt(l, x, y) {
  const p = panels[l], px = p.px, reach = Math.max(4, 2 * (zoomed === l ? zoomOf(l).sigma : p.sigma));
  let best = -1, bd = reach * reach;
  for (let i = 0; i < p.n; i++) { const dx = px[2 * i] - x, dy = px[2 * i + 1] - y, d = dx * dx + dy * dy;
    if (d < bd) { bd = d; best = i; } }
  return best;
}
function identity(l, i) {
  const d = D.identities[l];
  if (d.kind === 'tokens') return 'token ' + JSON.stringify(d.texts[i]) + ' (' + d.where[i] + ')';
  const id = ids[l][i];
  if (d.kind === 'embed') return 'token ' + id + (d.texts ? ' ' + JSON.stringify(d.texts[i]) : '');
  let k = i;
  for (const s of d.sources) { if (k < s[2]) return s[0] + ' ' + s[1] + ' ' + id; k -= s[2]; }
  return 'dot ' + i;
}
function fmt(v) { return v === null ? '-' : v.toLocaleString('en-US'); }
function info(l) {
  const p = panels[l], out = [p.label + ' (' + p.n + ' dots)'];
  if ('settle' in p) out.push(p.settle === null ? 'still moving' : 'settled at step ' + fmt(p.settle));
  if (p.rebel && p.rebel.length) out.push('rebel ' + p.rebel.map(function (r) {
    return 'steps ' + fmt(r[0]) + '-' + fmt(r[1]) + ' (z ' + (r[2] > 0 ? '+' : '') + r[2] + ')'; }).join(', '));
  else if ('rebel' in p) out.push('never a rebel');
  if (p.share) out.push('variance on its axes ' + Math.round(100 * p.share[0]) + '-' + Math.round(100 * p.share[1]) + '%');
  return out.join('\n');
}
function sparkline(l) {
  const r = panels[l].rate; if (!r) return '';
  const v = r.map(function (x) { return x !== null && x > 0 ? Math.log10(x) : null; });
  const ok = v.filter(function (x) { return x !== null; }); if (!ok.length) return '';
  const lo = Math.min.apply(null, ok), hi = Math.max.apply(null, ok), w = 160, h = 28;
  const pts = []; v.forEach(function (x, k) { if (x !== null) pts.push(
    (k / Math.max(1, v.length - 1) * w).toFixed(1) + ',' + (h - 2 - (hi > lo ? (x - lo) / (hi - lo) : 0.5) * (h - 4)).toFixed(1)); });
  return '<svg width="' + w + '" height="' + h + '"><polyline fill="none" stroke="#fc6" points="' + pts.join(' ') + '"/></svg>';
}
let hover = null;
cv.addEventListener('mousemove', function (ev) {
  const xy = canvasXY(ev), l = panelAt(xy[0], xy[1]);
  if (l < 0) { tip.style.display = 'none'; hover = null; return; }
  const i = dotAt(l, xy[0], xy[1]);
  hover = {panel: l, dot: i};
  tip.innerHTML = '';
  const a = document.createElement('div'); a.className = 'panel-info'; a.textContent = info(l); tip.appendChild(a);
  if (i >= 0) { const b = document.createElement('div'); b.className = 'dot-info';
    b.textContent = identity(l, i); tip.appendChild(b); }
  const s = document.createElement('div'); s.className = 'rate'; s.title = 'rate of change over the run (log)';
  s.innerHTML = sparkline(l); tip.appendChild(s);
  const b = cv.getBoundingClientRect();
  tip.style.display = 'block';  // beside the pointer, on the side with room
  const x = ev.clientX - b.left, y = ev.clientY - b.top;
  tip.style.left = (x + 14 + tip.offsetWidth > b.width ? Math.max(0, x - 14 - tip.offsetWidth) : x + 14) + 'px';
  tip.style.top = (y + 14 + tip.offsetHeight > b.height ? Math.max(0, y - 14 - tip.offsetHeight) : y + 14) + 'px';
});
cv.addEventListener('mouseleave', function () { tip.style.display = 'none'; hover = null; });
cv.addEventListener('click', function (ev) {
  const xy = canvasXY(ev), l = panelAt(xy[0], xy[1]);
  zoomed = zoomed >= 0 ? -1 : l; tip.style.display = 'none'; draw(); });
// A small API for tests and tools.
window.layerfilm = {
  data: D, setFrame: setFrame, frame: function () { return frame; },
  zoom: function (l) { zoomed = l; draw(); },
  positions: function (l, t) { return Array.from(positions(l, t === undefined ? frame : t)); },
  pixels: function (l, t) { return Array.from(toPixels(panels[l], positions(l, t === undefined ? frame : t))); },
  info: info, identity: identity, hover: function () { return hover; },
};
draw();
window.layerfilm.ready = true;
})();
"""
