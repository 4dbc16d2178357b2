// The console's entry point: who is logged in, the routes, the shell
// (sidebar, top bar on phones) and the life of a page (its polls end when
// the user leaves it).
//
// Nothing is drawn until /v1/auth/status and /v1/users/me have answered,
// so a signed-out visitor never sees a flash of the console.

import { get, post, onAuthFailure, ApiError } from './api.js';
import { h, mount } from './dom.js';
import { icon, logo } from './icons.js';
import { errorState, loadingState, toast } from './ui.js';
import { applyTheme, themeToggle } from './theme-switch.js';
import { loginPage, onboardingPage, passwordPage } from './pages/auth.js';
import { dashboardPage } from './pages/dashboard.js';
import { clientsPage } from './pages/clients.js';
import { rulesPage } from './pages/rules.js';
import { ruleDetailPage } from './pages/rule-detail.js';
import { usersPage, userDetailPage } from './pages/users.js';
import { auditPage } from './pages/audit.js';
import { metricsPage } from './pages/metrics.js';
import { settingsPage } from './pages/settings.js';
import { forbiddenPage, notFoundPage } from './pages/errors.js';

// Routes: `layout: 'auth'` pages stand alone; the rest sit in the shell.
const ROUTES = [
  { path: '/onboarding', page: onboardingPage, layout: 'auth', access: 'onboarding', title: 'Welcome' },
  { path: '/login', page: loginPage, layout: 'auth', access: 'public', title: 'Log in' },
  { path: '/password', page: passwordPage, layout: 'auth', access: 'password', title: 'Change your password' },
  { path: '/', page: dashboardPage, title: 'Dashboard', nav: 'dashboard' },
  { path: '/clients', page: clientsPage, title: 'Clients', nav: 'clients' },
  { path: '/rules', page: rulesPage, title: 'Rules', nav: 'rules' },
  { path: '/rules/:id', page: ruleDetailPage, title: 'Rule', nav: 'rules' },
  { path: '/users', page: usersPage, title: 'Users', nav: 'users', superadmin: true },
  { path: '/users/:id', page: userDetailPage, title: 'User', nav: 'users', superadmin: true },
  { path: '/grants', redirect: '/users' },
  { path: '/audit', page: auditPage, title: 'Audit log', nav: 'audit', superadmin: true },
  { path: '/metrics', page: metricsPage, title: 'Metrics', nav: 'metrics', superadmin: true },
  { path: '/settings', page: settingsPage, title: 'Settings', nav: 'settings' },
  { path: '/forbidden', page: forbiddenPage, title: 'Permission denied' },
];

const NAV = [
  { id: 'dashboard', href: '/', label: 'Dashboard', icon: 'dashboard' },
  { id: 'clients', href: '/clients', label: 'Clients', icon: 'clients' },
  { id: 'rules', href: '/rules', label: 'Rules', icon: 'rules' },
  { id: 'users', href: '/users', label: 'Users & grants', icon: 'users', superadmin: true },
  { id: 'audit', href: '/audit', label: 'Audit log', icon: 'audit', superadmin: true },
  { id: 'metrics', href: '/metrics', label: 'Metrics', icon: 'metrics', superadmin: true },
  { id: 'settings', href: '/settings', label: 'Settings', icon: 'settings' },
];

const root = document.getElementById('app');

const state = {
  me: null,
  onboardingRequired: false,
  // Shown once on the login page: "expired", "logged_out", "onboarded".
  notice: null,
  noticeUser: null,
  // Where to go after logging in.
  next: null,
  shell: null,
  page: null,
  renderSeq: 0,
};

function match(pathname) {
  const parts = pathname.replace(/\/+$/, '').split('/').filter(Boolean);
  for (const route of ROUTES) {
    const pattern = route.path.split('/').filter(Boolean);
    if (pattern.length !== parts.length) continue;
    const params = {};
    let ok = true;
    for (let i = 0; i < pattern.length; i += 1) {
      if (pattern[i].startsWith(':')) params[pattern[i].slice(1)] = decodeURIComponent(parts[i]);
      else if (pattern[i] !== parts[i]) { ok = false; break; }
    }
    if (ok) return { route, params };
  }
  return { route: { page: notFoundPage, title: 'Not found' }, params: {} };
}

export function navigate(path, { replace = false } = {}) {
  if (path === location.pathname + location.search) {
    if (!replace) render();
    return;
  }
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

// -- session ----------------------------------------------------------------

async function loadSession() {
  const status = await get('/v1/auth/status', { auth: false });
  state.onboardingRequired = Boolean(status.onboarding_required);
  if (state.onboardingRequired) {
    state.me = null;
    return;
  }
  try {
    state.me = await get('/v1/users/me', { auth: false });
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 401) throw e;
    state.me = null;
    // A cookie that no longer works (rather than no cookie at all).
    if (e.code === 'credential_invalid') state.notice = 'expired';
  }
}

function sessionExpired() {
  if (!state.me) return;
  state.me = null;
  state.notice = 'expired';
  state.next = location.pathname + location.search;
  navigate('/login', { replace: true });
}

onAuthFailure({
  unauthorized: sessionExpired,
  passwordChange: () => {
    if (state.me) state.me.password_change_required = true;
    navigate('/password', { replace: true });
  },
});

async function logout() {
  try {
    await post('/v1/auth/logout', undefined, { auth: false });
  } catch (e) {
    // Already gone server-side: the outcome is the same.
    if (!(e instanceof ApiError) || e.status !== 401) {
      toast(`Could not log out: ${e.message}`, 'error');
      return;
    }
  }
  state.me = null;
  state.notice = 'logged_out';
  state.next = null;
  navigate('/login');
}

// -- shell ------------------------------------------------------------------

function buildShell() {
  const nav = h('nav', { class: 'nav', 'aria-label': 'Main' });
  const userBox = h('div', { class: 'sidebar-user' });
  const sidebar = h('aside', { class: 'sidebar', id: 'sidebar' },
    h('a', { href: '/', class: 'brand' }, logo(), h('span', null, 'Portunus')),
    nav,
    h('div', { class: 'sidebar-footer' }, userBox));
  const menuButton = h('button', { type: 'button', class: 'icon-btn menu-btn', 'aria-label': 'Open navigation', 'aria-controls': 'sidebar', 'aria-expanded': 'false' }, icon('menu'));
  const topbar = h('header', { class: 'topbar' },
    menuButton,
    h('a', { href: '/', class: 'brand' }, logo(), h('span', null, 'Portunus')),
    h('div', { class: 'topbar-end' }, themeToggle()));
  const scrim = h('div', { class: 'scrim', 'aria-hidden': 'true' });
  const main = h('main', { id: 'main', class: 'main', tabindex: '-1' });
  const el = h('div', { class: 'shell' },
    h('a', { href: '#main', class: 'skip-link', onClick: (e) => { e.preventDefault(); main.focus(); } }, 'Skip to content'),
    topbar, sidebar, scrim, main);

  const setDrawer = (open) => {
    el.classList.toggle('drawer-open', open);
    menuButton.setAttribute('aria-expanded', open ? 'true' : 'false');
    menuButton.setAttribute('aria-label', open ? 'Close navigation' : 'Open navigation');
    if (open) nav.querySelector('a')?.focus();
  };
  menuButton.addEventListener('click', () => setDrawer(!el.classList.contains('drawer-open')));
  scrim.addEventListener('click', () => setDrawer(false));
  el.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && el.classList.contains('drawer-open')) {
      setDrawer(false);
      menuButton.focus();
    }
  });
  return { el, nav, userBox, main, setDrawer, user: null };
}

function fillShell(shell, active) {
  const me = state.me;
  const superadmin = me.role === 'superadmin';
  mount(shell.nav, NAV.filter((item) => !item.superadmin || superadmin).map((item) =>
    h('a', {
      href: item.href,
      class: ['nav-link', item.id === active && 'active'],
      'aria-current': item.id === active ? 'page' : null,
      onClick: () => shell.setDrawer(false),
    }, icon(item.icon), h('span', null, item.label))));
  if (shell.user !== me) {
    shell.user = me;
    mount(shell.userBox,
      h('div', { class: 'avatar', 'aria-hidden': 'true' }, (me.display_name || me.user_id).slice(0, 1).toUpperCase()),
      h('div', { class: 'sidebar-user-text' },
        h('span', { class: 'sidebar-user-name', 'data-testid': 'current-user' }, me.display_name || me.user_id),
        h('span', { class: 'sidebar-user-role', title: me.user_id }, superadmin ? 'Superadmin' : 'User')),
      h('div', { class: 'sidebar-user-actions' },
        themeToggle(),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': 'Log out', title: 'Log out', onClick: logout }, icon('logout'))));
  }
}

// -- rendering --------------------------------------------------------------

function leavePage() {
  if (state.page) {
    state.page.abort.abort();
    for (const fn of state.page.cleanups) {
      try { fn(); } catch (e) { console.error(e); }
    }
    state.page = null;
  }
}

function makeContext(route, params, seq) {
  const abort = new AbortController();
  const cleanups = [];
  const ctx = {
    me: state.me,
    params,
    query: new URLSearchParams(location.search),
    signal: abort.signal,
    navigate,
    get active() { return state.renderSeq === seq && !abort.signal.aborted; },
    onLeave(fn) { cleanups.push(fn); },
    /** Run fn now and then every `ms` (while the tab is visible), until the page is left. */
    every(ms, fn) {
      let timer = null;
      const tick = async () => {
        timer = null;
        if (!ctx.active) return;
        if (!document.hidden) {
          try { await fn(); } catch (e) { if (e.name !== 'AbortError') console.warn(e); }
        }
        if (ctx.active) timer = setTimeout(tick, ms);
      };
      const wake = () => { if (!document.hidden && timer !== null) { clearTimeout(timer); tick(); } };
      document.addEventListener('visibilitychange', wake);
      cleanups.push(() => { if (timer !== null) clearTimeout(timer); document.removeEventListener('visibilitychange', wake); });
      tick();
    },
    setTitle(title) { document.title = title ? `${title} · Portunus` : 'Portunus'; },
    session: {
      notice: () => { const n = { kind: state.notice, user: state.noticeUser }; state.notice = null; state.noticeUser = null; return n; },
      afterLogin: async () => {
        await loadSession();
        const next = state.next && !state.next.startsWith('/login') ? state.next : '/';
        state.next = null;
        navigate(state.me && state.me.password_change_required ? '/password' : next, { replace: true });
      },
      onboarded: (userId) => { state.onboardingRequired = false; state.notice = 'onboarded'; state.noticeUser = userId; navigate('/login', { replace: true }); },
      passwordChanged: async () => { await loadSession(); navigate('/', { replace: true }); },
      logout,
    },
  };
  state.page = { abort, cleanups };
  return ctx;
}

function guard(route) {
  // Where a visitor in this state must go instead (or null: stay).
  if (route.redirect) return route.redirect;
  if (state.onboardingRequired) return route.access === 'onboarding' ? null : '/onboarding';
  if (route.access === 'onboarding') return state.me ? '/' : '/login';
  if (route.access === 'public') return state.me && !state.me.password_change_required ? '/' : null;
  if (!state.me) {
    state.next = location.pathname + location.search;
    return '/login';
  }
  if (state.me.password_change_required) return route.access === 'password' ? null : '/password';
  if (route.access === 'password') return null;
  return null;
}

async function render() {
  const seq = ++state.renderSeq;
  leavePage();
  const { route, params } = match(location.pathname);
  const target = guard(route);
  if (target && target !== location.pathname) {
    history.replaceState(null, '', target);
    render();
    return;
  }
  root.classList.remove('booting');
  root.removeAttribute('aria-busy');
  const ctx = makeContext(route, params, seq);
  ctx.setTitle(route.title);
  let container;
  if (route.layout === 'auth') {
    state.shell = null;
    container = h('div', { class: 'auth-layout' });
    mount(root, container);
  } else {
    if (!state.shell || !root.contains(state.shell.el)) {
      state.shell = buildShell();
      mount(root, state.shell.el);
    }
    fillShell(state.shell, route.nav);
    container = state.shell.main;
    container.classList.toggle('main-wide', Boolean(route.wide));
    mount(container, loadingState());
  }
  let page = route.page;
  if (route.superadmin && state.me && state.me.role !== 'superadmin') page = forbiddenPage;
  try {
    await page(container, ctx);
  } catch (e) {
    if (e.name === 'AbortError' || !ctx.active) return;
    if (e instanceof ApiError && e.status === 401) return; // sessionExpired took over
    if (e instanceof ApiError && e.forbidden) {
      mount(container);
      await forbiddenPage(container, ctx, e);
    } else {
      console.error(e);
      mount(container, errorState(e, () => render()));
    }
  }
  if (ctx.active) {
    const heading = container.querySelector('h1');
    // Move focus to the new page for keyboard and screen-reader users,
    // except on first load and when a page focused a field itself.
    if (heading && state.rendered && !container.contains(document.activeElement)) heading.focus({ preventScroll: true });
    state.rendered = true;
  }
}

// Links inside the console navigate without reloading.
document.addEventListener('click', (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest('a[href]');
  if (!link || link.target || link.hasAttribute('download')) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/v1/') || url.pathname.startsWith('/assets/')) return;
  if (url.hash && url.pathname === location.pathname) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener('popstate', () => render());

async function boot() {
  applyTheme();
  try {
    await loadSession();
  } catch (e) {
    root.classList.remove('booting');
    root.removeAttribute('aria-busy');
    mount(root, h('div', { class: 'auth-layout' }, h('div', { class: 'auth-card' }, errorState(e, () => location.reload()))));
    return;
  }
  render();
}

boot();
