// The conversation page: one websocket to /ws/conversations/<id>/, catching up after
// every (re)connect, and the composer. When the websocket cannot connect, the page goes
// on over HTTP: answers over Server-Sent Events, prompts and Stop as POSTs. What is
// exact about a stream's text (order, gaps, verification) lives in the streaming
// component's StreamClient; the DOM of the messages in Transcript.

import { StreamClient, isFinal, readEventStream } from "../streaming/stream-client.js";
import { Transcript } from "./transcript.js";

/** For an `error` frame without a detail; the server's details are written for people. */
const ERROR_TEXT = {
  too_many_active: "Too many answers are being written at once. Wait for one to finish.",
  prompt_too_long: "That message is too long.",
  prompt_empty: "Type a message first.",
  frame_too_large: "That message is too large to send.",
  unknown_stream: "That answer is no longer available.",
};
/** Error codes that refuse a prompt (it comes back to the composer); others, such as
 * unknown_stream, answer a resume or a cancel. */
const PROMPT_ERRORS = new Set([
  "prompt_empty", "prompt_too_long", "invalid_text", "too_many_active", "frame_too_large",
  "invalid_frame", "invalid_json", "unavailable", "csrf_failed",
]);
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
/** Consecutive failed connects after which the page goes on over HTTP meanwhile. */
const POLL_AFTER_FAILURES = 3;
const MESSAGES_POLL_MS = 4000;
const NOTICE_MS = 10000;
/** What a client id may hold (the server's rule: 1 to 64 of these). */
const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/** Full jitter on an exponential backoff: reconnecting tabs do not stampede the server. */
function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/** A new prompt's client id: a UUID where the browser makes them (secure contexts),
 * else 22 random characters of [A-Za-z0-9_-] (132 bits). */
export function newClientId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(22);
  if (globalThis.crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => ID_ALPHABET[b % 64]).join("");
}

/** The CSRF token for the page's POSTs: the template's meta tag, else Django's cookie. */
function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]')?.content;
  if (meta) return meta;
  const cookie = document.cookie.split("; ").find((c) => c.startsWith("csrftoken="));
  return cookie ? decodeURIComponent(cookie.slice("csrftoken=".length)) : "";
}

class ChatPage {
  constructor(root) {
    this.root = root;
    const $ = (selector) => root.querySelector(selector);
    this.el = {
      connection: $("#connection"),
      connectionLabel: $("#connection .connection-label"),
      connectionDetail: $("#connection .connection-detail"),
      notice: $("#notice"),
      noticeText: $("#notice .notice-text"),
      form: $("#composer"),
      prompt: $("#prompt"),
      send: $("#send"),
      stop: $("#stop"),
      hint: $("#composer-hint"),
    };
    this.hintText = this.el.hint.textContent;
    this.socket = null;
    this.attempt = 0;
    this.failures = 0;
    this.everOpened = false;
    this.signedOutState = false;
    this.reconnectTimer = null;
    this.countdownTimer = null;
    this.messagesPollTimer = null;
    this.learnedOnThisSocket = new Set();
    /** The websocket cannot connect: streams, prompts and Stop go over HTTP meanwhile. */
    this.httpMode = false;
    /**
     * Prompts sent whose messages have not come back yet, by client id: { text, clientId,
     * sentOn } (sentOn: the socket it went on, "http", or null once that socket closed
     * or the request failed: it is sent again, with its client id, when a connection
     * is back). `awaitingReply`: those sent on the current socket, in order, for the
     * error frame that refuses one.
     */
    this.pending = new Map();
    this.awaitingReply = [];
    /** Whether the last HTTP request for the messages got an answer: while the socket
     * is down, the page is "still updating" only if this one is true. */
    this.httpAnswers = false;

    this.transcript = new Transcript(root, { onRender: () => this.updateComposer() });
    const { streamUrl, streamEventsUrl, streamCancelUrl } = root.dataset;
    const urlOf = (template, id) => template.replace("__stream__", encodeURIComponent(id));
    this.cancelUrl = (id) => urlOf(streamCancelUrl, id);
    this.streams = new StreamClient({
      send: (frame) => this.send(frame),
      onUpdate: (s) => this.transcript.schedule(s),
      onFinal: (s) => this.onFinal(s),
      streamUrl: (id, after) => `${urlOf(streamUrl, id)}?after=${after}`,
      streamEventsUrl: (id, after) => `${urlOf(streamEventsUrl, id)}?after=${after}`,
    });
  }

  start() {
    for (const { streamId, ...state } of this.transcript.adopt()) {
      this.transcript.render(this.streams.follow(streamId, state));
    }
    this.bindUi();
    this.updateComposer();
    this.connect();
  }

  // --- the websocket -------------------------------------------------------------------

  connect() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    this.reconnectTimer = null;
    if (this.socket) return;
    const url = new URL(this.root.dataset.wsPath, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    if (this.httpMode) {
      this.el.connectionDetail.textContent = " · reconnecting…"; // still live over HTTP
    } else {
      this.setConnection(this.everOpened ? "reconnecting" : "connecting",
        this.everOpened ? "Reconnecting…" : "Connecting…");
    }
    let socket;
    try {
      socket = new WebSocket(url);
    } catch {
      this.onClose(null);
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => this.onOpen(socket));
    socket.addEventListener("message", (event) => {
      if (socket === this.socket) this.onFrame(event.data);
    });
    socket.addEventListener("close", () => this.onClose(socket));
  }

  get live() {
    return Boolean(this.socket && this.socket.readyState === WebSocket.OPEN);
  }

  send(frame) {
    if (!this.live) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  async onOpen(socket) {
    if (socket !== this.socket) return;
    this.attempt = 0;
    this.failures = 0;
    this.everOpened = true;
    this.learnedOnThisSocket = new Set();
    this.leaveHttpMode();
    this.setConnection("open", "Live");
    this.updateComposer();
    await this.catchUp(socket);
  }

  /** On every (re)connect: the messages created meanwhile, then resume what streams,
   * then send again the prompts whose messages never came. The socket is open first,
   * so nothing announced after the fetch is missed. */
  async catchUp(socket) {
    await this.refreshMessages();
    if (socket !== this.socket) return;
    for (const s of this.streams.streams.values()) {
      // A stream announced on this socket is followed by it already.
      if (!s.final && !this.learnedOnThisSocket.has(s.id)) this.streams.resume(s.id, { force: true });
    }
    this.resendPending();
  }

  onClose(socket) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.streams.connectionLost();
    this.awaitingReply = [];
    for (const entry of this.pending.values()) {
      if (entry.sentOn === socket) entry.sentOn = null; // its reply may be lost: send again
    }
    this.failures += 1;
    if (this.failures >= POLL_AFTER_FAILURES && !this.signedOutState) this.enterHttpMode();
    this.updateComposer();
    if (this.signedOutState) return;
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    const until = Date.now() + delay;
    const label = () => {
      const seconds = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      const countdown = seconds ? ` in ${seconds} s` : "…";
      if (this.httpMode && this.httpAnswers && this.streams.eventStreamsHealthy) {
        if (this.streams.polling) {
          // No EventSource in this browser: answers are polled, a second behind.
          this.setConnection("polling", "Offline, still updating", ` · reconnecting${countdown}`);
        } else {
          // Answers arrive as they are written, prompts and Stop go as POSTs.
          this.setConnection("http", "Live over HTTP", ` · reconnecting${countdown}`);
        }
      } else {
        // Nothing arrives, by socket or HTTP: say so, and when the next try is.
        this.setConnection("reconnecting", "Offline, reconnecting", countdown);
      }
    };
    label();
    this.countdownTimer = setInterval(label, 1000);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  /** Try now (the network is back, or the tab is shown again) rather than wait. */
  reconnectSoon() {
    if (!this.socket && this.reconnectTimer && !this.signedOutState) this.connect();
  }

  /** The label is a live region: it changes with the state, the countdown beside it
   * (hidden from screen readers) every second. */
  setConnection(state, label, detail = "") {
    this.el.connection.dataset.state = state;
    if (this.el.connectionLabel.textContent !== label) this.el.connectionLabel.textContent = label;
    this.el.connectionDetail.textContent = detail;
  }

  signedOut() {
    this.signedOutState = true;
    this.leaveHttpMode();
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    this.setConnection("signed-out", "Signed out");
    this.showNotice("Your session has ended. Reload the page to log in again.");
    this.updateComposer();
  }

  // --- over HTTP, while the websocket cannot connect -------------------------------------

  /** Streams over Server-Sent Events (polling without EventSource), new messages by
   * polling the messages API, prompts and Stop as POSTs. */
  enterHttpMode() {
    if (this.httpMode) return;
    this.httpMode = true;
    this.streams.startEventStreams();
    this.startMessagesPolling();
  }

  leaveHttpMode() {
    this.httpMode = false;
    this.streams.stopEventStreams();
    this.stopMessagesPolling();
  }

  /**
   * A prompt as `POST /api/conversations/<id>/messages/` whose response drives the
   * answer (Accept: text/event-stream): its `message` events, then the tokens, chunks
   * and statuses, read from the body as it arrives (EventSource cannot POST).
   */
  async postPrompt(entry) {
    entry.sentOn = "http";
    let response;
    try {
      response = await fetch(this.root.dataset.messagesUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "text/event-stream",
          "X-CSRFToken": csrfToken(),
        },
        body: JSON.stringify({ text: entry.text, client_id: entry.clientId }),
      });
    } catch {
      // Not sent, or sent without an answer: it goes again when HTTP answers (the
      // client id makes a second copy harmless).
      if (this.pending.has(entry.clientId)) entry.sentOn = null;
      return;
    }
    if (!response.ok) {
      let error = {};
      try {
        error = (await response.json()).error ?? {};
      } catch {
        // not JSON: a proxy's page
      }
      if (response.status === 403 && error.code === "authentication_required") {
        this.signedOut();
        return;
      }
      this.refusePrompt(entry, error.code ?? "", error.detail);
      return;
    }
    if (!(response.headers.get("Content-Type") ?? "").startsWith("text/event-stream")) {
      const body = await response.json().catch(() => ({ messages: [] }));
      for (const message of body.messages ?? []) this.onMessage({ message, driving: false });
      return;
    }
    const fed = new Set();
    try {
      await readEventStream(response, ({ data }) => {
        let frame;
        try {
          frame = JSON.parse(data);
        } catch {
          return;
        }
        if (frame.type === "message") {
          this.onMessage(frame, { via: "response" });
          if (frame.message.stream_id) fed.add(frame.message.stream_id);
        } else {
          this.streams.handleFrame(frame);
        }
      });
    } catch {
      // The connection broke: the answer goes on on the server; followed from here on.
    }
    if (this.pending.has(entry.clientId)) entry.sentOn = null;
    for (const id of fed) this.streams.responseEnded(id);
  }

  async cancelOverHttp(streamId) {
    try {
      const response = await fetch(this.cancelUrl(streamId), {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
      });
      if (response.ok) return;
      const error = (await response.json().catch(() => ({}))).error ?? {};
      this.showNotice(error.detail || ERROR_TEXT[error.code] || "Could not stop the answer.", error.code);
    } catch {
      this.showNotice("Could not reach the server to stop the answer; try again.");
    }
  }

  // --- the messages API ----------------------------------------------------------------

  async refreshMessages() {
    let payload;
    try {
      const response = await fetch(this.root.dataset.messagesUrl, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (response.status === 403) {
        this.signedOut();
        return;
      }
      this.httpAnswers = response.ok;
      if (!response.ok) return;
      payload = await response.json();
    } catch {
      this.httpAnswers = false;
      return; // offline: the next reconnect tries again
    }
    for (const message of payload.messages) this.mergeMessage(message);
    this.updateComposer();
    if (this.httpMode) this.resendPending();
  }

  mergeMessage(payload) {
    if (!this.transcript.has(payload.id)) this.transcript.add(payload);
    if (!payload.stream_id) return;
    const known = this.streams.get(payload.stream_id);
    if (known?.final) return;
    if (!known && isFinal(payload.status)) return; // added complete, nothing to follow
    // Unknown and streaming, or known and behind: take the saved text; the resume that
    // follows brings the rest (and the final status, for one that ended meanwhile).
    const s = this.streams.follow(payload.stream_id, {
      text: payload.text,
      reasoning: payload.reasoning ?? "",
      lastSeq: payload.last_seq ?? -1,
      status: isFinal(payload.status) ? "streaming" : payload.status,
    });
    this.transcript.render(s);
  }

  startMessagesPolling() {
    if (this.messagesPollTimer) return;
    this.refreshMessages();
    this.messagesPollTimer = setInterval(() => this.refreshMessages(), MESSAGES_POLL_MS);
  }

  stopMessagesPolling() {
    clearInterval(this.messagesPollTimer);
    this.messagesPollTimer = null;
  }

  // --- frames --------------------------------------------------------------------------

  onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (this.streams.handleFrame(frame)) return;
    if (frame.type === "message") this.onMessage(frame);
    else if (frame.type === "error") this.onError(frame);
  }

  /** A message frame, from the socket or (`via: "response"`) a POST's event stream. */
  onMessage({ message: payload, driving }, { via = "socket" } = {}) {
    // A message frame announces a new answer as it begins: the page times it from here.
    if (!this.transcript.has(payload.id)) this.transcript.add(payload, { started: true });
    const entry = payload.role === "user" && this.pending.get(payload.client_id);
    if (entry) {
      this.pending.delete(entry.clientId);
      this.awaitingReply = this.awaitingReply.filter((e) => e !== entry);
    }
    if (payload.stream_id) {
      // The socket gets this stream's chunks from this frame on; the driver its tokens.
      if (via === "socket") this.learnedOnThisSocket.add(payload.stream_id);
      const s = this.streams.follow(payload.stream_id, {
        text: payload.text,
        reasoning: payload.reasoning ?? "",
        lastSeq: -1,
        status: payload.status,
        driving,
        via,
      });
      this.transcript.render(s);
    }
    this.updateComposer();
  }

  onFinal(s) {
    this.transcript.render(s);
  }

  onError({ code, detail }) {
    // A refused prompt comes back to the composer, so nothing typed is lost.
    const entry = PROMPT_ERRORS.has(code) ? this.awaitingReply.shift() : undefined;
    if (entry) this.refusePrompt(entry, code, detail);
    else this.showNotice(detail || ERROR_TEXT[code] || "Something went wrong.", code);
  }

  refusePrompt(entry, code, detail) {
    this.pending.delete(entry.clientId);
    if (!this.el.prompt.value) {
      this.el.prompt.value = entry.text;
      this.autosize();
    }
    this.updateComposer();
    this.showNotice(detail || ERROR_TEXT[code] || "Something went wrong.", code);
  }

  // --- composer and buttons ------------------------------------------------------------

  bindUi() {
    const { form, prompt, stop, notice } = this.el;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendPrompt(prompt.value);
    });
    prompt.addEventListener("keydown", (event) => {
      // Enter sends; Shift+Enter (and Enter while an IME composes) is a new line.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.sendPrompt(prompt.value);
      }
    });
    prompt.addEventListener("input", () => {
      this.autosize();
      this.updateComposer();
    });
    stop.addEventListener("click", () => this.stopAll());
    notice.querySelector(".notice-close").addEventListener("click", () => this.hideNotice());
    this.transcript.list.addEventListener("click", (event) => {
      const retry = event.target.closest(".retry");
      if (retry) this.retry(Number(retry.closest("li.message").dataset.messageId));
    });
    window.addEventListener("online", () => this.reconnectSoon());
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) this.reconnectSoon();
    });
  }

  sendPrompt(text) {
    if (!text.trim()) return;
    const entry = { text, clientId: newClientId(), sentOn: null };
    if (!this.transmit(entry)) {
      this.showNotice("Not connected. Your message is kept; send it again once the chat is live.");
      return;
    }
    this.pending.set(entry.clientId, entry);
    if (this.el.prompt.value === text) {
      this.el.prompt.value = "";
      this.autosize();
    }
    this.updateComposer();
    this.hideNotice();
  }

  /** Send a prompt on the socket, else over HTTP while the socket cannot connect. */
  transmit(entry) {
    if (this.send({ type: "prompt", text: entry.text, client_id: entry.clientId })) {
      entry.sentOn = this.socket;
      this.awaitingReply.push(entry);
      return true;
    }
    if (this.httpMode && !this.signedOutState) {
      this.postPrompt(entry);
      return true;
    }
    return false;
  }

  /** Prompts whose messages never came and that are not in flight: the same client id
   * again, so one the server stored already is not stored (nor answered) twice. */
  resendPending() {
    for (const entry of this.pending.values()) {
      if (entry.sentOn === null) this.transmit(entry);
    }
  }

  /** Send again the question an errored, timed-out or stopped answer replied to. */
  retry(answerId) {
    const question = this.transcript.questionBefore(answerId);
    if (question !== null) this.sendPrompt(question);
  }

  stopAll() {
    for (const s of this.streams.streams.values()) {
      if (s.final) continue;
      if (!this.send({ type: "cancel", stream_id: s.id }) && this.httpMode) this.cancelOverHttp(s.id);
    }
  }

  updateComposer() {
    const canSend = (this.live || this.httpMode) && !this.signedOutState;
    const active = [...this.streams.streams.values()].some((s) => !s.final);
    // Nothing to send, or no way to send it.
    this.el.send.disabled = !canSend || !this.el.prompt.value.trim();
    this.el.stop.hidden = !active;
    this.el.stop.disabled = !canSend;
    const hint = this.pending.size ? "Sending…" : this.hintText;
    if (this.el.hint.textContent !== hint) this.el.hint.textContent = hint;
    this.el.hint.toggleAttribute("data-pending", this.pending.size > 0);
  }

  autosize() {
    const prompt = this.el.prompt;
    prompt.style.height = "auto";
    prompt.style.height = `${Math.min(prompt.scrollHeight, 240)}px`;
  }

  showNotice(text, code = "") {
    this.el.noticeText.textContent = text;
    this.el.notice.dataset.code = code;
    this.el.notice.hidden = false;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => this.hideNotice(), NOTICE_MS);
  }

  hideNotice() {
    this.el.notice.hidden = true;
  }

  // --- for tests and the curious (window.chat in the console) ----------------------------

  /** The raw text the page holds for a message (what its rendered HTML came from). */
  textOf(messageId) {
    const message = this.transcript.messages.get(Number(messageId));
    if (!message) return null;
    if (message.role === "user") return message.text;
    return this.streams.get(message.streamId)?.shown ?? null;
  }

  /** The reasoning the page holds for an answer (what its Thinking block shows). */
  reasoningOf(messageId) {
    const message = this.transcript.messages.get(Number(messageId));
    if (!message || message.role !== "assistant") return null;
    return this.streams.get(message.streamId)?.shownReasoning ?? message.reasoning;
  }
}

const root = document.getElementById("chat");
if (root) {
  const page = new ChatPage(root);
  window.chat = page;
  page.start();
}
