// Applies the saved theme before the first paint (a classic script in
// <head>, so the page never flashes the wrong colours). The choice lives
// in localStorage under "portunus.theme": "light", "dark" or "system".
(function () {
  var choice = 'system';
  try {
    choice = window.localStorage.getItem('portunus.theme') || 'system';
  } catch (e) {
    // Storage may be disabled; the system theme is a fine default.
  }
  var dark = choice === 'dark' ||
    (choice !== 'light' && window.matchMedia('(prefers-color-scheme: dark)').matches);
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
})();
