// The audit log (superadmins): every write and every refused request.
// Live mode polls the newest entries every 5 s; history pages back with
// the server's cursor. The download is the server's NDJSON export.

import { get } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import {
  badge, button, emptyState, errorState, fmtTime, loadingState, pageHeader, row, select, staleBanner, table, timeAgo,
} from '../ui.js';

const POLL_MS = 5000;
const PAGE_SIZE = 50;

/**
 * An entry's outcome: denied (authentication, permission, CSRF, throttle),
 * allowed and done, or allowed but refused by the handler (a validation
 * error, a conflict: the reason is its error code).
 */
function outcomeBadge(e) {
  if (e.outcome === 'deny') return badge(`Denied · ${e.reason}`, 'danger');
  if (e.reason && e.reason !== 'ok') return badge(`Failed · ${e.reason}`, 'warning', { title: 'Allowed, but the request was refused: see Details' });
  return badge('Allowed', 'success');
}

function what(entry) {
  return h('div', { class: 'cell-title' },
    h('span', null, entry.action || h('span', { class: 'muted' }, 'request')),
    h('span', { class: 'mono small muted' }, `${entry.method || ''} ${entry.path || ''}`.trim()));
}

function resource(entry) {
  if (!entry.resource_kind && !entry.resource_value) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'mono small' }, [entry.resource_kind, entry.resource_value].filter(Boolean).join(' '));
}

function detailsCell(entry) {
  const extra = { ...(entry.details || {}) };
  if (entry.correlation_id) extra.correlation_id = entry.correlation_id;
  if (!Object.keys(extra).length) return h('span', { class: 'muted' }, '—');
  return h('details', { class: 'inline-details' },
    h('summary', null, 'Details'),
    h('pre', { class: 'code small' }, JSON.stringify(extra, null, 2)));
}

export async function auditPage(root, ctx) {
  let mode = 'live';
  let outcome = '';
  let paused = false;
  // History paging: the cursors that led to each page (null: the first).
  let cursors = [null];
  let nextCursor = null;
  let anchor = null;
  let entries = null;
  const banner = h('div');
  const list = h('div', null, loadingState('Loading the audit log…'));
  const status = h('span', { class: 'muted small', role: 'status' });
  const pager = h('div', { class: 'pager' });

  const outcomeSelect = select('outcome', [['', 'All outcomes'], ['allow', 'Allowed'], ['deny', 'Denied']], { 'aria-label': 'Outcome' });
  const download = h('a', { class: 'btn', download: '', href: '/v1/audit/export' }, icon('download'), 'Download NDJSON');
  const pauseButton = button('Pause', { iconName: 'pause' });
  const tabs = h('div', { class: 'segmented', role: 'tablist', 'aria-label': 'Mode' },
    [['live', 'Live'], ['history', 'History']].map(([value, label]) => h('button', {
      type: 'button', role: 'tab', class: 'segment', 'aria-selected': value === mode ? 'true' : 'false', dataset: { mode: value },
      onClick: () => setMode(value),
    }, label)));

  function exportHref() {
    return `/v1/audit/export${outcome ? `?outcome=${outcome}` : ''}`;
  }

  function setMode(value) {
    mode = value;
    tabs.querySelectorAll('button').forEach((b) => b.setAttribute('aria-selected', b.dataset.mode === mode ? 'true' : 'false'));
    pauseButton.hidden = mode !== 'live';
    cursors = [null];
    anchor = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    entries = null;
    mount(list, loadingState());
    load();
  }

  outcomeSelect.addEventListener('change', () => {
    outcome = outcomeSelect.value;
    download.href = exportHref();
    setMode(mode);
  });
  pauseButton.addEventListener('click', () => {
    paused = !paused;
    mount(pauseButton, icon(paused ? 'play' : 'pause'), paused ? 'Resume' : 'Pause');
    if (!paused) load();
  });

  async function load() {
    const params = new URLSearchParams({ limit: String(mode === 'live' ? 100 : PAGE_SIZE) });
    if (outcome) params.set('outcome', outcome);
    if (mode === 'history') {
      const cursor = cursors[cursors.length - 1];
      if (cursor) params.set('cursor', cursor);
      else params.set('until', anchor);
    }
    const requested = mode;
    let answer;
    try {
      answer = await get(`/v1/audit?${params}`, { signal: ctx.signal });
      mount(banner);
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      if (entries === null) mount(list, errorState(e, load));
      else mount(banner, staleBanner(e));
      return;
    }
    if (!ctx.active || requested !== mode) return;
    if (Array.isArray(answer)) {
      entries = answer;
      nextCursor = null;
    } else {
      entries = answer.entries || [];
      nextCursor = answer.next_cursor || null;
    }
    draw();
  }

  function draw() {
    status.textContent = mode === 'live'
      ? (paused ? 'Paused' : `Live · updated ${new Date().toLocaleTimeString()}`)
      : `Page ${cursors.length} · up to ${anchor ? fmtTime(anchor) : 'now'}`;
    mount(pager, mode === 'history' ? [
      button('Newer', { iconName: 'back', disabled: cursors.length <= 1, onClick: () => { cursors.pop(); load(); } }),
      button('Older', { disabled: !nextCursor, onClick: () => { cursors.push(nextCursor); load(); } }),
    ] : []);
    if (!entries.length) {
      mount(list, emptyState({ title: 'No audit entries', text: outcome ? 'Nothing with this outcome yet.' : 'Writes and refused requests are recorded here.', iconName: 'audit' }));
      return;
    }
    const columns = [{ label: 'When', className: 'nowrap' }, { label: 'Actor' }, { label: 'What' }, { label: 'Resource' }, { label: 'Outcome' }, { label: 'Details' }];
    mount(list, table({
      columns,
      caption: 'Audit entries',
      rows: entries.map((e) => row(columns, [
        timeAgo(e.timestamp),
        h('div', { class: 'cell-title' }, h('span', null, e.actor), e.role ? h('span', { class: 'muted small' }, e.role) : null),
        what(e),
        resource(e),
        outcomeBadge(e),
        detailsCell(e),
      ])),
    }));
  }

  mount(root,
    pageHeader({
      title: 'Audit log',
      subtitle: 'Every change and every refused request, newest first.',
      actions: [download],
    }),
    h('div', { class: 'toolbar' }, tabs, outcomeSelect, pauseButton, h('span', { class: 'toolbar-spacer' }), status),
    banner, list, pager);
  anchor = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  ctx.every(POLL_MS, async () => {
    if (mode === 'live' && !paused) await load();
  });
}
