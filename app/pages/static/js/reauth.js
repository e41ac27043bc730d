// Signing in again without leaving the page, once the session has really ended (the tokens
// themselves are renewed silently by api.js): a clinician in a call must not be sent to
// /login. A modal dialog asks for the password; every API call waiting on it goes on once it
// succeeds, and the console's socket takes the new token.

import {
  announce,
  api,
  ApiError,
  clearSession,
  describe,
  keepFresh,
  loginUrl,
  readSession,
  sessionFromSignIn,
  setReauthenticator,
  signedIn,
} from "./api.js";
import { el } from "./dom.js";

let pending = null;

function build() {
  const heading = el("h2", { id: "reauth-title", text: "Please sign in again" });
  const note = el("p", {
    text: "Your session has ended. Sign in again to continue; nothing on this page is lost.",
  });
  const email = el("input", {
    id: "reauth-email",
    type: "email",
    autocomplete: "username",
    required: true,
  });
  const password = el("input", {
    id: "reauth-password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  // Shown when the account has two-factor sign-in (the server answers otp_required).
  const codeLabel = el("label", { for: "reauth-otp", text: "Code from your authenticator app", hidden: true });
  const code = el("input", {
    id: "reauth-otp",
    type: "text",
    inputmode: "numeric",
    autocomplete: "one-time-code",
    maxlength: "6",
    hidden: true,
  });
  const error = el("p", { class: "form-error", role: "alert" });
  const submit = el("button", { type: "submit", class: "primary", text: "Sign in" });
  const leave = el("a", { href: "/login", text: "Sign in as someone else" });
  const form = el(
    "form",
    { method: "dialog", class: "stack" },
    heading,
    note,
    el("label", { for: "reauth-email", text: "Email" }),
    email,
    el("label", { for: "reauth-password", text: "Password" }),
    password,
    codeLabel,
    code,
    error,
    el("div", { class: "row" }, submit, leave),
  );
  const dialog = el("dialog", { id: "reauth", "aria-labelledby": "reauth-title" }, form);
  // Escape must not dismiss it: there is no way on without signing in.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  document.body.append(dialog);
  return { dialog, form, email, password, codeLabel, code, error, submit };
}

/** Resolves once the person has signed in again (the same account). */
export function reauthenticate() {
  if (pending) return pending;
  const ui = build();
  const previous = readSession();
  ui.email.value = previous?.email || "";
  pending = new Promise((resolve) => {
    ui.form.addEventListener("submit", async (event) => {
      event.preventDefault();
      ui.error.textContent = "";
      ui.submit.disabled = true;
      try {
        const answer = await api("/api/v1/auth/token", {
          method: "POST",
          form: {
            username: ui.email.value.trim(),
            password: ui.password.value,
            ...(ui.code.hidden || !ui.code.value.trim() ? {} : { otp: ui.code.value.trim() }),
          },
          auth: false,
        });
        const me = await api("/api/v1/me", {
          auth: false,
          headers: { Authorization: `Bearer ${answer.access_token}` },
        });
        if (previous?.user && me.id !== previous.user.id) {
          clearSession();
          location.assign("/login");
          return;
        }
        sessionFromSignIn(answer, me);
        announce(answer.access_token);
        ui.dialog.close();
        ui.dialog.remove();
        pending = null;
        resolve();
      } catch (error) {
        const otp = error instanceof ApiError && ["otp_required", "otp_invalid"].includes(error.code);
        if (otp) {
          ui.codeLabel.hidden = ui.code.hidden = false;
          ui.error.textContent =
            error.code === "otp_required"
              ? "Enter the code from your authenticator app."
              : "That code is not right, or was used already. Enter the current one.";
          ui.code.select();
          ui.code.focus();
        } else {
          ui.error.textContent =
            error instanceof ApiError && error.status === 401
              ? "That email and password do not match."
              : describe(error);
          ui.password.select();
        }
      } finally {
        ui.submit.disabled = false;
      }
    });
  });
  ui.dialog.showModal();
  (ui.email.value ? ui.password : ui.email).focus();
  return pending;
}

/**
 * Start a staff page: without a session (or with one that cannot be renewed) the browser goes
 * to /login and this resolves to null; otherwise the tokens are kept fresh, the sign-in
 * dialog stands ready for a session that ends, and this resolves to the signed-in person
 * (`GET /api/v1/me`; it throws what the API said).
 */
export async function signedInStaff() {
  if (!readSession()) {
    location.replace(loginUrl());
    return null;
  }
  if (!(await signedIn())) {
    location.replace(loginUrl("expired"));
    return null;
  }
  setReauthenticator(reauthenticate);
  keepFresh();
  return api("/api/v1/me");
}
