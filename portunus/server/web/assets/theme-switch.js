// Light, dark or the system's theme. Only this choice is kept in the
// browser (localStorage "portunus.theme"); never anything secret.

import { h } from './dom.js';
import { icon } from './icons.js';

const KEY = 'portunus.theme';
const CHOICES = ['system', 'light', 'dark'];
const LABELS = { system: 'System', light: 'Light', dark: 'Dark' };
const ICONS = { system: 'monitor', light: 'sun', dark: 'moon' };
const media = window.matchMedia('(prefers-color-scheme: dark)');
const listeners = new Set();

export function getTheme() {
  try {
    const value = localStorage.getItem(KEY);
    return CHOICES.includes(value) ? value : 'system';
  } catch {
    return 'system';
  }
}

export function applyTheme() {
  const choice = getTheme();
  const dark = choice === 'dark' || (choice === 'system' && media.matches);
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
  for (const fn of listeners) fn(choice);
}

export function setTheme(choice) {
  try {
    localStorage.setItem(KEY, choice);
  } catch {
    // Without storage the choice lasts until the page is reloaded.
  }
  applyTheme();
}

/** Be told when the theme changes (returns the function that stops it). */
export function onThemeChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

media.addEventListener('change', () => { if (getTheme() === 'system') applyTheme(); });

/** An icon button cycling system -> light -> dark. */
export function themeToggle() {
  const btn = h('button', { type: 'button', class: 'icon-btn theme-toggle' });
  const draw = (choice) => {
    const next = CHOICES[(CHOICES.indexOf(choice) + 1) % CHOICES.length];
    btn.replaceChildren(icon(ICONS[choice]));
    btn.setAttribute('aria-label', `Theme: ${LABELS[choice]}. Switch to ${LABELS[next]}`);
    btn.title = `Theme: ${LABELS[choice]}`;
  };
  btn.addEventListener('click', () => {
    const choice = getTheme();
    setTheme(CHOICES[(CHOICES.indexOf(choice) + 1) % CHOICES.length]);
  });
  draw(getTheme());
  onThemeChange(draw);
  return btn;
}

export { CHOICES as THEME_CHOICES, LABELS as THEME_LABELS, ICONS as THEME_ICONS };
