// The camera and microphone: asking for them with a fallback to audio only, a level meter,
// and the sounds the pages make (alerts, the speaker test), all from Web Audio: no files.

const AUDIO = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
const VIDEO = {
  width: { ideal: 640 },
  height: { ideal: 480 },
  frameRate: { ideal: 24, max: 30 },
  facingMode: "user",
};

/** "denied", "missing", "busy" or "error" for a getUserMedia failure. */
function problemOf(error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") return "denied";
  if (name === "NotFoundError" || name === "OverconstrainedError") return "missing";
  if (name === "NotReadableError" || name === "AbortError") return "busy";
  return "error";
}

/**
 * The camera and microphone, or as much of them as we may use.
 * Resolves to {stream, camera, microphone}: each "ok" or a problem ("denied", "missing",
 * "busy", "unsupported", "error"); stream is null when neither could be opened.
 */
export async function openLocalMedia() {
  const media = navigator.mediaDevices;
  if (!media || !media.getUserMedia) {
    return { stream: null, camera: "unsupported", microphone: "unsupported" };
  }
  let cameraProblem;
  try {
    const stream = await media.getUserMedia({ audio: AUDIO, video: VIDEO });
    return { stream, camera: "ok", microphone: "ok" };
  } catch (error) {
    cameraProblem = problemOf(error);
  }
  let microphoneProblem;
  try {
    const stream = await media.getUserMedia({ audio: AUDIO });
    return { stream, camera: cameraProblem, microphone: "ok" };
  } catch (error) {
    microphoneProblem = problemOf(error);
  }
  try {
    const stream = await media.getUserMedia({ video: VIDEO });
    return { stream, camera: "ok", microphone: microphoneProblem };
  } catch (error) {
    return { stream: null, camera: problemOf(error), microphone: microphoneProblem };
  }
}

export function stopStream(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

// Web Audio ---------------------------------------------------------------------------------

let context = null;

/** The page's one AudioContext (browsers allow only a few). */
export function audioContext() {
  if (!context) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    context = new Context();
  }
  return context;
}

/** Browsers start audio only after a click or key press: call this from one. */
export function unlockAudio() {
  const ctx = audioContext();
  if (ctx && ctx.state === "suspended") ctx.resume().catch(() => {});
  return ctx;
}

export function audioUnlocked() {
  return Boolean(context && context.state === "running");
}

/** Play notes: [[frequency Hz, start s, length s], ...] as soft sine tones. */
function play(notes, volume = 0.2) {
  const ctx = audioContext();
  if (!ctx || ctx.state !== "running") return false;
  const start = ctx.currentTime + 0.02;
  for (const [frequency, at, length] of notes) {
    const oscillator = ctx.createOscillator();
    const gain = ctx.createGain();
    oscillator.type = "sine";
    oscillator.frequency.value = frequency;
    gain.gain.setValueAtTime(0, start + at);
    gain.gain.linearRampToValueAtTime(volume, start + at + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + at + length);
    oscillator.connect(gain).connect(ctx.destination);
    oscillator.start(start + at);
    oscillator.stop(start + at + length + 0.05);
  }
  return true;
}

/** A gentle rising chime: "it's your turn" / "a patient is waiting". */
export function chime() {
  return play([
    [659.25, 0, 0.6],
    [783.99, 0.18, 0.6],
    [1046.5, 0.36, 0.9],
  ]);
}

/** The speaker test: a short tune, loud enough to notice. */
export function speakerTest() {
  unlockAudio();
  return play(
    [
      [523.25, 0, 0.35],
      [659.25, 0.3, 0.35],
      [783.99, 0.6, 0.35],
      [1046.5, 0.9, 0.7],
    ],
    0.3,
  );
}

/** A microphone level meter: calls onLevel(0..1) about 15 times a second while running. */
export class LevelMeter {
  constructor(stream, onLevel) {
    this.onLevel = onLevel;
    this.timer = null;
    this.source = null;
    const track = stream && stream.getAudioTracks()[0];
    const ctx = audioContext();
    if (!track || !ctx) return;
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 512;
    this.source = ctx.createMediaStreamSource(new MediaStream([track]));
    this.source.connect(this.analyser);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.timer = window.setInterval(() => this._measure(), 66);
  }

  _measure() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const value of this.samples) sum += value * value;
    const rms = Math.sqrt(sum / this.samples.length);
    // Speech sits around -30 dBFS; map -60..0 dBFS onto 0..1.
    const db = 20 * Math.log10(Math.max(rms, 1e-6));
    this.onLevel(Math.min(1, Math.max(0, (db + 60) / 60)));
  }

  stop() {
    window.clearInterval(this.timer);
    if (this.source) this.source.disconnect();
    this.source = null;
  }
}
