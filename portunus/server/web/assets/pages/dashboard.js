// The dashboard: what is connected, what forwards, how much, and what
// needs attention. Tenants see the same for the clients they are granted
// and the rules they own.

import { get, seg } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import { lineChart } from '../chart.js';
import { clientStateBadge, listenText, matchTargetRows, ruleStateBadge, targetHealth, targetText } from '../rulefmt.js';
import { dashboardTraffic } from '../traffic.js';
import {
  badge, card, emptyState, errorState, fmtBytes, fmtNumber, fmtRate, loadingState, pageHeader,
  row, staleBanner, table, timeAgo,
} from '../ui.js';

// Stats are polled per rule; past this many the dashboard samples the first ones.
const MAX_RULES_POLLED = 50;
const POLL_MS = 5000;

function kpi({ label, value, detail = null, iconName, tone = 'neutral', testId }) {
  return h('div', { class: ['kpi', `kpi-${tone}`], 'data-testid': testId },
    h('div', { class: 'kpi-icon' }, icon(iconName)),
    h('div', { class: 'kpi-body' },
      h('span', { class: 'kpi-label' }, label),
      h('span', { class: 'kpi-value' }, value),
      detail ? h('span', { class: 'kpi-detail' }, detail) : null));
}

async function loadStats(rules, signal) {
  const polled = rules.slice(0, MAX_RULES_POLLED);
  const answers = await Promise.all(polled.map((view) =>
    get(`/v1/rules/${seg(view.rule.id)}/stats`, { signal }).catch((e) => {
      if (e.name === 'AbortError') throw e;
      return null;
    })));
  const stats = new Map();
  polled.forEach((view, i) => { if (answers[i]) stats.set(view.rule.id, answers[i]); });
  return stats;
}

function auditSummary(entry) {
  return entry.action || `${entry.method || ''} ${entry.path || ''}`.trim();
}

export async function dashboardPage(root, ctx) {
  const superadmin = ctx.me.role === 'superadmin';
  const banner = h('div');
  const kpis = h('div', { class: 'kpi-grid' });
  const chart = lineChart({
    label: 'Throughput over time',
    series: [{ key: 'in', label: 'In (to targets)', tone: 'primary' }, { key: 'out', label: 'Out (to clients)', tone: 'accent' }],
    format: fmtRate,
  });
  ctx.onLeave(() => chart.destroy());
  let windowMs = 10 * 60 * 1000;
  const ranges = h('div', { class: 'segmented', role: 'group', 'aria-label': 'Chart range' },
    [['10 min', 10], ['30 min', 30], ['1 h', 60]].map(([text, minutes]) => {
      const b = h('button', { type: 'button', class: 'segment', 'aria-pressed': minutes === 10 ? 'true' : 'false' }, text);
      b.addEventListener('click', () => {
        windowMs = minutes * 60 * 1000;
        ranges.querySelectorAll('button').forEach((x) => x.setAttribute('aria-pressed', x === b ? 'true' : 'false'));
        drawChart();
      });
      return b;
    }));
  const topRules = h('div');
  const attention = h('div');
  const audit = h('div');

  function drawChart() {
    chart.setWindow(windowMs);
    chart.update(dashboardTraffic.samples.filter((s) => s.t >= Date.now() - windowMs));
  }

  const content = h('div', { class: 'stack' },
    banner, kpis,
    card({ title: 'Throughput', actions: ranges, body: chart.el, className: 'chart-card' }),
    h('div', { class: 'grid-2' },
      card({ title: superadmin ? 'Top rules' : 'My top rules', actions: h('a', { href: '/rules', class: 'card-link' }, 'All rules', icon('chevron')), body: topRules }),
      card({ title: 'Needs attention', body: attention })),
    superadmin ? card({ title: 'Recent audit events', actions: h('a', { href: '/audit', class: 'card-link' }, 'Audit log', icon('chevron')), body: audit }) : null);

  mount(root,
    pageHeader({
      title: 'Dashboard',
      subtitle: superadmin ? 'Your fleet at a glance.' : `Hello ${ctx.me.display_name || ctx.me.user_id}: your clients and rules at a glance.`,
    }),
    h('div', { class: 'dashboard-body' }, loadingState('Loading the dashboard…')));
  const body = root.querySelector('.dashboard-body');
  let loaded = false;

  async function refresh() {
    let clients;
    let rules;
    let stats;
    let events = null;
    try {
      [clients, rules] = await Promise.all([get('/v1/clients', { signal: ctx.signal }), get('/v1/rules', { signal: ctx.signal })]);
      stats = await loadStats(rules, ctx.signal);
      if (superadmin) {
        events = await get('/v1/audit?limit=8', { signal: ctx.signal }).catch((e) => (e.name === 'AbortError' ? Promise.reject(e) : e));
      }
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      if (!loaded) mount(body, errorState(e, refresh));
      else mount(banner, staleBanner(e));
      return;
    }
    if (!ctx.active) return;
    mount(banner);
    if (!loaded) { mount(body, content); loaded = true; }
    render(clients, rules, stats, events);
  }

  function render(clients, rules, stats, events) {
    const tracker = dashboardTraffic.tracker;
    let rateIn = 0;
    let rateOut = 0;
    let transferred = 0;
    let connections = 0;
    const rates = new Map();
    for (const view of rules) {
      const s = stats.get(view.rule.id);
      if (!s) continue;
      const r = tracker.update(view.rule.id, s);
      rates.set(view.rule.id, r);
      rateIn += r.in;
      rateOut += r.out;
      transferred += (Number(s.bytes_in) || 0) + (Number(s.bytes_out) || 0);
      connections += Number(s.active_connections) || 0;
    }
    tracker.forget(new Set(rules.map((v) => v.rule.id)));
    dashboardTraffic.add({ t: Date.now(), in: rateIn, out: rateOut });
    drawChart();

    const live = clients.filter((c) => c.state !== 'revoked');
    const connected = live.filter((c) => c.connected);
    const active = rules.filter((v) => v.state === 'active');
    const failed = rules.filter((v) => v.state === 'failed');
    const unhealthy = [];
    let reported = false;
    for (const view of rules) {
      matchTargetRows(view.rule, stats.get(view.rule.id)).forEach((r, i) => {
        const health = targetHealth(r);
        if (!health) return;
        reported = true;
        if (!health.healthy) unhealthy.push({ view, target: view.rule.targets[i], health });
      });
    }
    mount(kpis,
      kpi({ label: 'Connected clients', value: `${connected.length} / ${live.length}`, detail: live.length - connected.length ? `${live.length - connected.length} offline` : 'all online', iconName: 'clients', tone: live.length && connected.length < live.length ? 'warning' : 'success', testId: 'kpi-clients' }),
      kpi({ label: 'Active rules', value: `${active.length} / ${rules.length}`, detail: failed.length ? `${failed.length} failed` : 'none failed', iconName: 'rules', tone: failed.length ? 'danger' : 'success', testId: 'kpi-rules' }),
      kpi({ label: 'Unhealthy targets', value: reported ? String(unhealthy.length) : '—', detail: reported ? 'from edge health checks' : 'no health reported yet', iconName: 'target', tone: unhealthy.length ? 'danger' : 'neutral', testId: 'kpi-targets' }),
      kpi({ label: 'Throughput now', value: fmtRate(rateIn + rateOut), detail: `in ${fmtRate(rateIn)} · out ${fmtRate(rateOut)}`, iconName: 'activity', tone: 'primary', testId: 'kpi-throughput' }),
      kpi({ label: 'Active connections', value: fmtNumber(connections), iconName: 'link', testId: 'kpi-connections' }),
      kpi({ label: 'Transferred', value: fmtBytes(transferred), detail: 'since each edge started', iconName: 'download', testId: 'kpi-transferred' }));

    const ranked = rules.filter((v) => stats.has(v.rule.id)).map((view) => {
      const s = stats.get(view.rule.id);
      const r = rates.get(view.rule.id) || { in: 0, out: 0 };
      return { view, rate: r.in + r.out, total: (Number(s.bytes_in) || 0) + (Number(s.bytes_out) || 0) };
    }).sort((a, b) => b.rate - a.rate || b.total - a.total).slice(0, 5);
    const columns = [{ label: 'Rule' }, { label: 'Listen' }, { label: 'State' }, { label: 'Now', className: 'num' }, { label: 'Total', className: 'num' }];
    mount(topRules, ranked.length
      ? table({ columns, caption: 'Top rules', className: 'table-compact', rows: ranked.map(({ view, rate, total }) => row(columns, [
        h('a', { href: `/rules/${view.rule.id}` }, view.rule.name, h('span', { class: 'muted' }, ` #${view.rule.id}`)),
        h('span', { class: 'mono' }, listenText(view.rule)),
        ruleStateBadge(view),
        fmtRate(rate),
        fmtBytes(total),
      ])) })
      : emptyState({ title: 'No rules yet', text: 'Push a rule to start forwarding.', iconName: 'rules', action: h('a', { href: '/rules', class: 'btn btn-sm' }, 'Go to rules') }));

    const offline = live.filter((c) => !c.connected);
    const items = [
      ...offline.map((c) => h('li', { class: 'attention-item' }, icon('clients'), h('span', null, h('strong', null, c.client_name), ' is offline'), clientStateBadge(c))),
      ...failed.map((v) => h('li', { class: 'attention-item' }, icon('rules'), h('a', { href: `/rules/${v.rule.id}` }, `${v.rule.name} #${v.rule.id}`), ruleStateBadge(v))),
      ...unhealthy.map(({ view, target, health }) => h('li', { class: 'attention-item' }, icon('target'),
        h('span', null, h('span', { class: 'mono' }, targetText(target)), ' of ', h('a', { href: `/rules/${view.rule.id}` }, view.rule.name)),
        badge(`down · ${health.failures} failures`, 'danger'))),
    ];
    mount(attention, items.length
      ? h('ul', { class: 'attention-list' }, items)
      : emptyState({ title: 'All good', text: 'Every client is connected, no rule failed and no target is down.', iconName: 'check' }));

    if (superadmin) {
      if (events instanceof Error) {
        mount(audit, errorState(events, null));
      } else if (!events || !events.length) {
        mount(audit, emptyState({ title: 'No audit events yet', text: 'Changes and refused requests show up here.', iconName: 'audit' }));
      } else {
        const cols = [{ label: 'When' }, { label: 'Who' }, { label: 'What' }, { label: 'Outcome' }];
        mount(audit, table({ columns: cols, caption: 'Recent audit events', className: 'table-compact', rows: events.map((e) => row(cols, [
          timeAgo(e.timestamp), e.actor, h('span', { class: 'mono small' }, auditSummary(e)),
          e.outcome === 'deny' ? badge(`denied · ${e.reason}`, 'danger')
            : e.reason && e.reason !== 'ok' ? badge(`failed · ${e.reason}`, 'warning') : badge('allowed', 'success'),
        ])) }));
      }
    }
  }

  ctx.every(POLL_MS, refresh);
}
