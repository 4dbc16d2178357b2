// One rule: its settings, live stats and per-target health. Stats come
// over the server-sent-events stream; if the stream cannot be opened or
// breaks, the page polls GET /v1/rules/{id}/stats every 5 s instead.

import { get, seg } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import { lineChart } from '../chart.js';
import { capsText, healthBadge, listenText, matchTargetRows, ruleStateBadge, targetHealth, targetText } from '../rulefmt.js';
import { RateTracker } from '../traffic.js';
import { removeRule } from './rules.js';
import {
  badge, button, card, emptyState, fmtBytes, fmtNumber, fmtRate, pageHeader, parseTime, row, table, timeAgo,
} from '../ui.js';

const POLL_MS = 5000;
const RULE_POLL_MS = 10000;

function stat(label, value, testId, detail = null) {
  return h('div', { class: 'stat', 'data-testid': testId },
    h('span', { class: 'stat-label' }, label),
    h('span', { class: 'stat-value' }, value),
    detail ? h('span', { class: 'stat-detail' }, detail) : null);
}

function settingsList(view) {
  const rule = view.rule;
  const items = [
    ['Client', view.client_name],
    ['Listen', `${listenText(rule)} on ${(rule.listen_addresses || ['0.0.0.0', '::']).join(', ')}`],
    ['Owner', view.owner || '—'],
    ['Balance', rule.targets.length > 1 ? (rule.balance || 'failover').replace('_', ' ') : '—'],
    ['Health checks', rule.health_check_interval_secs ? `every ${rule.health_check_interval_secs} s` : 'passive'],
    ['SNI', rule.sni_pattern || (rule.sni_fallback ? 'fallback' : '—')],
    ['Accepts PROXY', rule.accept_proxy_protocol ? `from ${(rule.trusted_sources || []).join(', ')}` : 'no'],
    ['Rate limits', capsText(rule) || 'none'],
    ['Created', view.created_at ? new Date(view.created_at).toLocaleString() : '—'],
  ];
  if (rule.protocol === 'udp') {
    items.push(['UDP max flows', String(rule.udp_max_flows ?? 1024)], ['UDP idle timeout', `${rule.udp_flow_idle_secs ?? 60} s`]);
  }
  return h('dl', { class: 'props-grid' }, items.map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, v))));
}

export async function ruleDetailPage(root, ctx) {
  const id = ctx.params.id;
  let view = await get(`/v1/rules/${seg(id)}`, { signal: ctx.signal });
  if (!ctx.active) return;
  ctx.setTitle(`Rule ${view.rule.name}`);
  const tracker = new RateTracker();
  const samples = [];
  const statsBox = h('div', { class: 'stat-grid' });
  const liveBadge = h('span', { class: 'live-indicator', 'data-testid': 'live-mode' });
  const updated = h('span', { class: 'muted small', 'data-testid': 'stats-updated' });
  const targetsBox = h('div');
  const stateBox = h('span');
  const chart = lineChart({
    label: 'Rule throughput',
    series: [{ key: 'in', label: 'In', tone: 'primary' }, { key: 'out', label: 'Out', tone: 'accent' }],
    format: fmtRate,
    windowMs: 5 * 60 * 1000,
    height: 180,
  });
  ctx.onLeave(() => chart.destroy());
  let lastStats = null;

  function setMode(mode) {
    const text = { stream: 'Live · streaming', polling: 'Live · polling every 5 s', connecting: 'Connecting…', removed: 'Rule removed' }[mode];
    mount(liveBadge, h('span', { class: ['live-dot', `live-${mode}`], 'aria-hidden': 'true' }), text);
    liveBadge.dataset.mode = mode;
  }

  function showStats(stats) {
    lastStats = stats;
    const rate = tracker.update(view.rule.id, stats);
    samples.push({ t: Date.now(), in: rate.in, out: rate.out });
    if (samples.length > 400) samples.shift();
    chart.update(samples);
    const udp = view.rule.protocol === 'udp';
    mount(statsBox,
      stat('Bytes in', fmtBytes(stats.bytes_in), 'stat-bytes-in', `${fmtNumber(stats.bytes_in)} B · now ${fmtRate(rate.in)}`),
      stat('Bytes out', fmtBytes(stats.bytes_out), 'stat-bytes-out', `${fmtNumber(stats.bytes_out)} B · now ${fmtRate(rate.out)}`),
      udp
        ? stat('Active flows', fmtNumber(stats.active_flows), 'stat-flows', `${fmtNumber(stats.flows_dropped_overflow)} dropped (overflow)`)
        : stat('Active connections', fmtNumber(stats.active_connections), 'stat-connections', `${fmtNumber(stats.total_connections)} in all`),
      udp
        ? stat('Datagrams', `${fmtNumber(stats.datagrams_in)} / ${fmtNumber(stats.datagrams_out)}`, 'stat-datagrams', 'in / out')
        : stat('Connect failures', fmtNumber(stats.connect_failures), 'stat-connect-failures'),
      stat('DNS failures', fmtNumber(stats.dns_failures), 'stat-dns'),
      stat('Target failovers', fmtNumber(stats.target_failovers_total), 'stat-failovers',
        stats.rate_limit_rejects ? `${fmtNumber(stats.rate_limit_rejects)} rate-limit rejects` : null));
    drawUpdated();
    drawTargets();
  }

  function drawUpdated() {
    if (!lastStats) return;
    updated.textContent = lastStats.updated_at ? `Last report ${timeAgoText(lastStats.updated_at)}` : 'No report from the client yet';
  }

  function drawTargets() {
    const rows = matchTargetRows(view.rule, lastStats);
    // Edges track health per target only where there is a choice to make:
    // a single target's traffic and failures are the rule's own (above).
    const multi = view.rule.targets.length > 1;
    const columns = multi
      ? [{ label: 'Target' }, { label: 'Priority' }, { label: 'PROXY' }, { label: 'Health' },
        { label: 'Conns', className: 'num' }, { label: 'In · out', className: 'num' },
        { label: 'Succeeded' }, { label: 'Failed' }]
      : [{ label: 'Target' }, { label: 'PROXY' }, { label: 'Health' }];
    const when = (t) => (t ? timeAgo(t) : h('span', { class: 'muted' }, '—'));
    mount(targetsBox, table({
      columns,
      caption: 'Targets',
      rows: view.rule.targets.map((t, i) => {
        const proxy = t.proxy_protocol ? badge(t.proxy_protocol, 'info') : h('span', { class: 'muted' }, 'off');
        if (!multi) {
          return row(columns, [
            h('span', { class: 'mono' }, targetText(t)), proxy,
            h('span', { class: 'muted', title: 'Health is tracked per target for rules with several targets' },
              'as the rule (see connect failures above)'),
          ]);
        }
        const health = targetHealth(rows[i]);
        const r = rows[i] || {};
        return row(columns, [
          h('span', { class: 'mono' }, targetText(t)),
          String(t.priority ?? 0),
          proxy,
          healthBadge(health),
          r.total_connections !== undefined ? `${fmtNumber(r.active_connections || 0)} · ${fmtNumber(r.total_connections)}` : '—',
          r.bytes_in !== undefined ? `${fmtBytes(r.bytes_in)} · ${fmtBytes(r.bytes_out || 0)}` : '—',
          when(health && health.lastSuccess),
          when(health && health.lastFailure),
        ]);
      }),
    }));
  }

  // -- live stats: stream first, polling as the fallback ---------------------
  let source = null;
  let polling = false;
  const stopStream = () => { if (source) { source.close(); source = null; } };
  ctx.onLeave(stopStream);

  function startPolling() {
    if (polling || !ctx.active) return;
    polling = true;
    setMode('polling');
    ctx.every(POLL_MS, async () => {
      const stats = await get(`/v1/rules/${seg(id)}/stats?per_target=true`, { signal: ctx.signal });
      if (ctx.active) showStats(stats);
    });
  }

  function startStream() {
    if (typeof EventSource === 'undefined') { startPolling(); return; }
    setMode('connecting');
    source = new EventSource(`/v1/rules/${seg(id)}/stats/stream?per_target=true`);
    source.addEventListener('open', () => setMode('stream'));
    source.addEventListener('stats', (event) => {
      try { showStats(JSON.parse(event.data)); } catch (e) { console.warn('bad stats event', e); }
    });
    source.addEventListener('removed', () => {
      stopStream();
      setMode('removed');
      mount(stateBox, badge('Removed', 'neutral'));
    });
    source.addEventListener('error', () => {
      // Refused (404 on an older server, 403, 429 too many streams) or
      // broken: poll instead, which also reports a lost session.
      stopStream();
      startPolling();
    });
  }

  const clock = setInterval(drawUpdated, 1000);
  ctx.onLeave(() => clearInterval(clock));

  function header() {
    return pageHeader({
      title: h('span', null, view.rule.name, h('span', { class: 'muted title-id' }, ` #${view.rule.id}`)),
      subtitle: h('span', { class: 'subtitle-row' }, stateBox, h('span', { class: 'mono' }, listenText(view.rule)), ' on ', view.client_name),
      back: { href: '/rules', label: 'Rules' },
      actions: [button('Remove', { kind: 'danger', iconName: 'trash', onClick: async () => { if (await removeRule(view, () => {})) ctx.navigate('/rules'); } })],
    });
  }

  mount(stateBox, ruleStateBadge(view));
  mount(root,
    header(),
    view.state === 'failed' && view.state_reason
      ? h('div', { class: 'banner banner-danger', role: 'alert' }, icon('alert'), h('span', null, `The client could not activate this rule: ${view.state_reason}`))
      : null,
    card({ title: 'Live stats', actions: h('div', { class: 'card-meta' }, updated, liveBadge), body: h('div', { class: 'stack' }, statsBox, chart.el) }),
    card({ title: `Targets (${view.rule.targets.length})`, body: targetsBox }),
    card({ title: 'Settings', body: settingsList(view) }));
  mount(statsBox, emptyState({ title: 'Waiting for stats…', text: 'The client reports every 5 seconds.', iconName: 'activity' }));
  drawTargets();
  startStream();

  // The rule's state (active, failed ...) can change while the page is open.
  ctx.every(RULE_POLL_MS, async () => {
    try {
      view = await get(`/v1/rules/${seg(id)}`, { signal: ctx.signal });
    } catch (e) {
      if (e.status === 404 && ctx.active) {
        stopStream();
        setMode('removed');
        mount(stateBox, badge('Removed', 'neutral'));
      }
      throw e;
    }
    if (ctx.active) mount(stateBox, ruleStateBadge(view));
  });
}

function timeAgoText(value) {
  const t = parseTime(value);
  if (t === null) return '—';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  return s < 2 ? 'just now' : s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}
