// Shared pieces of the interface: toasts, dialogs, the loading / empty /
// error states every screen uses, badges, copy buttons, form errors.

import { h, mount, uid } from './dom.js';
import { icon } from './icons.js';

// -- toasts -----------------------------------------------------------------

/** A short message in the live region (read out by screen readers). */
export function toast(message, tone = 'info', { timeout = 5000 } = {}) {
  const region = document.getElementById('toasts');
  if (!region) return;
  const item = h('div', { class: ['toast', `toast-${tone}`] },
    icon(tone === 'error' ? 'alert' : tone === 'success' ? 'check' : 'info'),
    h('span', { class: 'toast-text' }, message),
    h('button', { type: 'button', class: 'icon-btn toast-close', 'aria-label': 'Dismiss', onClick: () => item.remove() }, icon('close')));
  region.append(item);
  if (timeout) setTimeout(() => item.remove(), tone === 'error' ? timeout * 2 : timeout);
}

// -- dialogs ----------------------------------------------------------------

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]):not([type="hidden"]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

/**
 * A modal dialog (the native <dialog>: the page behind is inert). Tab
 * cycles inside it, Escape closes it, focus returns to where it was.
 * Returns {el, body, footer, close, setBusy}.
 */
export function openDialog({ title, description, size = 'md', onClose } = {}) {
  const titleId = uid('dlg-title');
  const body = h('div', { class: 'dialog-body' });
  const footer = h('div', { class: 'dialog-footer' });
  const closeBtn = h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Close dialog' }, icon('close'));
  const el = h('dialog', { class: ['dialog', `dialog-${size}`], 'aria-labelledby': titleId },
    h('div', { class: 'dialog-header' },
      h('div', null,
        h('h2', { id: titleId, class: 'dialog-title' }, title),
        description ? h('p', { class: 'dialog-description' }, description) : null),
      closeBtn),
    body, footer);
  const opener = document.activeElement;
  let closed = false;
  const close = (result) => {
    if (closed) return;
    closed = true;
    if (el.open) el.close();
    el.remove();
    if (opener && typeof opener.focus === 'function' && document.contains(opener)) opener.focus();
    if (onClose) onClose(result);
  };
  closeBtn.addEventListener('click', () => close());
  el.addEventListener('cancel', (event) => { event.preventDefault(); close(); });
  el.addEventListener('keydown', (event) => {
    if (event.key !== 'Tab') return;
    const items = [...el.querySelectorAll(FOCUSABLE)].filter((n) => n.offsetParent !== null || n === document.activeElement);
    if (!items.length) return;
    const first = items[0];
    const last = items[items.length - 1];
    if (event.shiftKey && document.activeElement === first) { event.preventDefault(); last.focus(); }
    else if (!event.shiftKey && document.activeElement === last) { event.preventDefault(); first.focus(); }
  });
  // A click on the backdrop (outside the box) closes too.
  el.addEventListener('mousedown', (event) => { if (event.target === el) close(); });
  document.body.append(el);
  el.showModal();
  const setBusy = (busy) => {
    el.querySelectorAll('button, input, select, textarea').forEach((n) => {
      if (n === closeBtn) return;
      if (busy) { n.dataset.wasDisabled = n.disabled ? '1' : ''; n.disabled = true; }
      else if (n.dataset.wasDisabled !== undefined) { n.disabled = n.dataset.wasDisabled === '1'; delete n.dataset.wasDisabled; }
    });
    el.setAttribute('aria-busy', busy ? 'true' : 'false');
  };
  return { el, body, footer, close, setBusy, focusFirst: () => focusFirst(el) };
}

export function focusFirst(root) {
  const target = root.querySelector('[autofocus]') || root.querySelector('.dialog-body ' + FOCUSABLE) || root.querySelector(FOCUSABLE);
  if (target) target.focus();
}

/** Ask a yes/no question; resolves true when confirmed. */
export function confirmDialog({ title, message, confirmLabel = 'Confirm', danger = false, details = null }) {
  return new Promise((resolve) => {
    let answer = false;
    const dlg = openDialog({ title, size: 'sm', onClose: () => resolve(answer) });
    mount(dlg.body, h('p', null, message), details);
    const ok = h('button', { type: 'button', class: ['btn', danger ? 'btn-danger' : 'btn-primary'], onClick: () => { answer = true; dlg.close(); } }, confirmLabel);
    mount(dlg.footer,
      h('button', { type: 'button', class: 'btn', onClick: () => dlg.close() }, 'Cancel'),
      ok);
    ok.focus();
  });
}

// -- states -----------------------------------------------------------------

export function loadingState(text = 'Loading…') {
  return h('div', { class: 'state state-loading', role: 'status' },
    h('span', { class: 'spinner', 'aria-hidden': 'true' }), h('span', null, text));
}

export function emptyState({ title, text, action = null, iconName = 'info' }) {
  return h('div', { class: 'state state-empty' },
    h('div', { class: 'state-icon' }, icon(iconName)),
    h('h3', null, title),
    text ? h('p', null, text) : null,
    action);
}

export function errorState(error, retry) {
  const missing = error && error.missingRoute;
  return h('div', { class: 'state state-error', role: 'alert' },
    h('div', { class: 'state-icon' }, icon('alert')),
    h('h3', null, missing ? 'Not available on this server' : 'Something went wrong'),
    h('p', null, missing
      ? 'This server does not offer this feature yet (its API has no such route). Upgrade the server to use it.'
      : describeError(error)),
    error && error.code && !missing ? h('p', { class: 'muted small' }, `Error code: ${error.code}`) : null,
    retry && !missing ? h('button', { type: 'button', class: 'btn', onClick: retry }, icon('refresh'), 'Try again') : null);
}

export function describeError(error) {
  if (!error) return 'Unknown error.';
  if (error.code === 'rate_limited') {
    const wait = error.error && error.error.retry_after;
    return wait ? `Too many attempts. Try again in ${wait} s.` : 'Too many attempts. Try again later.';
  }
  return error.message || String(error);
}

/** A small banner shown above a list when a background refresh fails. */
export function staleBanner(error) {
  return h('div', { class: 'banner banner-warning', role: 'status' }, icon('alert'),
    h('span', null, `Live updates paused: ${describeError(error)} Retrying…`));
}

// -- small components -------------------------------------------------------

export function badge(text, tone = 'neutral', { dot = false, title = null } = {}) {
  return h('span', { class: ['badge', `badge-${tone}`], title }, dot ? h('span', { class: 'dot', 'aria-hidden': 'true' }) : null, text);
}

export function pageHeader({ title, subtitle = null, actions = [], back = null }) {
  return h('header', { class: 'page-header' },
    h('div', { class: 'page-heading' },
      back ? h('a', { href: back.href, class: 'back-link' }, icon('back'), back.label) : null,
      h('h1', { tabindex: '-1', class: 'page-title' }, title),
      subtitle ? h('p', { class: 'page-subtitle' }, subtitle) : null),
    actions.length ? h('div', { class: 'page-actions' }, actions) : null);
}

export function card({ title = null, actions = null, body, className = '' }) {
  return h('section', { class: ['card', className] },
    title ? h('div', { class: 'card-header' }, h('h2', { class: 'card-title' }, title), actions) : null,
    body);
}

export function button(label, { iconName = null, kind = '', onClick, type = 'button', ...rest } = {}) {
  return h('button', { type, class: ['btn', kind && `btn-${kind}`], onClick, ...rest }, iconName ? icon(iconName) : null, label);
}

export function iconButton(iconName, label, onClick, extra = {}) {
  return h('button', { type: 'button', class: 'icon-btn', 'aria-label': label, title: label, onClick, ...extra }, icon(iconName));
}

async function writeClipboard(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  // Plain-http consoles on a remote host have no async clipboard.
  const area = h('textarea', { class: 'offscreen', readonly: true }, text);
  document.body.append(area);
  area.select();
  const ok = document.execCommand('copy');
  area.remove();
  if (!ok) throw new Error('copy refused');
}

/** A button that copies getText() and says so. */
export function copyButton(getText, label = 'Copy') {
  const text = h('span', null, label);
  const btn = h('button', { type: 'button', class: 'btn btn-sm copy-btn' }, icon('copy'), text);
  btn.addEventListener('click', async () => {
    try {
      await writeClipboard(typeof getText === 'function' ? getText() : getText);
      text.textContent = 'Copied';
      btn.classList.add('copied');
      toast('Copied to the clipboard', 'success', { timeout: 2500 });
      setTimeout(() => { text.textContent = label; btn.classList.remove('copied'); }, 2000);
    } catch {
      toast('Could not copy: select the text and copy it by hand.', 'error');
    }
  });
  return btn;
}

/** A block of monospace text with a copy button. */
export function codeBlock(text, { label = 'Copy', testId = null } = {}) {
  return h('div', { class: 'code-block' },
    h('code', { 'data-testid': testId }, text),
    copyButton(() => text, label));
}

// -- forms ------------------------------------------------------------------

/**
 * A labelled form field. `control` is the input element; `name` is the API
 * field it fills (so server errors find it).
 */
export function field({ label, control, hint = null, name = null, className = '', optional = false }) {
  const id = control.id || uid('f');
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  const wrap = h('div', { class: ['field', className], 'data-field': name || control.name || null },
    h('label', { for: id, class: 'field-label' }, label, optional ? h('span', { class: 'optional' }, ' (optional)') : null),
    control,
    hint ? h('p', { id: hintId, class: 'field-hint' }, hint) : null);
  return wrap;
}

export function input(name, props = {}) {
  return h('input', { name, type: 'text', class: 'input', autocomplete: 'off', spellcheck: 'false', ...props });
}

export function select(name, options, props = {}) {
  return h('select', { name, class: 'input select', ...props },
    options.map(([value, label]) => h('option', { value }, label)));
}

export function checkbox(name, label, props = {}) {
  const box = h('input', { type: 'checkbox', name, ...props });
  return h('label', { class: 'check', 'data-field': name }, box, h('span', null, label));
}

/** Clear the errors a form shows. */
export function clearErrors(form) {
  form.querySelectorAll('.field-error, .form-error').forEach((n) => n.remove());
  form.querySelectorAll('[aria-invalid]').forEach((n) => {
    n.removeAttribute('aria-invalid');
    const described = (n.getAttribute('aria-describedby') || '').split(' ').filter((x) => x && !x.startsWith('err-'));
    if (described.length) n.setAttribute('aria-describedby', described.join(' '));
    else n.removeAttribute('aria-describedby');
  });
}

function findField(form, name) {
  let key = name;
  while (key) {
    const found = form.querySelector(`[data-field="${CSS.escape(key)}"]`);
    if (found) return found;
    // targets[0].host -> targets[0] -> targets ; rate_limit.x -> rate_limit
    const cut = Math.max(key.lastIndexOf('.'), key.lastIndexOf('['));
    if (cut <= 0) break;
    key = key.slice(0, cut);
  }
  return null;
}

function fieldMessage(issue) {
  return issue.message || issue.code;
}

/**
 * Show an ApiError on a form: every issue (or the error's own field) next
 * to the matching field, the rest in a summary at the top. `fieldFor`
 * maps codes without a field to one (port_in_use -> listen ...).
 * Returns the number of problems shown.
 */
export function showErrors(form, error, { fieldFor = () => null } = {}) {
  clearErrors(form);
  const issues = error.issues && error.issues.length
    ? error.issues
    : [{ field: error.field || fieldFor(error.code, error), code: error.code, message: describeError(error) }];
  const loose = [];
  let firstInvalid = null;
  for (const issue of issues) {
    const wrap = issue.field ? findField(form, issue.field) : null;
    if (!wrap) { loose.push(issue); continue; }
    const errId = uid('err');
    const control = wrap.matches('input, select, textarea') ? wrap : wrap.querySelector('input, select, textarea');
    const exact = wrap.dataset.field === issue.field;
    const text = exact ? fieldMessage(issue) : `${issue.field}: ${fieldMessage(issue)}`;
    const message = h('p', { class: 'field-error', id: errId, 'data-error-for': issue.field }, icon('alert'), h('span', null, text));
    wrap.append(message);
    // Open the collapsed sections the field sits in.
    for (let d = wrap.closest('details'); d; d = d.parentElement && d.parentElement.closest('details')) d.open = true;
    if (control) {
      control.setAttribute('aria-invalid', 'true');
      control.setAttribute('aria-describedby', [control.getAttribute('aria-describedby'), errId].filter(Boolean).join(' '));
      if (!firstInvalid) firstInvalid = control;
    }
  }
  if (loose.length || issues.length > 1) {
    const summary = h('div', { class: 'form-error', role: 'alert' }, icon('alert'),
      h('div', null,
        h('strong', null, issues.length > 1 ? `The server found ${issues.length} problems:` : 'The server refused this:'),
        h('ul', null, (loose.length ? loose : issues).map((i) => h('li', null, i.field && loose.length ? `${i.field}: ${fieldMessage(i)}` : fieldMessage(i))))));
    if (!loose.length) summary.querySelector('ul').remove();
    form.prepend(summary);
    if (!firstInvalid) summary.scrollIntoView({ block: 'nearest' });
  }
  if (firstInvalid) firstInvalid.focus();
  return issues.length;
}

// -- formatting ---------------------------------------------------------------

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function fmtBytes(value) {
  let n = Number(value) || 0;
  let unit = 0;
  while (Math.abs(n) >= 1024 && unit < UNITS.length - 1) { n /= 1024; unit += 1; }
  const digits = unit === 0 || n >= 100 ? 0 : n >= 10 ? 1 : 2;
  return `${n.toFixed(digits)} ${UNITS[unit]}`;
}

export function fmtRate(bytesPerSecond) {
  return `${fmtBytes(bytesPerSecond)}/s`;
}

export function fmtNumber(value) {
  return Number(value || 0).toLocaleString();
}

export function parseTime(value) {
  if (value === null || value === undefined || value === '') return null;
  const t = typeof value === 'number' ? value * 1000 : Date.parse(value);
  return Number.isFinite(t) ? t : null;
}

export function fmtTime(value) {
  const t = parseTime(value);
  return t === null ? '—' : new Date(t).toLocaleString();
}

export function fmtAgo(value, now = Date.now()) {
  const t = parseTime(value);
  if (t === null) return '—';
  const s = Math.round((now - t) / 1000);
  if (s < 0) return 'just now';
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** A <time> element that shows the relative time and the full one on hover. */
export function timeAgo(value) {
  const t = parseTime(value);
  if (t === null) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: new Date(t).toISOString(), title: new Date(t).toLocaleString() }, fmtAgo(value));
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : '';
}

/** A table whose rows become cards on narrow screens (data-label on cells). */
export function table({ columns, rows, caption = null, className = '' }) {
  return h('div', { class: 'table-wrap' },
    h('table', { class: ['table', className] },
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', null, h('tr', null, columns.map((c) => h('th', { scope: 'col', class: c.className }, c.label)))),
      h('tbody', null, rows)));
}

export function row(columns, cells, props = {}) {
  return h('tr', props, cells.map((cell, i) => h('td', { 'data-label': columns[i].label, class: columns[i].className }, cell)));
}
