// The HTTP API: JSON in and out, the contract's error shape, and the staff session.
//
// Staff tokens are short-lived (at most 15 minutes) and kept in sessionStorage, so they
// die with the tab. When the API answers 401, a page-provided re-authenticator runs (a
// sign-in dialog on the console, so a call in progress is never interrupted), and the
// request is sent once more; without one, the browser goes to /login.

const SESSION_KEY = "televisit.session";
// Treat a token as expired a little early: a request must not race its expiry.
const EXPIRY_MARGIN_MS = 20_000;

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || "error";
    this.details = details;
  }
}

export function readSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    if (!session || typeof session.token !== "string") return null;
    return session;
  } catch {
    return null;
  }
}

export function sessionValid(session = readSession()) {
  return Boolean(session && session.expiresAt - EXPIRY_MARGIN_MS > Date.now());
}

export function saveSession({ token, expiresIn, email, user }) {
  const session = { token, expiresAt: Date.now() + expiresIn * 1000, email, user };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  return session;
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
}

/** Where /login should send the browser back to: one of our own pages only. */
export function loginUrl(reason) {
  const params = new URLSearchParams({ next: location.pathname });
  if (reason) params.set("reason", reason);
  return `/login?${params}`;
}

let reauthenticate = async () => {
  location.assign(loginUrl("expired"));
  // Navigation is under way; never settle.
  return new Promise(() => {});
};

/** Install the page's way of getting a fresh token (resolves once signed in again). */
export function setReauthenticator(fn) {
  reauthenticate = fn;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's error page): the status says enough.
  }
  const error = body && body.error ? body.error : {};
  return new ApiError(response.status, error.code, error.message, error.details);
}

/**
 * Send a request; resolve to the parsed JSON (or the Response itself with `raw`).
 * Options: method, json, form, headers, auth (staff bearer, default true), raw.
 */
export async function api(path, options = {}) {
  const { method = "GET", json, form, headers = {}, auth = true, raw = false } = options;
  const attempt = async () => {
    const sent = { ...headers, Accept: raw ? "*/*" : "application/json" };
    let body;
    if (json !== undefined) {
      sent["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = new URLSearchParams(form);
    }
    if (auth) {
      const session = readSession();
      if (!sessionValid(session)) return null;
      sent.Authorization = `Bearer ${session.token}`;
    }
    return fetch(path, { method, headers: sent, body, credentials: "omit", cache: "no-store" });
  };
  let response = await attempt();
  if (auth && (response === null || response.status === 401)) {
    await reauthenticate();
    response = await attempt();
    if (response === null) throw new ApiError(401, "not_authenticated", "Please sign in again.");
  }
  if (!response.ok) throw await errorFrom(response);
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** A staff token good for at least a little while, re-authenticating first if needed. */
export async function freshToken() {
  if (!sessionValid()) await reauthenticate();
  return readSession().token;
}

/** ws(s)://this-host/path */
export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

/** Plain words for an error a person can act on. */
export function describe(error) {
  if (error instanceof ApiError) {
    if (error.code === "validation_error" && Array.isArray(error.details) && error.details.length) {
      const first = error.details[0];
      const where = Array.isArray(first.loc) ? first.loc.filter((p) => p !== "body").join(" ") : "";
      return `${where ? `${where}: ` : ""}${first.msg || error.message}`;
    }
    return error.message;
  }
  if (error instanceof TypeError) return "The clinic's server could not be reached. Check your connection and try again.";
  return String(error?.message || error);
}
