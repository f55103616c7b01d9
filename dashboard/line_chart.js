// A line chart drawn on a canvas, for series of many thousand points (the entropy curve of a
// long trace). It draws a plotly figure spec, the subset the dashboard's curves use: scatter
// traces (lines, markers), line shapes, annotations, axis titles, a legend that hides and shows
// traces, and a unified hover built from each trace's hovertemplate. Drag across the plot to
// zoom into a range of x, double-click (or "reset zoom") to see all of it again.
//
// All text comes from the spec, where it is plotly label text (HTML escaped): it is decoded to
// plain text and only ever set as textContent or drawn on the canvas, never parsed as HTML.

const FONT = '12px "Open Sans", verdana, arial, sans-serif';
const INK = "#2a3f5f";
const GRID = "#EBF0F8";
const DASHES = { dash: [6, 4], dot: [2, 3], dashdot: [6, 3, 2, 3], longdash: [10, 4], solid: [] };
const TYPES = { f8: Float64Array, f4: Float32Array, i1: Int8Array, u1: Uint8Array, i2: Int16Array,
                u2: Uint16Array, i4: Int32Array, u4: Uint32Array };

function decode(a) {
  if (a === null || a === undefined) return [];
  if (Array.isArray(a)) return a;
  if (typeof a === "object" && typeof a.bdata === "string" && TYPES[a.dtype]) {
    const bin = atob(a.bdata);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new TYPES[a.dtype](bytes.buffer);
  }
  return [];
}

function codePoint(n) {
  try { return String.fromCodePoint(n); } catch (e) { return "\uFFFD"; }
}

// plotly label text -> plain text (line breaks kept as "\n")
function plain(s) {
  return String(s === null || s === undefined ? "" : s)
    .replace(/<br\s*\/?>/gi, "\n").replace(/<[^>]*>/g, "")
    .replace(/&#x([0-9a-f]+);/gi, (_, h) => codePoint(parseInt(h, 16)))
    .replace(/&#(\d+);/g, (_, d) => codePoint(parseInt(d, 10)))
    .replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

function titleText(t) {
  if (t === null || t === undefined) return "";
  return plain(typeof t === "object" ? t.text : t);
}

function fmt(v, spec) {
  if (v === null || v === undefined || (typeof v === "number" && !Number.isFinite(v))) return "—";
  if (typeof v !== "number") return String(v);
  const m = /^\.(\d+)f$/.exec(spec || "");
  if (m) return v.toFixed(+m[1]);
  if (spec === "d") return String(Math.round(v));
  return String(+v.toPrecision(6));
}

// a hovertemplate for point i: %{y:.3f}, %{x}, %{customdata}; <extra> parts dropped
function hoverText(tpl, tr, i) {
  return plain(String(tpl).replace(/<extra>[\s\S]*?<\/extra>/g, "").replace(/%\{(\w+)(?::([^}]*))?\}/g,
    (_, field, f) => {
      const arr = field === "x" ? tr.x : field === "y" ? tr.y : field === "customdata" ? tr.customdata : null;
      if (!arr || i >= arr.length) return "";
      return fmt(arr[i], f);
    }));
}

function niceTicks(lo, hi, maxTicks) {
  if (!(hi > lo)) return { step: 1, ticks: [lo] };
  const raw = (hi - lo) / Math.max(1, maxTicks);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((s) => s >= raw) || 10 * p;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return { step, ticks };
}

function tickLabel(v, step) {
  let d = 0;  // the decimals the step needs (0.25 -> 2)
  while (d < 6 && Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) > 1e-6) d++;
  return v.toFixed(d);
}

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function lowerBound(xs, v) {
  let lo = 0, hi = xs.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < v) lo = mid + 1; else hi = mid; }
  return lo;
}

function nearest(xs, v) {
  if (!xs.length) return -1;
  const i = lowerBound(xs, v);
  if (i <= 0) return 0;
  if (i >= xs.length) return xs.length - 1;
  return v - xs[i - 1] <= xs[i] - v ? i - 1 : i;
}

function symbolPath(ctx, symbol, x, y, r) {
  ctx.beginPath();
  if (symbol === "diamond") {
    ctx.moveTo(x, y - r); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r); ctx.lineTo(x - r, y); ctx.closePath();
  } else if (symbol === "x") {
    ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r); ctx.moveTo(x + r, y - r); ctx.lineTo(x - r, y + r);
  } else if (symbol === "square") {
    ctx.rect(x - r, y - r, 2 * r, 2 * r);
  } else {
    ctx.arc(x, y, r, 0, 2 * Math.PI);
  }
}

function build(root) {
  root.innerHTML = "";
  const st = { root, hidden: new Set(), zoom: null, extentKey: null };
  st.legend = el("div", "ts-lc-legend", root);
  st.box = el("div", "ts-lc-box", root);
  st.canvas = el("canvas", "ts-lc-canvas", st.box);
  st.canvas.setAttribute("role", "img");
  st.ytitle = el("div", "ts-lc-ytitle", st.box);
  st.xtitle = el("div", "ts-lc-xtitle", st.box);
  st.notes = el("div", "ts-lc-notes", st.box);
  st.cross = el("div", "ts-lc-cross", st.box);
  st.sel = el("div", "ts-lc-sel", st.box);
  st.hover = el("div", "ts-lc-hover", st.box);
  st.reset = el("button", "ts-lc-reset", st.box);
  st.reset.type = "button";
  st.reset.textContent = "reset zoom";
  st.reset.addEventListener("click", () => { st.zoom = null; draw(st); });
  st.canvas.addEventListener("mousemove", (ev) => onMove(st, ev));
  st.canvas.addEventListener("mouseleave", () => { st.hover.style.display = "none"; st.cross.style.display = "none"; });
  st.canvas.addEventListener("mousedown", (ev) => onDown(st, ev));
  st.canvas.addEventListener("dblclick", () => { st.zoom = null; draw(st); });
  st.onUp = (ev) => onUp(st, ev);
  window.addEventListener("mouseup", st.onUp);
  st.resize = new ResizeObserver(() => { if (st.box.clientWidth !== st.width) draw(st); });
  st.resize.observe(root);
  return st;
}

function setSpec(st, spec) {
  const layout = spec.layout || {};
  st.layout = layout;
  st.traces = (spec.data || []).map((t, i) => {
    const x = decode(t.x), y = decode(t.y);
    const customdata = t.customdata === undefined ? null : decode(t.customdata);
    const mode = t.mode || "lines";
    const line = t.line || {}, marker = t.marker || {};
    const name = plain(t.name || `trace ${i}`);
    // what a hidden line is remembered by: its name up to the first number or bracket, so that
    // "window entropy (next 4 tokens)" stays hidden at another window width, and traces coming
    // and going (no forking points) do not shift it
    const id = name.split(/[\d(=]/)[0].trim() || name;
    return { i: id, name, x, y, customdata, mode, line, marker,
             hovertemplate: t.hovertemplate, hoverinfo: t.hoverinfo, showlegend: t.showlegend !== false,
             color: line.color || marker.color || INK };
  });
  let lo = Infinity, hi = -Infinity;
  for (const t of st.traces) {
    for (let k = 0; k < t.x.length; k++) { const v = t.x[k]; if (v !== null && Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }
  }
  st.xExtent = Number.isFinite(lo) ? [lo, hi] : [0, 1];
  const key = st.xExtent.join(":");
  if (key !== st.extentKey) { st.zoom = null; st.hidden.clear(); }
  st.extentKey = key;
  st.canvas.setAttribute("aria-label", titleText((layout.yaxis || {}).title) + " against " +
                         titleText((layout.xaxis || {}).title));
  drawLegend(st);
}

function drawLegend(st) {
  st.legend.innerHTML = "";
  for (const t of st.traces) {
    if (!t.showlegend) continue;
    const item = el("span", "ts-lc-item" + (st.hidden.has(t.i) ? " ts-lc-off" : ""), st.legend);
    const sw = el("span", "ts-lc-swatch", item);
    if (t.mode.includes("lines")) {
      sw.style.borderTop = `${Math.max(2, t.line.width || 2)}px ${t.line.dash && t.line.dash !== "solid" ? "dashed" : "solid"} ${t.color}`;
    } else {
      sw.classList.add("ts-lc-dot");
      sw.style.background = t.marker.color || t.color;
      if (t.marker.symbol === "diamond") sw.style.transform = "rotate(45deg)";
    }
    el("span", "ts-lc-name", item).textContent = t.name;
    item.title = "click to hide or show";
    item.addEventListener("click", () => {
      if (st.hidden.has(t.i)) st.hidden.delete(t.i); else st.hidden.add(t.i);
      drawLegend(st); draw(st);
    });
  }
}

function visibleY(st, x0, x1) {
  let hi = -Infinity, lo = Infinity;
  for (const t of st.traces) {
    if (st.hidden.has(t.i)) continue;
    const a = lowerBound(t.x, x0), b = Math.min(t.x.length, lowerBound(t.x, x1) + 1);
    for (let k = a; k < b; k++) { const v = t.y[k]; if (v !== null && Number.isFinite(v)) { if (v > hi) hi = v; if (v < lo) lo = v; } }
  }
  for (const s of st.layout.shapes || []) {
    if (s.type === "line" && s.yref !== "paper") for (const v of [s.y0, s.y1]) if (Number.isFinite(v)) { hi = Math.max(hi, v); lo = Math.min(lo, v); }
  }
  return Number.isFinite(hi) ? [lo, hi] : [0, 1];
}

function draw(st) {
  const layout = st.layout || {};
  const xa = layout.xaxis || {}, ya = layout.yaxis || {};
  const W = Math.max(200, st.box.clientWidth || st.root.clientWidth || 600);
  const H = layout.height || 360;
  st.width = W;
  const dpr = window.devicePixelRatio || 1;
  const c = st.canvas;
  c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
  c.style.width = W + "px"; c.style.height = H + "px";
  st.box.style.height = H + "px";
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, W, H);
  ctx.font = FONT;

  const [x0, x1] = st.zoom || st.xExtent;
  let [ylo, yhi] = visibleY(st, x0, x1);
  if (ya.rangemode === "tozero") ylo = Math.min(0, ylo);
  if (yhi <= ylo) yhi = ylo + 1;
  yhi += (yhi - ylo) * 0.05;
  const yt = niceTicks(ylo, yhi, 6);
  const yLabels = yt.ticks.map((v) => tickLabel(v, yt.step));
  const yLabelW = Math.max(...yLabels.map((s) => ctx.measureText(s).width), 10);
  const m = { l: 34 + yLabelW, r: 16, t: 22, b: 48 };
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  const sx = (v) => m.l + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * pw;
  const sy = (v) => m.t + ph - (v - ylo) / (yhi - ylo) * ph;
  st.geom = { m, pw, ph, x0, x1, sx, W, H };

  // grid, ticks
  let xt = niceTicks(x0, x1, Math.max(2, Math.floor(pw / 90)));
  if (xa.hoverformat === "d" && xt.step < 1) xt = niceTicks(x0, x1, Math.max(1, Math.floor(x1 - x0)));
  ctx.strokeStyle = GRID; ctx.lineWidth = 1; ctx.fillStyle = INK;
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  yt.ticks.forEach((v, k) => {
    const y = Math.round(sy(v)) + 0.5;
    if (y < m.t - 1 || y > m.t + ph + 1) return;
    ctx.beginPath(); ctx.moveTo(m.l, y); ctx.lineTo(m.l + pw, y); ctx.stroke();
    ctx.fillText(yLabels[k], m.l - 6, y);
  });
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (const v of xt.ticks) {
    const x = Math.round(sx(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(x, m.t); ctx.lineTo(x, m.t + ph); ctx.stroke();
    ctx.fillText(tickLabel(v, xt.step), x, m.t + ph + 6);
  }

  // lines inside the plot; markers may reach over its edges by their size, as in plotly
  ctx.save();
  ctx.beginPath(); ctx.rect(m.l, m.t - 8, pw, ph + 16); ctx.clip();
  // shapes under the traces
  for (const s of layout.shapes || []) {
    if (s.type !== "line") continue;
    const line = s.line || {};
    const X = (v) => (s.xref === "paper" ? m.l + v * pw : sx(v));
    const Y = (v) => (s.yref === "paper" ? m.t + ph - v * ph : sy(v));
    ctx.strokeStyle = line.color || INK; ctx.lineWidth = line.width || 1;
    ctx.setLineDash(DASHES[line.dash] || []);
    ctx.beginPath(); ctx.moveTo(X(s.x0), Y(s.y0)); ctx.lineTo(X(s.x1), Y(s.y1)); ctx.stroke();
  }
  ctx.setLineDash([]);
  for (const t of st.traces) {
    if (st.hidden.has(t.i)) continue;
    const a = Math.max(0, lowerBound(t.x, x0) - 1), b = Math.min(t.x.length, lowerBound(t.x, x1) + 1);
    if (t.mode.includes("lines")) {
      ctx.strokeStyle = t.color; ctx.lineWidth = t.line.width || 2; ctx.lineJoin = "round";
      ctx.setLineDash(DASHES[t.line.dash] || []);
      ctx.beginPath();
      let pen = false;
      for (let k = a; k < b; k++) {
        const xv = t.x[k], yv = t.y[k];
        if (xv === null || yv === null || !Number.isFinite(xv) || !Number.isFinite(yv)) { pen = false; continue; }
        const px = sx(xv), py = sy(yv);
        if (pen) ctx.lineTo(px, py); else { ctx.moveTo(px, py); pen = true; }
      }
      ctx.stroke();
      ctx.setLineDash([]);
    }
  }
  ctx.restore();
  ctx.save();
  ctx.beginPath(); ctx.rect(m.l - 10, m.t - 10, pw + 20, ph + 20); ctx.clip();
  for (const t of st.traces) {
    if (st.hidden.has(t.i)) continue;
    const a = Math.max(0, lowerBound(t.x, x0) - 1), b = Math.min(t.x.length, lowerBound(t.x, x1) + 1);
    if (t.mode.includes("markers")) {
      const r = (t.marker.size || 6) / 2 + 1;
      const ml = t.marker.line || {};
      ctx.fillStyle = t.marker.color || t.color;
      ctx.strokeStyle = ml.color || "white"; ctx.lineWidth = ml.width || 0;
      for (let k = a; k < b; k++) {
        const xv = t.x[k], yv = t.y[k];
        if (xv === null || yv === null || !Number.isFinite(xv) || !Number.isFinite(yv) || xv < x0 || xv > x1) continue;
        symbolPath(ctx, t.marker.symbol, sx(xv), sy(yv), r);
        ctx.fill();
        if (ctx.lineWidth > 0) ctx.stroke();
      }
    }
  }
  ctx.restore();
  ctx.strokeStyle = "#9ca3af"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(m.l, m.t + ph + 0.5); ctx.lineTo(m.l + pw, m.t + ph + 0.5); ctx.stroke();

  // titles and annotations: text elements over the canvas
  st.ytitle.textContent = titleText(ya.title);
  st.ytitle.style.cssText = `left:2px;top:${m.t + ph / 2}px;`;
  st.xtitle.textContent = titleText(xa.title);
  st.xtitle.style.cssText = `left:${m.l + pw / 2}px;top:${m.t + ph + 26}px;`;
  st.notes.innerHTML = "";
  for (const n of layout.annotations || []) {
    const x = n.xref === "paper" ? m.l + n.x * pw : sx(n.x);
    if (x < m.l - 1 || x > m.l + pw + 1) continue;
    const y = n.yref === "paper" ? m.t + ph - n.y * ph : sy(n.y);
    const d = el("div", "ts-lc-note", st.notes);
    d.textContent = plain(n.text);
    const font = n.font || {};
    d.style.color = font.color || INK;
    d.style.fontSize = (font.size || 12) + "px";
    d.style.left = x + "px"; d.style.top = y + "px";
    const tx = n.xanchor === "right" ? "-100%" : n.xanchor === "center" ? "-50%" : "3px";
    const ty = n.yanchor === "top" ? "0" : n.yanchor === "middle" ? "-50%" : "-100%";
    d.style.transform = `translate(${tx}, ${ty})`;
  }
  st.reset.style.display = st.zoom ? "block" : "none";
  st.hover.style.display = "none"; st.cross.style.display = "none";
}

function plotX(st, ev) {
  const r = st.canvas.getBoundingClientRect();
  return [ev.clientX - r.left, ev.clientY - r.top];
}

function onMove(st, ev) {
  const g = st.geom;
  if (!g) return;
  const [px, py] = plotX(st, ev);
  if (st.drag) {
    const a = Math.max(g.m.l, Math.min(st.drag, px)), b = Math.min(g.m.l + g.pw, Math.max(st.drag, px));
    st.sel.style.cssText = `display:block;left:${a}px;width:${b - a}px;top:${g.m.t}px;height:${g.ph}px;`;
    return;
  }
  if (px < g.m.l || px > g.m.l + g.pw || py < g.m.t - 8 || py > g.m.t + g.ph + 8) {
    st.hover.style.display = "none"; st.cross.style.display = "none";
    return;
  }
  const xv = g.x0 + (px - g.m.l) / g.pw * (g.x1 - g.x0);
  const rows = [];
  let at = null;
  for (const t of st.traces) {
    if (st.hidden.has(t.i) || t.hoverinfo === "skip" || !t.hovertemplate || !t.x.length) continue;
    const k = nearest(t.x, xv);
    if (k < 0 || t.x[k] === null) continue;
    if (at === null) at = t.x[k];
    if (t.x[k] !== at) continue;
    rows.push([t, hoverText(t.hovertemplate, t, k)]);
  }
  if (at === null) { st.hover.style.display = "none"; st.cross.style.display = "none"; return; }
  st.hover.innerHTML = "";
  const xa = st.layout.xaxis || {};
  const xname = titleText(xa.title);
  el("div", "ts-lc-hx", st.hover).textContent = (xname ? xname + " " : "") + fmt(at, xa.hoverformat);
  for (const [t, text] of rows) {
    const row = el("div", "ts-lc-hrow", st.hover);
    const sw = el("span", "ts-lc-hsw", row);
    sw.style.background = t.color;
    el("span", "ts-lc-htext", row).textContent = text;
  }
  const cx = g.sx(at);
  st.cross.style.cssText = `display:block;left:${cx}px;top:${g.m.t}px;height:${g.ph}px;`;
  st.hover.style.display = "block";
  const hw = st.hover.offsetWidth, hh = st.hover.offsetHeight;
  let left = cx + 14;
  if (left + hw > g.W - 4) left = Math.max(4, cx - 14 - hw);
  const top = Math.max(2, Math.min(py - hh / 2, g.H - hh - 2));
  st.hover.style.left = left + "px"; st.hover.style.top = top + "px";
}

function onDown(st, ev) {
  const g = st.geom;
  if (!g || ev.button !== 0) return;
  const [px] = plotX(st, ev);
  if (px < g.m.l || px > g.m.l + g.pw) return;
  st.drag = px;
  ev.preventDefault();
}

function onUp(st, ev) {
  if (st.drag === undefined || st.drag === null) return;
  const g = st.geom;
  const [px] = plotX(st, ev);
  const a = Math.max(g.m.l, Math.min(st.drag, px)), b = Math.min(g.m.l + g.pw, Math.max(st.drag, px));
  st.drag = null;
  st.sel.style.display = "none";
  if (b - a < 5) return;
  const inv = (p) => g.x0 + (p - g.m.l) / g.pw * (g.x1 - g.x0);
  st.zoom = [inv(a), inv(b)];
  draw(st);
}

export default function (component) {
  const { data, parentElement } = component;
  const host = parentElement.querySelector(".ts-lc") || el("div", "ts-lc", parentElement);
  if (!host.__tsChart) host.__tsChart = build(host);
  const st = host.__tsChart;
  let spec = {};
  try { spec = JSON.parse(data.spec); } catch (e) { spec = {}; }
  setSpec(st, spec);
  draw(st);
  host.dataset.state = "drawn";
  return () => {
    window.removeEventListener("mouseup", st.onUp);
    st.resize.disconnect();
    host.__tsChart = null;
  };
}
