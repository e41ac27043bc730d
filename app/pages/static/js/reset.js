// /reset-password#TOKEN: set a new password with an administrator's single-use link. The token
// travels in the fragment (never sent to any server by the browser) and leaves the address bar
// and history at once.

import { api, ApiError, describe } from "./api.js";
import { byId } from "./dom.js";

const token = decodeURIComponent(location.hash.slice(1));
history.replaceState(null, "", location.pathname);

const form = byId("reset-form");
const password = byId("reset-password");
const again = byId("reset-again");
const error = byId("reset-error");
const submit = byId("reset-submit");

const CLOSED = "This link was used already or has expired. Ask an administrator for a new one.";

if (!token) {
  error.textContent = "This link is incomplete. Open the whole link you were sent.";
  submit.disabled = true;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  if (password.value.length < 10) {
    error.textContent = "Choose a password of at least 10 characters.";
    password.focus();
    return;
  }
  if (password.value !== again.value) {
    error.textContent = "The two passwords differ. Type the same one twice.";
    again.select();
    again.focus();
    return;
  }
  submit.disabled = true;
  submit.setAttribute("aria-busy", "true");
  try {
    await api("/api/v1/auth/password-reset", {
      method: "POST",
      json: { token, password: password.value },
      auth: false,
    });
    byId("reset").hidden = true;
    byId("reset-done").hidden = false;
    byId("reset-done-title").focus();
    return;
  } catch (failure) {
    if (failure instanceof ApiError && (failure.status === 404 || failure.status === 410)) {
      error.textContent = CLOSED;
    } else {
      error.textContent = describe(failure);
      submit.disabled = false;
    }
  }
  submit.removeAttribute("aria-busy");
});
