// How rules, clients and their states are shown, in one place for every
// page that lists them.

import { h } from './dom.js';
import { badge, fmtRate, fmtNumber, parseTime } from './ui.js';

export function ruleStateBadge(view) {
  const state = view.state || 'pending';
  if (state === 'active') return badge('Active', 'success', { dot: true });
  if (state === 'failed') return badge(view.state_reason ? `Failed: ${view.state_reason}` : 'Failed', 'danger', { dot: true, title: view.state_reason });
  return badge(state.charAt(0).toUpperCase() + state.slice(1), 'warning', { dot: true });
}

export function clientStateBadge(client) {
  if (client.state === 'connected') return badge('Connected', 'success', { dot: true });
  if (client.state === 'revoked') return badge('Revoked', 'danger', { dot: true });
  return badge('Disconnected', 'neutral', { dot: true });
}

export function targetText(target) {
  const host = target.host.includes(':') ? `[${target.host}]` : target.host;
  return `${host}:${target.ports ?? target.port}`;
}

export function listenText(rule) {
  return `${rule.protocol.toUpperCase()} ${rule.listen}`;
}

export function targetsSummary(rule) {
  const targets = rule.targets || [];
  if (!targets.length) return h('span', { class: 'muted' }, '—');
  const extra = targets.length - 1;
  return h('span', { class: 'targets-cell' },
    h('span', { class: 'mono' }, targetText(targets[0])),
    extra > 0 ? badge(`+${extra} · ${(rule.balance || 'failover').replace('_', ' ')}`, 'info', { title: targets.map(targetText).join(', ') }) : null);
}

const CAP_LABELS = {
  bandwidth_in_bps: (v) => `in ${fmtRate(v)}`,
  bandwidth_out_bps: (v) => `out ${fmtRate(v)}`,
  new_connections_per_sec: (v) => `${fmtNumber(v)} conn/s`,
  concurrent_connections: (v) => `${fmtNumber(v)} conns`,
};

export function capsText(rule) {
  const limit = rule.rate_limit;
  if (!limit) return '';
  return Object.entries(CAP_LABELS).filter(([key]) => limit[key]).map(([key, fmt]) => fmt(limit[key])).join(' · ');
}

export function capsCell(rule) {
  const text = capsText(rule);
  return text ? h('span', { class: 'caps' }, text) : h('span', { class: 'muted' }, '—');
}

export function sniCell(rule) {
  if (rule.sni_pattern) return h('span', { class: 'mono' }, rule.sni_pattern);
  if (rule.sni_fallback) return badge('SNI fallback', 'neutral');
  return h('span', { class: 'muted' }, '—');
}

/**
 * A target's health from a stats answer's per_target row, in either shape
 * the server may send (the edge's failover snapshot, or Portunus's
 * {health: {healthy, consecutive_failures, last_*_at_unix_ms}}).
 * Returns null when the row says nothing about health.
 */
export function targetHealth(row) {
  if (!row) return null;
  const health = row.health;
  if (health && typeof health === 'object') {
    return {
      healthy: Boolean(health.healthy),
      failures: health.consecutive_failures || 0,
      lastSuccess: health.last_success_at_unix_ms ? health.last_success_at_unix_ms / 1000 : null,
      lastFailure: health.last_failure_at_unix_ms ? health.last_failure_at_unix_ms / 1000 : null,
    };
  }
  if (typeof health === 'string') {
    return {
      healthy: health === 'healthy',
      failures: row.consecutive_failures || 0,
      lastSuccess: row.last_success_at ?? null,
      lastFailure: row.last_failure_at ?? null,
    };
  }
  return null;
}

export function healthBadge(health) {
  if (!health) return badge('Not reported', 'neutral', { title: 'The edge has not reported health for this target' });
  return health.healthy ? badge('Healthy', 'success', { dot: true }) : badge(`Down (${health.failures} failures)`, 'danger', { dot: true });
}

/** Per-target rows of a stats answer matched to a rule's targets (by host and port, else by position). */
export function matchTargetRows(rule, stats) {
  const rows = (stats && Array.isArray(stats.per_target)) ? stats.per_target : [];
  return (rule.targets || []).map((target, index) => {
    const port = String(target.ports).split('-')[0];
    return rows.find((r) => r.host === target.host && String(r.port ?? r.ports ?? '').split('-')[0] === port) || rows[index] || null;
  });
}

/** Milliseconds of the moment a stats answer was measured (edge clock when known). */
export function statsMoment(stats) {
  if (!stats) return null;
  if (Number.isFinite(stats.sent_at_ms)) return stats.sent_at_ms;
  return parseTime(stats.updated_at);
}
