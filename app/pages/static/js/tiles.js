// The call's tiles: one per person (2 to 4), plus the clinician's shared screen when it is on.
//
// Who is who comes from the server: the relay's `streams` message maps each of this page's
// receiving transceivers (by `mid`) to a participant key ("patient", "clinician",
// "interpreter:<id>", ...) and a source ("camera" | "screen"); the `peer` messages give each
// person's name and role. Until a `streams` message has come (a relay that does not send one),
// everything received is the page's main remote person's, as in a call of two.
//
// Layout (phone first): the large tile is the shared screen when there is one, else the main
// remote person (the clinician on the patient's and a guest's page, the patient on the
// console); everyone else, oneself included, in a strip under it. In a call of two, one's own
// picture stays small over the large one. The main remote person's tile is the page's own
// (it holds `remote-video`, the sound-only tile and the notes the rest of the page uses).

import { el } from "./dom.js";
import { initials, otherWords, soundOnlyWords } from "./soundonly.js";

const ROLE_WORDS = {
  patient: "Patient",
  clinician: "Clinician",
  interpreter: "Interpreter",
  caregiver: "Caregiver",
};

/** "interpreter:6f1c…" -> "interpreter"; "patient" -> "patient". */
export function roleOf(key) {
  return String(key || "").split(":")[0];
}

/** The participant key a `peer` message is about. */
export function peerKey(message) {
  if (message.participant) return message.participant;
  if (message.participant_id) return `${message.role}:${message.participant_id}`;
  return message.role;
}

/** The words for a role, with "(guest)" for a second clinician. */
export function roleWords(key) {
  const role = roleOf(key);
  const words = ROLE_WORDS[role] || "Guest";
  return role === "clinician" && key.includes(":") ? "Clinician (guest)" : words;
}

// How loud (0..1, from RTP's audio level) counts as speaking, and for how long it shows.
const SPEAKING_LEVEL = 0.05;
const SPEAKING_MS = 1200;

export class CallTiles {
  /**
   * stage: the tiles' container; main: {key, tile, video} of the page's own remote tile;
   * self: {key, tile} of one's own picture; name(key): a person's name when known.
   */
  constructor({ stage, main, self }) {
    this.stage = stage;
    this.main = main;
    this.self = self;
    this.people = new Map(); // key -> {name, present}
    this.tiles = new Map(); // key (or "<key>#screen") -> {tile, video, stream, ...}
    this.items = null; // the relay's latest `streams` items (null: none came)
    this.link = null;
    this.speaking = new Map(); // key -> until (ms)
    this.timer = null;
    this.tiles.set(main.key, this._own(main.tile, main.video));
    this._label(this.tiles.get(main.key), main.key);
    this._label({ tile: self.tile, label: self.tile.querySelector(".tile-label") }, self.key, "You");
    this.layout();
  }

  _own(tile, video) {
    return {
      tile,
      video,
      stream: null,
      label: tile.querySelector(".tile-label"),
      paused: null,
      state: {},
    };
  }

  setKeys({ self, main }) {
    if (self && self !== this.self.key) {
      this.self.key = self;
      this.self.tile.dataset.participant = self;
    }
    if (main && main !== this.main.key) {
      const entry = this.tiles.get(this.main.key);
      this.tiles.delete(this.main.key);
      this.main.key = main;
      this.main.tile.dataset.participant = main;
      this.tiles.set(main, entry);
      this._label(entry, main);
    }
  }

  /** A person's name, known before they are in the call. */
  know(key, name) {
    const known = this.people.get(key) || { present: false };
    this.people.set(key, { ...known, name });
    const entry = this.tiles.get(key);
    if (entry) this._label(entry, key);
  }

  /** A person is in the call (a `peer` joined, or the page knows them). */
  join(key, name) {
    const known = this.people.get(key) || {};
    this.people.set(key, { ...known, name: name || known.name || null, present: true });
    if (key === this.self.key) return;
    const entry = this.tiles.get(key) || this._create(key);
    this._label(entry, key);
    this.layout();
  }

  /** A person left: their tile goes (the main remote person's stays, with a note elsewhere). */
  leave(key) {
    const known = this.people.get(key);
    if (known) known.present = false;
    if (key === this.main.key || key === this.self.key) return;
    for (const id of [key, `${key}#screen`]) this._remove(id);
    this.layout();
  }

  name(key) {
    return this.people.get(key)?.name || (key === this.self.key ? "You" : roleWords(key));
  }

  /** Everyone else in the call now (keys), the main one first. */
  others() {
    return [...this.tiles.keys()].filter((id) => !id.endsWith("#screen"));
  }

  /** The relay's `streams` items: which of our transceivers carries whom. */
  setStreams(items) {
    this.items = Array.isArray(items) ? items : [];
    for (const item of this.items) {
      if (item.participant && item.participant !== this.self.key && !this.tiles.has(item.participant)) {
        this._create(item.participant);
      }
    }
    this.refresh();
  }

  /** A new peer connection (or none): its tracks go to the tiles from now on. */
  attach(link) {
    this.link = link;
    this.refresh();
    window.clearInterval(this.timer);
    this.timer = link ? window.setInterval(() => this._listen(), 400) : null;
  }

  /** Put each received track on its tile (called on every track and every `streams`). */
  refresh() {
    const link = this.link;
    if (!link) return;
    if (this.items === null) {
      this._show(this.tiles.get(this.main.key), link.remote.getTracks());
      return;
    }
    const groups = new Map();
    for (const item of this.items) {
      const track = link.receivedTrack(item.mid);
      if (!track || item.participant === this.self.key) continue;
      const id = item.source === "screen" ? `${item.participant}#screen` : item.participant;
      if (!groups.has(id)) groups.set(id, []);
      groups.get(id).push(track);
    }
    for (const [id, tracks] of groups) {
      if (!this.tiles.has(id)) this._create(id);
      this._show(this.tiles.get(id), tracks);
    }
    for (const [id, entry] of this.tiles) {
      if (groups.has(id)) continue;
      if (id.endsWith("#screen")) this._remove(id);
      else this._show(entry, []);
    }
    this.layout();
  }

  _show(entry, tracks) {
    if (!entry) return;
    if (!entry.stream) entry.stream = new MediaStream();
    const stream = entry.stream;
    for (const old of stream.getTracks()) if (!tracks.includes(old)) stream.removeTrack(old);
    for (const track of tracks) if (!stream.getTracks().includes(track)) stream.addTrack(track);
    if (entry.video.srcObject !== stream) entry.video.srcObject = stream;
    if (tracks.length) entry.video.play().catch(() => {});
  }

  _create(id) {
    const screen = id.endsWith("#screen");
    const key = screen ? id.slice(0, -"#screen".length) : id;
    const video = el("video", { autoplay: true, playsinline: true });
    const label = el("p", { class: "tile-label" });
    const tile = el(
      "div",
      screen
        ? { class: "tile screen", "data-testid": "screen-tile", dataset: { participant: key } }
        : { class: "tile", "data-testid": "participant-tile", dataset: { participant: key } },
      video,
      label,
    );
    if (screen) video.muted = true; // a screen carries no sound of its own
    const entry = { tile, video, stream: null, label, paused: null, state: {} };
    this.tiles.set(id, entry);
    this.stage.append(tile);
    this._label(entry, key, screen ? `${this.name(key)}'s screen` : null);
    return entry;
  }

  _remove(id) {
    const entry = this.tiles.get(id);
    if (!entry || id === this.main.key) return;
    entry.video.srcObject = null;
    entry.tile.remove();
    this.tiles.delete(id);
  }

  _label(entry, key, title = null) {
    if (!entry?.label) return;
    const name = title || this.name(key);
    const screen = entry.tile.classList.contains("screen");
    const role = key === this.self.key || screen ? null : roleWords(key);
    const state = entry.state || {};
    const flags = [];
    if (state.microphone === "off") flags.push("Muted");
    if (state.camera === "off") flags.push("Camera off");
    const parts = [el("span", { class: "tile-name", text: name })];
    if (role) parts.push(el("span", { class: "tile-role", text: role }));
    for (const flag of flags) parts.push(el("span", { class: "tile-flag", text: flag }));
    entry.label.replaceChildren(...parts);
    if (entry.video && !screen && key !== this.self.key) {
      entry.video.setAttribute("aria-label", `${name}, ${role}`);
    } else if (screen) {
      entry.video.setAttribute("aria-label", name);
    }
  }

  /** A person's camera/microphone as their page said ({camera, microphone}: "on" | "off"). */
  setState(key, data) {
    const entry = this.tiles.get(key);
    if (!entry) return;
    entry.state = { ...entry.state, ...data };
    this._label(entry, key);
  }

  /** The words over a tile whose video does not come (sound only), or null. */
  setPaused(key, text) {
    const entry = this.tiles.get(key);
    if (!entry || key === this.main.key) return; // the main tile has its own (SoundOnlyView)
    if (!text) {
      entry.paused?.remove();
      entry.paused = null;
      return;
    }
    if (!entry.paused) {
      entry.paused = el("div", { class: "paused-tile", "data-testid": "tile-paused" });
      entry.tile.insertBefore(entry.paused, entry.label);
    }
    const name = this.name(key);
    entry.paused.replaceChildren(
      el("span", { class: "avatar", "aria-hidden": "true", text: initials(name) }),
      el("p", { class: "paused-long", text }),
      el("p", { class: "paused-short", "aria-hidden": "true", text: "Sound only" }),
    );
  }

  /** Large: a shared screen, else the main remote person; everyone else in the strip. */
  layout() {
    const large = [...this.tiles.keys()].find((id) => id.endsWith("#screen")) || this.main.key;
    for (const [id, entry] of this.tiles) entry.tile.classList.toggle("large", id === large);
    // In the strip: every tile but the large one, oneself included.
    this.stage.dataset.layout = this.tiles.size === 1 ? "pair" : "group";
    this.stage.dataset.strip = String(Math.min(this.tiles.size, 4));
    this.stage.dataset.people = String(this.others().length + 1);
  }

  /** Who is speaking: RTP's audio level of each person's sound, a ring on their tile. */
  _listen() {
    const link = this.link;
    if (!link || this.items === null) return;
    const now = performance.now();
    for (const item of this.items) {
      if (item.kind !== "audio") continue;
      const receiver = link.receiver(item.mid);
      const source = receiver?.getSynchronizationSources?.()[0];
      if (source && (source.audioLevel || 0) > SPEAKING_LEVEL) this.speaking.set(item.participant, now + SPEAKING_MS);
    }
    for (const [key, entry] of this.tiles) {
      entry.tile.classList.toggle("speaking", (this.speaking.get(key) || 0) > now);
    }
  }

  /** The call is over: extra tiles go, the page's own tiles stay (empty). */
  reset() {
    window.clearInterval(this.timer);
    this.timer = null;
    this.link = null;
    this.items = null;
    this.speaking.clear();
    for (const id of [...this.tiles.keys()]) this._remove(id);
    const main = this.tiles.get(this.main.key);
    main.state = {};
    if (main.stream) for (const track of main.stream.getTracks()) main.stream.removeTrack(track);
    for (const key of [...this.people.keys()]) if (key !== this.main.key) this.people.delete(key);
    this._label(main, this.main.key);
    this.layout();
  }
}

/**
 * Sound only, said plainly for everyone in the call: the status (one line per person whose
 * video does not come, and one's own), the page's own tile over the main remote person
 * (`view`, a SoundOnlyView) and the words over every other tile.
 */
export function renderSoundOnly({ tiles, view, me, chose, states }) {
  const mainKey = tiles.main.key;
  const name = tiles.name(mainKey);
  const words = soundOnlyWords({ me, other: mainKey, name, chose, states });
  const own = soundOnlyWords({ me, other: null, name: "", chose, states }).tile;
  const lines = [...words.lines];
  for (const key of tiles.others()) {
    if (key === mainKey) continue;
    const about = otherWords({ other: key, name: tiles.name(key), states });
    if (about.line) lines.push(about.line);
    tiles.setPaused(key, own || about.tile);
  }
  view.show({ lines, tile: words.tile, name });
}
