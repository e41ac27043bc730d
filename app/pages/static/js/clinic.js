// /clinic: the clinician's console. The live queue and today's schedule, an audible and
// visible alert when a patient arrives, and the call (admit, end, no-show, quality, consent).
//
// The console socket is authenticated by its first message, and again with every renewed
// token (api.js renews them silently before they expire); API calls carry the short-lived
// bearer token. Only a session that has really ended asks for the password, in an in-page
// dialog, so a call is never interrupted.

import { api, ApiError, describe, freshToken, onRenewed, reauthenticate, signOut, socketUrl } from "./api.js";
import { ChatPanel } from "./chat.js";
import { byId, confirmDialog, el, setText } from "./dom.js";
import { audioUnlocked, chime, openLocalMedia, stopStream, unlockAudio } from "./devices.js";
import { signedInStaff } from "./reauth.js";
import { MediaLink } from "./rtc.js";
import { Channel } from "./socket.js";
import { LinkFitter, selfViewWords, sendCamera, SoundOnlyView, VideoStates } from "./soundonly.js";
import { CallTiles, peerKey, renderSoundOnly, roleWords } from "./tiles.js";
import { addDays, formatDuration, formatTime, zonedParts, zonedTime, zoneName } from "./time.js";

const queueList = byId("queue");
const remoteVideo = byId("remote-video");
const localVideo = byId("local-video");
const arrival = byId("arrival");
const callMessage = byId("call-message");
const soundOnly = new SoundOnlyView(remoteVideo);
// The call's tiles: the patient large (the page's own tile), guests and oneself around.
const tiles = new CallTiles({
  stage: byId("tiles"),
  main: { key: "patient", tile: byId("main-tile"), video: remoteVideo },
  self: { key: "clinician", tile: byId("self-tile") },
});

// Chat in the call (chat.js): sent on the console's socket, for the call it holds.
const chat = new ChatPanel({
  container: byId("chat-slot"),
  heading: "h3",
  send: (text) => Boolean(state.call && state.channel?.send({ type: "chat", appointment_id: state.call.id, text })),
  // What was said before: read (an audited staff read) only when the panel lacks some of the
  // call's messages (after a reload, or a reconnection that missed some); each shows once.
  history: async (callId) => (await api(`/api/v1/appointments/${callId}/chat`)).items,
});

const state = {
  me: null,
  channel: null,
  socketToken: null,
  mustReauth: false,
  queue: [],
  seen: null, // appointment ids already announced
  call: null, // {id, name, link, iceServers}
  media: null,
  mediaPromise: null,
  pendingAdmit: null,
  recording: false,
  microphoneOn: true,
  cameraOn: true,
  audioOnly: false, // sound only, by the clinician's choice (the "Audio only" button)
  video: new VideoStates(), // what the relay said it paused in this call, and for whom
  todayTimer: null,
  guests: new Map(), // this call's guests: id -> {id, role, name, status}
  screen: null, // the shared screen's track while sharing
  earlyPeers: [], // `peer` messages that came before their call opened
};

const CONNECTION = {
  direct: ["Connection test: direct", "ok"],
  turn: ["Connection test: through TURN", "warn"],
  failed: ["Connection test: failed", "warn"],
  unknown: ["Connection not tested", ""],
};
const STATUS = { waiting: "Waiting", reconnecting: "Reconnecting", in_call: "In call" };

// Start-up ----------------------------------------------------------------------------------

async function start() {
  try {
    state.me = await signedInStaff();
  } catch (error) {
    pageProblem(describe(error));
    return;
  }
  if (!state.me) return;
  if (state.me.role === "scheduler") {
    location.replace("/schedule");
    return;
  }
  byId("who").textContent = `${state.me.name}`;
  byId("admin-link").hidden = state.me.role !== "admin";
  if (state.me.role !== "clinician") {
    pageProblem("The consult console is for clinicians. Administrators and schedulers book visits on the schedule page.");
    byId("page-problem").append(" ", el("a", { href: "/schedule", text: "Go to the schedule" }));
    return;
  }
  connect();
  loadToday();
  state.todayTimer = window.setInterval(loadToday, 60_000);
  window.setInterval(renderWaitingTimes, 5000);
}

function pageProblem(text) {
  const problem = byId("page-problem");
  problem.textContent = text;
  problem.hidden = false;
}

byId("sign-out").addEventListener("click", async () => {
  state.channel?.stop();
  endLocalMedia();
  await signOut();
  location.assign("/login?reason=signed_out");
});

// Sound: browsers play audio only after the person has clicked or pressed a key.
function renderSound() {
  const on = audioUnlocked();
  const button = byId("sound");
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Sound alerts on" : "Turn on sound alerts";
}
byId("sound").addEventListener("click", () => {
  unlockAudio();
  window.setTimeout(() => {
    renderSound();
    chime();
  }, 100);
});
for (const kind of ["pointerdown", "keydown"]) {
  window.addEventListener(kind, () => {
    unlockAudio();
    window.setTimeout(renderSound, 100);
  });
}

// The console socket ------------------------------------------------------------------------

// A renewed token goes to the socket at once: the server closes a console whose latest token
// has been expired for a minute.
onRenewed((token) => {
  state.socketToken = token;
  state.channel?.send({ type: "auth", token });
});

function connect() {
  state.channel = new Channel({
    url: async () => {
      if (state.mustReauth) {
        state.mustReauth = false;
        await reauthenticate();
      }
      state.socketToken = await freshToken();
      return socketUrl("/ws/clinic");
    },
    onOpen: () => {
      state.channel.send({ type: "auth", token: state.socketToken });
    },
    onMessage: (message) => onMessage(message).catch((error) => console.warn("message", error?.name)),
    onStatus: (status) => {
      byId("socket-banner").hidden = status !== "reconnecting";
    },
    retry: (event) => {
      if (event.code === 4401) {
        state.mustReauth = true;
        return true;
      }
      if (event.code === 4403) {
        pageProblem("This account may not run a consult queue.");
        return false;
      }
      return true;
    },
  });
  state.channel.start();
}

async function onMessage(message) {
  // The relay's own messages (answer, offer, candidate) may come without appointment_id; this
  // console holds one call at a time, so they belong to it.
  const forCall = Boolean(
    state.call && (message.appointment_id === undefined || message.appointment_id === state.call.id),
  );
  switch (message.type) {
    case "queue":
      onQueue(message.items || []);
      break;
    case "call":
      await openCall(message.appointment_id, message.ice_servers, message.chat_count);
      break;
    case "answer":
    case "offer":
    case "candidate":
      if (forCall && state.call.link) await state.call.link.handle(message);
      break;
    case "ended":
      if (forCall) closeCall(message.reason);
      break;
    case "stats":
      if (forCall) renderStats(message);
      break;
    case "recording":
      state.recording = message.state === "on";
      renderRecording();
      break;
    case "message":
      if (forCall) peerState(message.from || "patient", message.data || {});
      break;
    case "peer":
      // Who is in a call is told before the call itself (`call`): kept until it opens.
      if (forCall) onPeer(message);
      else if (message.appointment_id) state.earlyPeers = [...state.earlyPeers, message].slice(-8);
      break;
    case "chat":
      if (forCall) chat.receive(message);
      break;
    case "streams":
      if (forCall) {
        tiles.setStreams(message.items);
        renderVideo();
      }
      break;
    case "video":
      if (forCall && state.video.apply(message)) {
        renderVideo();
        linkFitter.update();
      }
      break;
    case "error":
      onError(message);
      break;
    default:
      break;
  }
}

const ERRORS = {
  recording_consent_required: "The patient has not agreed to recording, so it cannot start.",
  patient_not_connected: "The patient is reconnecting. Try again in a moment.",
  invalid_transition: "That is no longer possible: the visit has changed meanwhile.",
  not_found: "That appointment is no longer in your queue.",
  media_unavailable: "The video relay did not answer. Try again.",
  call_full: "The call is full: at most four people take part in a visit.",
  participant_limit: "This visit already has two guests. Remove one to invite another.",
  participant_not_waiting: "That guest is not in the waiting room (any more).",
};

function onError(message) {
  if (chat.refused(message.code)) return;
  if (message.code === "negotiation_failed" && state.call) {
    // A shared screen the relay could not take must not fail every new connection too.
    if (state.screen) {
      stopScreen({ tell: false });
      state.channel.send({ type: "screen", appointment_id: state.call.id, enabled: false });
      callMessage.textContent = "Screen sharing stopped: the video connection had to start again. Share again if needed.";
    }
    startLink();
    return;
  }
  if (["rate_limited", "invalid_message", "already_authenticated"].includes(message.code)) return;
  if (state.pendingAdmit && !state.call) {
    state.pendingAdmit = null;
    endLocalMedia();
    renderQueue();
  }
  callMessage.textContent = ERRORS[message.code] || message.message || "Something went wrong.";
}

// The queue ---------------------------------------------------------------------------------

function onQueue(items) {
  state.queue = items;
  const waiting = items.filter((item) => item.status === "waiting");
  if (state.seen === null) {
    state.seen = new Set(items.map((item) => item.appointment_id));
  } else {
    const arrived = waiting.filter((item) => !state.seen.has(item.appointment_id));
    for (const item of items) state.seen.add(item.appointment_id);
    if (arrived.length) alertArrival(arrived);
  }
  document.title = waiting.length ? `(${waiting.length}) Console — Televisit` : "Console — Televisit";
  renderQueue();
  if (state.call) {
    renderCallStatus();
    const item = items.find((i) => i.appointment_id === state.call.id);
    if (item?.participants) mergeGuests(item.participants, { complete: true });
  }
  scheduleTodayRefresh();
}

function alertArrival(arrived) {
  const names = arrived.map((item) => item.patient_name).join(", ");
  arrival.textContent = `${names} ${arrived.length === 1 ? "is" : "are"} waiting.`;
  arrival.hidden = false;
  window.clearTimeout(alertArrival.timer);
  alertArrival.timer = window.setTimeout(() => {
    arrival.hidden = true;
  }, 15_000);
  chime();
}

function waitedFor(item) {
  if (!item.waiting_since) return "";
  return formatDuration((Date.now() - new Date(item.waiting_since)) / 1000);
}

function renderQueue() {
  const busy = Boolean(state.call || state.pendingAdmit);
  queueList.replaceChildren(
    ...state.queue.map((item) => {
      const [connectionText, connectionClass] = CONNECTION[item.connection] || CONNECTION.unknown;
      const admit = el("button", {
        type: "button",
        class: "primary",
        "data-testid": "admit",
        text: "Admit",
        disabled: item.status !== "waiting" || busy,
        "aria-label": `Admit ${item.patient_name}`,
        onclick: () => admitPatient(item),
      });
      const noShow = el("button", {
        type: "button",
        "data-testid": "no-show",
        text: "No-show",
        disabled: item.status === "in_call",
        "aria-label": `Mark ${item.patient_name} as a no-show`,
        onclick: () => markNoShow(item),
      });
      const li = el(
        "li",
        { class: "queue-item", "data-testid": "queue-item", dataset: { id: item.appointment_id, status: item.status } },
        el("span", { class: "name", text: item.patient_name }),
        el(
          "span",
          { class: "row" },
          el("span", { class: `tag ${item.status}`, text: STATUS[item.status] || item.status }),
          item.position ? el("span", { class: "muted small", text: `#${item.position}` }) : null,
          el("span", { class: "muted small waited", dataset: { since: item.waiting_since || "" }, text: item.waiting_since ? `waiting ${waitedFor(item)}` : "" }),
        ),
        el(
          "span",
          { class: "row small" },
          el("span", { class: `tag ${connectionClass}`, text: connectionText }),
          el("span", { class: "muted", text: `booked ${formatTime(item.start, state.me.timezone)}` }),
        ),
        el("span", { class: "row" }, admit, noShow),
        renderWaitingGuests(item),
      );
      if (!state.shown?.has(item.appointment_id)) li.classList.add("is-new");
      return li;
    }),
  );
  state.shown = new Set(state.queue.map((item) => item.appointment_id));
  const count = state.queue.filter((item) => item.status === "waiting").length;
  byId("queue-count").textContent = `${count} waiting`;
  byId("queue-empty").hidden = state.queue.length > 0;
}

const GUEST_STATUS = { invited: "Invited", waiting: "Waiting", in_call: "In call", left: "Left", removed: "Removed" };

/** The patient's guests under their queue item; a waiting one is admitted into the running call. */
function renderWaitingGuests(item) {
  const guests = (item.participants || []).filter((g) => g.status !== "removed");
  if (!guests.length) return null;
  const inThisCall = state.call?.id === item.appointment_id;
  return el(
    "ul",
    { class: "guests", "aria-label": `Guests of ${item.patient_name}` },
    ...guests.map((guest) =>
      el(
        "li",
        { class: "row small", "data-testid": "queue-guest", dataset: { id: guest.id, status: guest.status } },
        el("span", { class: "name", text: guest.name }),
        el("span", { class: "muted", text: roleWords(`${guest.role}:${guest.id}`) }),
        el("span", { class: `tag ${guest.status}`, text: GUEST_STATUS[guest.status] || guest.status }),
        guest.status === "waiting"
          ? el("button", {
              type: "button",
              class: "primary",
              "data-testid": "admit-guest",
              text: "Admit",
              disabled: !inThisCall,
              title: inThisCall ? null : "Guests join a running call: admit the patient first.",
              "aria-label": `Admit ${guest.name} (${roleWords(`${guest.role}:${guest.id}`).toLowerCase()})`,
              onclick: () => admitGuest(item.appointment_id, guest),
            })
          : null,
      ),
    ),
  );
}

function admitGuest(appointmentId, guest) {
  callMessage.textContent = "";
  state.channel.send({ type: "admit", appointment_id: appointmentId, participant_id: guest.id });
}

function renderWaitingTimes() {
  for (const span of queueList.querySelectorAll(".waited")) {
    // Inside a live region: only a text that changed is written (and maybe announced).
    if (span.dataset.since) setText(span, `waiting ${waitedFor({ waiting_since: span.dataset.since })}`);
  }
}

async function markNoShow(item) {
  const sure = await confirmDialog({
    title: `Mark ${item.patient_name} as a no-show?`,
    text: "The visit is closed and the patient's link stops working.",
    confirm: "Mark as no-show",
    danger: true,
  });
  if (sure) state.channel.send({ type: "no_show", appointment_id: item.appointment_id });
}

// Today's schedule --------------------------------------------------------------------------

function scheduleTodayRefresh() {
  window.clearTimeout(scheduleTodayRefresh.timer);
  scheduleTodayRefresh.timer = window.setTimeout(loadToday, 1000);
}

async function loadToday() {
  const zone = state.me.timezone;
  const today = zonedParts(new Date(), zone);
  const start = zonedTime(today, zone);
  const end = zonedTime(addDays(today, 1), zone);
  byId("today-zone").textContent = `Times in ${zone} (${zoneName(start, zone)}).`;
  let answer;
  try {
    const query = new URLSearchParams({ clinician_id: state.me.id, start: start.toISOString(), end: end.toISOString() });
    answer = await api(`/api/v1/appointments?${query}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) byId("today-empty").textContent = describe(error);
    return;
  }
  const items = answer.items.filter((a) => a.status !== "cancelled");
  byId("today-empty").hidden = items.length > 0;
  byId("today").replaceChildren(
    ...items.map((a) =>
      el(
        "li",
        {},
        el("time", { datetime: a.start, text: formatTime(a.start, zone) }),
        " ",
        el("span", { text: a.patient.name }),
        " ",
        el("span", { class: `tag ${a.status}`, text: a.status.replace("_", " ") }),
      ),
    ),
  );
}

// The call ----------------------------------------------------------------------------------

function ensureMedia() {
  const live = state.media?.stream?.getTracks().some((t) => t.readyState === "live");
  if (!state.mediaPromise || !live) {
    state.mediaPromise = openLocalMedia().then((media) => {
      state.media = media;
      return media;
    });
  }
  return state.mediaPromise;
}

function endLocalMedia() {
  stopStream(state.media?.stream);
  state.media = null;
  state.mediaPromise = null;
  localVideo.srcObject = null;
}

function admitPatient(item) {
  unlockAudio();
  callMessage.textContent = "";
  state.pendingAdmit = item.appointment_id;
  renderQueue();
  // The camera starts while the server admits: both take a moment, neither waits for the other.
  ensureMedia();
  state.channel.send({ type: "admit", appointment_id: item.appointment_id });
}

async function openCall(appointmentId, iceServers, chatCount = null) {
  const item = state.queue.find((i) => i.appointment_id === appointmentId);
  const name = item?.patient_name || state.call?.name || "the patient";
  if (!state.call || state.call.id !== appointmentId) {
    state.call = { id: appointmentId, name, link: null, iceServers };
    state.recording = false;
    byId("call-title").textContent = `In call with ${name}`;
    byId("call-idle").hidden = true;
    byId("call-view").hidden = false;
    byId("stats").replaceChildren(el("tr", {}, el("td", { colspan: 6, text: "Waiting for the first figures…" })));
    state.video.reset();
    tiles.know("patient", name);
    tiles.join("patient", name);
    renderVideo();
    byId("stats-mode").textContent = "";
    renderRecording();
    loadConsent(appointmentId);
    state.guests = new Map();
    if (item?.participants) mergeGuests(item.participants, { complete: true });
    else renderGuests();
    loadGuests(appointmentId);
    for (const early of state.earlyPeers.splice(0)) if (early.appointment_id === appointmentId) onPeer(early);
  }
  state.call.iceServers = iceServers;
  chat.start(appointmentId, "clinician", chatCount); // reads the history only if it lacks some
  state.pendingAdmit = null;
  renderQueue();
  const media = await ensureMedia();
  renderMedia(media);
  if (state.call && state.call.id === appointmentId) startLink();
}

function renderMedia(media) {
  localVideo.srcObject = media.stream;
  const note = byId("media-note");
  const problems = [];
  if (media.camera !== "ok") problems.push("Your camera is not available: the patient hears you only.");
  if (media.microphone !== "ok") problems.push("Your microphone is not available: the patient cannot hear you.");
  note.textContent = problems.join(" ");
  note.hidden = problems.length === 0;
  byId("camera").disabled = media.camera !== "ok" || state.audioOnly;
  byId("mute").disabled = media.microphone !== "ok";
  renderLocalPicture();
}

function renderLocalPicture() {
  const placeholder = byId("local-placeholder");
  const words = selfViewWords({ camera: state.media?.camera, audioOnly: state.audioOnly, noCamera: "No camera" });
  placeholder.hidden = !words;
  placeholder.textContent = words || "";
}

function startLink() {
  const call = state.call;
  call.link?.close();
  const link = new MediaLink({
    iceServers: call.iceServers,
    stream: state.media?.stream || null,
    send: (message) => state.channel.send({ ...message, appointment_id: call.id }),
    screen: state.screen,
    onRemoteTrack: () => tiles.refresh(),
    onState: (connection) => {
      // The relay keeps a choice across connections and says nothing when it is unchanged:
      // telling it again squares it with this page (one reloaded, a press lost while the
      // socket was down).
      if (connection === "connected" && state.call === call) sendVideoChoice();
    },
  });
  call.link = link;
  tiles.attach(link);
  // A new peer connection with the relay: what it said about our own link is for it to say again.
  state.video.clear("clinician", "bandwidth");
  renderVideo();
  if (state.audioOnly) link.sendVideo(null).catch(() => {});
  link.start().catch((error) => console.warn("offer failed", error?.name));
}

function renderCallStatus() {
  const item = state.queue.find((i) => i.appointment_id === state.call.id);
  const note = byId("remote-note");
  if (item && item.status === "reconnecting") {
    note.textContent = `${state.call.name} is reconnecting…`;
    note.hidden = false;
  } else if (note.textContent.endsWith("reconnecting…")) {
    note.hidden = true;
    note.textContent = "";
  }
}

/**
 * Sound only, said plainly: above the picture (a polite live region) and, when no video comes
 * to us, a tile with the patient's name over their picture instead of a frozen frame.
 */
function renderVideo() {
  if (!state.call) {
    soundOnly.clear();
    return;
  }
  renderSoundOnly({ tiles, view: soundOnly, me: "clinician", chose: state.audioOnly, states: state.video });
}

function sendVideoChoice() {
  if (state.call) state.channel.send({ type: "video", appointment_id: state.call.id, enabled: !state.audioOnly });
}

function setAudioOnly(on) {
  state.audioOnly = on;
  // In sound only the relay does not report our link (no video comes to us), so a pause it
  // reported before could end unsaid: it is not shown from here on.
  if (on) state.video.clear("clinician", "bandwidth");
  byId("audio-only").setAttribute("aria-pressed", String(on));
  sendCamera({ stream: state.media?.stream, link: state.call?.link, audioOnly: on, cameraOn: state.cameraOn });
  byId("camera").disabled = on || state.media?.camera !== "ok";
  sendVideoChoice();
  renderLocalPicture();
  renderVideo();
}

/** On a link too weak for video, the camera is not sent either, and the sound is smaller. */
const linkFitter = new LinkFitter("clinician", () => ({
  audioOnly: state.audioOnly,
  states: state.video,
  stream: state.media?.stream,
  link: state.call?.link,
  cameraOn: state.cameraOn,
}));

byId("audio-only").addEventListener("click", () => setAudioOnly(!state.audioOnly));

/** Someone's camera or microphone, as their page said: on their tile (and, for the patient, in words). */
function peerState(from, data) {
  tiles.setState(from, data);
  if (from === "patient") patientState(data);
}

/** A guest (or the patient) joined or left the call. */
function onPeer(message) {
  const key = peerKey(message);
  if (!key || key === "clinician") return;
  if (message.event === "joined") tiles.join(key, message.name);
  else if (message.event === "left") tiles.leave(key);
  if (key !== "patient") {
    const who = `${message.name || roleWords(key)} (${roleWords(key).toLowerCase()})`;
    byId("people-status").textContent = `${who} ${message.event === "joined" ? "joined" : "left"} the call.`;
    if (message.participant_id && state.guests.has(message.participant_id)) {
      state.guests.get(message.participant_id).status = message.event === "joined" ? "in_call" : "waiting";
      renderGuests();
    }
  }
  renderVideo();
}

function patientState(data) {
  const notes = [];
  if (data.camera === "off") notes.push(`${state.call.name} turned the camera off.`);
  if (data.microphone === "off") notes.push(`${state.call.name} is muted.`);
  const note = byId("remote-note");
  note.textContent = notes.join(" ");
  note.hidden = notes.length === 0;
}

async function loadConsent(appointmentId) {
  const line = byId("call-consent");
  line.textContent = "Consent: checking…";
  try {
    const answer = await api(`/api/v1/appointments/${appointmentId}/consents`);
    const latest = {};
    for (const record of answer.items) {
      if (record.participant !== "patient") continue;
      for (const scope of record.scopes) latest[scope] = record;
    }
    const word = (scope) => {
      const record = latest[scope];
      if (!record) return "not asked";
      const when = formatTime(record.recorded_at, state.me.timezone);
      return `${record.decision === "granted" ? "agreed" : record.decision} (version ${record.version}, ${when})`;
    };
    if (state.call?.id === appointmentId) {
      line.textContent = `Consent: video visit ${word("video_visit")}; recording ${word("recording")}.`;
      state.call.recordingConsent = latest.recording?.decision === "granted";
      renderRecording();
    }
  } catch (error) {
    line.textContent = `Consent: ${describe(error)}`;
  }
}

/** A figure of the relay's, or a dash where it has none (yet). */
function figure(value, format) {
  return el("td", { text: value === null || value === undefined ? "–" : format(value) });
}

function renderStats(message) {
  const rows = (message.participants || []).map((p) =>
    el(
      "tr",
      {},
      el("th", { scope: "row", text: p.role === "patient" ? state.call.name : p.role === "clinician" ? "You" : tiles.name(p.role) }),
      figure(p.rtt_ms, (v) => `${Math.round(v)} ms`),
      figure(p.loss, (v) => `${(v * 100).toFixed(1)} %`),
      figure(p.jitter_ms, (v) => `${Math.round(v)} ms`),
      figure(p.kbps, (v) => `${Math.round(v)} kbit/s`),
      figure(p.available_kbps, (v) => `${Math.round(v)} kbit/s`),
    ),
  );
  if (rows.length) byId("stats").replaceChildren(...rows);
  byId("stats-mode").textContent =
    message.mode === "transcoding"
      ? "The relay is converting video between formats for this call (uses more server CPU)."
      : "";
}

function renderRecording() {
  const button = byId("record");
  button.textContent = state.recording ? "Stop recording" : "Start recording";
  button.setAttribute("aria-pressed", String(state.recording));
  byId("recording-badge").hidden = !state.recording;
}

function closeCall(reason) {
  const call = state.call;
  if (!call) return;
  call.link?.close();
  chat.stop();
  state.call = null;
  state.recording = false;
  state.microphoneOn = state.cameraOn = true;
  state.audioOnly = false;
  state.video.reset();
  stopScreen({ tell: false });
  tiles.reset();
  state.guests = new Map();
  renderGuests();
  for (const [id, label] of [["mute", "Mute"], ["camera", "Camera off"], ["audio-only", "Audio only"]]) {
    byId(id).setAttribute("aria-pressed", "false");
    byId(id).textContent = label;
  }
  renderVideo();
  byId("local-placeholder").hidden = true;
  endLocalMedia();
  byId("call-view").hidden = true;
  byId("call-idle").hidden = false;
  byId("call-title").textContent = "No call in progress";
  byId("remote-note").hidden = true;
  const reasons = {
    ended: "ended",
    consent_withdrawn: "ended: the patient withdrew consent",
    patient_left: "ended: the patient did not come back",
  };
  callMessage.textContent = `The call with ${call.name} ${reasons[reason] || "ended"}.`;
  renderQueue();
  byId("call-title").focus?.();
}

byId("end-call").addEventListener("click", () => {
  if (state.call) state.channel.send({ type: "end", appointment_id: state.call.id });
});

byId("record").addEventListener("click", () => {
  if (!state.call) return;
  state.channel.send({ type: "record", appointment_id: state.call.id, action: state.recording ? "stop" : "start" });
});

function sendState() {
  if (!state.call) return;
  state.channel.send({
    type: "message",
    appointment_id: state.call.id,
    data: { camera: state.cameraOn ? "on" : "off", microphone: state.microphoneOn ? "on" : "off" },
  });
}

byId("mute").addEventListener("click", (event) => {
  state.microphoneOn = !state.microphoneOn;
  for (const track of state.media?.stream?.getAudioTracks() || []) track.enabled = state.microphoneOn;
  event.currentTarget.setAttribute("aria-pressed", String(!state.microphoneOn));
  event.currentTarget.textContent = state.microphoneOn ? "Mute" : "Unmute";
  sendState();
});

byId("camera").addEventListener("click", (event) => {
  state.cameraOn = !state.cameraOn;
  for (const track of state.media?.stream?.getVideoTracks() || []) track.enabled = state.cameraOn;
  event.currentTarget.setAttribute("aria-pressed", String(!state.cameraOn));
  event.currentTarget.textContent = state.cameraOn ? "Camera off" : "Camera on";
  sendState();
});


// Guests: invite (their own link), admit from the queue, remove ------------------------------

const GUEST_PATH = (appointmentId) => `/api/v1/appointments/${appointmentId}/participants`;

/** Guests as the queue or the API tell them; `complete`: the list is all of them. */
function mergeGuests(list, { complete = false } = {}) {
  if (complete) {
    const ids = new Set(list.map((g) => g.id));
    for (const id of [...state.guests.keys()]) if (!ids.has(id)) state.guests.delete(id);
  }
  for (const guest of list) state.guests.set(guest.id, { ...state.guests.get(guest.id), ...guest });
  renderGuests();
}

async function loadGuests(appointmentId) {
  try {
    const answer = await api(GUEST_PATH(appointmentId));
    const list = Array.isArray(answer) ? answer : answer.items || [];
    if (state.call?.id === appointmentId) mergeGuests(list, { complete: true });
  } catch {
    // The queue's items carry the guests too; the list fills from them.
  }
}

function renderGuests() {
  const guests = [...state.guests.values()].filter((g) => g.status !== "removed");
  byId("guests-empty").hidden = guests.length > 0;
  byId("guests").replaceChildren(
    ...guests.map((guest) => {
      const role = roleWords(`${guest.role}:${guest.id}`);
      return el(
        "li",
        { class: "row", "data-testid": "guest", dataset: { id: guest.id, status: guest.status || "" } },
        el("span", { class: "name", text: guest.name }),
        el("span", { class: "muted small", text: role }),
        el("span", { class: `tag ${guest.status || ""}`, text: GUEST_STATUS[guest.status] || guest.status || "" }),
        el("button", {
          type: "button",
          class: "link",
          "data-testid": "remove-participant",
          text: "Remove",
          "aria-label": `Remove ${guest.name} from the visit`,
          onclick: () => removeGuest(guest),
        }),
      );
    }),
  );
}

async function removeGuest(guest) {
  const call = state.call;
  if (!call) return;
  const sure = await confirmDialog({
    title: `Remove ${guest.name} from the visit?`,
    text: "They leave the call at once and their link stops working.",
    confirm: "Remove",
    danger: true,
  });
  if (!sure) return;
  try {
    await api(`${GUEST_PATH(call.id)}/${guest.id}`, { method: "DELETE" });
    state.guests.delete(guest.id);
    renderGuests();
    tiles.leave(`${guest.role}:${guest.id}`);
    byId("people-status").textContent = `${guest.name} was removed from the visit.`;
  } catch (error) {
    callMessage.textContent = describe(error);
  }
}

const inviteDialog = byId("invite-dialog");

byId("invite").addEventListener("click", () => {
  byId("invite-form").reset();
  for (const id of ["invite-role", "invite-name", "invite-email", "invite-phone", "invite-send"]) byId(id).disabled = false;
  byId("invite-send").hidden = false;
  byId("invite-error").textContent = "";
  byId("invite-done").hidden = true;
  byId("invite-copied").textContent = "";
  inviteDialog.showModal();
  byId("invite-name").focus();
});

byId("invite-close").addEventListener("click", () => inviteDialog.close());

byId("invite-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const call = state.call;
  const error = byId("invite-error");
  error.textContent = "";
  const name = byId("invite-name").value.trim();
  if (!call) {
    error.textContent = "There is no call to invite a guest to.";
    return;
  }
  if (!name) {
    error.textContent = "Enter the guest's name.";
    byId("invite-name").focus();
    return;
  }
  const json = { role: byId("invite-role").value, name };
  const email = byId("invite-email").value.trim();
  const phone = byId("invite-phone").value.trim();
  if (email) json.email = email;
  if (phone) json.phone = phone;
  byId("invite-send").disabled = true;
  try {
    const guest = await api(GUEST_PATH(call.id), { method: "POST", json });
    mergeGuests([{ status: "invited", ...guest }]);
    for (const id of ["invite-role", "invite-name", "invite-email", "invite-phone"]) byId(id).disabled = true;
    byId("invite-send").hidden = true;
    byId("invite-done-text").textContent =
      `${guest.name} is invited${email || phone ? ": the invitation is on its way" : ""}. They appear under the patient in the queue once they are waiting.`;
    byId("invite-link").value = guest.visit_url || "";
    byId("invite-done").hidden = false;
    byId("invite-link").focus();
    byId("invite-link").select();
  } catch (failure) {
    error.textContent = (failure instanceof ApiError && ERRORS[failure.code]) || describe(failure);
  } finally {
    byId("invite-send").disabled = false;
  }
});

byId("invite-copy").addEventListener("click", async () => {
  const link = byId("invite-link");
  try {
    await navigator.clipboard.writeText(link.value);
    byId("invite-copied").textContent = "Copied.";
  } catch {
    link.select();
    byId("invite-copied").textContent = "Select the link and copy it.";
  }
});

// Screen share: a second outgoing video, which the relay shows the others large ------------

function renderScreen() {
  const button = byId("share-screen");
  const on = Boolean(state.screen);
  button.setAttribute("aria-pressed", String(on));
  button.textContent = on ? "Stop sharing" : "Share screen";
  const note = byId("screen-note");
  note.hidden = !on;
  note.textContent = on ? "You are sharing your screen: everyone in the call sees it large." : "";
}

async function shareScreen() {
  const call = state.call;
  if (!call || state.screen) return;
  let stream;
  try {
    stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  } catch (error) {
    callMessage.textContent =
      error?.name === "NotAllowedError" ? "Screen sharing was not allowed." : "Your screen could not be shared.";
    return;
  }
  const track = stream.getVideoTracks()[0];
  if (!track || state.call !== call) {
    stopStream(stream);
    return;
  }
  track.contentHint = "detail";
  // The browser's own "Stop sharing" ends the track.
  track.addEventListener("ended", () => stopScreen());
  state.screen = track;
  state.channel.send({ type: "screen", appointment_id: call.id, enabled: true });
  renderScreen();
  await call.link?.shareScreen(track).catch((error) => console.warn("screen", error?.name));
}

function stopScreen({ tell = true } = {}) {
  const track = state.screen;
  if (!track) return;
  state.screen = null;
  track.stop();
  if (tell && state.call) {
    state.channel.send({ type: "screen", appointment_id: state.call.id, enabled: false });
    state.call.link?.shareScreen(null).catch(() => {});
  }
  renderScreen();
}

byId("share-screen").addEventListener("click", () => (state.screen ? stopScreen() : shareScreen()));

start();
