// Clients: the edges, live (polled every 5 s). Superadmins connect new
// ones (a one-line enroll command with a countdown), rename, re-enroll,
// revoke and delete them.

import { del, get, patch, post, seg } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import { clientStateBadge } from '../rulefmt.js';
import {
  button, checkbox, clearErrors, codeBlock, confirmDialog, emptyState, errorState, field, iconButton,
  input, loadingState, openDialog, pageHeader, parseTime, row, select, shortId, showErrors, staleBanner,
  table, timeAgo, toast,
} from '../ui.js';

const POLL_MS = 5000;

function countdown(expiresAt, onExpire) {
  const el = h('span', { class: 'countdown', 'data-testid': 'enroll-countdown' });
  const end = parseTime(expiresAt);
  let timer = null;
  const tick = () => {
    const left = Math.max(0, Math.round((end - Date.now()) / 1000));
    if (left <= 0) {
      el.textContent = 'Expired';
      el.classList.add('expired');
      if (timer) clearInterval(timer);
      onExpire();
      return;
    }
    const h_ = Math.floor(left / 3600);
    const m = Math.floor((left % 3600) / 60);
    const s = String(left % 60).padStart(2, '0');
    el.textContent = h_ ? `${h_} h ${String(m).padStart(2, '0')} min` : `${m}:${s}`;
  };
  tick();
  timer = setInterval(tick, 1000);
  return { el, stop: () => clearInterval(timer) };
}

/** The dialog that shows an enrollment's command, until it expires or the client connects. */
export function showEnrollment(enrollment, { title = 'Connect a client' } = {}) {
  let watch = null;
  let clock = null;
  const dlg = openDialog({
    title,
    description: `Enrollment for ${enrollment.client_name}`,
    size: 'lg',
    onClose: () => { if (watch) clearInterval(watch); if (clock) clock.stop(); },
  });
  const status = h('div', { class: 'enroll-status', role: 'status', 'data-testid': 'enroll-status' },
    h('span', { class: 'spinner spinner-sm', 'aria-hidden': 'true' }), 'Waiting for the client to connect…');
  const expired = h('div', { class: 'notice notice-warning', hidden: true, role: 'alert' }, icon('alert'),
    h('span', null, 'This code has expired. Re-enroll the client from the list to get a new one.'));
  const commandBlock = codeBlock(enrollment.command, { label: 'Copy command', testId: 'enroll-command' });
  clock = countdown(enrollment.expires_at, () => {
    expired.hidden = false;
    commandBlock.classList.add('is-expired');
    status.hidden = true;
  });
  mount(dlg.body,
    h('ol', { class: 'steps' },
      h('li', null,
        h('p', null, 'On the edge host, with Portunus installed, run this one line. It enrolls the client and writes its bundle:'),
        commandBlock,
        h('p', { class: 'field-hint' }, 'Valid once, for ', clock.el, '. Anyone holding it can enroll as this client until then: share it only with the edge.')),
      h('li', null,
        h('p', null, 'Then start the client:'),
        codeBlock('portunus-client run', { label: 'Copy' }))),
    h('details', { class: 'disclosure' },
      h('summary', null, 'Only the enroll URI'),
      h('p', { class: 'field-hint' }, 'For automation, or to pass to portunus-client enroll yourself.'),
      codeBlock(enrollment.uri, { label: 'Copy URI', testId: 'enroll-uri' })),
    expired, status);
  mount(dlg.footer, button('Done', { kind: 'primary', onClick: () => dlg.close() }));
  dlg.footer.querySelector('button').focus();
  // Say so when the new client shows up connected.
  watch = setInterval(async () => {
    try {
      const view = await get(`/v1/clients/${seg(enrollment.client_id)}`);
      if (view.connected) {
        clearInterval(watch);
        watch = null;
        clock.stop();
        mount(status, icon('check'), `${view.client_name} is connected from ${view.remote_addr || 'the edge'}.`);
        status.classList.add('ok');
      }
    } catch {
      // The list page shows connection trouble; the dialog just keeps waiting.
    }
  }, 3000);
  return dlg;
}

function connectDialog(onDone) {
  const dlg = openDialog({ title: 'Connect a client', description: 'Create a one-time enrollment code for a new edge.', size: 'md' });
  const form = h('form', { class: 'form', novalidate: true },
    field({ label: 'Name', control: input('name', { placeholder: 'edge-01', autofocus: true }), name: 'name',
      hint: 'How the client is shown and named in rules: 1 to 64 printable characters.' }),
    field({ label: 'Address the client dials', control: input('address', { placeholder: 'portunus.example.com' }), name: 'address', optional: true,
      hint: 'A bare host name or IP address of this server, without a port. Empty: the server\'s advertised endpoint (Settings).' }),
    field({ label: 'Code valid for', control: select('ttl_secs', [['600', '10 minutes'], ['3600', '1 hour'], ['86400', '24 hours']]), name: 'ttl_secs' }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const data = Object.fromEntries(new FormData(form).entries());
    const body = { name: data.name.trim(), ttl_secs: Number(data.ttl_secs) };
    if (data.address.trim()) body.address = data.address.trim();
    dlg.setBusy(true);
    let enrollment;
    try {
      enrollment = await post('/v1/client-enrollments', body);
    } catch (e) {
      dlg.setBusy(false);
      showErrors(form, e, { fieldFor: (code) => (code.startsWith('client_') ? 'name' : null) });
      return;
    }
    dlg.close();
    onDone();
    showEnrollment(enrollment);
  });
  mount(dlg.body, form);
  mount(dlg.footer,
    button('Cancel', { onClick: () => dlg.close() }),
    button('Create enrollment', { kind: 'primary', iconName: 'plug', onClick: () => form.requestSubmit() }));
  form.querySelector('input').focus();
}

function renameDialog(client, onDone) {
  const dlg = openDialog({ title: `Rename ${client.client_name}`, size: 'sm' });
  const form = h('form', { class: 'form', novalidate: true },
    field({ label: 'New name', control: input('name', { value: client.client_name }), name: 'name',
      hint: 'The live session is kept. Rules refer to the client by id, so they keep working.' }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = new FormData(form).get('name').trim();
    dlg.setBusy(true);
    try {
      await patch(`/v1/clients/${seg(client.client_id)}`, { name });
    } catch (e) {
      dlg.setBusy(false);
      showErrors(form, e);
      return;
    }
    dlg.close();
    toast('Client renamed.', 'success');
    onDone();
  });
  mount(dlg.body, form);
  mount(dlg.footer, button('Cancel', { onClick: () => dlg.close() }), button('Rename', { kind: 'primary', onClick: () => form.requestSubmit() }));
  form.querySelector('input').select();
}

async function reenroll(client, onDone) {
  const ok = await confirmDialog({
    title: `Re-enroll ${client.client_name}?`,
    message: 'A new one-time code is issued. When the edge redeems it, its old token stops working and a session still using it is closed. Earlier unused codes stop working now.',
    confirmLabel: 'Issue a new code',
  });
  if (!ok) return;
  try {
    const enrollment = await post(`/v1/clients/${seg(client.client_id)}/enrollment`, {});
    onDone();
    showEnrollment(enrollment, { title: 'Re-enroll a client' });
  } catch (e) {
    toast(`Could not re-enroll: ${e.message}`, 'error');
  }
}

async function revoke(client, onDone) {
  const ok = await confirmDialog({
    title: `Revoke ${client.client_name}?`,
    message: 'Its token stops working at once and its live session is closed; it stops forwarding. A revoked client cannot come back: enroll a new one instead.',
    confirmLabel: 'Revoke client',
    danger: true,
  });
  if (!ok) return;
  try {
    await post(`/v1/clients/${seg(client.client_id)}/revoke`);
    toast(`${client.client_name} revoked.`, 'success');
    onDone();
  } catch (e) {
    toast(`Could not revoke: ${e.message}`, 'error');
  }
}

async function remove(client, onDone) {
  const ok = await confirmDialog({
    title: `Delete ${client.client_name}?`,
    message: 'The revoked client and its rules are removed for good.',
    confirmLabel: 'Delete client',
    danger: true,
  });
  if (!ok) return;
  try {
    await del(`/v1/clients/${seg(client.client_id)}`);
    toast(`${client.client_name} deleted.`, 'success');
    onDone();
  } catch (e) {
    toast(`Could not delete: ${e.message}`, 'error');
  }
}

export async function clientsPage(root, ctx) {
  const superadmin = ctx.me.role === 'superadmin';
  const banner = h('div');
  const list = h('div', null, loadingState('Loading clients…'));
  let showRevoked = false;
  let clients = null;
  const revokedToggle = checkbox('show_revoked', 'Show revoked');
  const revokedText = revokedToggle.querySelector('span');
  revokedToggle.querySelector('input').addEventListener('change', (event) => { showRevoked = event.target.checked; draw(); });
  const refresh = async () => {
    try {
      clients = await get('/v1/clients', { signal: ctx.signal });
      mount(banner);
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      if (clients === null) mount(list, errorState(e, refresh));
      else mount(banner, staleBanner(e));
      return;
    }
    if (ctx.active) draw();
  };

  function draw() {
    const revoked = clients.filter((c) => c.state === 'revoked');
    revokedText.textContent = `Show revoked (${revoked.length})`;
    revokedToggle.hidden = revoked.length === 0;
    const shown = clients.filter((c) => showRevoked || c.state !== 'revoked');
    if (!shown.length) {
      mount(list, emptyState({
        title: clients.length ? 'Only revoked clients' : 'No clients yet',
        text: superadmin ? 'Connect an edge: it enrolls with a one-line command and then takes rules.' : 'No client is shared with you yet. Ask a superadmin for a grant.',
        iconName: 'clients',
        action: superadmin && !clients.length ? button('Connect a client', { kind: 'primary', iconName: 'plus', onClick: () => connectDialog(refresh) }) : null,
      }));
      return;
    }
    const columns = [
      { label: 'Name' }, { label: 'Status' }, { label: 'Remote address' }, { label: 'Since' }, { label: 'Version' },
      ...(superadmin ? [{ label: 'Actions', className: 'actions' }] : []),
    ];
    mount(list, table({
      columns,
      caption: 'Clients',
      rows: shown.map((c) => row(columns, [
        h('div', { class: 'cell-title' }, h('strong', null, c.client_name), h('span', { class: 'muted mono small', title: c.client_id }, shortId(c.client_id))),
        clientStateBadge(c),
        c.remote_addr ? h('span', { class: 'mono' }, c.remote_addr) : h('span', { class: 'muted' }, '—'),
        c.state === 'connected' ? timeAgo(c.connected_at) : c.state === 'revoked' ? timeAgo(c.revoked_at) : h('span', { class: 'muted' }, 'created ', timeAgo(c.created_at)),
        c.client_version ? h('span', { class: 'mono small' }, c.client_version) : h('span', { class: 'muted' }, '—'),
        ...(superadmin ? [h('div', { class: 'row-actions' },
          c.state !== 'revoked' ? iconButton('edit', `Rename ${c.client_name}`, () => renameDialog(c, refresh)) : null,
          c.state !== 'revoked' ? iconButton('key', `Re-enroll ${c.client_name}`, () => reenroll(c, refresh)) : null,
          c.state !== 'revoked' ? iconButton('ban', `Revoke ${c.client_name}`, () => revoke(c, refresh), { class: 'icon-btn danger' }) : null,
          c.state === 'revoked' ? iconButton('trash', `Delete ${c.client_name}`, () => remove(c, refresh), { class: 'icon-btn danger' }) : null)] : []),
      ], { 'data-client': c.client_name })),
    }));
  }

  mount(root,
    pageHeader({
      title: 'Clients',
      subtitle: superadmin ? 'The edges that forward traffic. Status updates every 5 seconds.' : 'The edges you may push rules to. Status updates every 5 seconds.',
      actions: superadmin ? [button('Connect a client', { kind: 'primary', iconName: 'plus', onClick: () => connectDialog(refresh) })] : [],
    }),
    h('div', { class: 'toolbar' }, revokedToggle),
    banner, list);
  revokedToggle.hidden = true;
  ctx.every(POLL_MS, refresh);
}
