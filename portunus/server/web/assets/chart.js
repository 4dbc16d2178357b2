// A small SVG line chart for throughput over time, drawn at the size of its
// container (redrawn when that changes), with a hover readout.

import { h, svg, mount } from './dom.js';

function niceCeiling(value) {
  // Byte rates are shown in binary units, so round within 1024^k steps:
  // ticks then read 512 KiB/s, 1 MiB/s ... rather than 1.95 KiB/s.
  if (value <= 0) return 1;
  const unit = 1024 ** Math.floor(Math.log(value) / Math.log(1024));
  const scaled = value / unit;
  for (const step of [1, 2, 4, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 800, 1024]) {
    if (scaled <= step) return step * unit;
  }
  return 1024 * unit;
}

const MIN_WINDOW_MS = 60 * 1000;

function clockLabel(t, span) {
  const parts = span < 10 * 60 * 1000 ? { hour: '2-digit', minute: '2-digit', second: '2-digit' } : { hour: '2-digit', minute: '2-digit' };
  return new Date(t).toLocaleTimeString([], parts);
}

/**
 * series: [{key, label, tone}] ; format(value) for the axis and readout.
 * update(samples) takes [{t (ms), [key]: value}], oldest first.
 */
export function lineChart({ series, format, windowMs: initialWindow = 10 * 60 * 1000, height = 220, label = 'Chart', compact = false }) {
  const plot = svg('svg', { class: 'chart-svg', role: 'img', 'aria-label': label, height });
  const readout = h('div', { class: 'chart-readout', hidden: true });
  const empty = h('div', { class: 'chart-empty' }, h('span', null, 'Collecting data… the chart fills in as the edges report (every 5 s).'));
  const legend = compact ? null : h('div', { class: 'chart-legend' }, series.map((s) =>
    h('span', { class: 'legend-item' }, h('span', { class: ['legend-swatch', `tone-${s.tone}`] }), s.label)));
  const el = h('div', { class: ['chart', compact && 'chart-compact'] }, legend, h('div', { class: 'chart-area' }, plot, readout, empty));
  let samples = [];
  let windowMs = initialWindow;
  let width = 0;
  let geometry = null;

  function draw() {
    width = plot.clientWidth || plot.parentElement.clientWidth || 600;
    plot.setAttribute('viewBox', `0 0 ${width} ${height}`);
    const now = samples.length ? Math.max(Date.now(), samples[samples.length - 1].t) : Date.now();
    // The window grows from the first sample up to windowMs, so a chart
    // opened a minute ago is not squeezed into its right edge.
    const span = samples.length ? Math.min(windowMs, Math.max(MIN_WINDOW_MS, now - samples[0].t)) : windowMs;
    const start = now - span;
    const visible = samples.filter((s) => s.t >= start);
    empty.hidden = visible.length >= 2;
    const left = compact ? 4 : 64;
    const right = 8;
    const top = 10;
    const bottom = compact ? 4 : 24;
    const innerW = Math.max(10, width - left - right);
    const innerH = height - top - bottom;
    let max = 0;
    for (const s of visible) for (const { key } of series) max = Math.max(max, s[key] || 0);
    const yMax = niceCeiling(Math.max(max, 1024));
    const x = (t) => left + ((t - start) / span) * innerW;
    const y = (v) => top + innerH - (v / yMax) * innerH;
    const parts = [];
    if (!compact) {
      for (let i = 0; i <= 4; i += 1) {
        const value = (yMax / 4) * i;
        const yy = y(value);
        parts.push(svg('line', { x1: left, x2: width - right, y1: yy, y2: yy, class: 'chart-grid' }));
        parts.push(svg('text', { x: left - 8, y: yy + 4, class: 'chart-axis', 'text-anchor': 'end' }, format(value)));
      }
      for (let i = 0; i <= 2; i += 1) {
        if (i === 1 && width < 520) continue; // no room for a middle label on a phone
        const t = start + (span / 2) * i;
        parts.push(svg('text', { x: x(t), y: height - 6, class: 'chart-axis', 'text-anchor': i === 0 ? 'start' : i === 2 ? 'end' : 'middle' }, i === 2 ? 'now' : clockLabel(t, span)));
      }
    }
    if (visible.length >= 2) {
      for (const s of series) {
        const points = visible.map((p) => `${x(p.t).toFixed(1)},${y(p[s.key] || 0).toFixed(1)}`);
        const base = y(0).toFixed(1);
        parts.push(svg('path', { d: `M${x(visible[0].t).toFixed(1)},${base}L${points.join('L')}L${x(visible[visible.length - 1].t).toFixed(1)},${base}Z`, class: ['chart-area-fill', `tone-${s.tone}`] }));
        parts.push(svg('path', { d: `M${points.join('L')}`, class: ['chart-line', `tone-${s.tone}`] }));
      }
    }
    const cursor = svg('line', { x1: 0, x2: 0, y1: top, y2: top + innerH, class: 'chart-cursor', visibility: 'hidden' });
    parts.push(cursor);
    mount(plot, parts);
    geometry = { visible, x, left, innerW, cursor };
    const last = visible[visible.length - 1];
    plot.setAttribute('aria-label', last ? `${label}: ${series.map((s) => `${s.label} ${format(last[s.key] || 0)}`).join(', ')}` : `${label}: no data yet`);
  }

  plot.addEventListener('pointermove', (event) => {
    if (!geometry || geometry.visible.length < 2) return;
    const box = plot.getBoundingClientRect();
    const px = event.clientX - box.left;
    let best = null;
    for (const s of geometry.visible) {
      const d = Math.abs(geometry.x(s.t) - px);
      if (!best || d < best.d) best = { d, s };
    }
    const cx = geometry.x(best.s.t);
    geometry.cursor.setAttribute('x1', cx);
    geometry.cursor.setAttribute('x2', cx);
    geometry.cursor.setAttribute('visibility', 'visible');
    mount(readout,
      h('strong', null, new Date(best.s.t).toLocaleTimeString()),
      series.map((s) => h('span', null, h('span', { class: ['legend-swatch', `tone-${s.tone}`] }), `${s.label} ${format(best.s[s.key] || 0)}`)));
    readout.hidden = false;
    readout.style.left = `${Math.min(Math.max(cx + 12, 0), box.width - 180)}px`;
  });
  plot.addEventListener('pointerleave', () => {
    readout.hidden = true;
    if (geometry) geometry.cursor.setAttribute('visibility', 'hidden');
  });

  const observer = new ResizeObserver(() => {
    if (plot.clientWidth !== width) draw();
  });
  observer.observe(el);

  return {
    el,
    update(next) { samples = next; draw(); },
    setWindow(ms) { windowMs = ms; draw(); },
    destroy() { observer.disconnect(); },
  };
}
