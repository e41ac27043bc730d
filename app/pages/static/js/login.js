// /login: staff sign in, then go to their page (a clinician always lands on /clinic).

import { api, ApiError, describe, sessionFromSignIn, signOut } from "./api.js";
import { byId } from "./dom.js";

const form = byId("login-form");
const email = byId("login-email");
const password = byId("login-password");
const error = byId("login-error");
const submit = byId("login-submit");
const notice = byId("login-notice");

const params = new URLSearchParams(location.search);
const REASONS = {
  expired: "Your session has expired. Please sign in again.",
  signed_out: "You have signed out.",
  forbidden: "That page is not available to your account. Sign in with another one.",
};
if (REASONS[params.get("reason")]) {
  notice.textContent = REASONS[params.get("reason")];
  notice.hidden = false;
}
// Whoever comes back here is done with their session: end it on the server too.
signOut();

/** The page a role lands on; `next` is honoured only where that role belongs. */
function destination(role) {
  const next = params.get("next");
  const pages = {
    clinician: ["/clinic"],
    scheduler: ["/schedule"],
    admin: ["/schedule", "/clinic"],
  };
  const allowed = pages[role] || [];
  if (next && allowed.includes(next)) return next;
  return allowed[0] || "/login";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  if (!email.value.trim() || !password.value) {
    error.textContent = "Enter your email and password.";
    (email.value.trim() ? password : email).focus();
    return;
  }
  submit.disabled = true;
  submit.setAttribute("aria-busy", "true");
  try {
    const answer = await api("/api/v1/auth/token", {
      method: "POST",
      form: { username: email.value.trim(), password: password.value },
      auth: false,
    });
    const me = await api("/api/v1/me", {
      auth: false,
      headers: { Authorization: `Bearer ${answer.access_token}` },
    });
    sessionFromSignIn(answer, me);
    location.replace(destination(me.role));
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) {
      error.textContent = "That email and password do not match.";
    } else if (failure instanceof ApiError && failure.status === 429) {
      error.textContent = "Too many attempts. Wait a minute, then try again.";
    } else {
      error.textContent = describe(failure);
    }
    password.select();
    password.focus();
    submit.disabled = false;
    submit.removeAttribute("aria-busy");
  }
});
