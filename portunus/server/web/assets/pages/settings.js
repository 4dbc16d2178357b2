// Settings: the theme (kept in this browser only), your account and
// password, and for superadmins the address new clients are told to dial.

import { get, post, put } from '../api.js';
import { h, mount } from '../dom.js';
import { icon } from '../icons.js';
import { getTheme, onThemeChange, setTheme, THEME_CHOICES, THEME_ICONS, THEME_LABELS } from '../theme-switch.js';
import { badge, button, card, clearErrors, errorState, field, input, loadingState, pageHeader, showErrors, toast } from '../ui.js';

const SOURCES = {
  override: 'set here (override)',
  seed: 'server configuration (server.toml, environment or --advertised-endpoint)',
  derived: 'derived from the server certificate',
  loopback: 'loopback fallback: only edges on this machine can reach it',
};

function themeCard(ctx) {
  const group = h('div', { class: 'theme-options', role: 'radiogroup', 'aria-label': 'Theme' },
    THEME_CHOICES.map((choice) => h('label', { class: 'theme-option' },
      h('input', { type: 'radio', name: 'theme', value: choice, checked: getTheme() === choice }),
      h('span', { class: ['theme-swatch', `swatch-${choice}`], 'aria-hidden': 'true' }, icon(THEME_ICONS[choice])),
      h('span', null, THEME_LABELS[choice]))));
  group.addEventListener('change', (e) => setTheme(e.target.value));
  const stop = onThemeChange((choice) => { group.querySelector(`input[value="${choice}"]`).checked = true; });
  ctx.onLeave(stop);
  return card({
    title: 'Appearance',
    body: h('div', { class: 'stack' },
      h('p', { class: 'muted' }, 'Kept in this browser only. System follows your operating system\'s light or dark mode.'),
      group),
  });
}

function accountCard(ctx) {
  const me = ctx.me;
  const form = h('form', { class: 'form form-narrow', novalidate: true },
    field({ label: 'Current password', control: input('current_password', { type: 'password', autocomplete: 'current-password' }), name: 'current_password' }),
    field({ label: 'New password', control: input('new_password', { type: 'password', autocomplete: 'new-password' }), name: 'new_password', hint: 'At least 12 characters.' }),
    field({ label: 'Confirm new password', control: input('new_password_confirm', { type: 'password', autocomplete: 'new-password' }), name: 'new_password_confirm' }),
    h('div', null, button('Change password', { kind: 'primary', type: 'submit' })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const submit = form.querySelector('button[type="submit"]');
    submit.disabled = true;
    try {
      await post('/v1/users/me/password', Object.fromEntries(new FormData(form).entries()));
    } catch (e) {
      showErrors(form, e);
      return;
    } finally {
      submit.disabled = false;
    }
    form.reset();
    toast('Password changed. Your other sessions were ended.', 'success');
  });
  const cookie = me.auth_method !== 'bearer';
  return card({
    title: 'Your account',
    body: h('div', { class: 'stack' },
      h('dl', { class: 'props' },
        h('dt', null, 'User id'), h('dd', { class: 'mono' }, me.user_id),
        h('dt', null, 'Display name'), h('dd', null, me.display_name || '—'),
        h('dt', null, 'Role'), h('dd', null, me.role === 'superadmin' ? badge('Superadmin', 'primary') : badge('User', 'neutral'))),
      cookie ? h('div', null, h('h3', { class: 'subheading' }, 'Change your password'), form) : null),
  });
}

function endpointCard(ctx) {
  const body = h('div', null, loadingState());
  const load = async () => {
    let current;
    try {
      current = await get('/v1/settings/advertised-endpoint', { signal: ctx.signal });
    } catch (e) {
      if (e.name === 'AbortError' || !ctx.active) return;
      mount(body, errorState(e, load));
      return;
    }
    if (ctx.active) draw(current);
  };
  const save = async (form, value) => {
    clearErrors(form);
    form.querySelectorAll('button').forEach((b) => { b.disabled = true; });
    try {
      const current = await put('/v1/settings/advertised-endpoint', { advertised_endpoint: value });
      toast(value ? `New enrollments will name ${current.effective}.` : 'Override cleared.', 'success');
      draw(current);
    } catch (e) {
      form.querySelectorAll('button').forEach((b) => { b.disabled = false; });
      showErrors(form, e);
    }
  };
  function draw(current) {
    const control = input('advertised_endpoint', { value: current.override || '', placeholder: current.effective || 'portunus.example.com:7443' });
    const form = h('form', { class: 'form form-narrow', novalidate: true },
      field({ label: 'Override', control, name: 'advertised_endpoint',
        hint: 'host:port (or a bare host: the control port is added). The server certificate must name the host.' }),
      h('div', { class: 'button-row' },
        button('Save', { kind: 'primary', type: 'submit' }),
        current.override ? button('Clear override', { onClick: () => save(form, null) }) : null));
    form.addEventListener('submit', (event) => { event.preventDefault(); save(form, control.value.trim() || null); });
    mount(body, h('div', { class: 'stack' },
      h('dl', { class: 'props' },
        h('dt', null, 'In effect'), h('dd', { class: 'mono', 'data-testid': 'advertised-effective' }, current.effective || '—'),
        h('dt', null, 'Source'), h('dd', null, SOURCES[current.source] || current.source || '—')),
      current.diagnostic ? h('div', { class: 'notice notice-warning', role: 'status' }, icon('alert'), h('span', null, current.diagnostic)) : null,
      form));
  }
  load();
  return card({
    title: 'Client connect address',
    body: h('div', { class: 'stack' },
      h('p', { class: 'muted' }, 'The host:port of this server that enrollment commands tell new clients to dial. Changing it affects enrollments issued from now on.'),
      body),
  });
}

export async function settingsPage(root, ctx) {
  mount(root,
    pageHeader({ title: 'Settings' }),
    h('div', { class: 'stack' },
      themeCard(ctx),
      accountCard(ctx),
      ctx.me.role === 'superadmin' ? endpointCard(ctx) : null));
}
