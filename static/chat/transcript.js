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
  timeout: "Interrupted",
};
/** What a timed-out answer means to a reader (as templates/chat/_message.html says it):
 * the server's own error names its lease. */
const TIMEOUT_DETAIL = "The server writing this answer stopped responding; what it wrote is kept.";
/** Within this many pixels of the bottom, the transcript follows new text. */
const STICKY_PX = 64;
/** Elements the caret goes inside of, to sit at the end of the text's last line. */
const CARET_HOSTS = new Set(["P", "UL", "OL", "LI", "BLOCKQUOTE", "PRE", "H1", "H2", "H3", "H4", "H5", "H6"]);

const TITLE_CHARS = 60;
const LINK = /!?\[([^\]]*)\]\([^)]*\)/g;
const LINE_MARKS = /^[ \t]*(?:#{1,6}|>+|[-+])[ \t]+/gm;
const INLINE_MARKS = /\*+|`+|~~|__/g;
const TRAILING = /[ .,;:!?-]+$/;

/** The blinking caret of an answer being written (drawn by CSS). */
function caretElement() {
  const caret = document.createElement("span");
  caret.className = "caret";
  caret.setAttribute("aria-hidden", "true");
  return caret;
}

/**
 * Put the streaming caret at the end of the text's last line: inside the deepest last
 * block (a list's last item, a quote's last paragraph, a code block before its final
 * newline), where a caret after the block would sit on a line of its own.
 */
function placeCaret(content) {
  let host = content;
  while (host.lastElementChild && CARET_HOSTS.has(host.lastElementChild.tagName)) {
    host = host.lastElementChild;
  }
  if (host.tagName === "PRE" && host.lastElementChild) host = host.lastElementChild;
  const caret = caretElement();
  const last = host.lastChild;
  if (last?.nodeType === Node.TEXT_NODE && last.data.endsWith("\n")) {
    host.insertBefore(caret, last.splitText(last.data.length - 1));
  } else {
    host.appendChild(caret);
  }
}

/**
 * A conversation's title from its first prompt: the rule of the server's
 * conversation_title (chatproject/chat/services.py), so the title shown now is the one
 * a reload shows. Plain text on one line, cut at a word with "…" past TITLE_CHARS
 * (counted in characters, as Python counts them, not UTF-16 units).
 */
export function titleFrom(text) {
  const plain = text.replace(LINK, "$1").replace(LINE_MARKS, "").replace(INLINE_MARKS, "")
    .split(/\s+/).filter(Boolean).join(" ");
  const chars = Array.from(plain);
  if (chars.length <= TITLE_CHARS) return plain;
  const cut = chars.lastIndexOf(" ", TITLE_CHARS);
  const head = chars.slice(0, cut > 0 ? cut : TITLE_CHARS - 1).join("");
  return `${head.replace(TRAILING, "")}…`;
}

/**
 * Seconds as the quiet line under an answer shows them: tenths under 10 s, whole seconds
 * under a minute, then minutes and seconds. The rule of the server's format_duration
 * (chatproject/chat/templatetags/chat_answers.py), rounding halves up on both sides.
 */
export function formatDuration(seconds) {
  const tenths = Math.floor(seconds * 10 + 0.5);
  if (tenths < 100) return `${(tenths / 10).toFixed(1)} s`;
  const whole = Math.floor(seconds + 0.5);
  if (whole < 60) return `${whole} s`;
  return `${Math.floor(whole / 60)} min ${whole % 60} s`;
}

/**
 * A finished answer's quiet line: its model, tokens (completion, and reasoning if any)
 * and time, each left out when unknown; "" when nothing is known. The server's
 * answer_meta says the same (a browser test checks both against one table).
 */
export function answerMeta({ model = null, usage = null, duration = null } = {}) {
  const parts = [];
  if (model) parts.push(model);
  const completion = usage?.completion_tokens;
  if (completion != null) {
    const reasoning = usage.reasoning_tokens;
    const tokens = `${completion} ${completion === 1 ? "token" : "tokens"}`;
    parts.push(reasoning ? `${tokens} (${reasoning} reasoning)` : tokens);
  }
  if (duration != null) parts.push(formatDuration(duration));
  return parts.join(" · ");
}

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
    /** message id → { id, role, text (user messages only), streamId, el, html, caret,
     * reasoning (as shown), thinking ("none" | "live" | "done"), details } */
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
   * the saved text, reasoning and seq the server rendered them with, for the page to
   * follow.
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
      if (message.role !== "assistant") continue;
      // The server renders reasoning as text: its textContent is the reasoning itself.
      const thinking = li.querySelector(".thinking");
      message.reasoning = li.querySelector(".thinking-text")?.textContent ?? "";
      message.thinking = thinking?.open ? "live" : message.reasoning ? "done" : "none";
      if (message.streamId && !isFinal(li.dataset.status)) {
        // How long ago the answer began, by the server's clock: the page times the rest.
        const elapsed = Number.parseFloat(content.dataset.elapsed);
        if (Number.isFinite(elapsed)) message.startedAt = performance.now() - elapsed * 1000;
        delete content.dataset.elapsed;
        running.push({
          streamId: message.streamId,
          text: content.dataset.text ?? "",
          reasoning: message.reasoning,
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
   * reconnect may bring ones older than those already shown). `started`: an answer
   * that begins now (announced by its message frame), so the page can time it. */
  add(payload, { started = false } = {}) {
    const li = this.#build(payload);
    const next = [...this.messages.values()]
      .filter((m) => m.id > payload.id)
      .sort((a, b) => a.id - b.id)[0];
    this.list.insertBefore(li, next ? next.el : null);
    const message = this.#remember(li, payload);
    if (payload.role === "assistant") {
      message.reasoning = payload.reasoning ?? "";
      // Still thinking (reasoning, no text yet): "none", so the next render opens it.
      const answered = Boolean(payload.text) || isFinal(payload.status);
      message.thinking = message.reasoning && answered ? "done" : "none";
      if (started && !isFinal(payload.status)) message.startedAt = performance.now();
      this.setDetails(payload.id, payload);
    }
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

  /**
   * What is known about an answer's end (`model` and `usage` from the final status
   * frame, `duration` as the page measured it): the fields given are kept, and a final
   * answer's quiet line shows them. (The server renders the line of an answer that was
   * final when the page loaded; the page leaves that one as it is.)
   */
  setDetails(messageId, { model, usage, duration } = {}) {
    const message = this.messages.get(Number(messageId));
    if (!message || message.role !== "assistant") return;
    for (const [key, value] of Object.entries({ model, usage, duration })) {
      if (value != null) message.details[key] = value;
    }
    const meta = message.el.querySelector(".message-meta");
    const text = isFinal(message.el.dataset.status) ? answerMeta(message.details) : "";
    if (meta.textContent !== text) meta.textContent = text;
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
    const thinking = this.#renderThinking(message, s);
    const content = li.querySelector(".content");
    const html = renderMarkdown(s.shown);
    // While the model thinks, the caret is at the end of its thinking instead.
    const caret = s.status === "streaming" && !thinking;
    if (html !== message.html || caret !== message.caret) {
      content.innerHTML = html;
      if (caret) placeCaret(content);
      Object.assign(message, { html, caret });
    }
    li.dataset.lastSeq = s.lastSeq;
    if (!s.final) content.setAttribute("aria-live", "polite");
    this.#renderStatus(li, s.status, s.error);
    if (s.final) {
      // Timed by the page from the answer's start (its message frame, or the server's
      // count at render time) to its final status; a reload shows the server's own.
      const { startedAt } = message;
      const duration = startedAt === null ? null : (performance.now() - startedAt) / 1000;
      message.startedAt = null;
      this.setDetails(message.id, { model: s.model, usage: s.usage, duration });
    }
    this.#afterContentChange();
    this.onRender();
  }

  /**
   * The "Thinking" block above an answer: the reasoning as text (never parsed), open
   * and live while the model thinks, collapsed once when the answer starts (the reader
   * may open it again). Returns whether the model is thinking now.
   */
  #renderThinking(message, s) {
    const details = message.el.querySelector(".thinking");
    const text = details.querySelector(".thinking-text");
    const reasoning = s.shownReasoning;
    const live = !s.final && reasoning !== "" && s.shown === "";
    if (reasoning !== message.reasoning || live !== message.thinkingLive) {
      text.textContent = reasoning;
      if (live) text.appendChild(caretElement());
      details.hidden = reasoning === "";
      message.reasoning = reasoning;
      message.thinkingLive = live;
    }
    if (live && message.thinking === "none") {
      details.open = true;
      message.thinking = "live";
    } else if (!live && message.thinking === "live") {
      details.open = false;
      message.thinking = "done";
    } else if (!live && reasoning !== "") {
      message.thinking = message.thinking === "none" ? "done" : message.thinking;
    }
    details.querySelector("summary").textContent = live ? "Thinking…" : "Thinking";
    message.el.classList.toggle("is-thinking", live);
    return live;
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
      html: null, // the Markdown last rendered into it, and whether a caret followed
      caret: false,
      reasoning: "", // the reasoning last rendered, and whether it was live
      thinkingLive: false,
      thinking: "none",
      details: {}, // model, usage, duration, once known
      startedAt: null, // performance.now() when the answer began, if the page knows
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
    if (payload.role !== "assistant") {
      const content = bubble.appendChild(document.createElement("div"));
      content.className = "content plain";
      content.textContent = payload.text; // a user's text is shown as typed, never parsed
      return li;
    }
    li.dataset.streamId = payload.stream_id ?? "";
    li.dataset.lastSeq = payload.last_seq ?? -1;
    const thinking = bubble.appendChild(document.createElement("details"));
    thinking.className = "thinking";
    thinking.hidden = !payload.reasoning;
    thinking.appendChild(document.createElement("summary")).textContent = "Thinking";
    const thinkingText = thinking.appendChild(document.createElement("div"));
    thinkingText.className = "thinking-text";
    thinkingText.textContent = payload.reasoning ?? ""; // the model's words, never parsed
    const content = bubble.appendChild(document.createElement("div"));
    content.className = "content markdown";
    content.setAttribute("aria-live", "polite");
    content.innerHTML = renderMarkdown(payload.text);
    const status = bubble.appendChild(document.createElement("div"));
    status.className = "message-status";
    status.innerHTML =
      '<span class="status-label"></span> <span class="status-detail"></span> ' +
      '<button type="button" class="button button-small retry">Retry</button>';
    bubble.appendChild(document.createElement("p")).className = "message-meta";
    this.#renderStatus(li, payload.status, payload.error);
    return li;
  }

  #renderStatus(li, status, error) {
    li.dataset.status = status;
    li.querySelector(".status-label").textContent = STATUS_LABELS[status] ?? status;
    const detail = { error: error || "", timeout: TIMEOUT_DETAIL }[status] ?? "";
    li.querySelector(".status-detail").textContent = detail;
  }

  #updateEmpty() {
    this.root.classList.toggle("is-empty", this.messages.size === 0);
  }

  /** A new conversation is named after its first question (as the server names it). */
  #setTitleFrom(text) {
    if (!this.title.hasAttribute("data-untitled")) return;
    const title = titleFrom(text);
    if (!title) return;
    this.title.textContent = title;
    this.title.removeAttribute("data-untitled");
    document.title = `${title} · Chat`;
  }
}
