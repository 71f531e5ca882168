// The transcript's DOM: the messages the server rendered, the ones that arrive later,
// each answer re-rendered (as safe Markdown) when its stream changes, and a scroll
// position that follows new text until the reader scrolls up.

import { isFinal } from "../streaming/stream-client.js";
import { renderMarkdown } from "./markdown.js";

const STATUS_LABELS = {
  pending: "Thinking…",
  streaming: "",
  done: "",
  cancelled: "Stopped",
  error: "Error",
  timeout: "Timed out",
};
/** Within this many pixels of the bottom, the transcript follows new text. */
const STICKY_PX = 64;

export class Transcript {
  /**
   * @param {HTMLElement} root  the #chat section
   * @param {() => void} onRender  called after an answer was re-rendered
   */
  constructor(root, { onRender = () => {} } = {}) {
    this.root = root;
    this.list = root.querySelector("#transcript");
    this.scroller = root.querySelector("#scroller");
    this.jump = root.querySelector("#jump");
    this.title = root.querySelector("#conversation-title");
    this.onRender = onRender;
    /** message id → { id, role, text (user messages only), streamId, el } */
    this.messages = new Map();
    this.byStream = new Map();
    this.dirty = new Map(); // stream id → StreamState awaiting a render
    this.renderScheduled = false;
    this.stick = true;
    this.lastScrollTop = 0;

    this.scroller.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.scroller.addEventListener("wheel", (event) => {
      if (event.deltaY < 0) this.stick = false;
    }, { passive: true });
    this.jump.addEventListener("click", () => this.scrollToBottom());
  }

  /**
   * Take over the messages the server rendered. Returns the streams still running, with
   * the saved text and seq the server rendered them with, for the page to follow.
   */
  adopt() {
    const running = [];
    for (const li of this.list.querySelectorAll("li.message")) {
      const content = li.querySelector(".content");
      const message = this.#remember(li, {
        id: Number(li.dataset.messageId),
        role: li.dataset.role,
        text: content.textContent,
        stream_id: li.dataset.streamId,
      });
      if (message.streamId && !isFinal(li.dataset.status)) {
        running.push({
          streamId: message.streamId,
          text: content.dataset.text ?? "",
          lastSeq: Number(li.dataset.lastSeq ?? -1),
          status: li.dataset.status,
        });
        delete content.dataset.text; // the page's client holds it from here
      }
    }
    this.#updateEmpty();
    this.scrollToBottom();
    return running;
  }

  has(messageId) {
    return this.messages.has(messageId);
  }

  /** Insert a message from a frame or the messages API, in id order (a fetch after a
   * reconnect may bring ones older than those already shown). */
  add(payload) {
    const li = this.#build(payload);
    const next = [...this.messages.values()]
      .filter((m) => m.id > payload.id)
      .sort((a, b) => a.id - b.id)[0];
    this.list.insertBefore(li, next ? next.el : null);
    const message = this.#remember(li, payload);
    this.#updateEmpty();
    if (payload.role === "user") {
      this.#setTitleFrom(payload.text);
      this.stick = true; // a new question brings the reader to the bottom
    }
    this.#afterContentChange();
    return message;
  }

  /** The text of the user message an answer replied to (for Retry). */
  questionBefore(messageId) {
    return [...this.messages.values()]
      .filter((m) => m.role === "user" && m.id < messageId)
      .sort((a, b) => b.id - a.id)[0]?.text ?? null;
  }

  /** Re-render an answer soon: token-rate updates coalesce to one render per frame. */
  schedule(s) {
    if (s.final) {
      this.render(s);
      return;
    }
    this.dirty.set(s.id, s);
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    const flush = () => {
      this.renderScheduled = false;
      const pending = [...this.dirty.values()];
      this.dirty.clear();
      for (const stream of pending) this.render(stream);
    };
    // Hidden tabs get no animation frames; they still keep their DOM current.
    if (document.hidden) setTimeout(flush, 100);
    else requestAnimationFrame(flush);
  }

  /** Re-render an answer now from its stream's state. */
  render(s) {
    const message = this.byStream.get(s.id);
    if (!message) return;
    this.dirty.delete(s.id);
    const li = message.el;
    const content = li.querySelector(".content");
    const html = renderMarkdown(s.shown);
    if (content.innerHTML !== html) content.innerHTML = html;
    li.dataset.lastSeq = s.lastSeq;
    if (!s.final) content.setAttribute("aria-live", "polite");
    this.#renderStatus(li, s.status, s.error);
    this.#afterContentChange();
    this.onRender();
  }

  // --- scrolling -----------------------------------------------------------------------

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.lastScrollTop = this.scroller.scrollTop;
    this.stick = true;
    this.jump.hidden = true;
  }

  onScroll() {
    const { scrollTop, scrollHeight, clientHeight } = this.scroller;
    // Only the reader scrolling up unsticks; text growing under them does not.
    if (scrollHeight - scrollTop - clientHeight < STICKY_PX) this.stick = true;
    else if (scrollTop < this.lastScrollTop) this.stick = false;
    this.lastScrollTop = scrollTop;
    if (this.stick) this.jump.hidden = true;
  }

  #afterContentChange() {
    if (this.stick) this.scrollToBottom();
    else this.jump.hidden = false;
  }

  // --- building ------------------------------------------------------------------------

  #remember(li, payload) {
    const message = {
      id: Number(payload.id),
      role: payload.role,
      text: payload.role === "user" ? payload.text : null,
      streamId: payload.stream_id || null,
      el: li,
    };
    this.messages.set(message.id, message);
    if (message.streamId) this.byStream.set(message.streamId, message);
    return message;
  }

  /** A message's <li>, the same markup as templates/chat/_message.html. */
  #build(payload) {
    const li = document.createElement("li");
    li.className = `message message-${payload.role}`;
    li.id = `message-${payload.id}`;
    li.dataset.messageId = payload.id;
    li.dataset.role = payload.role;
    li.dataset.status = payload.status;
    const bubble = li.appendChild(document.createElement("div"));
    bubble.className = "bubble";
    const content = bubble.appendChild(document.createElement("div"));
    if (payload.role !== "assistant") {
      content.className = "content plain";
      content.textContent = payload.text; // a user's text is shown as typed, never parsed
      return li;
    }
    li.dataset.streamId = payload.stream_id ?? "";
    li.dataset.lastSeq = payload.last_seq ?? -1;
    content.className = "content markdown";
    content.setAttribute("aria-live", "polite");
    content.innerHTML = renderMarkdown(payload.text);
    const status = bubble.appendChild(document.createElement("div"));
    status.className = "message-status";
    status.innerHTML =
      '<span class="status-label"></span> <span class="status-detail"></span> ' +
      '<button type="button" class="button button-small retry">Retry</button>';
    this.#renderStatus(li, payload.status, payload.error);
    return li;
  }

  #renderStatus(li, status, error) {
    li.dataset.status = status;
    li.querySelector(".status-label").textContent = STATUS_LABELS[status] ?? status;
    li.querySelector(".status-detail").textContent =
      status === "error" || status === "timeout" ? error || "" : "";
  }

  #updateEmpty() {
    this.root.classList.toggle("is-empty", this.messages.size === 0);
  }

  /** A new conversation is named after its first question (as the server names it). */
  #setTitleFrom(text) {
    if (!this.title.hasAttribute("data-untitled")) return;
    const title = text.split(/\s+/).join(" ").trim().slice(0, 60);
    if (!title) return;
    this.title.textContent = title;
    this.title.removeAttribute("data-untitled");
    document.title = `${title} · Chat`;
  }
}
