// The one way the console talks to the server: the public JSON API under
// /v1, with the session cookie (HttpOnly, never visible here). Writes
// carry the CSRF proofs the server asks of cookie sessions: the
// X-Portunus-CSRF header and a JSON content type (the browser adds Origin).

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = error.code || (status === 0 ? 'network' : `http_${status}`);
    this.field = error.field || null;
    this.issues = Array.isArray(error.issues) ? error.issues : [];
    this.error = error;
  }

  /** A 403 that means "not allowed to see this", as opposed to a CSRF or password gate. */
  get forbidden() {
    return this.status === 403 && !this.code.startsWith('csrf_') && this.code !== 'password_change_required';
  }

  /** The route does not exist on this server (an older version). */
  get missingRoute() {
    return this.status === 404 && this.code === 'not_found';
  }
}

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const handlers = { unauthorized: null, passwordChange: null };

/** Register what happens on a 401 (session gone) and on a password-change 403. */
export function onAuthFailure({ unauthorized, passwordChange }) {
  handlers.unauthorized = unauthorized;
  handlers.passwordChange = passwordChange;
}

async function errorFrom(response) {
  let error = { message: `${response.status} ${response.statusText}`.trim() };
  try {
    const body = await response.json();
    if (body && typeof body.error === 'object') error = body.error;
  } catch {
    // Not JSON (a proxy's error page): keep the status line.
  }
  return new ApiError(response.status, error);
}

/**
 * Call the API. Resolves with the decoded JSON (text for non-JSON answers,
 * null for 204); rejects with an ApiError. `auth: false` keeps a 401 from
 * sending the user to the login page (the login form itself, the boot
 * probe).
 */
export async function api(path, { method = 'GET', body, signal, auth = true } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', signal, cache: 'no-store' };
  if (MUTATING.has(method)) {
    headers['X-Portunus-CSRF'] = '1';
    headers['Content-Type'] = 'application/json';
    if (body !== undefined) init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, { message: 'Cannot reach the server. Check that it is running and your network.' });
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (auth && error.status === 401 && handlers.unauthorized) handlers.unauthorized(error);
    if (error.code === 'password_change_required' && handlers.passwordChange) handlers.passwordChange(error);
    throw error;
  }
  if (response.status === 204) return null;
  const type = response.headers.get('content-type') || '';
  return type.includes('json') ? response.json() : response.text();
}

export const get = (path, options) => api(path, { ...options, method: 'GET' });
export const post = (path, body, options) => api(path, { ...options, method: 'POST', body });
export const put = (path, body, options) => api(path, { ...options, method: 'PUT', body });
export const patch = (path, body, options) => api(path, { ...options, method: 'PATCH', body });
export const del = (path, options) => api(path, { ...options, method: 'DELETE' });

/** Path segment encoding for ids in URLs. */
export const seg = (value) => encodeURIComponent(String(value));
