// WebRTC with the clinic's relay: one peer connection per (re)negotiation, call quality from
// getStats, and the device check's connection test.
//
// The browser always offers first (audio and video m-lines, sendrecv where it has a track,
// recvonly where it has none), candidates trickle both ways, and the relay may later send an
// offer of its own (to add a subscriber's track), which is answered. ICE servers are always
// the ones the server sent: a peer connection never falls back to a default STUN server.

/** Build an RTCPeerConnection configuration from the server's ice_servers. */
export function rtcConfiguration(iceServers) {
  return {
    iceServers: Array.isArray(iceServers) ? iceServers : [],
    bundlePolicy: "max-bundle",
    rtcpMuxPolicy: "require",
  };
}

export class MediaLink {
  /**
   * iceServers: from the server; stream: the local MediaStream (may be null or audio-only);
   * send(message): negotiation out ({type: offer|answer|candidate, ...});
   * onRemoteTrack(stream): a track was added to the remote stream;
   * onState(connectionState); screen: a shared screen's track to send from the start (or null).
   */
  constructor({ iceServers, stream, send, onRemoteTrack, onState, screen = null }) {
    this.send = send;
    this.onRemoteTrack = onRemoteTrack || (() => {});
    this.onState = onState || (() => {});
    this.remote = new MediaStream();
    this.pendingCandidates = [];
    this.closed = false;
    this.previous = null;
    this.pc = new RTCPeerConnection(rtcConfiguration(iceServers));
    const pc = this.pc;
    this.videoSender = null; // our camera's sender, when we have a camera
    this.audioSender = null; // our microphone's, when we have one
    for (const kind of ["audio", "video"]) {
      const track = stream ? stream.getTracks().find((t) => t.kind === kind) : null;
      if (track) {
        const transceiver = pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
        if (kind === "video") this.videoSender = transceiver.sender;
        else this.audioSender = transceiver.sender;
      } else pc.addTransceiver(kind, { direction: "recvonly" });
    }
    this.screenTransceiver = null; // the second outgoing video: a shared screen
    this.wantOffer = false; // an offer of ours is due (the relay's offer came first)
    this.queue = Promise.resolve(); // negotiation steps, one after the other
    if (screen) this._addScreen(screen);
    pc.ontrack = (event) => {
      const track = event.track;
      for (const old of this.remote.getTracks()) {
        // One track per kind is shown: the newest replaces an earlier one that ended.
        if (old.kind === track.kind && old.readyState === "ended") this.remote.removeTrack(old);
      }
      if (!this.remote.getTracks().includes(track)) this.remote.addTrack(track);
      this.onRemoteTrack(this.remote, track);
    };
    pc.onicecandidate = (event) => {
      if (this.closed) return;
      this.send({ type: "candidate", candidate: event.candidate ? event.candidate.toJSON() : null });
    };
    pc.onconnectionstatechange = () => {
      if (!this.closed) this.onState(pc.connectionState);
    };
  }

  start() {
    return this._serial(() => this._offer());
  }

  async _offer() {
    if (this.closed) return;
    const pc = this.pc;
    const offer = await pc.createOffer();
    // The header extensions numbered as the relay numbers them (and, later, as negotiated).
    const sdp = sameExtensionIds(offer.sdp, [pc.currentLocalDescription?.sdp, pc.currentRemoteDescription?.sdp, RELAY_EXTENSION_IDS]);
    await pc.setLocalDescription({ type: "offer", sdp });
    this.send({ type: "offer", sdp: this.pc.localDescription.sdp });
  }

  /**
   * Offer again (after our own transceivers changed). When the relay's offer is in flight,
   * ours waits until that one is answered.
   */
  renegotiate() {
    return this._serial(() => this._reoffer());
  }

  async _reoffer() {
    if (this.closed) return;
    if (this.pc.signalingState !== "stable") {
      this.wantOffer = true;
      return;
    }
    this.wantOffer = false;
    await this._offer();
  }

  /** The track on the transceiver the relay calls `mid`, as received (null: none such). */
  receivedTrack(mid) {
    return this.receiver(mid)?.track || null;
  }

  receiver(mid) {
    if (this.closed) return null;
    const transceiver = this.pc.getTransceivers().find((t) => t.mid === mid);
    return transceiver ? transceiver.receiver : null;
  }

  _addScreen(track) {
    this.screenTransceiver = this.pc.addTransceiver(track, { direction: "sendonly" });
  }

  /** Send a shared screen as a second video (null: stop sending it); negotiates again. */
  shareScreen(track) {
    return this._serial(async () => {
      if (this.closed) return;
      const transceiver = this.screenTransceiver;
      if (track && !transceiver) this._addScreen(track);
      else if (transceiver) {
        await transceiver.sender.replaceTrack(track);
        transceiver.direction = track ? "sendonly" : "inactive";
      } else return;
      await this._reoffer();
    });
  }


  /**
   * A negotiation message from the relay. One at a time, in order: an offer's steps must not
   * interleave with the next message's (or with an offer of ours).
   */
  handle(message) {
    return this._serial(() => this._handle(message));
  }

  _serial(step) {
    const next = this.queue.then(step);
    this.queue = next.catch(() => {});
    return next;
  }

  async _handle(message) {
    if (this.closed) return;
    const pc = this.pc;
    if (message.type === "answer") {
      if (pc.signalingState !== "have-local-offer") return;
      await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      await this._flushCandidates();
      if (this.wantOffer) await this._reoffer();
    } else if (message.type === "offer") {
      // The relay's offer met one of ours: the browser rolls ours back; it goes again after.
      if (pc.signalingState === "have-local-offer") this.wantOffer = true;
      const sdp = sameExtensionIds(message.sdp, [
        pc.currentLocalDescription?.sdp,
        pc.currentRemoteDescription?.sdp,
        pc.pendingLocalDescription?.sdp, // our first offer, still unanswered
      ]);
      await pc.setRemoteDescription({ type: "offer", sdp });
      await this._flushCandidates();
      await pc.setLocalDescription(await pc.createAnswer());
      this.send({ type: "answer", sdp: pc.localDescription.sdp });
      // An offer of ours that met the relay's (rolled back by the browser) goes now.
      if (this.wantOffer) await this._reoffer();
    } else if (message.type === "candidate") {
      const candidate = message.candidate;
      if (!candidate || !candidate.candidate) return;
      if (!pc.remoteDescription) this.pendingCandidates.push(candidate);
      else await pc.addIceCandidate(candidate).catch(() => {});
    }
  }

  /**
   * Send this camera track, or no video at all (null: "sound only"). The m-line and its
   * direction stay as negotiated, so no new offer is needed either way.
   */
  async sendVideo(track) {
    const sender = this.videoSender;
    if (this.closed || !sender || sender.track === track) return;
    await sender.replaceTrack(track);
  }

  /** At most this many bits a second of sound (null: the browser's own choice). */
  async limitAudio(bps) {
    const sender = this.audioSender;
    if (this.closed || !sender) return;
    const parameters = sender.getParameters();
    const encoding = parameters.encodings && parameters.encodings[0];
    if (!encoding || (encoding.maxBitrate ?? null) === bps) return;
    if (bps === null) delete encoding.maxBitrate;
    else encoding.maxBitrate = bps;
    await sender.setParameters(parameters);
  }

  async _flushCandidates() {
    const pending = this.pendingCandidates.splice(0);
    for (const candidate of pending) await this.pc.addIceCandidate(candidate).catch(() => {});
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.pc.ontrack = this.pc.onicecandidate = this.pc.onconnectionstatechange = null;
    this.pc.close();
  }

  /** Round trip, loss and bit rates since the previous sample, and a verdict for people. */
  async sample() {
    if (this.closed) return null;
    const report = await this.pc.getStats();
    let pairId = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    let rttMs = null;
    let bytesIn = 0;
    let bytesOut = 0;
    let lost = 0;
    let received = 0;
    report.forEach((s) => {
      if (s.type === "candidate-pair" && (s.id === pairId || (!pairId && s.nominated))) {
        if (typeof s.currentRoundTripTime === "number") rttMs = s.currentRoundTripTime * 1000;
      } else if (s.type === "inbound-rtp") {
        bytesIn += s.bytesReceived || 0;
        lost += Math.max(0, s.packetsLost || 0);
        received += s.packetsReceived || 0;
      } else if (s.type === "outbound-rtp") {
        bytesOut += s.bytesSent || 0;
      }
    });
    const now = performance.now();
    const previous = this.previous;
    this.previous = { now, bytesIn, bytesOut, lost, received };
    if (!previous) return { rttMs, lossPct: null, kbpsIn: null, kbpsOut: null, level: "unknown" };
    const seconds = Math.max(0.001, (now - previous.now) / 1000);
    const newLost = lost - previous.lost;
    const newReceived = received - previous.received;
    const lossPct = newLost + newReceived > 0 ? (100 * newLost) / (newLost + newReceived) : 0;
    const kbpsIn = ((bytesIn - previous.bytesIn) * 8) / 1000 / seconds;
    const kbpsOut = ((bytesOut - previous.bytesOut) * 8) / 1000 / seconds;
    return { rttMs, lossPct, kbpsIn, kbpsOut, level: qualityLevel(rttMs, lossPct, this.pc.connectionState) };
  }
}

// The relay (aiortc) numbers RTP header extensions this way in every offer it makes.
const RELAY_EXTENSION_IDS = [
  "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
  "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
  "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
].join("\r\n");

const EXTMAP = /^a=extmap:(\d+)(\/\w+)? (\S+)(.*)$/;

/**
 * An offer's RTP header extensions numbered as `established` numbers them.
 *
 * The relay (aiortc) numbers header extensions afresh in every offer it makes (mid 1, audio
 * level 2, abs-send-time 3), while Chrome numbers its own differently (audio level 1, ..., mid
 * 4). Chrome refuses an offer that gives a number a new meaning ("RTP extension ID reassignment
 * not supported"), so every relay offer adding a person failed; and aiortc reads the bundle's
 * packets with one map, which its own offer resets to its numbering until the answer comes, so
 * packets numbered Chrome's way were misread (an aiortc receive loop died on it). So the
 * browser's first offer takes the relay's numbers (RELAY_EXTENSION_IDS), and every later offer,
 * ours or the relay's, the ones this connection already uses. Each extension gets the number
 * it has in `established` (the first mention wins), one new to it a number not in use. An
 * offer that already agrees is returned unchanged.
 */
export function sameExtensionIds(sdp, established) {
  const known = new Map(); // uri -> id
  for (const text of established) {
    for (const line of String(text || "").split(/\r?\n/)) {
      const match = EXTMAP.exec(line);
      if (match && !known.has(match[3])) known.set(match[3], Number(match[1]));
    }
  }
  if (!known.size) return sdp;
  const used = new Set(known.values());
  const fresh = new Map(); // uri -> id, for extensions the connection has not used yet
  const idFor = (uri) => {
    if (known.has(uri)) return known.get(uri);
    if (!fresh.has(uri)) {
      let id = 1;
      while (used.has(id)) id += 1;
      used.add(id);
      fresh.set(uri, id);
    }
    return fresh.get(uri);
  };
  return sdp
    .split("\r\n")
    .map((line) => {
      const match = EXTMAP.exec(line);
      return match ? `a=extmap:${idFor(match[3])}${match[2] || ""} ${match[3]}${match[4]}` : line;
    })
    .join("\r\n");
}

/** "good", "fair" or "poor" from round trip (ms) and loss (%). */
export function qualityLevel(rttMs, lossPct, connectionState = "connected") {
  if (connectionState !== "connected") return "poor";
  if ((rttMs ?? 0) > 400 || (lossPct ?? 0) > 8) return "poor";
  if ((rttMs ?? 0) > 200 || (lossPct ?? 0) > 3) return "fair";
  return "good";
}

function waitFor(pc, event, done, timeoutMs) {
  return new Promise((resolve) => {
    if (done()) {
      resolve(true);
      return;
    }
    const timer = window.setTimeout(() => {
      pc.removeEventListener(event, check);
      resolve(false);
    }, timeoutMs);
    function check() {
      if (done()) {
        window.clearTimeout(timer);
        pc.removeEventListener(event, check);
        resolve(true);
      }
    }
    pc.addEventListener(event, check);
  });
}

/**
 * Can media reach the relay, and how? Resolves to "direct" (a host or server-reflexive pair
 * connected), "turn" (only through a TURN relay), "failed" (nothing within the time limit) or
 * "unknown" (the server offers no test). exchange(offerSdp) resolves to the answer's SDP, or
 * null when the server has no connection test.
 */
export async function connectionTest({ iceServers, exchange, timeoutMs = 10_000 }) {
  let pc;
  try {
    pc = new RTCPeerConnection(rtcConfiguration(iceServers));
  } catch {
    return "failed";
  }
  try {
    pc.addTransceiver("audio", { direction: "recvonly" });
    await pc.setLocalDescription(await pc.createOffer());
    // The test's offer goes over plain HTTP, so it carries its candidates in the SDP.
    await waitFor(pc, "icegatheringstatechange", () => pc.iceGatheringState === "complete", 4000);
    const answer = await exchange(pc.localDescription.sdp);
    if (answer === null) return "unknown";
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    const connected = await waitFor(
      pc,
      "connectionstatechange",
      () => pc.connectionState === "connected" || pc.connectionState === "failed",
      timeoutMs,
    );
    if (!connected || pc.connectionState !== "connected") return "failed";
    return await pathKind(pc);
  } catch {
    return "failed";
  } finally {
    pc.close();
  }
}

async function pathKind(pc) {
  const report = await pc.getStats();
  let pair = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId);
  });
  if (!pair) {
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
  }
  if (!pair) return "direct";
  const local = report.get(pair.localCandidateId);
  const remote = report.get(pair.remoteCandidateId);
  const relayed = [local, remote].some((c) => c && c.candidateType === "relay");
  return relayed ? "turn" : "direct";
}
