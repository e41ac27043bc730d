// Sound only: the relay's `video` messages and the "Audio only" button, shown the same way on
// the patient's page and the console.
//
// The relay tells everyone in a call {type: "video", role, state: "paused" | "resumed",
// reason: "bandwidth" | "requested"}, where `role` is the participant whose INCOMING video
// changed. "bandwidth": the relay stopped sending video to `role` because their link cannot
// carry it; their page then stops sending its camera too (a link too thin to receive video is
// seldom wide enough to send it, and video sent into it drowns that person's own sound).
// "requested": `role` asked for sound only, so no video goes to them and theirs is not
// forwarded. Sound goes on in every case.

import { byId, el } from "./dom.js";

/** Whose incoming video the relay has paused, and why, as its `video` messages said. */
export class VideoStates {
  constructor() {
    this.paused = new Set(); // "role:reason"
  }

  /** Take a `video` message in; true when something changed. */
  apply(message) {
    const key = `${message.role}:${message.reason}`;
    const had = this.paused.has(key);
    if (message.state === "paused") this.paused.add(key);
    else if (message.state === "resumed") this.paused.delete(key);
    return had !== this.paused.has(key);
  }

  has(role, reason) {
    return this.paused.has(`${role}:${reason}`);
  }

  clear(role, reason) {
    this.paused.delete(`${role}:${reason}`);
  }

  reset() {
    this.paused.clear();
  }
}

/** Initials for a tile without a picture: "Dr. Ada Test" -> "AT" (titles ending in "." left out). */
export function initials(name) {
  const words = String(name || "")
    .split(/\s+/)
    .filter((w) => w && !w.endsWith("."));
  const picked = words.length > 1 ? [words[0], words[words.length - 1]] : words;
  return picked.map((w) => w[0].toUpperCase()).join("");
}

/**
 * What this page says, from its own side: `me` is its role, `other` the person on the other
 * side (called `name`), `chose` whether this person pressed "Audio only". Returns the lines
 * for the status and, when no video comes to this page, the words on the tile that replaces
 * the other person's (otherwise frozen) picture.
 */
export function soundOnlyWords({ me, other, name, chose, states }) {
  const lines = [];
  let tile = null;
  if (chose) {
    lines.push("You switched to sound only: your video is not sent and no video comes to you. Press “Audio only” again for video.");
    tile = "Sound only: you turned video off";
  } else if (states.has(me, "bandwidth")) {
    lines.push("Your connection is weak: sound only for now. The video comes back when your connection is better.");
    tile = "Your connection is weak: sound only for now";
  }
  const about = otherWords({ other, name, states });
  if (about.line) {
    lines.push(about.line);
    tile = tile || about.tile;
  }
  return { lines, tile };
}

/** What is said about one other person's video: a status line and the words on their tile. */
export function otherWords({ other, name, states }) {
  if (states.has(other, "requested")) {
    return { line: `${name} switched to sound only: no video either way for now.`, tile: `${name} switched to sound only` };
  }
  if (states.has(other, "bandwidth")) {
    return {
      line: `${name}'s connection is weak: sound only for now, both ways. The video comes back when it is better.`,
      tile: `${name}'s connection is weak: sound only for now`,
    };
  }
  return { line: null, tile: null };
}

// How long the tile may wait for the first frame of video that came back before it goes anyway.
const RETURN_WAIT_MS = 5000;

/**
 * The status under the call (a polite live region, always in the page so that it is heard)
 * and the tile over the other person's video. The <video> element is never paused: their
 * sound plays on underneath the tile.
 */
export class SoundOnlyView {
  constructor(video) {
    this.video = video;
    this.status = byId("video-status");
    this.tile = byId("remote-paused");
    this.text = byId("remote-paused-text");
    this.waiting = 0; // which wait for a returning frame is current
  }

  show({ lines, tile, name }) {
    const said = lines.join("\n");
    if (this.status.dataset.text !== said) {
      // Written only when it changed: a live region reads out every write.
      this.status.dataset.text = said;
      this.status.replaceChildren(
        ...lines.map((line) => el("p", { class: "notice", dataset: { kind: "warning" }, text: line })),
      );
    }
    byId("remote-paused-initials").textContent = initials(name);
    byId("remote-paused-name").textContent = name;
    const wait = ++this.waiting;
    if (tile) {
      this.text.textContent = tile;
      this.tile.hidden = false;
    } else if (!this.tile.hidden) {
      // Until video's first new frame is on screen the old one would look frozen: keep the
      // tile, saying that the picture is on its way.
      this.text.textContent = "Video is coming back…";
      const done = () => {
        if (wait === this.waiting) this.tile.hidden = true;
      };
      if (typeof this.video.requestVideoFrameCallback === "function") {
        this.video.requestVideoFrameCallback(done);
        window.setTimeout(done, RETURN_WAIT_MS);
      } else {
        done();
      }
    }
  }

  clear() {
    this.waiting += 1;
    this.status.dataset.text = "";
    this.status.replaceChildren();
    this.tile.hidden = true;
  }
}

/**
 * The camera in sound only: not sent (the sender carries no track) and disabled, so the self
 * view behind its words is dark; back to video, it is sent as the camera button left it.
 */
export function sendCamera({ stream, link, audioOnly, cameraOn }) {
  const camera = stream?.getVideoTracks()[0] || null;
  if (camera) camera.enabled = cameraOn && !audioOnly;
  link?.sendVideo(audioOnly ? null : camera).catch(() => {});
}

// On a weak link the sound is made smaller too: Opus at 16 kbit/s carries speech well, and with
// its packets' overhead takes about 40 of a 64 kbit/s link instead of about 55.
const WEAK_LINK_AUDIO_BPS = 16000;

// After the relay resumes video to a weak link, it is a try: the camera and the full sound
// wait this long, so a try that fails has not flooded the thin way up as well.
const LINK_RETURN_MS = 6000;

/**
 * Fit what this page sends to its link: while the relay says it is too weak for video (or
 * sound only was chosen) the camera is not sent, and on a weak link the sound is made smaller.
 * `current()` gives { audioOnly, states, stream, link, cameraOn } as they are now.
 */
export class LinkFitter {
  constructor(me, current) {
    this.me = me;
    this.current = current;
    this.timer = null;
  }

  /** After a `video` message: hold at once, or give back after LINK_RETURN_MS. */
  update() {
    window.clearTimeout(this.timer);
    if (this.current().states.has(this.me, "bandwidth")) this.fit();
    else this.timer = window.setTimeout(() => this.fit(), LINK_RETURN_MS);
  }

  fit() {
    const { audioOnly, states, stream, link, cameraOn } = this.current();
    const weak = states.has(this.me, "bandwidth");
    sendCamera({ stream, link, audioOnly: audioOnly || weak, cameraOn });
    link?.limitAudio(weak ? WEAK_LINK_AUDIO_BPS : null).catch(() => {});
  }
}

/** The words over one's own small picture: no camera, sound only by choice, or none. */
export function selfViewWords({ camera, audioOnly, noCamera }) {
  if (camera && camera !== "ok") return noCamera;
  if (audioOnly) return "Your camera is not sent";
  return null;
}
