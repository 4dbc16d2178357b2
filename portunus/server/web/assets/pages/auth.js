// The pages before the console: onboarding (the first superadmin), login
// and the forced password change.

import { post, ApiError } from '../api.js';
import { h, mount } from '../dom.js';
import { icon, logo } from '../icons.js';
import { clearErrors, describeError, field, input, showErrors, toast } from '../ui.js';

function authCard(title, subtitle, ...content) {
  return h('div', { class: 'auth-card' },
    h('div', { class: 'auth-brand' }, logo(), h('span', null, 'Portunus')),
    h('h1', { class: 'auth-title', tabindex: '-1' }, title),
    subtitle ? h('p', { class: 'auth-subtitle' }, subtitle) : null,
    ...content);
}

function notice(tone, text) {
  return h('div', { class: ['notice', `notice-${tone}`], role: tone === 'error' ? 'alert' : 'status' },
    icon(tone === 'success' ? 'check' : tone === 'error' ? 'alert' : 'info'), h('span', null, text));
}

function passwordInput(name, autocomplete, props = {}) {
  const control = input(name, { type: 'password', autocomplete, ...props });
  const toggle = h('button', { type: 'button', class: 'icon-btn input-addon', 'aria-label': 'Show password', 'aria-pressed': 'false' }, icon('eye'));
  toggle.addEventListener('click', () => {
    const show = control.type === 'password';
    control.type = show ? 'text' : 'password';
    toggle.setAttribute('aria-pressed', show ? 'true' : 'false');
    toggle.setAttribute('aria-label', show ? 'Hide password' : 'Show password');
    toggle.replaceChildren(icon(show ? 'eyeOff' : 'eye'));
  });
  return { control, wrap: h('div', { class: 'input-group' }, control, toggle) };
}

function passwordField(label, name, autocomplete, hint = null) {
  const { control, wrap } = passwordInput(name, autocomplete);
  const f = field({ label, control, hint, name });
  // field() put the bare input in; swap in the group with its show button.
  f.replaceChild(wrap, control);
  wrap.prepend(control);
  return f;
}

function submitButton(label) {
  return h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, label);
}

async function submitting(form, fn) {
  const buttons = form.querySelectorAll('button');
  buttons.forEach((b) => { b.disabled = true; });
  form.setAttribute('aria-busy', 'true');
  try {
    return await fn();
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    form.removeAttribute('aria-busy');
  }
}

const values = (form) => Object.fromEntries(new FormData(form).entries());

export async function onboardingPage(root, ctx) {
  const form = h('form', { class: 'form', novalidate: true },
    field({ label: 'Setup token', control: input('setup_token', { autofocus: true, autocomplete: 'one-time-code' }), name: 'setup_token',
      hint: 'On the server\'s host, `portunus-server onboarding-token` prints it (the server keeps it in onboarding.token in its data dir, never in its log). It is replaced every 30 minutes.' }),
    field({ label: 'User id', control: input('user_id', { autocomplete: 'username', placeholder: 'admin' }), name: 'user_id',
      hint: 'Lower-case letters, digits, - and _; starts with a letter.' }),
    field({ label: 'Display name', control: input('display_name', { autocomplete: 'name', placeholder: 'Ada Admin' }), name: 'display_name' }),
    passwordField('Password', 'password', 'new-password', 'At least 12 characters.'),
    passwordField('Confirm password', 'password_confirm', 'new-password'),
    submitButton('Create superadmin'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = values(form);
    try {
      await submitting(form, () => post('/v1/auth/onboarding', body, { auth: false }));
    } catch (e) {
      if (e instanceof ApiError && e.code === 'already_bootstrapped') {
        toast('Onboarding is already done: log in.', 'info');
        ctx.session.onboarded(null);
        return;
      }
      showErrors(form, e);
      return;
    }
    ctx.session.onboarded(body.user_id);
  });
  mount(root, authCard('Welcome to Portunus',
    'Create the first superadmin. This page is open only until that account exists.', form));
  form.querySelector('[autofocus]').focus();
}

export async function loginPage(root, ctx) {
  const { kind, user } = ctx.session.notice();
  const banner = {
    expired: notice('warning', 'Your session expired. Log in again to continue.'),
    logged_out: notice('success', 'You are logged out.'),
    onboarded: notice('success', 'Your superadmin account is ready. Log in with it.'),
  }[kind] || null;
  const userInput = input('user_id', { autocomplete: 'username', value: user || '' });
  const { control: passInput, wrap: passWrap } = passwordInput('password', 'current-password');
  const passField = field({ label: 'Password', control: passInput, name: 'password' });
  passField.replaceChild(passWrap, passInput);
  passWrap.prepend(passInput);
  const form = h('form', { class: 'form', novalidate: true },
    field({ label: 'User id', control: userInput, name: 'user_id' }),
    passField,
    submitButton('Log in'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      await submitting(form, () => post('/v1/auth/login', values(form), { auth: false }));
    } catch (e) {
      const message = e.code === 'invalid_login' ? 'Wrong user id or password.' : describeError(e);
      showErrors(form, new ApiError(e.status, { code: e.code, message }));
      passInput.select();
      return;
    }
    await ctx.session.afterLogin();
  });
  mount(root, authCard('Log in', 'Use your Portunus account.', banner, form,
    h('p', { class: 'auth-foot muted small' }, 'Forgot your password? A superadmin can reset it.')));
  (user ? passInput : userInput).focus();
}

export async function passwordPage(root, ctx) {
  const forced = ctx.me && ctx.me.password_change_required;
  const form = h('form', { class: 'form', novalidate: true },
    passwordField(forced ? 'Temporary password' : 'Current password', 'current_password', 'current-password'),
    passwordField('New password', 'new_password', 'new-password', 'At least 12 characters.'),
    passwordField('Confirm new password', 'new_password_confirm', 'new-password'),
    submitButton('Change password'),
    h('button', { type: 'button', class: 'btn btn-ghost btn-block', onClick: () => ctx.session.logout() }, 'Log out instead'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      await submitting(form, () => post('/v1/users/me/password', values(form)));
    } catch (e) {
      showErrors(form, e);
      return;
    }
    toast('Password changed.', 'success');
    await ctx.session.passwordChanged();
  });
  mount(root, authCard('Change your password',
    forced ? `Hello ${ctx.me.display_name || ctx.me.user_id}: you were given a temporary password. Choose your own to continue.`
      : 'Choose a new password.',
    form));
  form.querySelector('input').focus();
}
