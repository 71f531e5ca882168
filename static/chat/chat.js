// The conversation page: one websocket to /ws/conversations/<id>/, catching up after
// every (re)connect, and the composer. What is exact about a stream's text (order, gaps,
// verification) lives in the streaming component's StreamClient; the DOM of the
// messages in Transcript.

import { StreamClient, isFinal } from "../streaming/stream-client.js";
import { Transcript } from "./transcript.js";

/** For an `error` frame without a detail; the server's details are written for people. */
const ERROR_TEXT = {
  too_many_active: "Too many answers are being written at once. Wait for one to finish.",
  prompt_too_long: "That message is too long.",
  prompt_empty: "Type a message first.",
  frame_too_large: "That message is too large to send.",
  unknown_stream: "That answer is no longer available.",
};
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15000;
/** Consecutive failed connects after which streams are followed over HTTP meanwhile. */
const POLL_AFTER_FAILURES = 3;
const MESSAGES_POLL_MS = 4000;
const NOTICE_MS = 10000;

/** Full jitter on an exponential backoff: reconnecting tabs do not stampede the server. */
function backoffDelay(attempt) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
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
    };
    this.socket = null;
    this.attempt = 0;
    this.failures = 0;
    this.everOpened = false;
    this.signedOutState = false;
    this.reconnectTimer = null;
    this.countdownTimer = null;
    this.messagesPollTimer = null;
    this.learnedOnThisSocket = new Set();
    this.pendingPrompt = null;

    this.transcript = new Transcript(root, { onRender: () => this.updateComposer() });
    const streamUrl = root.dataset.streamUrl;
    this.streams = new StreamClient({
      send: (frame) => this.send(frame),
      onUpdate: (s) => this.transcript.schedule(s),
      onFinal: (s) => this.transcript.render(s),
      streamUrl: (id, after) =>
        `${streamUrl.replace("__stream__", encodeURIComponent(id))}?after=${after}`,
    });
  }

  start() {
    for (const { streamId, ...state } of this.transcript.adopt()) {
      this.streams.follow(streamId, state);
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
    this.setConnection(this.everOpened ? "reconnecting" : "connecting",
      this.everOpened ? "Reconnecting…" : "Connecting…");
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

  send(frame) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  async onOpen(socket) {
    if (socket !== this.socket) return;
    this.attempt = 0;
    this.failures = 0;
    this.everOpened = true;
    this.learnedOnThisSocket = new Set();
    this.streams.stopPolling();
    this.stopMessagesPolling();
    this.setConnection("open", "Live");
    this.updateComposer();
    await this.catchUp(socket);
  }

  /** On every (re)connect: the messages created meanwhile, then resume what streams.
   * The socket is open first, so nothing announced after the fetch is missed. */
  async catchUp(socket) {
    await this.refreshMessages();
    if (socket !== this.socket) return;
    for (const s of this.streams.streams.values()) {
      // A stream announced on this socket is followed by it already.
      if (!s.final && !this.learnedOnThisSocket.has(s.id)) this.streams.resume(s.id, { force: true });
    }
  }

  onClose(socket) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.streams.connectionLost();
    this.failures += 1;
    if (this.failures >= POLL_AFTER_FAILURES && !this.signedOutState) {
      // The websocket cannot connect: follow the streams by HTTP until it can.
      this.streams.startPolling();
      this.startMessagesPolling();
    }
    this.updateComposer();
    if (this.signedOutState) return;
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    const until = Date.now() + delay;
    const label = () => {
      const seconds = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      const countdown = seconds ? ` in ${seconds} s` : "…";
      if (this.streams.polling) {
        this.setConnection("polling", "Offline, still updating", ` · reconnecting${countdown}`);
      } else {
        this.setConnection("reconnecting", "Reconnecting", countdown);
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
    this.streams.stopPolling();
    this.stopMessagesPolling();
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    this.setConnection("signed-out", "Signed out");
    this.showNotice("Your session has ended. Reload the page to log in again.");
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
      if (!response.ok) return;
      payload = await response.json();
    } catch {
      return; // offline: the next reconnect tries again
    }
    for (const message of payload.messages) this.mergeMessage(message);
    this.updateComposer();
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

  onMessage({ message: payload, driving }) {
    if (!this.transcript.has(payload.id)) this.transcript.add(payload);
    if (payload.role === "user" && payload.text === this.pendingPrompt) this.pendingPrompt = null;
    if (payload.stream_id) {
      // The socket gets this stream's chunks from this frame on; the driver its tokens.
      this.learnedOnThisSocket.add(payload.stream_id);
      const s = this.streams.follow(payload.stream_id, {
        text: payload.text,
        lastSeq: -1,
        status: payload.status,
        driving,
      });
      this.transcript.render(s);
    }
    this.updateComposer();
  }

  onError({ code, detail }) {
    // A refused prompt comes back to the composer, so nothing typed is lost.
    if (this.pendingPrompt !== null) {
      if (!this.el.prompt.value) {
        this.el.prompt.value = this.pendingPrompt;
        this.autosize();
      }
      this.pendingPrompt = null;
    }
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
    prompt.addEventListener("input", () => this.autosize());
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
    if (!this.send({ type: "prompt", text })) {
      this.showNotice("Not connected. Your message is kept; send it again once the chat is live.");
      return;
    }
    this.pendingPrompt = text;
    if (this.el.prompt.value === text) {
      this.el.prompt.value = "";
      this.autosize();
    }
    this.hideNotice();
  }

  /** Send again the question an errored, timed-out or stopped answer replied to. */
  retry(answerId) {
    const question = this.transcript.questionBefore(answerId);
    if (question !== null) this.sendPrompt(question);
  }

  stopAll() {
    for (const s of this.streams.streams.values()) {
      if (!s.final) this.send({ type: "cancel", stream_id: s.id });
    }
  }

  updateComposer() {
    const live = Boolean(this.socket && this.socket.readyState === WebSocket.OPEN);
    const active = [...this.streams.streams.values()].some((s) => !s.final);
    this.el.send.disabled = !live;
    this.el.stop.hidden = !active;
    this.el.stop.disabled = !live;
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
}

const root = document.getElementById("chat");
if (root) {
  const page = new ChatPage(root);
  window.chat = page;
  page.start();
}
