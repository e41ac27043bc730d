// A WebSocket that comes back by itself: backoff with jitter, a heartbeat that notices a
// dead connection, and an immediate retry when the browser says the network is back.
//
// The server keeps a dropped patient's place (and call) for a grace period, so reconnecting
// quickly is what keeps a visit going through a network change.

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
const PING_EVERY_MS = 10_000;
// No message at all (a pong at least) for this long: the connection is dead.
const SILENCE_LIMIT_MS = 25_000;

export class Channel {
  /**
   * url: a function returning the URL for each attempt (credentials may change).
   * onOpen(socket), onMessage(message), onStatus("connecting"|"open"|"reconnecting"|"closed", detail)
   * retry(closeEvent): whether to come back after this close (default: yes).
   */
  constructor({ url, onOpen, onMessage, onStatus, retry }) {
    this.url = url;
    this.onOpen = onOpen || (() => {});
    this.onMessage = onMessage || (() => {});
    this.onStatus = onStatus || (() => {});
    this.retry = retry || (() => true);
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.heartbeat = null;
    this.lastHeard = 0;
    this.stopped = false;
    this.everOpened = false;
    this._online = () => this._networkBack();
    this._offline = () => this._drop("offline");
    window.addEventListener("online", this._online);
    window.addEventListener("offline", this._offline);
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  /** Close for good (no reconnecting). */
  stop(code = 1000) {
    this.stopped = true;
    window.clearTimeout(this.timer);
    window.clearInterval(this.heartbeat);
    window.removeEventListener("online", this._online);
    window.removeEventListener("offline", this._offline);
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onclose = socket.onmessage = socket.onerror = socket.onopen = null;
      try {
        socket.close(code);
      } catch {
        // Already closing.
      }
    }
    this._setStatus("closed");
  }

  /** Send a message now; false when the socket is not open (the caller may retry later). */
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  _setStatus(status, detail) {
    this.onStatus(status, detail);
  }

  async _connect() {
    if (this.stopped) return;
    this._setStatus(this.attempt === 0 && !this.everOpened ? "connecting" : "reconnecting");
    let url;
    try {
      url = await this.url();
    } catch (error) {
      this._setStatus("closed", error);
      return;
    }
    if (this.stopped) return;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => {
      this.everOpened = true;
      this.lastHeard = Date.now();
      this._startHeartbeat();
      this._setStatus("open");
      this.onOpen(socket);
    };
    socket.onmessage = (event) => {
      this.lastHeard = Date.now();
      // A successful exchange: the next drop starts the backoff from the beginning.
      this.attempt = 0;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message && message.type === "pong") return;
      this.onMessage(message);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      window.clearInterval(this.heartbeat);
      if (this.stopped) return;
      if (!this.retry(event)) {
        this.stopped = true;
        this._setStatus("closed", event);
        return;
      }
      this._schedule();
    };
  }

  _schedule() {
    window.clearTimeout(this.timer);
    const base = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    const delay = base * (0.8 + Math.random() * 0.4);
    this._setStatus("reconnecting");
    this.timer = window.setTimeout(() => this._connect(), delay);
  }

  /** The connection is gone (or cannot be trusted): drop it now and reconnect. */
  _drop(reason) {
    if (this.stopped) return;
    const socket = this.socket;
    if (socket) {
      this.socket = null;
      socket.onclose = socket.onmessage = socket.onerror = socket.onopen = null;
      try {
        socket.close(4000, reason);
      } catch {
        // It was never open.
      }
    }
    window.clearInterval(this.heartbeat);
    this._schedule();
  }

  _networkBack() {
    // Already connected, or an attempt is under way: nothing to hurry.
    if (this.stopped || this.socket) return;
    window.clearTimeout(this.timer);
    this.attempt = 0;
    this._connect();
  }

  _startHeartbeat() {
    window.clearInterval(this.heartbeat);
    this.heartbeat = window.setInterval(() => {
      if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
        this._drop("silent");
        return;
      }
      this.send({ type: "ping" });
    }, PING_EVERY_MS);
  }
}
