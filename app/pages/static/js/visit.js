// /visit/{token}: the patient's page. No account: the link's token is the credential, and it
// never leaves this origin (no third-party resources; Referrer-Policy: no-referrer).
//
// Screens: prepare (device check, consent, join) -> waiting room -> call -> ended, with a
// "reconnecting" banner whenever the socket is down. The socket comes back by itself; the
// server keeps the patient's place (or call) for a grace period and sends `admitted` again,
// upon which a new peer connection is negotiated.

import { api, ApiError, describe, socketUrl } from "./api.js";
import { ChatPanel } from "./chat.js";
import { announce, byId, showScreen } from "./dom.js";
import {
  chime,
  LevelMeter,
  openLocalMedia,
  speakerTest,
  stopStream,
  unlockAudio,
} from "./devices.js";
import { connectionTest, MediaLink } from "./rtc.js";
import { Channel } from "./socket.js";
import { LinkFitter, selfViewWords, sendCamera, SoundOnlyView, VideoStates } from "./soundonly.js";
import { CallTiles, peerKey, renderSoundOnly, roleWords } from "./tiles.js";
import { formatDateTime, formatDuration, zoneName } from "./time.js";

const token = decodeURIComponent(location.pathname.replace(/^\/visit\//, "").replace(/\/$/, ""));
const path = `/api/v1/visits/${encodeURIComponent(token)}`;
const VERIFICATION_KEY = "televisit.visit-verification";
const TITLE = "Your video visit — Televisit";

const screens = {
  loading: byId("screen-loading"),
  problem: byId("screen-problem"),
  verify: byId("screen-verify"),
  prepare: byId("screen-prepare"),
  waiting: byId("screen-waiting"),
  call: byId("screen-call"),
  left: byId("screen-left"),
  ended: byId("screen-ended"),
};
const live = byId("live");
const localVideo = byId("local-video");
const remoteVideo = byId("remote-video");
const reconnecting = byId("reconnecting");
const soundOnly = new SoundOnlyView(remoteVideo);
// The call's tiles: the clinician large (the page's own tile), the others and oneself around.
const tiles = new CallTiles({
  stage: byId("tiles"),
  main: { key: "clinician", tile: byId("main-tile"), video: remoteVideo },
  self: { key: "patient", tile: byId("self-tile") },
});

// Chat in the call (chat.js): sent on this page's socket; what was said before comes on it too
// (`chat_history`).
const chat = new ChatPanel({
  container: byId("chat-slot"),
  send: (text) => Boolean(state.channel?.send({ type: "chat", text })),
});

const state = {
  visit: null,
  me: "patient", // this person's participant key: "patient", or a guest's "<role>:<id>"
  verification: sessionStorage.getItem(VERIFICATION_KEY),
  media: null, // {stream, camera, microphone}
  mediaPromise: null,
  meter: null,
  verdict: null, // connection test: "direct" | "turn" | "failed" | "unknown"
  channel: null,
  link: null,
  iceServers: [],
  phase: "prepare", // prepare | waiting | call | left | ended
  finished: false,
  qualityTimer: null,
  microphoneOn: true,
  cameraOn: true,
  audioOnly: false, // sound only, by the patient's choice (the "Audio only" button)
  video: new VideoStates(), // what the relay said it paused, and for whom
  opensTimer: null, // joins the waiting room when it opens (checked in too early)
};

// HTTP --------------------------------------------------------------------------------------

/** The visit's API: no staff session, the birth-date proof when the practice asks for one. */
function visitRequest(suffix, { method = "GET", json } = {}) {
  const headers = state.verification ? { "X-Visit-Verification": state.verification } : {};
  return api(`${path}${suffix}`, { method, json, headers, auth: false });
}

// Loading and the problems a link can have --------------------------------------------------

function problem(title, text, { retry = false } = {}) {
  byId("problem-title").textContent = title;
  byId("problem-text").textContent = text;
  byId("problem-retry").hidden = !retry;
  showScreen(screens, "problem");
}

function visitProblem(error) {
  if (error instanceof ApiError && error.code === "visit_not_found") {
    problem(
      "This link does not work",
      "Check that you opened the whole link from your invitation. If it still does not work, please contact your clinic.",
    );
  } else if (error instanceof ApiError && error.code === "visit_closed") {
    problem(
      "This visit is closed",
      "The appointment was cancelled or is over. If you think this is a mistake, please contact your clinic.",
    );
  } else if (error instanceof ApiError && error.status === 401) {
    state.verification = null;
    sessionStorage.removeItem(VERIFICATION_KEY);
    showScreen(screens, "verify");
  } else {
    problem("Something went wrong", describe(error), { retry: true });
  }
}

async function load() {
  try {
    state.visit = await visitRequest("");
  } catch (error) {
    visitProblem(error);
    return;
  }
  whoAmI();
  renderPrepare();
  showScreen(screens, "prepare", { focus: false });
  runConnectionTest();
}

/** A guest's link opens this same page: who they are comes with the visit. */
function whoAmI() {
  const participant = state.visit.participant;
  state.me = participant && participant.role !== "patient" && participant.id ? `${participant.role}:${participant.id}` : "patient";
  linkFitter.me = state.me;
  tiles.setKeys({ self: state.me });
  tiles.know("clinician", state.visit.clinician.name);
  document.body.classList.toggle("guest", isGuest());
  if (isGuest()) {
    byId("withdraw-dialog-text").textContent =
      "You leave the visit at once and nothing more is sent from your camera or microphone. The visit goes on for the others.";
    byId("withdraw-confirm").textContent = "Withdraw and leave the visit";
  }
}

function isGuest() {
  return state.me !== "patient";
}

byId("problem-retry").addEventListener("click", () => {
  showScreen(screens, "loading");
  load();
});

byId("verify-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = byId("verify-birth-date");
  const error = byId("verify-error");
  error.textContent = "";
  if (!input.value) {
    error.textContent = "Enter your date of birth.";
    input.focus();
    return;
  }
  try {
    const answer = await visitRequest("/verify", { method: "POST", json: { birth_date: input.value } });
    state.verification = answer.verification;
    sessionStorage.setItem(VERIFICATION_KEY, answer.verification);
    showScreen(screens, "loading");
    await load();
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 429) {
      error.textContent = "Too many attempts. Please wait a few minutes and try again.";
    } else if (failure instanceof ApiError && failure.status === 401) {
      error.textContent = "That date of birth does not match our records. Please check it and try again.";
    } else {
      visitProblem(failure);
    }
  }
});

// Prepare: details, device check, consent, join ---------------------------------------------

function renderPrepare() {
  const visit = state.visit;
  byId("clinician-name").textContent = visit.clinician.name;
  byId("waiting-clinician").textContent = visit.clinician.name;
  byId("call-title").textContent = `Video visit with ${visit.clinician.name}`;
  const minutes = Math.round((new Date(visit.end) - new Date(visit.start)) / 60000);
  byId("visit-when").textContent =
    `${formatDateTime(visit.start, undefined)} (your time, ${zoneName(visit.start, undefined)}), ${minutes} minutes`;
  const note = byId("visit-state");
  if (visit.status === "in_call" || visit.status === "waiting") {
    note.textContent = "Your visit is under way. Join again to go back to it.";
    note.hidden = false;
  } else if (visit.status === "completed" || visit.status === "no_show") {
    note.textContent = "This visit has already taken place.";
    note.hidden = false;
  }
  byId("consent-text").textContent = visit.consent.text;
  byId("consent-recording").checked = Boolean(visit.consented_recording);
  renderConsent(visit.consented ? "granted" : null);
}

function renderConsent(decision) {
  const stateLine = byId("consent-state");
  const join = byId("join");
  const hint = byId("join-hint");
  byId("declined-info").hidden = decision !== "declined";
  if (decision === "granted") {
    stateLine.textContent = "Thank you: you agreed to the video visit.";
    join.disabled = false;
    hint.textContent = "When you are ready, join the waiting room. Your clinician will let you in.";
  } else {
    stateLine.textContent = decision === "declined" ? "You did not agree." : "";
    join.disabled = true;
    hint.textContent = "Agree to the consent above first.";
  }
}

async function decide(decision) {
  const recording = byId("consent-recording").checked;
  const scopes =
    decision === "granted" && !recording ? ["video_visit"] : ["video_visit", "recording"];
  const buttons = [byId("consent-accept"), byId("consent-decline")];
  buttons.forEach((b) => (b.disabled = true));
  try {
    await visitRequest("/consent", {
      method: "POST",
      json: { version: state.visit.consent.version, decision, scopes },
    });
    state.visit.consented = decision === "granted";
    state.visit.consented_recording = decision === "granted" && recording;
    renderConsent(decision);
    announce(live, decision === "granted" ? "Consent recorded. You can join now." : "You did not agree.");
    if (decision === "granted") byId("join").focus();
    else byId("declined-info").querySelector("h3").focus();
  } catch (error) {
    if (error instanceof ApiError && error.code === "consent_version_mismatch") {
      state.visit = await visitRequest("");
      renderPrepare();
      byId("consent-state").textContent = "The consent text was just updated. Please read it again.";
      byId("consent-text").focus();
    } else if (error instanceof ApiError && (error.status === 404 || error.status === 410 || error.status === 401)) {
      visitProblem(error);
    } else {
      byId("consent-state").textContent = describe(error);
    }
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

byId("consent-accept").addEventListener("click", () => decide("granted"));
byId("consent-decline").addEventListener("click", () => decide("declined"));

const CAMERA_PROBLEMS = {
  denied:
    "You did not allow the camera, so your visit will be sound only. To use video, allow the camera in your browser's site settings and reload this page.",
  missing: "No camera was found, so your visit will be sound only.",
  busy: "Your camera is being used by another program, so your visit will be sound only. Close that program and reload this page to use video.",
  unsupported: "This browser cannot use a camera here, so your visit will be sound only.",
  error: "Your camera could not be started, so your visit will be sound only.",
};
const MICROPHONE_PROBLEMS = {
  denied:
    "You did not allow the microphone, so your clinician will not hear you. Allow it in your browser's site settings and reload this page.",
  missing: "No microphone was found, so your clinician will not hear you.",
  busy: "Your microphone is being used by another program. Close it and reload this page.",
  unsupported: "This browser cannot use a microphone here.",
  error: "Your microphone could not be started.",
};

function mediaMessages(media) {
  const lines = [];
  if (media.camera !== "ok") lines.push(CAMERA_PROBLEMS[media.camera] || CAMERA_PROBLEMS.error);
  if (media.microphone !== "ok") {
    lines.push(MICROPHONE_PROBLEMS[media.microphone] || MICROPHONE_PROBLEMS.error);
  }
  return lines;
}

/** Open the camera and microphone once (from a click: the browser then may ask). */
function ensureMedia() {
  if (!state.mediaPromise) {
    byId("camera-status").textContent = "Asking your browser for the camera and microphone…";
    state.mediaPromise = openLocalMedia().then((media) => {
      state.media = media;
      renderMedia();
      return media;
    });
  }
  return state.mediaPromise;
}

function renderMedia() {
  const media = state.media;
  const status = byId("camera-status");
  const problems = mediaMessages(media);
  status.textContent = problems.length
    ? problems.join(" ")
    : "Your camera and microphone work. You should see yourself.";
  status.dataset.state = problems.length ? "warning" : "ok";
  localVideo.srcObject = media.stream;
  renderLocalPicture();
  byId("start-check").hidden = true;
  if (media.stream && media.microphone === "ok") {
    byId("mic-row").hidden = false;
    const meter = byId("mic-meter");
    state.meter?.stop();
    state.meter = new LevelMeter(media.stream, (level) => {
      meter.value = level;
    });
  }
  const note = byId("audio-only-note");
  note.hidden = problems.length === 0;
  note.textContent = problems.join(" ");
  const camera = byId("camera");
  camera.disabled = media.camera !== "ok" || state.audioOnly;
  if (media.camera !== "ok") camera.textContent = "No camera";
  byId("mute").disabled = media.microphone !== "ok";
}

/** The self view's words over the picture: no camera, or sound only by choice. */
function renderLocalPicture() {
  const placeholder = byId("local-placeholder");
  const words = selfViewWords({
    camera: state.media?.camera,
    audioOnly: state.audioOnly,
    noCamera: "Sound only: no camera picture",
  });
  placeholder.hidden = !words;
  placeholder.textContent = words || "";
}

byId("start-check").addEventListener("click", () => {
  unlockAudio();
  ensureMedia();
});

byId("speaker-test").addEventListener("click", () => {
  const played = speakerTest();
  byId("speaker-status").textContent = played
    ? "Did you hear a short tune? If not, turn the volume up or choose other speakers."
    : "Your browser did not play the sound. Check that it is allowed to play audio.";
});

const VERDICTS = {
  direct: "Your connection to the clinic works well.",
  turn: "Your connection to the clinic works through a relay. The visit should work; the picture may be a little slower.",
  failed:
    "We could not reach the clinic's video server from this network. The video may not work here: try another network (for example mobile data instead of Wi-Fi), or contact your clinic.",
  unknown: "Your connection could not be tested in advance. The visit will try to connect when it starts.",
};

async function runConnectionTest() {
  const status = byId("network-status");
  if (!window.RTCPeerConnection) {
    state.verdict = "failed";
    status.textContent = "This browser cannot make video calls. Please use a current Chrome, Edge, Firefox or Safari.";
    status.dataset.state = "warning";
    return;
  }
  const verdict = await connectionTest({
    iceServers: state.visit.ice_servers || [],
    exchange: async (sdp) => {
      try {
        return (await visitRequest("/connection-test", { method: "POST", json: { sdp } })).sdp;
      } catch (error) {
        // A server without the test (or one that cannot run it now) is not a network problem.
        if (error instanceof ApiError) return null;
        throw error;
      }
    },
  });
  state.verdict = verdict;
  status.textContent = VERDICTS[verdict];
  status.dataset.state = verdict === "direct" ? "ok" : verdict === "unknown" ? "" : "warning";
  reportVerdict();
}

function reportVerdict() {
  if (state.verdict && state.channel) {
    state.channel.send({ type: "device_check", verdict: state.verdict });
  }
}

byId("join").addEventListener("click", async () => {
  unlockAudio();
  const join = byId("join");
  join.disabled = true;
  byId("join-hint").textContent = "Getting your camera and microphone ready…";
  await ensureMedia();
  join.disabled = false;
  connect();
});

// The socket: waiting room and call signaling -----------------------------------------------

function connect() {
  state.finished = false;
  if (state.channel) state.channel.stop();
  const channel = new Channel({
    url: async () => {
      const query = state.verification
        ? `?verification=${encodeURIComponent(state.verification)}`
        : "";
      return socketUrl(`/ws/visits/${encodeURIComponent(token)}${query}`);
    },
    onOpen: () => reportVerdict(),
    onMessage: (message) => onMessage(message).catch((error) => console.warn("message", error?.name)),
    onStatus: (status) => onSocketStatus(status),
    retry: (event) => !state.finished && ![4401, 4403, 4404, 4409, 4410, 4425, 1008].includes(event.code),
  });
  state.channel = channel;
  channel.start();
  if (state.phase === "prepare") enterWaiting(null, null);
}

function onSocketStatus(status) {
  const down = status === "reconnecting";
  reconnecting.hidden = !down || state.finished;
  screens.call.classList.toggle("is-reconnecting", down);
  if (down) announce(live, "Connection lost. Reconnecting.");
  else if (status === "open") reconnecting.hidden = true;
}

async function onMessage(message) {
  switch (message.type) {
    case "waiting":
      if (state.phase !== "call") enterWaiting(message.position, message.estimated_wait_seconds);
      break;
    case "admitted":
      await admitted(message.ice_servers);
      break;
    case "answer":
    case "offer":
    case "candidate":
      if (state.link) await state.link.handle(message);
      break;
    case "peer":
      onPeer(message);
      break;
    case "streams":
      tiles.setStreams(message.items);
      renderVideo();
      break;
    case "recording":
      byId("recording-badge").hidden = message.state !== "on";
      announce(live, message.state === "on" ? "The visit is being recorded." : "Recording stopped.");
      break;
    case "message":
      peerState(message.from || "clinician", message.data || {});
      break;
    case "video":
      if (state.video.apply(message)) {
        renderVideo();
        linkFitter.update();
      }
      break;
    case "chat":
      chat.receive(message);
      break;
    case "chat_history":
      // What was said before this page came (back) into the call (after `admitted`).
      chat.earlier(message.appointment_id, message.items);
      break;
    case "ended":
      finish(message.reason);
      break;
    case "error":
      onError(message);
      break;
    default:
      break;
  }
}

function onError(message) {
  if (chat.refused(message.code)) return;
  switch (message.code) {
    case "consent_required":
      state.finished = true;
      state.channel?.stop();
      leaveCallMedia();
      state.phase = "prepare";
      renderConsent(null);
      // Back to the device check: the preview (and its level meter) with it.
      byId("slot-prepare").append(localVideo.parentElement);
      if (state.media) renderMedia();
      showScreen(screens, "prepare");
      byId("consent-state").textContent = "Please agree to the consent before joining.";
      break;
    case "replaced":
      state.finished = true;
      leaveCallMedia();
      problem("The visit was opened in another window", "Carry on in the other window or tab. You can close this one.");
      break;
    case "verification_required":
    case "verification_failed":
      state.finished = true;
      showScreen(screens, "verify");
      break;
    case "visit_not_found":
    case "visit_closed":
      state.finished = true;
      leaveCallMedia();
      visitProblem(new ApiError(message.code === "visit_closed" ? 410 : 404, message.code, message.message));
      break;
    case "too_early":
      waitingRoomOpensAt(message.opens_at);
      break;
    case "negotiation_failed":
      // The relay could not use our description: start over on a new connection.
      if (state.phase === "call") startCall();
      break;
    case "participant_removed":
      // A guest the clinician removed: their link is closed for good.
      state.finished = true;
      state.phase = "ended";
      leaveCallMedia();
      state.channel?.stop();
      stopStream(state.media?.stream);
      reconnecting.hidden = true;
      document.title = "Removed from the visit — Televisit";
      problem(
        "You were removed from this visit",
        "The clinician removed you from this visit, so this link no longer works. If you think this is a mistake, please contact the clinic.",
      );
      break;
    default:
      break;
  }
}

// Too early to check in: say plainly when the waiting room opens, and come in by itself then.
function waitingRoomOpensAt(opensAt) {
  state.finished = true;
  state.channel?.stop();
  leaveCallMedia();
  const when = `${formatDateTime(opensAt, undefined)} (your time, ${zoneName(opensAt, undefined)})`;
  problem(
    "The waiting room is not open yet",
    `It opens at ${when}. Keep this page open: you will be taken to the waiting room then.`,
  );
  window.clearTimeout(state.opensTimer);
  // A second late, so the server's clock agrees; setTimeout takes at most about 24 days.
  const wait = Math.min(Math.max(new Date(opensAt) - Date.now() + 1000, 1000), 2 ** 31 - 1);
  state.opensTimer = window.setTimeout(() => connect(), wait);
}

function enterWaiting(position, estimate) {
  const firstTime = state.phase !== "waiting";
  state.phase = "waiting";
  if (firstTime) {
    document.title = "Waiting room — Televisit";
    // The level meter belongs to the device check: no analyser running on a hidden screen.
    state.meter?.stop();
    state.meter = null;
    byId("slot-waiting").append(localVideo.parentElement);
    showScreen(screens, "waiting");
  }
  const where = byId("waiting-position");
  const eta = byId("waiting-estimate");
  if (position === null || position === undefined) {
    where.textContent = "Checking you in…";
    eta.textContent = "";
    return;
  }
  where.textContent =
    position <= 1
      ? "You are next."
      : `There ${position - 1 === 1 ? "is 1 person" : `are ${position - 1} people`} ahead of you.`;
  if (estimate === null || estimate === undefined) eta.textContent = "";
  else if (estimate <= 30) eta.textContent = "Your clinician should be with you very soon.";
  else eta.textContent = `Estimated wait: about ${formatDuration(Math.ceil(estimate / 60) * 60)}.`;
}

async function admitted(iceServers) {
  state.iceServers = iceServers || [];
  if (state.phase === "left") return; // they chose to leave; "Rejoin" negotiates again
  if (state.phase !== "call") {
    state.phase = "call";
    document.title = "It's your turn — Televisit";
    chime();
    byId("slot-call").append(localVideo.parentElement);
    showScreen(screens, "call");
    announce(live, `${state.visit.clinician.name} has let you in. Your visit is starting.`);
    tiles.join("clinician", state.visit.clinician.name);
  }
  chat.start(state.visit.appointment_id, state.me);
  startCall();
}

function startCall() {
  state.link?.close();
  // A new peer connection with the relay: what it said about our own link is for it to say again.
  state.video.clear(state.me, "bandwidth");
  renderVideo();
  const link = new MediaLink({
    iceServers: state.iceServers,
    stream: state.media?.stream || null,
    send: (message) => state.channel?.send(message),
    onRemoteTrack: () => tiles.refresh(),
    onState: (connection) => {
      if (connection === "connected") {
        remoteNote(null);
        // The relay keeps a choice across connections and says nothing when it is unchanged:
        // telling it again squares it with this page (one reloaded, a press lost while the
        // socket was down).
        sendVideoChoice();
      } else if (connection === "failed") remoteNote("The video connection was lost. Reconnecting…");
    },
  });
  state.link = link;
  tiles.attach(link);
  if (state.audioOnly) link.sendVideo(null).catch(() => {});
  link.start().catch((error) => console.warn("offer failed", error?.name));
  window.clearInterval(state.qualityTimer);
  state.qualityTimer = window.setInterval(() => updateQuality(link), 2000);
}

async function updateQuality(link) {
  if (link !== state.link) return;
  const sample = await link.sample().catch(() => null);
  if (!sample) return;
  const quality = byId("quality");
  quality.dataset.level = sample.level;
  const words = { good: "Good connection", fair: "Fair connection", poor: "Poor connection", unknown: "Connecting…" };
  byId("quality-text").textContent = words[sample.level];
}

/**
 * Sound only, said plainly: under the picture (a polite live region) and, when no video comes
 * to us, a tile with the clinician's name over their picture instead of a frozen frame.
 */
function renderVideo() {
  renderSoundOnly({ tiles, view: soundOnly, me: state.me, chose: state.audioOnly, states: state.video });
}

function sendVideoChoice() {
  state.channel?.send({ type: "video", enabled: !state.audioOnly });
}

function setAudioOnly(on) {
  state.audioOnly = on;
  // In sound only the relay does not report our link (no video comes to us), so a pause it
  // reported before could end unsaid: it is not shown from here on.
  if (on) state.video.clear(state.me, "bandwidth");
  byId("audio-only").setAttribute("aria-pressed", String(on));
  sendCamera({ stream: state.media?.stream, link: state.link, audioOnly: on, cameraOn: state.cameraOn });
  byId("camera").disabled = on || state.media?.camera !== "ok";
  sendVideoChoice();
  renderLocalPicture();
  renderVideo();
}

/** On a link too weak for video, the camera is not sent either, and the sound is smaller. */
const linkFitter = new LinkFitter(state.me, () => ({
  audioOnly: state.audioOnly,
  states: state.video,
  stream: state.media?.stream,
  link: state.link,
  cameraOn: state.cameraOn,
}));

byId("audio-only").addEventListener("click", () => setAudioOnly(!state.audioOnly));

function remoteNote(text) {
  const note = byId("remote-note");
  note.hidden = !text;
  note.textContent = text || "";
}

/** Someone's camera or microphone, as their page said: on their tile (and, for the clinician, in words). */
function peerState(from, data) {
  tiles.setState(from, data);
  if (from !== "clinician") return;
  const name = state.visit.clinician.name;
  const notes = [];
  if (data.camera === "off") notes.push(`${name} turned the camera off.`);
  if (data.microphone === "off") notes.push(`${name} is muted.`);
  if (data.camera || data.microphone) remoteNote(notes.join(" ") || null);
}

/** Someone joined or left the call: the clinician (who may come back), or a guest or the patient. */
function onPeer(message) {
  const key = peerKey(message);
  if (!key || key === state.me) return;
  if (key === "clinician") {
    remoteNote(message.event === "left" ? `${state.visit.clinician.name} lost the connection. Please stay: they can come back.` : null);
    if (message.event === "joined") tiles.join(key, message.name || state.visit.clinician.name);
    return;
  }
  const who = `${message.name || roleWords(key)} (${roleWords(key).toLowerCase()})`;
  if (message.event === "joined") {
    tiles.join(key, message.name);
    setPeopleStatus(`${who} joined the visit.`);
  } else if (message.event === "left") {
    tiles.leave(key);
    setPeopleStatus(`${who} left the visit.`);
  }
  renderVideo();
}

function setPeopleStatus(text) {
  byId("people-status").textContent = text;
}

function leaveCallMedia() {
  window.clearInterval(state.qualityTimer);
  state.link?.close();
  state.link = null;
  tiles.attach(null);
}

function finish(reason) {
  chat.stop();
  state.finished = true;
  state.phase = "ended";
  leaveCallMedia();
  state.channel?.stop();
  state.meter?.stop();
  stopStream(state.media?.stream);
  reconnecting.hidden = true;
  document.title = "Visit ended — Televisit";
  const texts = {
    ended: "Your clinician ended the visit. Thank you. You can close this page.",
    left: "You left the waiting room. To come back, open your link again.",
    no_show: "The visit was closed because you were not there in time. Please contact your clinic to book again.",
    cancelled: "The appointment was cancelled. Please contact your clinic if you have questions.",
    consent_withdrawn: "You withdrew your consent, so the visit was ended and nothing more was sent.",
    patient_left: "The visit ended because the connection was lost for too long. Please contact your clinic if you were not finished.",
    completed: "This visit has already ended.",
  };
  if (isGuest()) {
    Object.assign(texts, {
      ended: "The visit has ended. Thank you. You can close this page.",
      left: "You left the waiting room. To come back, open your link again.",
      consent_withdrawn: "The visit has ended. Thank you. You can close this page.",
      guest_withdrawn: "You withdrew your consent, so you left the visit and nothing more is sent from your camera or microphone.",
      patient_left: "The visit ended because the patient's connection was lost for too long.",
    });
  }
  byId("ended-text").textContent = texts[reason] || texts.ended;
  showScreen(screens, "ended");
}

// In-call controls --------------------------------------------------------------------------

function sendState() {
  state.channel?.send({
    type: "message",
    data: { camera: state.cameraOn ? "on" : "off", microphone: state.microphoneOn ? "on" : "off" },
  });
}

byId("mute").addEventListener("click", (event) => {
  state.microphoneOn = !state.microphoneOn;
  for (const track of state.media?.stream?.getAudioTracks() || []) track.enabled = state.microphoneOn;
  event.currentTarget.setAttribute("aria-pressed", String(!state.microphoneOn));
  event.currentTarget.textContent = state.microphoneOn ? "Mute" : "Unmute";
  announce(live, state.microphoneOn ? "Microphone on." : "Microphone muted.");
  sendState();
});

byId("camera").addEventListener("click", (event) => {
  state.cameraOn = !state.cameraOn;
  for (const track of state.media?.stream?.getVideoTracks() || []) track.enabled = state.cameraOn;
  event.currentTarget.setAttribute("aria-pressed", String(!state.cameraOn));
  event.currentTarget.textContent = state.cameraOn ? "Camera off" : "Camera on";
  announce(live, state.cameraOn ? "Camera on." : "Camera off.");
  sendState();
});

byId("leave").addEventListener("click", () => {
  state.channel?.send({ type: "leave" });
  leaveCallMedia();
  state.phase = "left";
  document.title = TITLE;
  showScreen(screens, "left");
});

byId("rejoin").addEventListener("click", () => {
  state.phase = "call";
  byId("slot-call").append(localVideo.parentElement);
  showScreen(screens, "call");
  startCall();
});

byId("leave-waiting").addEventListener("click", () => {
  if (!state.channel?.send({ type: "leave" })) finish("left");
});

const withdrawDialog = byId("withdraw-dialog");
for (const id of ["withdraw-waiting", "withdraw-call"]) {
  byId(id).addEventListener("click", () => withdrawDialog.showModal());
}
withdrawDialog.addEventListener("close", async () => {
  if (withdrawDialog.returnValue !== "withdraw") return;
  try {
    await visitRequest("/consent", {
      method: "POST",
      json: { version: state.visit.consent.version, decision: "withdrawn", scopes: ["video_visit", "recording"] },
    });
    finish(isGuest() ? "guest_withdrawn" : "consent_withdrawn");
  } catch (error) {
    announce(live, describe(error));
  }
});

window.addEventListener("pagehide", () => {
  state.link?.close();
});

load();
