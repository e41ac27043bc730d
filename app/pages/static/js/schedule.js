// /schedule: a week of a clinician's free and booked slots, in the clinician's time zone;
// book, copy the visit link, download the invite, reschedule and cancel; see which messages
// (invitation, notices, reminders) went to the patient; add guests (an interpreter, a caregiver,
// a colleague: each with a link of their own) and remove them.

import { api, ApiError, describe, signOut } from "./api.js";
import { byId, confirmDialog, copyText, downloadBlob, el, randomId } from "./dom.js";
import { signedInStaff } from "./reauth.js";
import {
  addDays,
  dateKey,
  formatDateTime,
  formatDay,
  formatTime,
  rfc3339,
  weekStart,
  zonedParts,
  zonedTime,
  zoneName,
} from "./time.js";

const CLINICIAN_KEY = "televisit.schedule.clinician";
const week = byId("week");
const message = byId("message");
const bookDialog = byId("book-dialog");
const appointmentDialog = byId("appointment-dialog");

const state = {
  me: null,
  clinicians: [],
  clinician: null,
  monday: null, // {year, month, day} in the clinician's zone
  slots: [],
  appointments: [],
  booking: null, // the free slot being booked
  attempt: null, // {key, body}: a retried booking with the same body reuses its key
  rescheduling: null, // the appointment being moved
  open: null, // the appointment shown in the dialog
  loadId: 0,
};

const STATUS = {
  booked: "Booked",
  waiting: "Waiting room",
  in_call: "In call",
  completed: "Completed",
  no_show: "No-show",
  cancelled: "Cancelled",
};

// Start-up ----------------------------------------------------------------------------------

async function start() {
  try {
    state.me = await signedInStaff();
    if (!state.me) return;
    if (state.me.role === "clinician") {
      location.replace("/clinic");
      return;
    }
    byId("who").textContent = state.me.name;
    byId("admin-link").hidden = state.me.role !== "admin";
    state.clinicians = (await api("/api/v1/clinicians")).items;
  } catch (error) {
    problem(describe(error));
    return;
  }
  const select = byId("clinician");
  select.replaceChildren(...state.clinicians.map((c) => el("option", { value: c.id, text: c.name })));
  if (!state.clinicians.length) {
    problem("There are no clinicians yet. An administrator adds them.");
    return;
  }
  const remembered = sessionStorage.getItem(CLINICIAN_KEY);
  select.value = state.clinicians.some((c) => c.id === remembered) ? remembered : state.clinicians[0].id;
  chooseClinician(select.value);
}

function problem(text) {
  const box = byId("page-problem");
  box.textContent = text;
  box.hidden = false;
}

function say(text, kind = "info") {
  message.textContent = text;
  message.dataset.kind = kind;
  message.hidden = !text;
}

byId("sign-out").addEventListener("click", async () => {
  await signOut();
  location.assign("/login?reason=signed_out");
});

function chooseClinician(id) {
  state.clinician = state.clinicians.find((c) => c.id === id);
  sessionStorage.setItem(CLINICIAN_KEY, id);
  state.monday = weekStart(new Date(), state.clinician.timezone);
  endRescheduling();
  loadWeek();
}

byId("clinician").addEventListener("change", (event) => {
  say("");
  chooseClinician(event.target.value);
});
byId("previous-week").addEventListener("click", () => moveWeek(-7));
byId("next-week").addEventListener("click", () => moveWeek(7));
byId("this-week").addEventListener("click", () => {
  state.monday = weekStart(new Date(), state.clinician.timezone);
  loadWeek();
});

function moveWeek(days) {
  state.monday = addDays(state.monday, days);
  loadWeek();
}

// The week ----------------------------------------------------------------------------------

async function loadWeek() {
  const zone = state.clinician.timezone;
  const start = zonedTime(state.monday, zone);
  const end = zonedTime(addDays(state.monday, 7), zone);
  const loadId = ++state.loadId;
  byId("week-title").textContent = `Week of ${formatDay(start, zone)} — ${state.clinician.name}`;
  byId("week-zone").textContent = `Times are in ${state.clinician.name}'s time zone: ${zone} (${zoneName(start, zone)}).`;
  byId("week-loading").textContent = "Loading the week…";
  try {
    const range = { start: rfc3339(start), end: rfc3339(end) };
    const [slots, appointments] = await Promise.all([
      api(`/api/v1/clinicians/${state.clinician.id}/slots?${new URLSearchParams(range)}`),
      api(`/api/v1/appointments?${new URLSearchParams({ clinician_id: state.clinician.id, ...range })}`),
    ]);
    if (loadId !== state.loadId) return; // a newer week was asked for meanwhile
    state.slots = slots.slots;
    state.appointments = appointments.items.filter((a) => a.status !== "cancelled");
    byId("week-loading").textContent = "";
    renderWeek();
  } catch (error) {
    if (loadId === state.loadId) byId("week-loading").textContent = describe(error);
  }
}

function renderWeek() {
  const zone = state.clinician.timezone;
  const todayKey = dateKey(zonedParts(new Date(), zone));
  const days = new Map();
  for (let i = 0; i < 7; i += 1) {
    const date = addDays(state.monday, i);
    days.set(dateKey(date), { date, entries: [] });
  }
  for (const slot of state.slots) {
    days.get(dateKey(zonedParts(new Date(slot.start), zone)))?.entries.push({ kind: "free", start: slot.start, slot });
  }
  for (const appointment of state.appointments) {
    days
      .get(dateKey(zonedParts(new Date(appointment.start), zone)))
      ?.entries.push({ kind: "booked", start: appointment.start, appointment });
  }
  week.replaceChildren(
    ...[...days.entries()].map(([key, day]) => {
      const noon = zonedTime({ ...day.date, hour: 12 }, zone);
      const entries = day.entries.sort((a, b) => new Date(a.start) - new Date(b.start));
      const headingId = `day-${key}`;
      return el(
        "section",
        { class: `day${key === todayKey ? " today" : ""}`, "aria-labelledby": headingId },
        el("h3", { id: headingId, text: `${formatDay(noon, zone)}${key === todayKey ? " (today)" : ""}` }),
        entries.length
          ? el("ul", {}, ...entries.map((entry) => el("li", {}, entryButton(entry))))
          : el("p", { class: "empty", text: "No free times" }),
      );
    }),
  );
}

function entryButton(entry) {
  const zone = state.clinician.timezone;
  const time = formatTime(entry.start, zone);
  const when = formatDateTime(entry.start, zone);
  if (entry.kind === "free") {
    return el("button", {
      type: "button",
      class: "slot free",
      "data-testid": "free-slot",
      "data-start": entry.start,
      "aria-label": state.rescheduling ? `Move to ${when}` : `Book ${when}`,
      text: time,
      onclick: () => (state.rescheduling ? reschedule(entry.slot) : openBooking(entry.slot)),
    });
  }
  const a = entry.appointment;
  return el(
    "button",
    {
      type: "button",
      class: `slot booked status-${a.status}`,
      "data-testid": "appointment",
      "data-id": a.id,
      onclick: () => openAppointment(a),
    },
    el("strong", { text: time }),
    el("span", { text: a.patient.name }),
    a.status === "booked" ? null : el("span", { class: "small", text: STATUS[a.status] || a.status }),
    // The visible text first, then the day for people who hear the button rather than see it.
    el("span", { class: "visually-hidden", text: `, ${when}, ${STATUS[a.status] || a.status}` }),
  );
}

// Booking -----------------------------------------------------------------------------------

function offerTimeZones() {
  const list = byId("timezones");
  if (list.childElementCount || typeof Intl.supportedValuesOf !== "function") return;
  list.replaceChildren(...Intl.supportedValuesOf("timeZone").map((zone) => el("option", { value: zone })));
}

function openBooking(slot) {
  say("");
  offerTimeZones();
  state.booking = slot;
  byId("book-error").textContent = "";
  byId("book-when").textContent = `${formatDateTime(slot.start, state.clinician.timezone)} with ${state.clinician.name}`;
  bookDialog.showModal();
  byId("patient-name").focus();
}

byId("book-close").addEventListener("click", () => bookDialog.close());

function bookingBody() {
  const value = (id) => byId(id).value.trim();
  const patient = { name: value("patient-name") };
  if (value("patient-email")) patient.email = value("patient-email");
  if (value("patient-phone")) patient.phone = value("patient-phone").replace(/[\s()-]/g, "");
  if (value("patient-birth-date")) patient.birth_date = value("patient-birth-date");
  if (value("patient-timezone")) patient.timezone = value("patient-timezone");
  const body = { clinician_id: state.clinician.id, start: state.booking.start, patient };
  if (value("visit-reason")) body.reason = value("visit-reason");
  return body;
}

byId("book-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = byId("book-error");
  error.textContent = "";
  if (!byId("patient-name").value.trim()) {
    error.textContent = "Enter the patient's name.";
    byId("patient-name").focus();
    return;
  }
  const body = bookingBody();
  const text = JSON.stringify(body);
  if (!state.attempt || state.attempt.body !== text) state.attempt = { key: randomId(), body: text };
  const submit = byId("book-submit");
  submit.disabled = true;
  try {
    const appointment = await api("/api/v1/appointments", {
      method: "POST",
      json: body,
      headers: { "Idempotency-Key": state.attempt.key },
    });
    state.attempt = null;
    byId("book-form").reset();
    bookDialog.close();
    await loadWeek();
    openAppointment(appointment, "Booked. Send the patient this link, or the invite.");
  } catch (failure) {
    if (failure instanceof ApiError && failure.code === "slot_unavailable") {
      // The details stay in the form: the next free time picked reopens it as it was.
      bookDialog.close();
      say(
        `Sorry: ${formatDateTime(state.booking.start, state.clinician.timezone)} was booked by someone else a moment ago. The week is up to date again; please choose another time.`,
        "warning",
      );
      await loadWeek();
    } else {
      error.textContent = describe(failure);
    }
  } finally {
    submit.disabled = false;
  }
});

// One appointment ---------------------------------------------------------------------------

function openAppointment(appointment, note = "") {
  state.open = appointment;
  const zone = state.clinician.timezone;
  byId("appointment-title").textContent = appointment.patient.name;
  byId("appointment-when").textContent = `${formatDateTime(appointment.start, zone)} with ${state.clinician.name}`;
  const contact = [appointment.patient.email, appointment.patient.phone].filter(Boolean).join(" · ");
  byId("appointment-details").textContent = [STATUS[appointment.status] || appointment.status, contact, appointment.reason]
    .filter(Boolean)
    .join(" — ");
  const noteBox = byId("appointment-note");
  noteBox.textContent = note;
  noteBox.hidden = !note;
  byId("visit-link").value = appointment.visit_url;
  byId("copy-status").textContent = "";
  byId("appointment-error").textContent = "";
  byId("cancel-form").hidden = true;
  const changeable = appointment.status === "booked";
  byId("reschedule").disabled = !changeable;
  byId("cancel-open").disabled = !["booked", "waiting"].includes(appointment.status);
  if (!appointmentDialog.open) appointmentDialog.showModal();
  byId("copy-link").focus();
  loadDeliveries(appointment, 0);
  openGuests(appointment);
}

// Messages to the patient: what went, what is due, what could not be delivered ---------------

const KIND = { invitation: "Invitation", rescheduled: "New time", cancelled: "Cancellation" };
const CHANNEL = { email: "email", sms: "text message" };
// While something due is still on its way, look again this often, this many times.
const DELIVERY_RECHECK_MS = 2000;
const DELIVERY_RECHECKS = 15;

function deliveryText(item, zone) {
  const kind = item.kind === "reminder" ? `Reminder ${item.hours} h before` : KIND[item.kind] || item.kind;
  const how = `${kind} by ${CHANNEL[item.channel] || item.channel}`;
  if (item.status === "sent") return `${how}: sent ${formatDateTime(item.sent_at, zone)}`;
  if (item.status === "failed") {
    const tries = item.attempts === 1 ? "1 attempt" : `${item.attempts} attempts`;
    return `${how}: not delivered (${tries}); please give the patient the link yourself`;
  }
  if (new Date(item.due_at) > new Date()) return `${how}: due ${formatDateTime(item.due_at, zone)}`;
  return `${how}: being sent`;
}

async function loadDeliveries(appointment, round) {
  const list = byId("delivery-list");
  const status = byId("delivery-status");
  if (round === 0) {
    list.replaceChildren();
    status.textContent = "Loading…";
  }
  let items;
  try {
    items = (await api(`/api/v1/appointments/${appointment.id}/notifications`)).items;
  } catch (error) {
    if (state.open === appointment) status.textContent = describe(error);
    return;
  }
  if (state.open !== appointment || !appointmentDialog.open) return;
  const zone = state.clinician.timezone;
  list.replaceChildren(
    ...items.map((item) =>
      el("li", {
        class: item.status === "failed" ? "delivery-failed" : null,
        "data-status": item.status,
        text: deliveryText(item, zone),
      }),
    ),
  );
  status.textContent = items.length
    ? ""
    : "None: the patient has no email or mobile number here, or the practice sends no messages.";
  const onTheWay = items.some((item) => item.status === "queued" && new Date(item.due_at) <= new Date());
  if (onTheWay && round < DELIVERY_RECHECKS) {
    setTimeout(() => loadDeliveries(appointment, round + 1), DELIVERY_RECHECK_MS);
  }
}

byId("appointment-close").addEventListener("click", () => appointmentDialog.close());

byId("copy-link").addEventListener("click", async () => {
  const input = byId("visit-link");
  const copied = await copyText(input.value);
  if (copied) {
    byId("copy-status").textContent = "Link copied.";
  } else {
    input.focus();
    input.select();
    byId("copy-status").textContent = "Selected: press Ctrl+C (or ⌘+C) to copy.";
  }
});

byId("download-invite").addEventListener("click", async () => {
  const appointment = state.open;
  try {
    const response = await api(`/api/v1/appointments/${appointment.id}/calendar.ics`, { raw: true });
    const blob = await response.blob();
    const day = dateKey(zonedParts(new Date(appointment.start), state.clinician.timezone));
    downloadBlob(new Blob([blob], { type: "text/calendar" }), `visit-${day}.ics`);
    byId("copy-status").textContent = "Invite downloaded.";
  } catch (error) {
    byId("appointment-error").textContent = describe(error);
  }
});

byId("cancel-open").addEventListener("click", () => {
  byId("cancel-form").hidden = false;
  byId("cancel-reason").focus();
});
byId("cancel-back").addEventListener("click", () => {
  byId("cancel-form").hidden = true;
  byId("cancel-open").focus();
});

byId("cancel-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const appointment = state.open;
  const reason = byId("cancel-reason").value.trim();
  try {
    await api(`/api/v1/appointments/${appointment.id}/cancel`, {
      method: "POST",
      json: reason ? { reason } : {},
    });
    byId("cancel-reason").value = "";
    appointmentDialog.close();
    say(`Cancelled ${appointment.patient.name}'s visit on ${formatDateTime(appointment.start, state.clinician.timezone)}. The time is free again and the visit link no longer works.`);
    await loadWeek();
  } catch (error) {
    byId("appointment-error").textContent = describe(error);
  }
});

// Guests: an interpreter, a caregiver or a colleague, each with a link of their own -------------

const GUEST_PATH = (appointmentId) => `/api/v1/appointments/${appointmentId}/participants`;
const MAX_GUESTS = 2; // the contract's limit; the server refuses a third (409 participant_limit)
const GUEST_ROLE = { interpreter: "Interpreter", caregiver: "Caregiver", clinician: "Colleague (clinician)" };
const GUEST_STATUS = {
  invited: "Invited",
  waiting: "In the waiting room",
  in_call: "In the call",
  left: "Left",
  removed: "Removed",
};
// What the API's refusals of a guest mean here.
const GUEST_ERRORS = {
  participant_limit: "This visit already has two guests, the most it can have. Remove one to add another.",
  visit_closed: "This visit is over or cancelled: guests can no longer be added.",
};
// What a field refused by the API (422 validation_error) needs.
const GUEST_FIELDS = {
  name: "Enter the guest's name (up to 200 characters).",
  email: "Enter a valid email address, or leave it empty.",
  phone: "Enter the number with + and the country code, digits only (for example +15551234567), or leave it empty.",
  role: "Choose a role.",
};
const guestForm = byId("guest-form");
const guestState = { items: [], loading: null };

function guestsOpenFor(appointment) {
  return ["booked", "waiting", "in_call"].includes(appointment.status);
}

function openGuests(appointment) {
  guestState.items = [];
  byId("guest-list").replaceChildren();
  byId("guest-status").textContent = "Loading…";
  showGuestForm(false);
  clearGuestErrors();
  loadGuests(appointment);
}

async function loadGuests(appointment) {
  let items;
  try {
    items = (await api(GUEST_PATH(appointment.id))).items;
  } catch (error) {
    if (state.open === appointment) byId("guest-status").textContent = describe(error);
    return;
  }
  if (state.open !== appointment) return;
  guestState.items = items.filter((guest) => guest.status !== "removed");
  renderGuests(appointment);
}

function renderGuests(appointment) {
  const guests = guestState.items;
  byId("guest-list").replaceChildren(...guests.map((guest) => guestItem(guest)));
  byId("guest-status").textContent = guests.length ? "" : "No guests.";
  const full = guests.length >= MAX_GUESTS;
  const open = guestsOpenFor(appointment);
  const button = byId("guest-open");
  button.hidden = !open;
  button.disabled = full;
  byId("guests-hint").textContent = !open
    ? "Guests can be added only while the visit is to come or under way."
    : full
      ? "This visit has two guests, the most it can have: remove one to add another."
      : "An interpreter, a caregiver or a colleague joins the visit with a link of their own; at most two guests.";
  if (full || !open) showGuestForm(false);
}

function guestItem(guest) {
  const linkId = `guest-link-${guest.id}`;
  const copied = el("span", { class: "muted small", role: "status" });
  const link = el("input", {
    id: linkId,
    type: "text",
    readonly: true,
    value: guest.visit_url || "",
    "data-testid": "guest-link",
  });
  return el(
    "li",
    { class: "stack guest-item", "data-testid": "guest-item", dataset: { id: guest.id, status: guest.status } },
    el(
      "p",
      { class: "row" },
      el("span", { class: "name", text: guest.name }),
      el("span", { class: "muted", text: GUEST_ROLE[guest.role] || guest.role }),
      el("span", { class: `tag ${guest.status}`, text: GUEST_STATUS[guest.status] || guest.status }),
    ),
    el("label", { for: linkId, class: "small", text: `${guest.name}'s own link (give it only to them)` }),
    el(
      "div",
      { class: "copy-row" },
      link,
      el("button", {
        type: "button",
        "data-testid": "guest-copy",
        text: "Copy",
        "aria-label": `Copy ${guest.name}'s link`,
        onclick: async () => {
          if (await copyText(link.value)) copied.textContent = "Link copied.";
          else {
            link.focus();
            link.select();
            copied.textContent = "Selected: press Ctrl+C (or ⌘+C) to copy.";
          }
        },
      }),
      el("button", {
        type: "button",
        class: "danger",
        "data-testid": "guest-remove",
        text: "Remove",
        "aria-label": `Remove ${guest.name} (${(GUEST_ROLE[guest.role] || guest.role).toLowerCase()})`,
        onclick: () => removeGuest(guest),
      }),
    ),
    copied,
  );
}

function showGuestForm(show) {
  guestForm.hidden = !show;
  byId("guest-open").setAttribute("aria-expanded", String(show));
  if (!show) return;
  guestForm.reset();
  clearGuestErrors();
  byId("guest-role").focus();
}

function clearGuestErrors() {
  byId("guest-error").textContent = "";
  for (const field of Object.keys(GUEST_FIELDS)) fieldError(field, "");
}

function fieldError(field, text) {
  const input = byId(`guest-${field}`);
  const box = document.getElementById(`guest-${field}-error`); // the role has none: a list
  if (box) box.textContent = text;
  if (text) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}

/** The fields a 422 names, each told what it needs next to it; true when any was. */
function showFieldErrors(details) {
  const fields = new Set();
  for (const detail of Array.isArray(details) ? details : []) {
    const loc = Array.isArray(detail.loc) ? detail.loc : [];
    const field = loc[0] === "body" ? loc[1] : loc[0];
    if (field in GUEST_FIELDS) fields.add(field);
  }
  const order = ["role", "name", "email", "phone"].filter((field) => fields.has(field));
  for (const field of order) fieldError(field, GUEST_FIELDS[field]);
  if (order.length) byId(`guest-${order[0]}`).focus();
  return order.length > 0;
}

byId("guest-open").addEventListener("click", () => showGuestForm(guestForm.hidden));
byId("guest-cancel").addEventListener("click", () => {
  showGuestForm(false);
  byId("guest-open").focus();
});

guestForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const appointment = state.open;
  clearGuestErrors();
  const value = (id) => byId(id).value.trim();
  if (!value("guest-name")) {
    fieldError("name", "Enter the guest's name.");
    byId("guest-name").focus();
    return;
  }
  const json = { role: byId("guest-role").value, name: value("guest-name") };
  if (value("guest-email")) json.email = value("guest-email");
  if (value("guest-phone")) json.phone = value("guest-phone").replace(/[\s()-]/g, "");
  const add = byId("guest-add");
  add.disabled = true;
  try {
    const guest = await api(GUEST_PATH(appointment.id), { method: "POST", json });
    if (state.open !== appointment) return;
    guestState.items = [...guestState.items.filter((g) => g.id !== guest.id), guest];
    showGuestForm(false);
    renderGuests(appointment);
    const sent = json.email || json.phone ? " The invitation is on its way to them." : "";
    byId("guest-status").textContent = `${guest.name} is added, with a link of their own.${sent}`;
    const link = byId(`guest-link-${guest.id}`);
    link.focus();
    link.select();
  } catch (failure) {
    if (failure instanceof ApiError && failure.code === "validation_error" && showFieldErrors(failure.details)) {
      byId("guest-error").textContent = "Check the fields marked.";
    } else if (failure instanceof ApiError && GUEST_ERRORS[failure.code]) {
      byId("guest-error").textContent = GUEST_ERRORS[failure.code];
      if (failure.code === "participant_limit") {
        // Someone else added one meanwhile: the list shows them, the form closes.
        await loadGuests(appointment);
        byId("guests-title").focus();
      }
    } else {
      byId("guest-error").textContent = describe(failure);
    }
  } finally {
    add.disabled = false;
  }
});

async function removeGuest(guest) {
  const appointment = state.open;
  const sure = await confirmDialog({
    title: `Remove ${guest.name} from the visit?`,
    text: "Their link stops working at once; if they are in the call, they leave it.",
    confirm: "Remove",
    danger: true,
  });
  if (!sure || state.open !== appointment) return;
  try {
    await api(`${GUEST_PATH(appointment.id)}/${guest.id}`, { method: "DELETE" });
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) {
      byId("guest-status").textContent = describe(error);
      return;
    }
  }
  guestState.items = guestState.items.filter((g) => g.id !== guest.id);
  renderGuests(appointment);
  byId("guest-status").textContent = `${guest.name} is removed; their link no longer works.`;
  byId("guests-title").focus();
}

// Rescheduling: pick a new free time in the week grid ----------------------------------------

byId("reschedule").addEventListener("click", () => {
  state.rescheduling = state.open;
  appointmentDialog.close();
  byId("reschedule-text").textContent = `Choose a new time for ${state.open.patient.name} (now ${formatDateTime(state.open.start, state.clinician.timezone)}).`;
  byId("reschedule-bar").hidden = false;
  say("");
  renderWeek();
  byId("week-title").focus();
});

byId("reschedule-cancel").addEventListener("click", () => {
  endRescheduling();
  renderWeek();
});

function endRescheduling() {
  state.rescheduling = null;
  byId("reschedule-bar").hidden = true;
}

async function reschedule(slot) {
  const appointment = state.rescheduling;
  try {
    const moved = await api(`/api/v1/appointments/${appointment.id}/reschedule`, {
      method: "POST",
      json: { start: slot.start },
    });
    endRescheduling();
    await loadWeek();
    openAppointment(moved, "Moved. The visit link stays the same; send the patient the new invite.");
  } catch (error) {
    if (error instanceof ApiError && error.code === "slot_unavailable") {
      say("Sorry: that time was taken a moment ago. The week is up to date again; please choose another time.", "warning");
      await loadWeek();
    } else {
      say(describe(error), "warning");
    }
  }
}

start();
