// Chat in the call, on the visit page and the console alike: a collapsible panel under the
// call's controls (never over the video), its messages in a polite live region (role="log"),
// an unread count on its button while it is closed.
//
// Sending: Enter sends, Shift+Enter starts a new line. A message shows once the server has kept
// it (the server sends it back to everyone in the call, the sender too); a refusal (too many at
// once, the server busy) puts the text back and says why. Text only ever goes in through
// textContent.
//
// History: what was said before shows in order, ahead of the live messages; each message shows
// once (by its `id`, which the live `chat` message carries too), and earlier messages neither
// count as unread nor are announced. Two sources:
// - `history(callId)` (the console: `GET /appointments/{id}/chat`, a staff read the server
//   audits, so never a read nobody needs): on `start`, only when the panel lacks messages: the
//   server's `call` says how many the call has (`chat_count`), and the panel reads the history
//   when it shows fewer (a reload mid-call, a reconnection that missed some; not a first take
//   of a call without messages, nor a reconnection that missed none). Without a count, once per
//   call shown (again on the next start if the read failed).
// - `earlier(callId, items)`: the server's `chat_history` (the visit page: sent after
//   `admitted` when the page comes back into a running call, or a guest is admitted).

import { el } from "./dom.js";
import { formatTime } from "./time.js";

// The contract's limit, in characters (the server checks it too).
const MAX_TEXT = 2000;
// What a refusal of a message just sent means, for its sender.
const REFUSALS = {
  rate_limited: "Too many messages at once. Wait a moment, then send again.",
  unavailable: "The message could not be sent just now. Try again.",
  not_in_call: "Messages can be sent only during the call.",
  invalid_message: "That message could not be sent: it is empty or longer than 2,000 characters.",
};

let panels = 0;

export class ChatPanel {
  /**
   * container: the element the panel is built in.
   * send(text): sends the chat message; false when the socket is down.
   * heading: the level of the panel's heading in its page ("h2", "h3").
   * history(callId): optional; resolves to the call's messages so far, oldest first.
   */
  constructor({ container, send, heading = "h2", history = null }) {
    panels += 1;
    const id = (name) => `chat-${name}${panels > 1 ? `-${panels}` : ""}`;
    this.send = send;
    this.me = null;
    this.callId = null;
    this.unread = 0;
    this.pending = null;
    this.history = history;
    this.shown = new Set(); // ids of the messages on the list
    this.loaded = null; // the call whose history was asked for (and not refused)
    this.reading = null; // the call whose history is being read

    this.count = el("span", { class: "tag chat-unread", hidden: true });
    this.toggleButton = el(
      "button",
      {
        id: id("toggle"),
        type: "button",
        class: "chat-toggle",
        "data-testid": "chat-toggle",
        "aria-expanded": "false",
        "aria-controls": id("body"),
      },
      "Chat ",
      this.count,
    );
    // The list inside the live region (role="log" on the list itself would unmake the list).
    this.list = el("ol", { class: "chat-list" });
    this.log = el(
      "div",
      {
        id: id("log"),
        class: "chat-log",
        role: "log",
        "aria-live": "polite",
        "aria-label": "Chat messages",
        tabindex: "0",
      },
      this.list,
    );
    this.empty = el("p", { class: "muted small chat-empty", text: "No messages yet." });
    this.input = el("textarea", {
      id: id("input"),
      class: "chat-input",
      "data-testid": "chat-input",
      maxlength: String(MAX_TEXT),
      rows: "2",
      autocomplete: "off",
      "aria-describedby": id("hint"),
    });
    this.sendButton = el("button", { id: id("send"), type: "submit", class: "primary", "data-testid": "chat-send", text: "Send" });
    this.status = el("p", { class: "form-error chat-status", role: "status" });
    // Said while the panel is closed (its log is hidden then, so it announces nothing).
    this.notice = el("p", { class: "visually-hidden", role: "status" });
    this.form = el(
      "form",
      { class: "chat-form", novalidate: true },
      el("label", { for: id("input"), text: "Message to everyone in the call" }),
      el("p", { id: id("hint"), class: "muted small", text: "Enter sends; Shift+Enter starts a new line." }),
      el("div", { class: "chat-compose" }, this.input, this.sendButton),
      this.status,
    );
    this.body = el("div", { id: id("body"), class: "chat-body", hidden: true }, this.empty, this.log, this.form);
    this.root = el(
      "section",
      { class: "chat", "aria-labelledby": id("title") },
      el(heading, { id: id("title"), class: "chat-title" }, this.toggleButton),
      this.notice,
      this.body,
    );
    container.replaceChildren(this.root);

    this.toggleButton.addEventListener("click", () => this.setOpen(this.body.hidden));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
  }

  get isOpen() {
    return !this.body.hidden;
  }

  /**
   * A call begins (or goes on, after a reconnection): `me` is this person's participant key;
   * `count`, when the server says it, how many messages the call's chat has.
   */
  start(callId, me, count = null) {
    if (callId !== this.callId) {
      this.list.replaceChildren();
      this.empty.hidden = false;
      this.unread = 0;
      this.renderCount();
      this.status.textContent = "";
      this.pending = null;
      this.shown = new Set();
    }
    this.callId = callId;
    this.me = me;
    this.root.hidden = false;
    this.input.disabled = this.sendButton.disabled = false;
    if (this.history && this.lacks(callId, count)) this.loadHistory(callId);
  }

  /** Whether the call has messages this panel does not show (each read is audited). */
  lacks(callId, count) {
    if (this.reading === callId) return false;
    if (typeof count === "number") return count > this.shown.size;
    return this.loaded !== callId;
  }

  async loadHistory(callId) {
    this.loaded = this.reading = callId;
    let items;
    try {
      items = await this.history(callId);
    } catch {
      if (this.loaded === callId) this.loaded = null; // the next start tries again
      return; // the live messages go on
    } finally {
      if (this.reading === callId) this.reading = null;
    }
    this.earlier(callId, items);
  }

  /** What was said in this call before: placed by time among what is shown, each once. */
  earlier(callId, items) {
    if (callId !== this.callId) return;
    for (const message of items || []) this.show(message, { earlier: true });
  }

  /** The call is over: what was said stays readable, nothing more can be sent. */
  stop() {
    this.input.disabled = this.sendButton.disabled = true;
    this.pending = null;
  }

  setOpen(open) {
    this.body.hidden = !open;
    this.toggleButton.setAttribute("aria-expanded", String(open));
    this.root.classList.toggle("is-open", open);
    if (open) {
      this.unread = 0;
      this.renderCount();
      this.input.focus();
      this.scrollToEnd();
    }
  }

  submit() {
    const text = this.input.value;
    if (!text.trim()) {
      this.status.textContent = "Type a message first.";
      return;
    }
    if (text.length > MAX_TEXT) {
      this.status.textContent = REFUSALS.invalid_message;
      return;
    }
    if (!this.send(text)) {
      this.status.textContent = "Not connected just now. Your message was not sent; try again in a moment.";
      return;
    }
    this.status.textContent = "";
    this.pending = text;
    this.input.value = "";
  }

  /** A `chat` message from the server (this person's own ones too). */
  receive(message) {
    this.show(message, { earlier: false });
  }

  show(message, { earlier }) {
    if (message.id) {
      if (this.shown.has(message.id)) return;
      this.shown.add(message.id);
    }
    const from = message.from || {};
    const mine = from.participant !== undefined && from.participant === this.me;
    if (mine && !earlier && this.pending === message.text) this.pending = null;
    const when = message.sent_at ? formatTime(message.sent_at) : "";
    const who = mine ? `${from.name || "You"} (you)` : from.name || "Someone";
    const item = el(
      "li",
      {
        class: mine ? "chat-message mine" : "chat-message",
        "data-testid": "chat-message",
        "data-at": String(Date.parse(message.sent_at) || 0),
      },
      el(
        "p",
        { class: "chat-meta" },
        el("span", { class: "chat-from", text: who }),
        " ",
        el("time", { datetime: message.sent_at || undefined, text: when }),
      ),
      el("p", { class: "chat-text", text: message.text || "" }),
    );
    this.empty.hidden = true;
    if (earlier) {
      // Before any message shown that was sent later (live ones that came during the fetch).
      const at = Number(item.dataset.at);
      const later = [...this.list.children].find((other) => Number(other.dataset.at) > at);
      this.list.insertBefore(item, later || null);
      if (this.isOpen) this.scrollToEnd();
      return;
    }
    this.list.append(item);
    if (this.isOpen) this.scrollToEnd();
    else if (!mine) {
      this.unread += 1;
      this.renderCount();
      this.notice.textContent = `New message from ${from.name || "someone"}.`;
    }
  }

  /** An `error` from the server: true when it refused the message just sent (said here). */
  refused(code) {
    if (this.pending === null || !(code in REFUSALS)) return false;
    if (!this.input.value) this.input.value = this.pending;
    this.pending = null;
    this.status.textContent = REFUSALS[code];
    return true;
  }

  renderCount() {
    this.count.hidden = this.unread === 0;
    this.count.textContent = this.unread === 0 ? "" : `${this.unread} new`;
  }

  scrollToEnd() {
    this.log.scrollTop = this.log.scrollHeight;
  }
}
