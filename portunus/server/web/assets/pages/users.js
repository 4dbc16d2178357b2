// Users and their grants (superadmins). A grant lets a user push rules on
// a client (or all clients), on a range of listen ports, for some
// protocols. Removing a grant or a user removes the rules that depended
// on it; the dialogs say which before anything is done.

import { del, get, post, seg } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import { listenText, ruleStateBadge, targetsSummary } from '../rulefmt.js';
import {
  badge, button, card, checkbox, clearErrors, codeBlock, confirmDialog, emptyState, errorState, field,
  iconButton, input, loadingState, openDialog, pageHeader, row, select, showErrors, staleBanner, table,
  timeAgo, toast,
} from '../ui.js';

const POLL_MS = 10000;

function roleBadge(role) {
  return role === 'superadmin' ? badge('Superadmin', 'primary') : badge('User', 'neutral');
}

function randomPassword() {
  const alphabet = 'abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789';
  const bytes = crypto.getRandomValues(new Uint8Array(20));
  return [...bytes].map((b) => alphabet[b % alphabet.length]).join('');
}

function createUserDialog(ctx) {
  const dlg = openDialog({ title: 'Create a user', description: 'They log in with the initial password you set here.', size: 'md' });
  const password = input('initial_password', { type: 'text', autocomplete: 'new-password', placeholder: 'at least 12 characters' });
  const form = h('form', { class: 'form', novalidate: true },
    h('div', { class: 'form-grid' },
      field({ label: 'User id', control: input('user_id', { placeholder: 'alice', autocomplete: 'off' }), name: 'user_id',
        hint: 'a-z, 0-9, - and _; starts with a letter; at most 32.' }),
      field({ label: 'Display name', control: input('display_name', { placeholder: 'Alice Example' }), name: 'display_name' }),
      field({ label: 'Role', control: select('role', [['user', 'User: own rules, within grants'], ['superadmin', 'Superadmin: everything']]), name: 'role' })),
    h('div', { class: 'field', 'data-field': 'initial_password' },
      h('label', { class: 'field-label', for: password.id = 'new-user-password' }, 'Initial password'),
      h('div', { class: 'input-group' }, password,
        h('button', { type: 'button', class: 'btn btn-sm input-addon-btn', onClick: () => { password.value = randomPassword(); password.focus(); } }, icon('refresh'), 'Generate')),
      h('p', { class: 'field-hint' }, 'Give it to the user over a safe channel. It is not shown again.')),
    checkbox('password_change_required', 'Require a password change at first login', { checked: true }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const data = new FormData(form);
    const body = {
      user_id: String(data.get('user_id')).trim(),
      display_name: String(data.get('display_name')).trim() || String(data.get('user_id')).trim(),
      role: data.get('role'),
      initial_password: data.get('initial_password'),
      password_change_required: data.get('password_change_required') !== null,
    };
    dlg.setBusy(true);
    let user;
    try {
      user = await post('/v1/users', body);
    } catch (e) {
      dlg.setBusy(false);
      showErrors(form, e, { fieldFor: (code) => (code === 'user_already_exists' ? 'user_id' : null) });
      return;
    }
    dlg.close();
    toast(`User ${user.user_id} created.`, 'success');
    ctx.navigate(`/users/${encodeURIComponent(user.user_id)}`);
  });
  mount(dlg.body, form);
  mount(dlg.footer, button('Cancel', { onClick: () => dlg.close() }), button('Create user', { kind: 'primary', onClick: () => form.requestSubmit() }));
  form.querySelector('input').focus();
}

export async function usersPage(root, ctx) {
  const banner = h('div');
  const list = h('div', null, loadingState('Loading users…'));
  const search = input('q', { type: 'search', placeholder: 'Filter users', 'aria-label': 'Filter users' });
  let users = null;
  search.addEventListener('input', draw);

  async function refresh() {
    try {
      users = await get('/v1/users', { signal: ctx.signal });
      mount(banner);
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      if (users === null) mount(list, errorState(e, refresh));
      else mount(banner, staleBanner(e));
      return;
    }
    if (ctx.active) draw();
  }

  function draw() {
    if (!users) return;
    const q = search.value.trim().toLowerCase();
    const shown = users.filter((u) => !q || `${u.user_id} ${u.display_name}`.toLowerCase().includes(q));
    if (!shown.length) {
      mount(list, emptyState({ title: users.length ? 'No user matches' : 'No users', text: 'Create a user to share clients with them.', iconName: 'users' }));
      return;
    }
    const columns = [{ label: 'User' }, { label: 'Role' }, { label: 'Grants', className: 'num' }, { label: 'Status' }, { label: 'Created' }, { label: '', className: 'actions' }];
    mount(list, table({
      columns,
      caption: 'Users',
      rows: shown.map((u) => row(columns, [
        h('a', { href: `/users/${encodeURIComponent(u.user_id)}`, class: 'cell-title' }, h('strong', null, u.display_name), h('span', { class: 'muted mono small' }, u.user_id)),
        roleBadge(u.role),
        String(u.grant_count ?? 0),
        u.disabled ? badge('Disabled', 'danger') : u.password_change_required ? badge('Must change password', 'warning') : badge('Active', 'success'),
        timeAgo(u.created_at),
        h('a', { href: `/users/${encodeURIComponent(u.user_id)}`, class: 'icon-btn', 'aria-label': `Open ${u.user_id}`, title: 'Open' }, icon('chevron')),
      ], { 'data-user': u.user_id })),
    }));
  }

  mount(root,
    pageHeader({
      title: 'Users & grants',
      subtitle: 'Who may log in, and what each user may push.',
      actions: [button('Create user', { kind: 'primary', iconName: 'plus', onClick: () => createUserDialog(ctx) })],
    }),
    h('div', { class: 'toolbar' }, h('div', { class: 'search' }, icon('search'), search)),
    banner, list);
  ctx.every(POLL_MS, refresh);
}

// -- one user ---------------------------------------------------------------

function grantCovers(grant, view) {
  const listen = String(view.rule.listen).split('-').map(Number);
  const start = listen[0];
  const end = listen[1] ?? listen[0];
  const clientOk = grant.client_id === '*' || grant.client === '*' || grant.client_id === view.client_id;
  return clientOk && grant.protocols.includes(view.rule.protocol) && start >= grant.listen_port_start && end <= grant.listen_port_end;
}

function ruleList(rules) {
  return h('ul', { class: 'plain-list' }, rules.map((v) => h('li', null, h('span', { class: 'mono' }, `#${v.rule.id} ${v.rule.name}`), ` (${listenText(v.rule)} on ${v.client_name})`)));
}

function grantDialog(user, clients, onDone) {
  const dlg = openDialog({ title: `Add a grant for ${user.user_id}`, description: 'What this user may push: a client, a listen-port range, protocols.', size: 'md' });
  const form = h('form', { class: 'form', novalidate: true },
    field({ label: 'Client', control: select('client', [['*', 'All clients (*)'], ...clients.filter((c) => c.state !== 'revoked').map((c) => [c.client_id, c.client_name])]), name: 'client' }),
    h('div', { class: 'form-grid' },
      field({ label: 'First listen port', control: input('listen_port_start', { inputmode: 'numeric', placeholder: '20000' }), name: 'listen_port_start' }),
      field({ label: 'Last listen port', control: input('listen_port_end', { inputmode: 'numeric', placeholder: '20099' }), name: 'listen_port_end', optional: true })),
    h('fieldset', { class: 'field', 'data-field': 'protocols' },
      h('legend', { class: 'field-label' }, 'Protocols'),
      h('div', { class: 'check-row' }, checkbox('tcp', 'TCP', { checked: true }), checkbox('udp', 'UDP'))),
    h('fieldset', { class: 'field', 'data-field': 'allow_local_targets' },
      h('legend', { class: 'field-label' }, 'Targets'),
      h('div', { class: 'check-row' }, checkbox('allow_local_targets', 'Allow local targets (loopback, link-local, the edge\'s own addresses)'))),
    field({ label: 'Note', control: input('note', { placeholder: 'e.g. team web, ticket 123' }), name: 'note', optional: true }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const data = new FormData(form);
    const port = (name) => { const t = String(data.get(name) || '').trim(); return /^\d+$/.test(t) ? Number(t) : t || undefined; };
    const body = {
      user_id: user.user_id,
      client: data.get('client'),
      listen_port_start: port('listen_port_start'),
      protocols: ['tcp', 'udp'].filter((p) => data.get(p) !== null),
    };
    if (data.get('allow_local_targets') !== null) body.allow_local_targets = true;
    const end = port('listen_port_end');
    if (end !== undefined) body.listen_port_end = end;
    const note = String(data.get('note') || '').trim();
    if (note) body.note = note;
    dlg.setBusy(true);
    try {
      await post('/v1/grants', body);
    } catch (e) {
      dlg.setBusy(false);
      showErrors(form, e, { fieldFor: (code) => (code.startsWith('client_') ? 'client' : null) });
      return;
    }
    dlg.close();
    toast('Grant added.', 'success');
    onDone();
  });
  mount(dlg.body, form);
  mount(dlg.footer, button('Cancel', { onClick: () => dlg.close() }), button('Add grant', { kind: 'primary', onClick: () => form.requestSubmit() }));
  form.querySelector('select').focus();
}

function resetPasswordDialog(user) {
  const dlg = openDialog({ title: `Reset the password of ${user.user_id}`, description: 'Their sessions end at once.', size: 'md' });
  const newPassword = input('new_password', { type: 'text', autocomplete: 'new-password', placeholder: 'at least 12 characters', disabled: true });
  const form = h('form', { class: 'form', novalidate: true },
    h('fieldset', { class: 'field' },
      h('legend', { class: 'sr-only' }, 'How'),
      h('label', { class: 'check' }, h('input', { type: 'radio', name: 'mode', value: 'temporary', checked: true }),
        h('span', null, 'Generate a temporary password (they must change it at next login)')),
      h('label', { class: 'check' }, h('input', { type: 'radio', name: 'mode', value: 'set' }), h('span', null, 'Set a new password'))),
    field({ label: 'New password', control: newPassword, name: 'new_password' }));
  form.addEventListener('change', () => { newPassword.disabled = new FormData(form).get('mode') !== 'set'; });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const set = new FormData(form).get('mode') === 'set';
    dlg.setBusy(true);
    let result;
    try {
      result = await post(`/v1/users/${seg(user.user_id)}/password`, set ? { new_password: newPassword.value } : { temporary_password: true });
    } catch (e) {
      dlg.setBusy(false);
      showErrors(form, e);
      return;
    }
    dlg.setBusy(false);
    const sessions = `${result.sessions_revoked} session${result.sessions_revoked === 1 ? '' : 's'} ended.`;
    mount(dlg.body,
      result.temporary_password
        ? h('div', { class: 'stack' },
          h('div', { class: 'notice notice-warning', role: 'status' }, icon('key'), h('span', null, 'This temporary password is shown only once. Copy it now and give it to the user over a safe channel.')),
          codeBlock(result.temporary_password, { label: 'Copy password', testId: 'temporary-password' }),
          h('p', { class: 'muted' }, sessions))
        : h('div', { class: 'notice notice-success', role: 'status' }, icon('check'), h('span', null, `Password changed. ${sessions}`)));
    mount(dlg.footer, button('Done', { kind: 'primary', onClick: () => dlg.close() }));
    dlg.footer.querySelector('button').focus();
  });
  mount(dlg.body, form);
  mount(dlg.footer, button('Cancel', { onClick: () => dlg.close() }), button('Reset password', { kind: 'primary', onClick: () => form.requestSubmit() }));
  form.querySelector('input').focus();
}

export async function userDetailPage(root, ctx) {
  const userId = ctx.params.id;
  let user = await get(`/v1/users/${seg(userId)}`, { signal: ctx.signal });
  if (!ctx.active) return;
  ctx.setTitle(`User ${user.user_id}`);
  let grants = [];
  let rules = [];
  let clients = [];
  const banner = h('div');
  const grantsBox = h('div', null, loadingState());
  const rulesBox = h('div', null, loadingState());
  const infoBox = h('div');

  async function refresh() {
    try {
      [user, grants, rules, clients] = await Promise.all([
        get(`/v1/users/${seg(userId)}`, { signal: ctx.signal }),
        get(`/v1/grants?user_id=${encodeURIComponent(userId)}`, { signal: ctx.signal }),
        get(`/v1/rules?owner=${encodeURIComponent(userId)}`, { signal: ctx.signal }),
        get('/v1/clients', { signal: ctx.signal }),
      ]);
      mount(banner);
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      if (e.status === 404) { ctx.navigate('/users', { replace: true }); return; }
      mount(banner, staleBanner(e));
      return;
    }
    if (ctx.active) draw();
  }

  async function revokeGrant(grant) {
    const doomed = rules.filter((v) => grantCovers(grant, v));
    const ok = await confirmDialog({
      title: 'Revoke this grant?',
      message: doomed.length
        ? `${user.user_id} loses it, and these ${doomed.length} rule(s) pushed under it are removed from their clients:`
        : `${user.user_id} can no longer push rules on ${grant.client === '*' ? 'any client' : grant.client} ports ${grant.listen_port_start}-${grant.listen_port_end}. No rule of theirs depends on it.`,
      details: doomed.length ? ruleList(doomed) : null,
      confirmLabel: 'Revoke grant',
      danger: true,
    });
    if (!ok) return;
    try {
      const result = await del(`/v1/grants/${seg(grant.grant_id)}`);
      toast(`Grant revoked${result.removed_rule_ids.length ? `; rules ${result.removed_rule_ids.map((r) => `#${r}`).join(', ')} removed` : ''}.`, 'success');
      refresh();
    } catch (e) {
      toast(`Could not revoke the grant: ${e.message}`, 'error');
    }
  }

  async function deleteUser() {
    const ok = await confirmDialog({
      title: `Delete ${user.user_id}?`,
      message: `This removes the account, its sessions, its ${grants.length} grant(s) and its ${rules.length} rule(s). It cannot be undone.`,
      details: rules.length ? ruleList(rules) : null,
      confirmLabel: 'Delete user',
      danger: true,
    });
    if (!ok) return;
    try {
      const result = await del(`/v1/users/${seg(user.user_id)}`);
      toast(`${user.user_id} deleted: ${result.revoked_grant_ids.length} grant(s) and ${result.removed_rule_ids.length} rule(s) removed.`, 'success');
      ctx.navigate('/users');
    } catch (e) {
      toast(`Could not delete: ${e.message}`, 'error');
    }
  }

  function draw() {
    mount(infoBox, h('dl', { class: 'props' },
      h('dt', null, 'User id'), h('dd', { class: 'mono' }, user.user_id),
      h('dt', null, 'Role'), h('dd', null, roleBadge(user.role)),
      h('dt', null, 'Status'), h('dd', null, user.disabled ? badge('Disabled', 'danger') : user.password_change_required ? badge('Must change password', 'warning') : badge('Active', 'success')),
      h('dt', null, 'Created'), h('dd', null, timeAgo(user.created_at))));
    const gcols = [{ label: 'Client' }, { label: 'Listen ports' }, { label: 'Protocols' }, { label: 'Local targets' }, { label: 'Note' }, { label: 'Created' }, { label: '', className: 'actions' }];
    mount(grantsBox, grants.length
      ? table({ columns: gcols, caption: 'Grants', rows: grants.map((g) => row(gcols, [
        g.client === '*' ? badge('All clients', 'info') : g.client,
        h('span', { class: 'mono' }, g.listen_port_start === g.listen_port_end ? String(g.listen_port_start) : `${g.listen_port_start}-${g.listen_port_end}`),
        g.protocols.map((p) => p.toUpperCase()).join(', '),
        g.allow_local_targets ? badge('Allowed', 'warning') : h('span', { class: 'muted' }, 'No'),
        g.note || h('span', { class: 'muted' }, '—'),
        timeAgo(g.created_at),
        iconButton('trash', `Revoke grant ${g.grant_id}`, () => revokeGrant(g), { class: 'icon-btn danger' }),
      ], { 'data-grant': g.grant_id })) })
      : emptyState({ title: 'No grants', text: user.role === 'superadmin' ? 'Superadmins need none: they may push anywhere.' : 'Without a grant this user can push no rule.', iconName: 'key' }));
    const rcols = [{ label: 'Rule' }, { label: 'Client' }, { label: 'Listen' }, { label: 'Targets' }, { label: 'State' }];
    mount(rulesBox, rules.length
      ? table({ columns: rcols, caption: 'Rules', rows: rules.map((v) => row(rcols, [
        h('a', { href: `/rules/${v.rule.id}` }, `${v.rule.name} #${v.rule.id}`), v.client_name,
        h('span', { class: 'mono' }, listenText(v.rule)), targetsSummary(v.rule), ruleStateBadge(v),
      ])) })
      : emptyState({ title: 'No rules', text: 'Rules this user pushes show up here.', iconName: 'rules' }));
  }

  mount(root,
    pageHeader({
      title: user.display_name,
      subtitle: h('span', { class: 'mono' }, user.user_id),
      back: { href: '/users', label: 'Users' },
      actions: [
        button('Reset password', { iconName: 'key', onClick: () => resetPasswordDialog(user) }),
        user.user_id !== ctx.me.user_id ? button('Delete user', { kind: 'danger', iconName: 'trash', onClick: deleteUser }) : null,
      ].filter(Boolean),
    }),
    banner,
    h('div', { class: 'grid-2 grid-2-narrow-first' },
      card({ title: 'Account', body: infoBox }),
      card({ title: 'Grants', actions: button('Add grant', { kind: 'sm', iconName: 'plus', onClick: () => grantDialog(user, clients, refresh) }), body: grantsBox })),
    card({ title: 'Rules', actions: h('a', { href: `/rules?owner=${encodeURIComponent(user.user_id)}`, class: 'card-link' }, 'In the rules list', icon('chevron')), body: rulesBox }));
  ctx.every(POLL_MS, refresh);
}
