// /admin: users, consent texts, the audit log, recordings and their retention (admins only).
//
// Every section talks to the API with the staff bearer token. Files (the audit CSV, a
// recording) are fetched with that header and handed to the browser as a Blob: a link
// cannot carry it. Where this server lacks an endpoint the page says so and offers what
// the server has.

import { api, ApiError, describe, signOut } from "./api.js";
import { byId, confirmDialog, copyText, downloadBlob, el, setText } from "./dom.js";
import { signedInStaff } from "./reauth.js";
import { addDays, dateKey, formatDateTime, formatDuration, rfc3339, zonedParts, zonedTime } from "./time.js";

const ROLES = { admin: "Administrator", scheduler: "Scheduler", clinician: "Clinician" };
const HOME = { scheduler: "/schedule", clinician: "/clinic" };
const DECISIONS = { granted: "Agreed", declined: "Declined", withdrawn: "Withdrew" };
const SCOPES = { video_visit: "video visit", recording: "recording" };
const STATUS = {
  booked: "booked",
  waiting: "waiting room",
  in_call: "in call",
  completed: "completed",
  no_show: "no-show",
  cancelled: "cancelled",
};
// Appointments whose recordings the fallback listing asks for (a call took place).
const CALLED = new Set(["in_call", "completed"]);

const state = {
  me: null,
  zone: "UTC",
  users: new Map(), // id → user
  names: new Map(), // id → name, for clinicians even where the users cannot be listed
  usersListed: false,
  editing: null, // the user in the dialog (null: adding one)
  consent: null, // the current text
  visits: [],
  audit: { filters: null, cursor: null, loading: false },
  recordings: { mode: null, items: [], cursor: null, appointments: new Map() },
  retentionDays: null,
  playerUrl: null,
};

/** An endpoint this server does not have yet (an older server): 404 or 405 for the path. */
function missingEndpoint(error) {
  return error instanceof ApiError && (error.status === 404 || error.status === 405);
}

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

function when(value) {
  return value ? formatDateTime(value, state.zone) : "—";
}

function userName(id) {
  if (!id) return "the system";
  const user = state.users.get(id);
  if (user) return user.name;
  return state.names.get(id) || `user ${id.slice(0, 8)}`;
}

function bytes(count) {
  if (count === null || count === undefined) return "size unknown";
  if (count < 1024 * 1024) return `${Math.max(1, Math.round(count / 1024))} KB`;
  return `${(count / (1024 * 1024)).toFixed(1)} MB`;
}

/** A table in its scrolling box, headed by these columns; returns its body. */
function table(boxId, caption, columns) {
  const body = el("tbody");
  const head = el("tr", {}, ...columns.map((name) => el("th", { scope: "col", text: name })));
  byId(boxId).append(
    el("table", { class: "grid" }, el("caption", { class: "visually-hidden", text: caption }), el("thead", {}, head), body),
  );
  return body;
}

const consentRows = table("consent-records-box", "Consent decisions for the chosen visit, oldest first", [
  "When",
  "Who",
  "Decision",
  "Scopes",
  "Version",
]);
const auditRows = table("audit-table", "Audit events, newest first", ["When", "Who", "Action", "Record", "Outcome", "Address"]);

// Start-up ----------------------------------------------------------------------------------

async function start() {
  try {
    state.me = await signedInStaff();
  } catch (error) {
    byId("page-loading").textContent = "";
    show(byId("page-problem"), describe(error));
    return;
  }
  if (!state.me) return;
  byId("who").textContent = state.me.name;
  byId("page-loading").textContent = "";
  if (state.me.role !== "admin") {
    notForYou();
    return;
  }
  if (state.me.otp_enrolment_required) {
    // This server asks administrators for two-factor sign-in; until it is set up, the API
    // refuses everything here (403 otp_enrolment_required). Sign-in walks them through it.
    const problem = byId("page-problem");
    show(problem, "Set up two-factor sign-in before using this page: this server requires it for administrators. ");
    problem.append(el("a", { href: "/login?next=%2Fadmin", text: "Sign in again to set it up" }));
    return;
  }
  state.zone = state.me.timezone || "UTC";
  state.users.set(state.me.id, state.me);
  byId("admin-content").hidden = false;
  fillTimeZones();
  setDefaultRanges();
  await Promise.all([loadUsers(), loadClinicianNames()]);
  renderUsers();
  await Promise.all([loadConsent(), loadVisits(), loadAudit(), loadSettings().then(loadRecordings)]);
}

function notForYou() {
  const role = ROLES[state.me.role] || state.me.role;
  byId("not-admin-text").textContent =
    `You are signed in as ${state.me.name} (${role.toLowerCase()}). Only administrators can ` +
    "manage users, consent texts, the audit log and recordings. Ask an administrator for what you need.";
  const home = byId("not-admin-home");
  home.href = HOME[state.me.role] || "/login";
  home.textContent = state.me.role === "clinician" ? "Go to your console" : "Go to the schedule";
  byId("not-admin").hidden = false;
  byId("not-admin-title").setAttribute("tabindex", "-1");
  byId("not-admin-title").focus();
}

byId("sign-out").addEventListener("click", async () => {
  await signOut();
  location.assign("/login?reason=signed_out");
});

function fillTimeZones() {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  byId("timezones").replaceChildren(...["UTC", ...zones].map((zone) => el("option", { value: zone })));
}

function setDefaultRanges() {
  const today = zonedParts(new Date(), state.zone);
  byId("visits-from").value = dateKey(addDays(today, -30));
  byId("visits-to").value = dateKey(addDays(today, 7));
  const zone = ` (${state.zone})`;
  byId("audit-from").previousElementSibling.textContent = `From${zone}`;
  byId("audit-to").previousElementSibling.textContent = `Until${zone}`;
}

// Users -------------------------------------------------------------------------------------

async function loadUsers() {
  const status = byId("users-status");
  status.textContent = "Loading the users…";
  try {
    const answer = await api("/api/v1/users");
    state.users = new Map(answer.items.map((user) => [user.id, user]));
    state.usersListed = true;
    status.textContent = "";
  } catch (error) {
    status.textContent = missingEndpoint(error)
      ? "This server cannot list its users yet; the users you add here are shown."
      : describe(error);
  }
  renderUsers();
}

async function loadClinicianNames() {
  try {
    const answer = await api("/api/v1/clinicians");
    for (const clinician of answer.items) state.names.set(clinician.id, clinician.name);
  } catch {
    // Names only make the lists friendlier; ids stand in for them.
  }
}

function sortedUsers() {
  return [...state.users.values()].sort(
    (a, b) => Number(b.active !== false) - Number(a.active !== false) || a.name.localeCompare(b.name),
  );
}

function renderUsers() {
  const list = byId("user-list");
  list.replaceChildren(...sortedUsers().map(userItem));
  const actor = byId("audit-actor");
  const chosen = actor.value;
  // Clinicians are known by name even where the users cannot be listed.
  const others = [...state.names].filter(([id]) => !state.users.has(id)).sort((a, b) => a[1].localeCompare(b[1]));
  actor.replaceChildren(
    el("option", { value: "", text: "Anyone" }),
    ...sortedUsers().map((user) => el("option", { value: user.id, text: `${user.name} (${user.email})` })),
    ...others.map(([id, name]) => el("option", { value: id, text: name })),
  );
  actor.value = [...actor.options].some((option) => option.value === chosen) ? chosen : "";
}

/** A button whose visible word is followed, for screen readers, by whom it acts on. */
function actionButton(text, who, onclick, extra = {}) {
  return el("button", { type: "button", onclick, ...extra }, text, el("span", { class: "visually-hidden", text: ` ${who}` }));
}

function userItem(user) {
  const self = user.id === state.me.id;
  const active = user.active !== false;
  const tags = el(
    "span",
    { class: "row" },
    el("span", { class: "tag", text: ROLES[user.role] || user.role }),
    active ? null : el("span", { class: "tag warn", text: "Deactivated" }),
    self ? el("span", { class: "tag ok", text: "You" }) : null,
  );
  const actions = el(
    "div",
    { class: "row" },
    actionButton("Edit", user.name, () => openUserDialog(user), { "data-testid": "edit-user" }),
    actionButton("Password reset link", `for ${user.name}`, () => issueReset(user), { "data-testid": "reset-password" }),
    self
      ? null
      : active
        ? actionButton("Deactivate", user.name, () => setActive(user, false), { class: "danger", "data-testid": "deactivate" })
        : actionButton("Reactivate", user.name, () => setActive(user, true), { "data-testid": "reactivate" }),
  );
  return el(
    "li",
    { class: `user-item${active ? "" : " inactive"}`, "data-testid": "user-item", dataset: { id: user.id } },
    el("div", { class: "row" }, el("span", { class: "name", text: user.name }), tags),
    el("p", { class: "muted small", text: `${user.email} · ${user.timezone}` }),
    actions,
  );
}

function focusInUser(id, testId) {
  const item = byId("user-list").querySelector(`[data-id="${CSS.escape(id)}"]`);
  item?.querySelector(`[data-testid="${testId}"]`)?.focus();
}

function usersMessage(text) {
  show(byId("users-message"), text);
}

const userDialog = byId("user-dialog");

function openUserDialog(user = null) {
  state.editing = user;
  const adding = user === null;
  byId("user-dialog-title").textContent = adding ? "Add a user" : `Change ${user.name}`;
  byId("user-email-field").hidden = !adding;
  byId("user-password-field").hidden = !adding;
  byId("user-submit").textContent = adding ? "Add" : "Save";
  byId("user-email").value = "";
  byId("user-password").value = "";
  byId("user-name").value = adding ? "" : user.name;
  byId("user-role").value = adding ? "clinician" : user.role;
  byId("user-timezone").value = adding ? Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" : user.timezone;
  byId("user-error").textContent = "";
  userDialog.showModal();
  (adding ? byId("user-email") : byId("user-name")).focus();
}

byId("add-user").addEventListener("click", () => openUserDialog(null));
byId("user-close").addEventListener("click", () => userDialog.close());

byId("user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = byId("user-error");
  error.textContent = "";
  const name = byId("user-name").value.trim();
  const role = byId("user-role").value;
  const timezone = byId("user-timezone").value.trim();
  const editing = state.editing;
  if (!editing) {
    const email = byId("user-email").value.trim();
    const password = byId("user-password").value;
    if (!email || !name || !timezone) {
      error.textContent = "Enter the email, the name and the time zone.";
      return;
    }
    if (password.length < 10) {
      error.textContent = "The first password needs at least 10 characters.";
      byId("user-password").focus();
      return;
    }
    await submitUser(
      () => api("/api/v1/users", { method: "POST", json: { email, password, role, name, timezone } }),
      (user) => `${user.name} was added as ${ROLES[user.role].toLowerCase()}.`,
    );
    return;
  }
  const changes = {};
  if (name !== editing.name) changes.name = name;
  if (role !== editing.role) changes.role = role;
  if (timezone !== editing.timezone) changes.timezone = timezone;
  if (!Object.keys(changes).length) {
    userDialog.close();
    return;
  }
  await submitUser(
    () => api(`/api/v1/users/${editing.id}`, { method: "PATCH", json: changes }),
    (user) => `${user.name}'s account was changed.`,
  );
});

async function submitUser(send, said) {
  const button = byId("user-submit");
  button.disabled = true;
  try {
    const user = await send();
    state.users.set(user.id, { ...state.users.get(user.id), ...user });
    if (user.id === state.me.id) Object.assign(state.me, user);
    renderUsers();
    userDialog.close();
    usersMessage(said(user));
    focusInUser(user.id, "edit-user");
  } catch (error) {
    byId("user-error").textContent =
      error instanceof ApiError && error.code === "email_taken"
        ? "There is already an account with that email."
        : missingEndpoint(error)
          ? "That account was not found, or this server cannot change accounts yet."
          : describe(error);
  } finally {
    button.disabled = false;
  }
}

async function setActive(user, active) {
  if (!active) {
    const sure = await confirmDialog({
      title: `Deactivate ${user.name}?`,
      text: "They are signed out at once, everywhere, and cannot sign in until reactivated. Their visits and the audit log keep their name.",
      confirm: "Deactivate",
      danger: true,
    });
    if (!sure) return;
  }
  try {
    const changed = await api(`/api/v1/users/${user.id}`, { method: "PATCH", json: { active } });
    state.users.set(user.id, { ...user, ...changed });
    renderUsers();
    usersMessage(active ? `${user.name} can sign in again.` : `${user.name} is deactivated.`);
    // The row was drawn again: keep the keyboard where it was, on the button that undoes it.
    focusInUser(user.id, active ? "deactivate" : "reactivate");
  } catch (error) {
    usersMessage(missingEndpoint(error) ? "That account was not found, or this server cannot deactivate accounts yet." : describe(error));
  }
}

const resetDialog = byId("reset-dialog");

async function issueReset(user) {
  usersMessage("");
  try {
    const answer = await api(`/api/v1/users/${user.id}/password-reset`, { method: "POST" });
    byId("reset-for").textContent = `For ${user.name} (${user.email}).`;
    byId("reset-url").value = answer.reset_url;
    byId("reset-copy-status").textContent = "";
    resetDialog.showModal();
    byId("reset-copy").focus();
  } catch (error) {
    usersMessage(missingEndpoint(error) ? "That account was not found, or this server cannot issue password reset links yet." : describe(error));
  }
}

byId("reset-copy").addEventListener("click", async () => {
  const field = byId("reset-url");
  if (await copyText(field.value)) {
    byId("reset-copy-status").textContent = "Link copied.";
  } else {
    field.select();
    byId("reset-copy-status").textContent = "Copying was refused: the link is selected, copy it with Ctrl+C.";
  }
});

// The link is shown once: it leaves the page when the dialog closes.
resetDialog.addEventListener("close", () => {
  byId("reset-url").value = "";
});
byId("reset-close").addEventListener("click", () => resetDialog.close());

// Consent texts -----------------------------------------------------------------------------

async function loadConsent() {
  try {
    state.consent = await api("/api/v1/consent-texts/current");
    renderConsent();
  } catch (error) {
    byId("consent-meta").textContent = describe(error);
  }
}

function renderConsent() {
  const text = state.consent;
  byId("consent-meta").textContent = `Current: version ${text.version}, published ${when(text.published_at)}.`;
  byId("consent-current").textContent = text.text;
  byId("consent-publish").textContent = `Publish as version ${text.version + 1}`;
  const box = byId("consent-new");
  if (!box.value) box.value = text.text;
}

byId("consent-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = byId("consent-error");
  error.textContent = "";
  byId("consent-status").textContent = "";
  const text = byId("consent-new").value.trim();
  if (text.length < 20) {
    error.textContent = "The text needs at least 20 characters.";
    byId("consent-new").focus();
    return;
  }
  if (state.consent && text === state.consent.text.trim()) {
    error.textContent = "This is the current text. Change it before publishing a new version.";
    byId("consent-new").focus();
    return;
  }
  const next = state.consent ? state.consent.version + 1 : "";
  const sure = await confirmDialog({
    title: `Publish version ${next}?`,
    text: "Patients who have not agreed yet will be shown it. It can never be changed afterwards, only replaced by a newer version.",
    confirm: "Publish",
  });
  if (!sure) return;
  const button = byId("consent-publish");
  button.disabled = true;
  try {
    state.consent = await api("/api/v1/consent-texts", { method: "POST", json: { text } });
    renderConsent();
    byId("consent-status").textContent = `Version ${state.consent.version} is published and is now the current text.`;
  } catch (failure) {
    error.textContent = describe(failure);
  } finally {
    button.disabled = false;
  }
});

function dayStart(value) {
  const [year, month, day] = value.split("-").map(Number);
  return zonedTime({ year, month, day }, state.zone);
}

async function loadVisits() {
  const status = byId("visits-status");
  const from = byId("visits-from").value;
  const to = byId("visits-to").value;
  if (!from || !to || to < from) {
    status.textContent = "Choose a first and a last day (the last not before the first).";
    return;
  }
  const [year, month, day] = to.split("-").map(Number);
  const range = { start: rfc3339(dayStart(from)), end: rfc3339(zonedTime(addDays({ year, month, day }, 1), state.zone)) };
  status.textContent = "Loading the visits…";
  try {
    const answer = await api(`/api/v1/appointments?${new URLSearchParams({ ...range, limit: "1000" })}`);
    state.visits = answer.items.sort((a, b) => b.start.localeCompare(a.start));
  } catch (error) {
    status.textContent = describe(error);
    return;
  }
  const picker = byId("consent-visit");
  picker.replaceChildren(
    el("option", { value: "", text: "Choose a visit" }),
    ...state.visits.map((visit) =>
      el("option", {
        value: visit.id,
        text: `${when(visit.start)}: ${visit.patient.name} with ${userName(visit.clinician_id)} (${STATUS[visit.status] || visit.status})`,
      }),
    ),
  );
  byId("visit-picker").hidden = !state.visits.length;
  byId("consent-records-box").hidden = true;
  status.textContent = state.visits.length
    ? `${state.visits.length} visit${state.visits.length === 1 ? "" : "s"} in that period, newest first.`
    : "No visits in that period.";
}

byId("visits-form").addEventListener("submit", (event) => {
  event.preventDefault();
  loadVisits();
});

/** "video visit, recording": the contract's scopes in their own order. */
function scopeNames(scopes) {
  const order = Object.keys(SCOPES);
  return [...scopes]
    .sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99))
    .map((scope) => SCOPES[scope] || scope)
    .join(", ");
}

/** "patient", or a guest's role ("interpreter:<id>" → "interpreter"). */
function participantName(participant) {
  const [role] = participant.split(":");
  return role === "patient" ? "the patient" : role;
}

byId("consent-visit").addEventListener("change", async (event) => {
  const id = event.target.value;
  const box = byId("consent-records-box");
  const rows = consentRows;
  if (!id) {
    box.hidden = true;
    return;
  }
  const status = byId("visits-status");
  try {
    const answer = await api(`/api/v1/appointments/${id}/consents`);
    rows.replaceChildren(
      ...answer.items.map((record) =>
        el(
          "tr",
          {},
          el("td", { text: when(record.recorded_at) }),
          el("td", { text: participantName(record.participant) }),
          el("td", { text: DECISIONS[record.decision] || record.decision }),
          el("td", { text: scopeNames(record.scopes) }),
          el("td", { text: `version ${record.version}` }),
        ),
      ),
    );
    box.hidden = !answer.items.length;
    status.textContent = answer.items.length
      ? `${answer.items.length} decision${answer.items.length === 1 ? "" : "s"} for this visit, oldest first.`
      : "Nobody has decided on consent for this visit yet.";
  } catch (error) {
    box.hidden = true;
    status.textContent = describe(error);
  }
});

// The audit log -----------------------------------------------------------------------------

function localInstant(value) {
  // A datetime-local value ("2026-12-06T09:30"), read in the admin's own time zone.
  const [date, time] = value.split("T");
  const [year, month, day] = date.split("-").map(Number);
  const [hour, minute] = time.split(":").map(Number);
  return rfc3339(zonedTime({ year, month, day, hour, minute }, state.zone));
}

function auditFilters() {
  const filters = {};
  const actor = byId("audit-actor").value;
  const record = byId("audit-record").value.trim();
  const from = byId("audit-from").value;
  const to = byId("audit-to").value;
  if (actor) filters.actor_id = actor;
  if (record) filters.record_id = record;
  if (from) filters.start = localInstant(from);
  if (to) filters.end = localInstant(to);
  return filters;
}

async function loadAudit({ older = false } = {}) {
  const audit = state.audit;
  if (audit.loading) return;
  const error = byId("audit-error");
  error.textContent = "";
  if (!older) {
    audit.filters = auditFilters();
    audit.cursor = null;
  }
  const params = new URLSearchParams(audit.filters);
  if (older && audit.cursor) params.set("cursor", audit.cursor);
  audit.loading = true;
  // Not disabled while loading (a disabled button loses the keyboard's focus): the flag above
  // keeps a second press from loading twice.
  const olderButton = byId("audit-older");
  olderButton.setAttribute("aria-busy", "true");
  byId("audit-status").textContent = older ? "Loading older events…" : "Loading the audit log…";
  try {
    const page = await api(`/api/v1/audit-events?${params}`);
    const rows = page.items.map(auditRow);
    const body = auditRows;
    if (older) body.append(...rows);
    else body.replaceChildren(...rows);
    audit.cursor = page.next_cursor;
    olderButton.hidden = !page.next_cursor;
    // The last page hides the button: the keyboard goes on to the table, not to the page's top.
    if (older && olderButton.hidden) byId("audit-table").focus();
    const shown = body.children.length;
    byId("audit-status").textContent = shown
      ? `${shown} event${shown === 1 ? "" : "s"} shown, newest first${page.next_cursor ? "; older ones follow." : "; that is all."}`
      : "No events match.";
  } catch (failure) {
    error.textContent = describe(failure);
    byId("audit-status").textContent = "";
  } finally {
    audit.loading = false;
    olderButton.removeAttribute("aria-busy");
  }
}

function auditRow(event) {
  const who = event.actor_id ? userName(event.actor_id) : event.actor_role;
  const record = event.resource_id ? `${event.resource_type} ${event.resource_id}` : event.resource_type;
  return el(
    "tr",
    { "data-testid": "audit-row" },
    el("td", { text: when(event.at) }),
    el("td", { text: `${who} (${event.actor_role})` }),
    el("td", { text: event.action }),
    el("td", { class: "wrap", text: record }),
    el("td", {}, el("span", { class: `tag ${event.outcome === "success" ? "ok" : "warn"}`, text: event.outcome })),
    el("td", { text: event.ip || "" }),
  );
}

byId("audit-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const from = byId("audit-from").value;
  const to = byId("audit-to").value;
  if (from && to && to < from) {
    byId("audit-error").textContent = "The end is before the start.";
    return;
  }
  loadAudit();
});
byId("audit-older").addEventListener("click", () => loadAudit({ older: true }));

byId("audit-csv").addEventListener("click", async () => {
  const button = byId("audit-csv");
  const error = byId("audit-error");
  error.textContent = "";
  button.disabled = true;
  byId("audit-status").textContent = "Preparing the CSV…";
  try {
    const params = new URLSearchParams(auditFilters());
    const response = await api(`/api/v1/audit-events?${params}`, { raw: true, headers: { Accept: "text/csv" } });
    const blob = await response.blob();
    const stamp = dateKey(zonedParts(new Date(), state.zone));
    downloadBlob(new Blob([blob], { type: "text/csv" }), `audit-events-${stamp}.csv`);
    byId("audit-status").textContent = "The CSV is downloaded.";
  } catch (failure) {
    error.textContent = describe(failure);
    byId("audit-status").textContent = "";
  } finally {
    button.disabled = false;
  }
});

// Recordings and retention ------------------------------------------------------------------

async function loadSettings() {
  const line = byId("retention");
  try {
    const settings = await api("/api/v1/admin/settings");
    state.retentionDays = settings.recordings_retention_days;
    line.textContent =
      `Recordings are kept ${state.retentionDays} day${state.retentionDays === 1 ? "" : "s"} after the call, then deleted. ` +
      "The period is set on the server (TELEVISIT_RECORDINGS_RETENTION_DAYS).";
  } catch (error) {
    line.textContent = missingEndpoint(error) ? "This server does not say how long it keeps recordings." : describe(error);
  }
}

/** Every recording, newest first: the server's list, or else one appointment at a time. */
async function loadRecordings({ older = false } = {}) {
  const recordings = state.recordings;
  if (recordings.loading) return;
  recordings.loading = true;
  // Not disabled while loading (a disabled button loses the keyboard's focus).
  const more = byId("recordings-older");
  more.setAttribute("aria-busy", "true");
  const status = byId("recordings-status");
  status.textContent = older ? "Loading older recordings…" : "Loading the recordings…";
  show(byId("recordings-note"), "");
  try {
    await fetchRecordings(older);
    recordings.items.sort((a, b) => b.started_at.localeCompare(a.started_at));
    renderRecordings();
  } catch (error) {
    status.textContent = describe(error);
  } finally {
    recordings.loading = false;
    more.removeAttribute("aria-busy");
    more.hidden = !recordings.cursor;
    if (older && more.hidden) byId("recordings-title").focus();
  }
}

/** The server's list of all recordings (a page), or else one visit's at a time. */
async function fetchRecordings(older) {
  const recordings = state.recordings;
  try {
    const params = older && recordings.cursor ? `?${new URLSearchParams({ cursor: recordings.cursor })}` : "";
    const answer = await api(`/api/v1/recordings${params}`);
    recordings.mode = "server";
    recordings.items = older ? [...recordings.items, ...answer.items] : answer.items;
    recordings.cursor = answer.next_cursor || null;
    await appointmentsFor(answer.items);
    return;
  } catch (error) {
    recordings.cursor = null;
    if (!missingEndpoint(error)) throw error;
  }
  recordings.mode = "visits";
  recordings.items = await recordingsPerVisit();
  show(
    byId("recordings-note"),
    "This server has no list of all recordings: these are the recordings of the visits in the retention period. " +
      "Deleting a recording by hand needs a newer server.",
  );
}

/** The appointments the recordings belong to, for the patient's name and the visit's time. */
async function appointmentsFor(all) {
  const items = all.filter((item) => !state.recordings.appointments.has(item.appointment_id));
  if (!items.length) return;
  const starts = items.map((item) => new Date(item.started_at).getTime());
  const range = {
    start: rfc3339(Math.min(...starts) - 86_400_000),
    end: rfc3339(Math.max(...starts) + 86_400_000),
    limit: "1000",
  };
  try {
    const answer = await api(`/api/v1/appointments?${new URLSearchParams(range)}`);
    for (const visit of answer.items) state.recordings.appointments.set(visit.id, visit);
  } catch {
    // The names are a help, not a need: the list stands without them.
  }
}

async function recordingsPerVisit() {
  const days = state.retentionDays || 30;
  const now = Date.now();
  const range = { start: rfc3339(now - (days + 1) * 86_400_000), end: rfc3339(now + 86_400_000), limit: "1000" };
  const answer = await api(`/api/v1/appointments?${new URLSearchParams(range)}`);
  const visits = answer.items.filter((visit) => CALLED.has(visit.status));
  const found = [];
  // A few at a time: a clinic's month is a few hundred visits.
  for (let i = 0; i < visits.length; i += 4) {
    const lists = await Promise.all(
      visits.slice(i, i + 4).map((visit) => api(`/api/v1/appointments/${visit.id}/recordings`)),
    );
    lists.forEach((list, k) => {
      const visit = visits[i + k];
      state.recordings.appointments.set(visit.id, visit);
      for (const item of list.items) {
        found.push({
          id: item.id,
          appointment_id: visit.id,
          clinician_id: visit.clinician_id,
          started_at: item.started_at,
          ended_at: item.ended_at,
          size_bytes: item.bytes,
          expires_at: null,
        });
      }
    });
  }
  return found;
}

function recordingTitle(item) {
  const visit = state.recordings.appointments.get(item.appointment_id);
  const clinician = userName(item.clinician_id);
  return visit ? `${visit.patient.name} with ${clinician}` : `Visit with ${clinician}`;
}

function renderRecordings() {
  const items = state.recordings.items;
  byId("recording-list").replaceChildren(...items.map(recordingItem));
  byId("recordings-status").textContent = items.length
    ? `${items.length} recording${items.length === 1 ? "" : "s"} shown, newest first${state.recordings.cursor ? "; older ones follow." : "."}`
    : "There are no recordings.";
}

function recordingItem(item) {
  const title = recordingTitle(item);
  const finished = Boolean(item.ended_at);
  const length = finished
    ? formatDuration((new Date(item.ended_at) - new Date(item.started_at)) / 1000)
    : "still recording";
  const facts = [`${when(item.started_at)}`, length, bytes(item.size_bytes)];
  if (item.expires_at) facts.push(`deleted after ${when(item.expires_at)}`);
  const label = `${title}, ${when(item.started_at)}`;
  return el(
    "li",
    { class: "recording-item", "data-testid": "recording-item", dataset: { id: item.id } },
    el("span", { class: "name", text: title }),
    el("p", { class: "muted small", text: facts.join(" · ") }),
    el(
      "div",
      { class: "row" },
      actionButton("Play", label, () => play(item), { disabled: !finished }),
      actionButton("Download", label, () => download(item), { disabled: !finished }),
      state.recordings.mode === "server"
        ? actionButton("Delete", label, () => remove(item), { class: "danger", "data-testid": "delete-recording" })
        : null,
    ),
  );
}

function fileUrl(item) {
  return state.recordings.mode === "server"
    ? `/api/v1/recordings/${item.id}/file`
    : `/api/v1/appointments/${item.appointment_id}/recordings/${item.id}/file`;
}

async function fetchRecording(item) {
  const status = byId("recordings-status");
  status.textContent = "Fetching the recording…";
  const response = await api(fileUrl(item), { raw: true });
  const blob = await response.blob();
  status.textContent = "";
  return new Blob([blob], { type: response.headers.get("content-type") || "video/webm" });
}

const playerDialog = byId("player-dialog");

async function play(item) {
  try {
    const blob = await fetchRecording(item);
    state.playerUrl = URL.createObjectURL(blob);
    byId("player-title").textContent = `${recordingTitle(item)}, ${when(item.started_at)}`;
    byId("player").src = state.playerUrl;
    playerDialog.showModal();
    byId("player").focus();
  } catch (error) {
    byId("recordings-status").textContent = describe(error);
  }
}

playerDialog.addEventListener("close", () => {
  const player = byId("player");
  player.pause();
  player.removeAttribute("src");
  player.load();
  if (state.playerUrl) URL.revokeObjectURL(state.playerUrl);
  state.playerUrl = null;
});
byId("player-close").addEventListener("click", () => playerDialog.close());

async function download(item) {
  try {
    const blob = await fetchRecording(item);
    const day = dateKey(zonedParts(new Date(item.started_at), state.zone));
    downloadBlob(blob, `recording-${day}-${item.id.slice(0, 8)}.webm`);
    byId("recordings-status").textContent = "The recording is downloaded.";
  } catch (error) {
    byId("recordings-status").textContent = describe(error);
  }
}

async function remove(item) {
  const sure = await confirmDialog({
    title: "Delete this recording?",
    text: `${recordingTitle(item)}, ${when(item.started_at)}. It cannot be brought back.`,
    confirm: "Delete",
    danger: true,
  });
  if (!sure) return;
  try {
    await api(`/api/v1/recordings/${item.id}`, { method: "DELETE" });
    state.recordings.items = state.recordings.items.filter((other) => other.id !== item.id);
    renderRecordings();
    setText(byId("recordings-status"), "The recording is deleted.");
  } catch (error) {
    byId("recordings-status").textContent = describe(error);
  }
}

byId("recordings-reload").addEventListener("click", () => loadRecordings());
byId("recordings-older").addEventListener("click", () => loadRecordings({ older: true }));

start();
