// The HTTP API: JSON in and out, the contract's error shape, and the staff session.
//
// A sign-in gives a short-lived access token (at most 15 minutes) and a single-use refresh
// token, both kept in sessionStorage so they die with the tab. The page renews them silently
// before the access token expires (`keepFresh`) and whenever the API answers 401; only when the
// session itself has ended (logout elsewhere, its 12-hour or idle limit, a deactivation, a
// replayed refresh token) does a page-provided re-authenticator run (a sign-in dialog on the
// console, so a call in progress is never interrupted), and the request is sent once more;
// without one, the browser goes to /login. Refreshes in one tab never overlap: two with one
// token would look like a stolen token and end the session.

const SESSION_KEY = "televisit.session";
// Treat a token as expired a little early: a request must not race its expiry.
const EXPIRY_MARGIN_MS = 20_000;
// Renew this long before the access token expires (or at half its life, if shorter).
const RENEW_AHEAD_MS = 60_000;
// After a renewal that could not reach the server, try again this soon.
const RENEW_RETRY_MS = 5_000;

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

function margin(session) {
  return Math.min(EXPIRY_MARGIN_MS, (session.lifetimeMs || 0) / 4);
}

export function sessionValid(session = readSession()) {
  return Boolean(session && session.expiresAt - margin(session) > Date.now());
}

/** Keep a sign-in's tokens; `refreshToken` and the person are kept from before when not given. */
export function saveSession({ token, expiresIn, refreshToken, email, user }) {
  const previous = readSession() || {};
  const session = {
    token,
    expiresAt: Date.now() + expiresIn * 1000,
    lifetimeMs: expiresIn * 1000,
    refreshToken: refreshToken ?? previous.refreshToken ?? null,
    email: email ?? previous.email,
    user: user ?? previous.user,
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
  scheduleRenewal();
  return session;
}

/** Keep what a sign-in answered (`POST /auth/token`), for the person `me`. */
export function sessionFromSignIn(answer, me) {
  return saveSession({
    token: answer.access_token,
    expiresIn: answer.expires_in,
    refreshToken: answer.refresh_token,
    email: me.email,
    user: me,
  });
}

export function clearSession() {
  sessionStorage.removeItem(SESSION_KEY);
  window.clearTimeout(renewTimer);
}

// Silent renewal ------------------------------------------------------------------------------

const renewedListeners = [];
let renewing = null;
let renewTimer = 0;
let keeping = false;

/** Call `fn(token)` with every renewed access token (the console re-authenticates its socket). */
export function onRenewed(fn) {
  renewedListeners.push(fn);
}

/** Tell the page about a new access token (renewed, or from signing in again). */
export function announce(token) {
  for (const fn of renewedListeners) {
    try {
      fn(token);
    } catch (error) {
      console.warn("renewed", error?.name);
    }
  }
}

/**
 * Trade the refresh token for new tokens. Resolves true when renewed, false when the session
 * has ended (sign in again); rejects when the server could not be reached. One at a time.
 */
export function renew() {
  if (renewing) return renewing;
  renewing = (async () => {
    const session = readSession();
    if (!session || !session.refreshToken) return false;
    const response = await fetch("/api/v1/auth/refresh", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ refresh_token: session.refreshToken }),
      credentials: "omit",
      cache: "no-store",
    });
    if (response.status === 401) {
      // Spent or ended: never send it again.
      sessionStorage.setItem(SESSION_KEY, JSON.stringify({ ...session, refreshToken: null }));
      return false;
    }
    if (!response.ok) throw await errorFrom(response);
    const answer = await response.json();
    saveSession({
      token: answer.access_token,
      expiresIn: answer.expires_in,
      refreshToken: answer.refresh_token,
    });
    announce(answer.access_token);
    return true;
  })().finally(() => {
    renewing = null;
  });
  return renewing;
}

function scheduleRenewal(delay) {
  window.clearTimeout(renewTimer);
  if (!keeping) return;
  const session = readSession();
  if (!session || !session.refreshToken) return;
  const ahead = Math.min(RENEW_AHEAD_MS, session.lifetimeMs / 2);
  const wait = delay ?? Math.max(0, session.expiresAt - ahead - Date.now());
  renewTimer = window.setTimeout(async () => {
    try {
      if (!(await renew())) await askToSignIn();
    } catch {
      scheduleRenewal(RENEW_RETRY_MS);
    }
  }, wait);
}

/** Renew the tokens before they expire, for as long as the page is open. */
export function keepFresh() {
  keeping = true;
  scheduleRenewal();
}

/** Whether the page can go on: a valid access token, or one renewed now. */
export async function signedIn() {
  if (sessionValid()) return true;
  try {
    return await renew();
  } catch {
    return false;
  }
}

/** End the session on the server (best effort), then forget it here. */
export async function signOut() {
  const session = readSession();
  clearSession();
  if (!session) return;
  const headers = { "Content-Type": "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  try {
    await fetch("/api/v1/auth/logout", {
      method: "POST",
      headers,
      body: JSON.stringify(session.refreshToken ? { refresh_token: session.refreshToken } : {}),
      credentials: "omit",
      cache: "no-store",
    });
  } catch {
    // Offline: the session ends by itself at its idle limit.
  }
}

/** Where /login should send the browser back to: one of our own pages only. */
export function loginUrl(reason) {
  const params = new URLSearchParams({ next: location.pathname });
  if (reason) params.set("reason", reason);
  return `/login?${params}`;
}

let askToSignIn = async () => {
  location.assign(loginUrl("expired"));
  // Navigation is under way; never settle.
  return new Promise(() => {});
};

/** Install the page's way of signing in again (resolves once signed in). */
export function setReauthenticator(fn) {
  askToSignIn = fn;
}

/**
 * A valid session again: renewed silently when it still stands, else signed in anew. While the
 * server cannot be reached, keeps trying: a network outage is no reason to ask for a password.
 */
export async function reauthenticate() {
  for (;;) {
    try {
      if (await renew()) return;
      break;
    } catch {
      await new Promise((resolve) => window.setTimeout(resolve, RENEW_RETRY_MS));
    }
  }
  await askToSignIn();
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
    const sent = { Accept: raw ? "*/*" : "application/json", ...headers };
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
