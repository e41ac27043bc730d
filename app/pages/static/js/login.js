// /login: staff sign in, then go to their page (a clinician always lands on /clinic).

import { api, ApiError, describe, sessionFromSignIn, signOut } from "./api.js";
import { byId } from "./dom.js";

const form = byId("login-form");
const email = byId("login-email");
const password = byId("login-password");
const error = byId("login-error");
const submit = byId("login-submit");
const code = byId("login-otp");
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
    admin: ["/schedule", "/clinic", "/admin"],
  };
  const allowed = pages[role] || [];
  if (next && allowed.includes(next)) return next;
  return allowed[0] || "/login";
}

/** Show the code field (the account has two-factor sign-in). */
function askForCode() {
  for (const id of ["login-otp-label", "login-otp", "login-otp-hint"]) byId(id).hidden = false;
  code.required = true;
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
  let focus = password;
  try {
    const fields = { username: email.value.trim(), password: password.value };
    if (!code.hidden && code.value.trim()) fields.otp = code.value.trim();
    const answer = await api("/api/v1/auth/token", { method: "POST", form: fields, auth: false });
    const me = await api("/api/v1/me", {
      auth: false,
      headers: { Authorization: `Bearer ${answer.access_token}` },
    });
    sessionFromSignIn(answer, me);
    if (me.otp_enrolment_required) {
      await enrol(me);
      return;
    }
    location.replace(destination(me.role));
    return;
  } catch (failure) {
    if (failure instanceof ApiError && failure.code === "otp_required") {
      askForCode();
      error.textContent = code.value ? "" : "Enter the code from your authenticator app.";
      focus = code;
    } else if (failure instanceof ApiError && failure.code === "otp_invalid") {
      askForCode();
      error.textContent = "That code is not right, or was used already. Enter the current one.";
      focus = code;
    } else if (failure instanceof ApiError && failure.status === 401) {
      error.textContent = "That email and password do not match.";
    } else if (failure instanceof ApiError && failure.status === 429) {
      error.textContent = "Too many attempts. Wait a minute, then try again.";
    } else {
      error.textContent = describe(failure);
    }
  }
  focus.select();
  focus.focus();
  submit.disabled = false;
  submit.removeAttribute("aria-busy");
});

// Two-factor enrolment: an admin who must have it sets it up before going on.
async function enrol(me) {
  byId("login-title").closest("section").hidden = true;
  const section = byId("enrol");
  section.hidden = false;
  const enrolment = await api("/api/v1/me/otp", { method: "POST" });
  const uri = new URL(enrolment.otpauth_uri);
  byId("enrol-key").textContent = (uri.searchParams.get("secret") || "").replace(/(.{4})/g, "$1 ").trim();
  byId("enrol-link").href = enrolment.otpauth_uri;
  const input = byId("enrol-otp");
  const problem = byId("enrol-error");
  input.focus();
  byId("enrol-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.textContent = "";
    try {
      await api("/api/v1/me/otp/confirm", { method: "POST", json: { otp: input.value.trim() } });
      location.replace(destination(me.role));
    } catch (failure) {
      problem.textContent =
        failure instanceof ApiError && failure.code === "otp_invalid"
          ? "That code is not right, or was used already. Enter the current one."
          : describe(failure);
      input.select();
      input.focus();
    }
  });
}
