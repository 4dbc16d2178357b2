// Rules: the list (polled every 5 s) and the push form. The form sends
// what the operator wrote and lets the server judge it: every problem the
// server finds comes back with its field and is shown next to it.

import { del, get, post, seg } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import { capsCell, listenText, ruleStateBadge, sniCell, targetsSummary } from '../rulefmt.js';
import {
  button, checkbox, clearErrors, confirmDialog, emptyState, errorState, field, iconButton, input,
  loadingState, openDialog, pageHeader, row, select, showErrors, staleBanner, table, toast,
} from '../ui.js';

const POLL_MS = 5000;
const MAX_TARGETS = 8;

// Errors without a `field` that still belong to one input.
const CODE_FIELDS = {
  port_in_use: 'listen',
  exceeds_cap: 'listen',
  port_outside_grant: 'listen',
  client_not_found: 'client',
  client_name_ambiguous: 'client',
  client_not_connected: 'client',
  client_revoked: 'client',
  client_not_granted: 'client',
  protocol_not_granted: 'protocol',
  unsupported_protocol: 'protocol',
  'conflict.sni_route_duplicate': 'sni_pattern',
  'conflict.sni_fallback_duplicate': 'sni_fallback',
  'conflict.legacy_to_sni_unsupported': 'sni_pattern',
  sni_unsupported_by_client: 'sni_pattern',
  proxy_protocol_unsupported_by_client: 'targets',
  multi_target_unsupported_by_client: 'targets',
  rate_limit_unsupported_by_client: 'rate_limit',
};

const RATE_FIELDS = [
  ['bandwidth_in_bps', 'Bandwidth in (bytes/s)', 'Client to target, whole rule. 12500000 = 100 Mbit/s.'],
  ['bandwidth_out_bps', 'Bandwidth out (bytes/s)', 'Target back to client.'],
  ['new_connections_per_sec', 'New connections per second', null],
  ['concurrent_connections', 'Concurrent connections', null],
];
const BURST_FIELDS = [
  ['bandwidth_in_burst', 'Bandwidth in burst (bytes)'],
  ['bandwidth_out_burst', 'Bandwidth out burst (bytes)'],
  ['new_connections_burst', 'New connections burst'],
];

function numberOrText(text) {
  const t = String(text ?? '').trim();
  if (t === '') return undefined;
  return /^-?\d+$/.test(t) ? Number(t) : t;
}

function words(text) {
  return String(text ?? '').split(/[\s,]+/).filter(Boolean);
}

function segmented(name, options, value) {
  return h('div', { class: 'segmented', role: 'radiogroup', 'data-field': name },
    options.map(([v, label]) => h('label', { class: 'segment' },
      h('input', { type: 'radio', name, value: v, checked: v === value }), h('span', null, label))));
}

function section(title, ...content) {
  return h('fieldset', { class: 'form-section' }, h('legend', null, title), ...content);
}

function disclosure(title, hint, ...content) {
  return h('details', { class: 'disclosure form-section' },
    h('summary', null, h('span', null, title), hint ? h('span', { class: 'summary-hint' }, hint) : null), h('div', { class: 'disclosure-body' }, ...content));
}

/** The push form, in a dialog. `clients` are the ones the user may push to. */
export function pushRuleDialog({ clients, onPushed, preset = {} }) {
  const dlg = openDialog({ title: 'Push a rule', description: 'The client binds the listen port(s) and forwards to the targets.', size: 'lg' });
  const usable = clients.filter((c) => c.state !== 'revoked');
  const clientSelect = select('client', [
    ['', usable.length ? 'Choose a client…' : 'No client available'],
    ...usable.map((c) => [c.client_id, `${c.client_name}${c.connected ? '' : ' (offline)'}`]),
  ], { value: preset.client || (usable.length === 1 ? usable[0].client_id : '') });
  const targetsBox = h('div', { class: 'targets-editor', 'data-field': 'targets' });
  let multi = false;

  function targetRow() {
    const remove = iconButton('trash', 'Remove this target', () => { rowEl.remove(); reindex(); });
    const rowEl = h('div', { class: 'target-row' },
      field({ label: 'Host', control: input('host', { placeholder: '10.0.0.5 or backend.internal' }), className: 'grow-2' }),
      field({ label: 'Port', control: input('port', { placeholder: '80', inputmode: 'numeric' }), className: 'w-port' }),
      field({ label: 'Priority', control: input('priority', { placeholder: '0', inputmode: 'numeric' }), className: 'w-small multi-only' }),
      field({ label: 'Weight', control: input('weight', { placeholder: '1', inputmode: 'numeric' }), className: 'w-small multi-only' }),
      field({ label: 'PROXY protocol', control: select('proxy_protocol', [['', 'Off'], ['v1', 'v1'], ['v2', 'v2']]), className: 'w-proxy' }),
      h('div', { class: 'target-remove multi-only' }, remove));
    return rowEl;
  }

  function reindex() {
    const rows = [...targetsBox.querySelectorAll('.target-row')];
    rows.forEach((r, i) => {
      r.querySelectorAll('.field').forEach((f) => {
        const control = f.querySelector('input, select');
        f.dataset.field = `targets[${i}].${control.name}`;
      });
      r.setAttribute('aria-label', `Target ${i + 1}`);
    });
    addButton.disabled = rows.length >= MAX_TARGETS;
    rows.forEach((r) => { r.querySelector('.target-remove button').disabled = rows.length <= 1; });
  }

  const addButton = button('Add target', { iconName: 'plus', kind: 'sm', onClick: () => {
    targetsBox.append(targetRow());
    reindex();
    targetsBox.lastElementChild.querySelector('input').focus();
  } });
  const multiOnly = h('div', { class: 'form-grid multi-only' },
    field({ label: 'Balance', control: select('balance', [['failover', 'Failover (by priority)'], ['round_robin', 'Round robin'], ['weighted', 'Weighted'], ['source_hash', 'Source hash']]), name: 'balance' }),
    field({ label: 'Health-check interval (s)', control: input('health_check_interval_secs', { placeholder: 'passive only', inputmode: 'numeric' }), name: 'health_check_interval_secs', optional: true,
      hint: '1 to 3600: probe each target this often. Empty: a target is marked down only when connections fail.' }));

  const modeSwitch = segmented('target_mode', [['single', 'Single target'], ['multi', 'Several targets']], 'single');
  const setMode = (value) => {
    multi = value === 'multi';
    form.classList.toggle('is-multi', multi);
    if (!multi) [...targetsBox.querySelectorAll('.target-row')].slice(1).forEach((r) => r.remove());
    else if (targetsBox.children.length < 2) targetsBox.append(targetRow());
    reindex();
  };
  modeSwitch.addEventListener('change', (e) => setMode(e.target.value));

  const sniSection = disclosure('TLS SNI routing', 'TCP, single port',
    h('div', { class: 'form-grid' },
      field({ label: 'SNI pattern', control: input('sni_pattern', { placeholder: 'app.example.com or *.example.com' }), name: 'sni_pattern', optional: true,
        hint: 'Route TLS connections whose server name matches; several rules can share the port.' }),
      h('div', { class: 'field' }, checkbox('sni_fallback', 'Fallback: take the connections no pattern matched'))));
  const rateSection = disclosure('Rate limits', 'optional caps',
    h('div', { class: 'form-grid', 'data-field': 'rate_limit' },
      RATE_FIELDS.map(([key, label, hint]) => field({ label, control: input(key, { inputmode: 'numeric' }), name: `rate_limit.${key}`, hint }))),
    disclosure('Advanced: bursts', null,
      h('div', { class: 'form-grid' }, BURST_FIELDS.map(([key, label]) => field({ label, control: input(key, { inputmode: 'numeric' }), name: `rate_limit.${key}` })))));
  const udpFields = h('div', { class: 'form-grid udp-only' },
    field({ label: 'UDP max flows', control: input('udp_max_flows', { placeholder: '1024', inputmode: 'numeric' }), name: 'udp_max_flows', optional: true }),
    field({ label: 'UDP flow idle timeout (s)', control: input('udp_flow_idle_secs', { placeholder: '60', inputmode: 'numeric' }), name: 'udp_flow_idle_secs', optional: true }));
  const advanced = disclosure('Advanced', 'addresses, PROXY accept, UDP',
    h('div', { class: 'form-grid' },
      field({ label: 'Listen addresses', control: input('listen_addresses', { placeholder: '0.0.0.0, ::' }), name: 'listen_addresses', optional: true,
        hint: 'IP addresses the edge binds, comma separated. 127.0.0.1 for a loopback-only rule.' }),
      field({ label: 'Trusted PROXY sources', control: input('trusted_sources', { placeholder: '10.0.0.0/8' }), name: 'trusted_sources', optional: true,
        hint: 'CIDRs allowed to send PROXY headers (with the box below).' })),
    h('div', { class: 'check-row' },
      checkbox('accept_proxy_protocol', 'Accept PROXY protocol headers from the trusted sources'),
      checkbox('prefer_ipv6', 'Prefer IPv6 when a target name has both')),
    udpFields);

  const form = h('form', { class: 'form rule-form', novalidate: true },
    section('Where it listens',
      h('div', { class: 'form-grid' },
        field({ label: 'Client', control: clientSelect, name: 'client' }),
        field({ label: 'Rule name', control: input('name', { placeholder: 'web' }), name: 'name', optional: true }),
        h('div', { class: 'field', 'data-field': 'protocol' }, h('span', { class: 'field-label' }, 'Protocol'), segmented('protocol', [['tcp', 'TCP'], ['udp', 'UDP']], preset.protocol || 'tcp')),
        field({ label: 'Listen port or range', control: input('listen', { placeholder: '8080 or 8000-8010', inputmode: 'numeric', value: preset.listen || '' }), name: 'listen',
          hint: 'A range forwards port A+k to target port C+k (at most 1024 ports).' }))),
    section('Where it forwards',
      modeSwitch,
      targetsBox,
      h('div', { class: 'multi-only add-target' }, addButton),
      multiOnly),
    sniSection, rateSection, advanced);

  form.addEventListener('change', (e) => {
    if (e.target.name === 'protocol') form.classList.toggle('is-udp', e.target.value === 'udp');
  });
  form.classList.toggle('is-udp', (preset.protocol || 'tcp') === 'udp');
  targetsBox.append(targetRow());
  reindex();

  function body() {
    const data = new FormData(form);
    const out = { client: data.get('client') || '', protocol: data.get('protocol') || 'tcp' };
    if (!out.client) delete out.client;
    const name = String(data.get('name') || '').trim();
    if (name) out.name = name;
    const listen = numberOrText(data.get('listen'));
    if (listen !== undefined) out.listen = listen;
    out.targets = [...targetsBox.querySelectorAll('.target-row')].map((r) => {
      const value = (n) => r.querySelector(`[name="${n}"]`).value;
      const target = { host: value('host').trim() };
      const port = numberOrText(value('port'));
      if (port !== undefined) target.port = port;
      if (multi) {
        const priority = numberOrText(value('priority'));
        const weight = numberOrText(value('weight'));
        if (priority !== undefined) target.priority = priority;
        if (weight !== undefined) target.weight = weight;
      }
      if (value('proxy_protocol')) target.proxy_protocol = value('proxy_protocol');
      return target;
    });
    if (multi) {
      out.balance = data.get('balance');
      const interval = numberOrText(data.get('health_check_interval_secs'));
      if (interval !== undefined) out.health_check_interval_secs = interval;
    }
    if (out.protocol === 'tcp') {
      const sni = String(data.get('sni_pattern') || '').trim();
      if (sni) out.sni_pattern = sni;
      if (data.get('sni_fallback')) out.sni_fallback = true;
    }
    const limit = {};
    for (const [key] of [...RATE_FIELDS, ...BURST_FIELDS]) {
      const v = numberOrText(form.querySelector(`[data-field="rate_limit.${key}"] input`).value);
      if (v !== undefined) limit[key] = v;
    }
    if (Object.keys(limit).length) out.rate_limit = limit;
    const addresses = words(data.get('listen_addresses'));
    if (addresses.length) out.listen_addresses = addresses;
    if (data.get('accept_proxy_protocol')) out.accept_proxy_protocol = true;
    const trusted = words(data.get('trusted_sources'));
    if (trusted.length) out.trusted_sources = trusted;
    if (data.get('prefer_ipv6')) out.prefer_ipv6 = true;
    if (out.protocol === 'udp') {
      const flows = numberOrText(data.get('udp_max_flows'));
      const idle = numberOrText(data.get('udp_flow_idle_secs'));
      if (flows !== undefined) out.udp_max_flows = flows;
      if (idle !== undefined) out.udp_flow_idle_secs = idle;
    }
    return out;
  }

  const submit = button('Push rule', { kind: 'primary', iconName: 'rules', type: 'submit' });
  submit.setAttribute('form', 'push-rule-form');
  form.id = 'push-rule-form';
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    // Read the form before disabling it: disabled fields are not form data.
    const request = body();
    dlg.setBusy(true);
    let view;
    try {
      view = await post('/v1/rules', request);
    } catch (e) {
      dlg.setBusy(false);
      if (e.code === 'ack_timeout') {
        dlg.close();
        toast('The client did not confirm in time; the rule stays pending. Check the client.', 'error');
        onPushed(null);
        return;
      }
      showErrors(form, e, { fieldFor: (code) => CODE_FIELDS[code] || (code.endsWith('_unsupported_by_client') ? 'client' : null) });
      return;
    }
    dlg.close();
    toast(`Rule #${view.rule.id} ${view.rule.name} pushed: ${view.state}.`, view.state === 'active' ? 'success' : 'info');
    onPushed(view);
  });

  mount(dlg.body, usable.length ? form : emptyState({
    title: 'No client to push to',
    text: 'Connect a client first (superadmins), or ask a superadmin for a grant on one.',
    iconName: 'clients',
  }));
  mount(dlg.footer, button('Cancel', { onClick: () => dlg.close() }), usable.length ? submit : null);
  if (usable.length) (clientSelect.value ? form.querySelector('[name="listen"]') : clientSelect).focus();
  return dlg;
}

export async function removeRule(view, onDone) {
  const ok = await confirmDialog({
    title: `Remove rule ${view.rule.name} #${view.rule.id}?`,
    message: `The client stops accepting on ${listenText(view.rule)} and drains open connections.`,
    confirmLabel: 'Remove rule',
    danger: true,
  });
  if (!ok) return false;
  try {
    await del(`/v1/rules/${seg(view.rule.id)}`);
    toast(`Rule #${view.rule.id} removed.`, 'success');
    onDone();
    return true;
  } catch (e) {
    toast(`Could not remove the rule: ${e.message}`, 'error');
    return false;
  }
}

function optionsOf(values, allLabel) {
  return [['', allLabel], ...[...values].sort().map((v) => [v, v])];
}

export async function rulesPage(root, ctx) {
  const superadmin = ctx.me.role === 'superadmin';
  const banner = h('div');
  const list = h('div', null, loadingState('Loading rules…'));
  const filters = { text: '', client: ctx.query.get('client') || '', owner: ctx.query.get('owner') || '', state: '' };
  let rules = null;
  let clients = [];

  const search = input('q', { type: 'search', placeholder: 'Filter by name, port or target', 'aria-label': 'Filter rules' });
  search.addEventListener('input', () => { filters.text = search.value.trim().toLowerCase(); draw(); });
  const clientFilter = h('select', { class: 'input select', 'aria-label': 'Client' });
  const ownerFilter = h('select', { class: 'input select', 'aria-label': 'Owner' });
  const stateFilter = select('state', [['', 'Any state'], ['active', 'Active'], ['pending', 'Pending'], ['failed', 'Failed']], { 'aria-label': 'State' });
  clientFilter.addEventListener('change', () => { filters.client = clientFilter.value; draw(); });
  ownerFilter.addEventListener('change', () => { filters.owner = ownerFilter.value; draw(); });
  stateFilter.addEventListener('change', () => { filters.state = stateFilter.value; draw(); });

  const refresh = async () => {
    try {
      [rules, clients] = await Promise.all([get('/v1/rules', { signal: ctx.signal }), get('/v1/clients', { signal: ctx.signal })]);
      mount(banner);
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      if (rules === null) mount(list, errorState(e, refresh));
      else mount(banner, staleBanner(e));
      return;
    }
    if (ctx.active) draw();
  };

  function fillSelect(sel, options, value) {
    const current = [...sel.options].map((o) => o.value).join('\n');
    if (current !== options.map(([v]) => v).join('\n')) mount(sel, options.map(([v, label]) => h('option', { value: v }, label)));
    sel.value = value;
  }

  function draw() {
    fillSelect(clientFilter, optionsOf(new Set(rules.map((v) => v.client_name)), 'All clients'), filters.client);
    if (superadmin) fillSelect(ownerFilter, optionsOf(new Set(rules.map((v) => v.owner || '(none)')), 'All owners'), filters.owner);
    const shown = rules.filter((v) => {
      if (filters.client && v.client_name !== filters.client && v.client_id !== filters.client) return false;
      if (filters.owner && (v.owner || '(none)') !== filters.owner) return false;
      if (filters.state && v.state !== filters.state) return false;
      if (filters.text) {
        const hay = [v.rule.name, `#${v.rule.id}`, v.rule.listen, v.rule.sni_pattern, ...v.rule.targets.map((t) => `${t.host}:${t.ports}`)].join(' ').toLowerCase();
        if (!hay.includes(filters.text)) return false;
      }
      return true;
    });
    if (!rules.length) {
      mount(list, emptyState({
        title: 'No rules yet',
        text: superadmin ? 'Push a rule to make a client forward a port.' : 'Push a rule on a client and ports you are granted.',
        iconName: 'rules',
        action: button('Push a rule', { kind: 'primary', iconName: 'plus', onClick: openPush }),
      }));
      return;
    }
    if (!shown.length) {
      mount(list, emptyState({ title: 'No rule matches the filters', text: 'Clear a filter to see more.', iconName: 'search' }));
      return;
    }
    const columns = [
      { label: 'Rule' }, { label: 'Client' }, { label: 'Listen' }, { label: 'Targets' }, { label: 'SNI' }, { label: 'Caps' },
      ...(superadmin ? [{ label: 'Owner' }] : []), { label: 'State' }, { label: 'Actions', className: 'actions' },
    ];
    mount(list, table({
      columns,
      caption: 'Rules',
      rows: shown.map((v) => row(columns, [
        h('a', { href: `/rules/${v.rule.id}`, class: 'cell-title' }, h('strong', null, v.rule.name), h('span', { class: 'muted small' }, `#${v.rule.id}`)),
        v.client_name,
        h('span', { class: 'mono' }, listenText(v.rule)),
        targetsSummary(v.rule),
        sniCell(v.rule),
        capsCell(v.rule),
        ...(superadmin ? [v.owner || h('span', { class: 'muted' }, '—')] : []),
        ruleStateBadge(v),
        h('div', { class: 'row-actions' },
          h('a', { href: `/rules/${v.rule.id}`, class: 'icon-btn', 'aria-label': `Details of rule ${v.rule.id}`, title: 'Details' }, icon('chevron')),
          iconButton('trash', `Remove rule ${v.rule.id}`, () => removeRule(v, refresh), { class: 'icon-btn danger' })),
      ], { 'data-rule-id': v.rule.id })),
    }));
  }

  function openPush() {
    pushRuleDialog({ clients, onPushed: () => refresh() });
  }

  mount(root,
    pageHeader({
      title: 'Rules',
      subtitle: superadmin ? 'Every forwarding rule, on every client. Updates every 5 seconds.' : 'Your forwarding rules. Updates every 5 seconds.',
      actions: [button('Push a rule', { kind: 'primary', iconName: 'plus', onClick: openPush })],
    }),
    h('div', { class: 'toolbar' }, h('div', { class: 'search' }, icon('search'), search), clientFilter, superadmin ? ownerFilter : null, stateFilter),
    banner, list);
  ctx.every(POLL_MS, refresh);
}
