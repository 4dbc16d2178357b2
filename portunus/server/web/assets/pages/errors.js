// Permission denied and not found.

import { h, mount } from '../dom.js';
import { icon } from '../icons.js';

function page(root, { iconName, title, text, code }) {
  mount(root, h('div', { class: 'error-page' },
    h('div', { class: 'error-page-icon' }, icon(iconName)),
    code ? h('p', { class: 'error-page-code' }, code) : null,
    h('h1', { tabindex: '-1' }, title),
    h('p', { class: 'muted' }, text),
    h('a', { href: '/', class: 'btn btn-primary' }, icon('dashboard'), 'Go to the dashboard')));
}

export async function forbiddenPage(root, ctx, error = null) {
  ctx.setTitle('Permission denied');
  const role = ctx.me && ctx.me.role === 'superadmin' ? 'superadmin' : 'user';
  page(root, {
    iconName: 'lock',
    code: '403',
    title: 'You do not have permission to see this',
    text: error && error.message
      ? `The server said: ${error.message}`
      : `This page is for superadmins; you are logged in as a ${role}. Ask a superadmin if you need access.`,
  });
}

export async function notFoundPage(root, ctx) {
  page(root, {
    iconName: 'search',
    code: '404',
    title: 'Page not found',
    text: `There is no console page at ${location.pathname}.`,
  });
}
