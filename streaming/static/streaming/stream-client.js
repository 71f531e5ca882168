// The browser side of the `streaming` component (the equivalent of Convex's useStream).
//
// It knows streams, not chat: for each stream it follows it holds the text and the
// reasoning (the two parts of a stream), the last seq and the status, and applies the
// component's frames (token, chunk, snapshot, status) so both parts are exact: in seq
// order, none twice, none missing, verified against the final status's lengths and
// SHA-256 digests. The page owns the websocket and the rendering: it passes frames in
// (handleFrame), a `send` function out, and gets callbacks when a stream changes.
// Without a websocket, it follows streams over Server-Sent Events (one EventSource per
// unfinished stream, GET <streams url>/<id>/events/), and where EventSource does not
// exist by polling GET <streams url>/<id>/?after=N.
//
//   const streams = new StreamClient({ send: (frame) => socket.send(JSON.stringify(frame)),
//                                      onUpdate: (s) => render(s.id, s.shown, s.shownReasoning) });
//   streams.follow(id, { text, reasoning, lastSeq, status });  // what the page already shows
//   socket.onopen = () => { streams.stopEventStreams(); streams.resumeAll(); };
//   socket.onclose = () => streams.connectionLost();
//   socket.onmessage = (e) => streams.handleFrame(JSON.parse(e.data));
//   // no websocket at all (a proxy that refuses upgrades):
//   streams.startEventStreams();

const FINAL = new Set(["done", "error", "cancelled", "timeout"]);
/** The parts of a stream: its answer text and the model's reasoning. */
export const PARTS = ["text", "reasoning"];
/** How often a stream's end is fetched again (text missing or not matching) before we give up. */
const MAX_RESYNCS = 3;
/**
 * Milliseconds an unfinished stream may stay silent before it is resumed. Broadcasts are
 * at most once: a lost chunk shows as a gap at the next one, but a lost final status
 * (or last chunks) shows as nothing at all, so silence is the only sign. A resume costs
 * the server one read, and a stream that is merely slow answers it with nothing.
 */
const SILENCE_TIMEOUT = 10000;
/** The event types of GET <id>/events/: each event's data is the websocket frame's JSON. */
const EVENT_TYPES = ["chunk", "snapshot", "status"];
/** Backoff of an event stream the browser gave up on (an HTTP error): 1 s doubling to 15 s. */
const EVENTS_RETRY_BASE_MS = 1000;
const EVENTS_RETRY_MAX_MS = 15000;
/**
 * An event stream counts as failing once it has been in error this long. EventSource
 * reports an error at every end of a response too (the server ends one after a bounded
 * time), and reconnects a second later by itself: that is no failure.
 */
const EVENTS_FAILING_AFTER_MS = 3000;

export const isFinal = (status) => FINAL.has(status);

/** Length in characters as the server counts them (code points, not UTF-16 units). */
export function codePointLength(text) {
  let n = 0;
  for (const _ of text) n += 1;
  return n;
}

/** Hex SHA-256 of the UTF-8 text, or null where crypto.subtle is not available. */
export async function sha256Hex(text) {
  if (!globalThis.isSecureContext || !globalThis.crypto?.subtle) return null;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Read a `text/event-stream` fetch Response (EventSource cannot POST): calls
 * `onEvent({ type, data, id })` for each event as it arrives (`type` "message" when the
 * event names none), per the Server-Sent Events parsing rules (LF, CR or CRLF line ends,
 * comments, several `data:` lines joined by a newline). Resolves when the body ends;
 * rejects if the connection breaks.
 */
export async function readEventStream(response, onEvent) {
  let buffer = "";
  let type = "";
  let data = [];
  let id = null;
  const line = (text) => {
    if (text === "") {
      if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id });
      type = "";
      data = [];
      return;
    }
    if (text.startsWith(":")) return; // a comment: a keep-alive
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  };
  const feed = (chunk, last = false) => {
    buffer += chunk;
    let start = 0;
    for (let i = 0; i < buffer.length; i += 1) {
      const c = buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      if (c === "\r" && i === buffer.length - 1 && !last) break; // maybe a CRLF cut in two
      line(buffer.slice(start, i));
      if (c === "\r" && buffer[i + 1] === "\n") i += 1;
      start = i + 1;
    }
    buffer = buffer.slice(start);
  };
  if (!response.body?.getReader) {
    feed(await response.text(), true);
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    feed(decoder.decode(value, { stream: true }));
  }
  feed(decoder.decode(), true); // an event not ended by a blank line is dropped, as specified
}

/**
 * One followed stream. `shown` and `shownReasoning` are what a page should display of
 * the answer and of the reasoning; `text` and `reasoning` are what is persisted.
 */
export class StreamState {
  constructor(id, {
    text = "", reasoning = "", lastSeq = -1, status = "pending", error = null,
    finishReason = null, model = null, usage = null,
  } = {}) {
    this.id = id;
    this.text = text; // persisted text: the `text` chunks 0..lastSeq joined
    this.reasoning = reasoning; // persisted reasoning: the `reasoning` chunks joined
    this.lastSeq = lastSeq;
    this.status = status; // a final status is set only once both parts are verified
    this.error = error;
    this.finishReason = finishReason; // from the final status: what the LLM server reported
    this.model = model;
    this.usage = usage; // {prompt_tokens, completion_tokens, reasoning_tokens} or null
    this.driving = false; // this page runs the generation and receives its tokens
    this.response = false; // an HTTP response of the page feeds it (no EventSource then)
    this.tokens = { text: "", reasoning: "" }; // what the driver has shown, per part
    this.verified = null; // true / false once final; null: not final, or nothing to check
    this.resyncs = 0;
    this.resumedAfter = null; // the `after` of the resume in flight, to send it once
    this.heardAt = performance.now(); // the last frame of this stream, or our last resume
    this.version = 0; // bumped on every change of text, so a late verification is dropped
  }

  get final() {
    return isFinal(this.status);
  }

  /** The answer text to display: the driver shows its tokens (ahead of the chunks),
   * everyone else the chunks. */
  get shown() {
    return this.driving ? this.tokens.text : this.text;
  }

  /** The reasoning to display, by the same rule. */
  get shownReasoning() {
    return this.driving ? this.tokens.reasoning : this.reasoning;
  }
}

export class StreamClient {
  /**
   * @param {object} options
   * @param {(frame: object) => boolean} options.send  sends a frame on the socket; false when closed
   * @param {(s: StreamState) => void} [options.onUpdate]  a part, the status or the error changed
   * @param {(s: StreamState) => void} [options.onFinal]  reached its final status (once)
   * @param {(id: string, after: number) => string} [options.streamUrl]  the polling fallback's URL
   * @param {(id: string, after: number) => string} [options.streamEventsUrl]  the SSE URL
   * @param {number} [options.pollInterval]  milliseconds between polls of the fallback
   * @param {number} [options.silenceTimeout]  milliseconds of silence before an unfinished
   *   stream is resumed (0: never)
   */
  constructor({
    send,
    onUpdate = () => {},
    onFinal = () => {},
    streamUrl = (id, after) => `/api/streams/${encodeURIComponent(id)}/?after=${after}`,
    streamEventsUrl = (id, after) => `/api/streams/${encodeURIComponent(id)}/events/?after=${after}`,
    pollInterval = 1000,
    silenceTimeout = SILENCE_TIMEOUT,
  }) {
    this.send = send;
    this.onUpdate = onUpdate;
    this.onFinal = onFinal;
    this.streamUrl = streamUrl;
    this.streamEventsUrl = streamEventsUrl;
    this.pollInterval = pollInterval;
    /** @type {Map<string, StreamState>} */
    this.streams = new Map();
    this.polling = false;
    this.pollTimer = null;
    this.silenceTimeout = silenceTimeout;
    this.watchTimer = null;
    /** Every unfinished stream is followed over an EventSource (startEventStreams). */
    this.eventStreams = false;
    /** @type {Map<string, {source: EventSource, failingSince: number|null, failures: number, timer: any}>} */
    this.events = new Map();
  }

  get(id) {
    return this.streams.get(id);
  }

  /**
   * Follow a stream from what the page already holds. Known already: the state with
   * more text wins (a page may learn the same stream from a frame and from a fetch).
   * `driving`: this page drives it and gets its tokens; `via: "response"`: an HTTP
   * response the page reads feeds it (call responseEnded when that response ends).
   */
  follow(id, {
    text = "", reasoning = "", lastSeq = -1, status = "pending", error = null,
    driving = false, via = "socket",
  } = {}) {
    let s = this.streams.get(id);
    if (!s) {
      // Start from what the page holds; a final status given here is taken as it is.
      s = new StreamState(id, { text, reasoning: reasoning ?? "", lastSeq: lastSeq ?? -1, status, error });
      this.streams.set(id, s);
    } else if (!s.final && (lastSeq ?? -1) > s.lastSeq) {
      this.#replace(s, text, reasoning ?? "", lastSeq);
    }
    if (s.final) return s;
    if (via === "response") {
      s.response = true;
      this.#closeEvents(id); // the response carries its frames
    }
    if (driving && !s.driving) {
      s.driving = true;
      s.tokens = { text: s.text, reasoning: s.reasoning };
    }
    if (this.eventStreams && !s.response) this.followOverHttp(id);
    this.#watch();
    return s;
  }

  /** True when `frame` is one of the component's frames (applied if its stream is followed). */
  handleFrame(frame) {
    const s = frame && typeof frame.stream_id === "string" && this.streams.get(frame.stream_id);
    if (s) s.heardAt = performance.now();
    switch (frame?.type) {
      case "token":
        if (s) this.#token(s, frame);
        return true;
      case "chunk":
        if (s) this.#chunk(s, frame);
        return true;
      case "snapshot":
        if (s) this.#snapshot(s, frame);
        return true;
      case "status":
        if (s) this.#status(s, frame);
        return true;
      default:
        return false;
    }
  }

  /**
   * After a (re)connect: ask for everything after what we hold. A new socket is
   * nobody's driver, so from here on the text comes from chunks and snapshots only.
   */
  resumeAll() {
    for (const s of this.streams.values()) {
      if (!s.response) this.#stopDriving(s);
      if (!s.final) this.resume(s.id, { force: true });
    }
  }

  /**
   * Resume one stream from its last seq (once per position unless forced): a `resume`
   * frame on the socket or, for a stream followed over HTTP, its EventSource opened
   * again from there.
   */
  resume(id, { force = false } = {}) {
    const s = this.streams.get(id);
    if (!s || s.final) return;
    if (!force && s.resumedAfter === s.lastSeq) return;
    if (this.eventStreams || this.events.has(id)) {
      this.#openEvents(s);
    } else if (!this.send({ type: "resume", stream_id: s.id, after: s.lastSeq })) {
      return;
    }
    s.resumedAfter = s.lastSeq;
    s.heardAt = performance.now();
  }

  /** The socket closed: its tokens stop, and what the page shows falls back to the chunks. */
  connectionLost() {
    for (const s of this.streams.values()) {
      if (s.response) continue; // fed by an HTTP response, which goes on
      s.resumedAfter = null;
      this.#stopDriving(s);
    }
  }

  /**
   * The HTTP response that fed a stream (`follow(..., {via: "response"})`) ended: its
   * tokens stop, and a stream still unfinished continues from its last seq (over an
   * EventSource while following over HTTP, else by a resume on the socket).
   */
  responseEnded(id) {
    const s = this.streams.get(id);
    if (!s || !s.response) return;
    s.response = false;
    this.#stopDriving(s);
    if (!s.final) this.resume(id, { force: true });
  }

  // --- silence -----------------------------------------------------------------------

  #watch() {
    if (this.watchTimer !== null || !this.silenceTimeout) return;
    this.watchTimer = setInterval(() => this.#resumeSilent(), this.silenceTimeout / 2);
  }

  /** Resume every unfinished stream silent for too long; stop watching when none is left.
   * An EventSource needs no such help: the server ends each response after a bounded
   * time and it reconnects from its last event. */
  #resumeSilent() {
    const now = performance.now();
    let open = 0;
    for (const s of this.streams.values()) {
      if (s.final) continue;
      open += 1;
      if (this.events.has(s.id)) continue;
      if (now - s.heardAt >= this.silenceTimeout) this.resume(s.id, { force: true });
    }
    if (!open) {
      clearInterval(this.watchTimer);
      this.watchTimer = null;
    }
  }

  // --- frames ------------------------------------------------------------------------

  #token(s, frame) {
    if (!s.driving || s.final) return;
    const part = partOf(frame);
    if (part === null) return;
    s.tokens[part] += frame.text;
    this.onUpdate(s);
  }

  #chunk(s, frame) {
    if (s.final || frame.seq <= s.lastSeq) return; // held already
    if (frame.seq !== s.lastSeq + 1) {
      // A broadcast was lost on the way (a slow socket): ask for what is missing.
      this.resume(s.id);
      return;
    }
    const part = partOf(frame);
    if (part !== null) s[part] += frame.text; // a part this client does not know: skipped
    s.lastSeq = frame.seq;
    s.version += 1;
    if (s.status === "pending") s.status = "streaming";
    // The chunks mark text saved: it must be what the driver showed, or we stop trusting
    // the tokens and show the saved text.
    if (s.driving && !tokensCover(s)) this.#stopDriving(s);
    this.onUpdate(s);
  }

  #snapshot(s, frame) {
    if (s.final) return;
    this.#replace(s, frame.text ?? "", frame.reasoning ?? "", frame.last_seq);
    // A final status in a snapshot is confirmed by the status frame that follows it.
    if (!isFinal(frame.status)) s.status = frame.status;
    this.onUpdate(s);
  }

  #status(s, frame) {
    if (s.final) return;
    s.error = frame.error ?? null;
    if (!isFinal(frame.status)) {
      s.status = frame.status;
      this.onUpdate(s);
      return;
    }
    if (frame.last_seq != null && s.lastSeq < frame.last_seq && s.resyncs < MAX_RESYNCS) {
      // Chunks are missing before the end: the resume's reply ends with this status again.
      s.resyncs += 1;
      this.resume(s.id, { force: true });
      return;
    }
    this.#verify(s, frame);
  }

  async #verify(s, frame) {
    const version = s.version;
    const ok = await matches(s, frame);
    if (s.final || s.version !== version) return; // changed meanwhile: a later status decides
    if (ok === false && s.resyncs < MAX_RESYNCS) {
      // The text we hold is not the server's: start again from nothing.
      s.resyncs += 1;
      this.#replace(s, "", "", -1);
      this.resume(s.id, { force: true });
      return;
    }
    this.#finish(s, frame, ok);
  }

  /** `report`: the final status frame or HTTP body (finish_reason, model, usage). */
  #finish(s, report, verified) {
    this.#stopDriving(s, { notify: false });
    this.#closeEvents(s.id);
    s.response = false;
    s.status = report.status;
    s.error = report.error ?? null;
    s.finishReason = report.finish_reason ?? null;
    s.model = report.model ?? null;
    s.usage = report.usage ?? null;
    s.verified = verified;
    this.onUpdate(s);
    this.onFinal(s);
  }

  #replace(s, text, reasoning, lastSeq) {
    s.text = text;
    s.reasoning = reasoning;
    s.lastSeq = lastSeq;
    s.version += 1;
    s.resumedAfter = null;
    // Saved text the driver has not shown (or shown otherwise): show the saved text.
    if (s.driving && !tokensCover(s)) this.#stopDriving(s, { notify: false });
  }

  #stopDriving(s, { notify = true } = {}) {
    if (!s.driving) return;
    s.driving = false;
    s.tokens = { text: "", reasoning: "" };
    if (notify) this.onUpdate(s);
  }

  // --- over HTTP: Server-Sent Events -------------------------------------------------

  /**
   * Follow every unfinished stream over Server-Sent Events, now and each one followed
   * later, until stopEventStreams (the websocket is back). A stream fed by one of the
   * page's HTTP responses gets its EventSource when that response ends. Where the
   * browser has no EventSource, this polls instead.
   */
  startEventStreams() {
    if (!globalThis.EventSource) {
      this.startPolling();
      return;
    }
    this.eventStreams = true;
    for (const s of this.streams.values()) {
      if (!s.final && !s.response) this.followOverHttp(s.id);
    }
  }

  /** Close every EventSource (and stop polling): frames come from the socket again. */
  stopEventStreams() {
    this.eventStreams = false;
    for (const id of [...this.events.keys()]) this.#closeEvents(id);
    this.stopPolling();
  }

  /** Follow one stream over an EventSource from its last seq, until its final status. */
  followOverHttp(id) {
    const s = this.streams.get(id);
    if (!s || s.final || this.events.has(id)) return;
    if (!globalThis.EventSource) {
      this.startPolling();
      return;
    }
    this.#openEvents(s);
  }

  /** False while an EventSource has been failing for a while (see EVENTS_FAILING_AFTER_MS). */
  get eventStreamsHealthy() {
    const now = performance.now();
    for (const entry of this.events.values()) {
      if (entry.failingSince !== null && now - entry.failingSince >= EVENTS_FAILING_AFTER_MS) {
        return false;
      }
    }
    return true;
  }

  /** (Re)open a stream's EventSource after its last seq. The browser reconnects it by
   * itself when a response ends (with Last-Event-ID, the seq of its last chunk or
   * snapshot), so only a refusal (an HTTP error) needs a retry of ours. */
  #openEvents(s) {
    const previous = this.events.get(s.id);
    this.#closeEvents(s.id);
    const source = new EventSource(this.streamEventsUrl(s.id, s.lastSeq));
    const entry = { source, failingSince: null, failures: previous?.failures ?? 0, timer: null };
    this.events.set(s.id, entry);
    const current = () => this.events.get(s.id) === entry;
    const onEvent = (event) => {
      if (!current()) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      // Closed before it is applied: a resume it may cause opens a fresh one, and the
      // browser must not reconnect after the server's end of this stream.
      if (frame?.type === "status" && isFinal(frame.status)) this.#closeEvents(s.id);
      this.handleFrame(frame);
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
    source.addEventListener("open", () => {
      if (!current()) return;
      entry.failingSince = null;
      entry.failures = 0;
    });
    source.addEventListener("error", () => {
      if (!current()) return;
      entry.failingSince ??= performance.now();
      if (source.readyState !== EventSource.CLOSED) return; // the browser reconnects
      // Refused (an HTTP error status, or not an event stream): the browser gave up.
      entry.failures += 1;
      const ceiling = Math.min(EVENTS_RETRY_MAX_MS, EVENTS_RETRY_BASE_MS * 2 ** (entry.failures - 1));
      entry.timer = setTimeout(() => {
        if (current() && !s.final) this.#openEvents(s);
      }, ceiling / 2 + (Math.random() * ceiling) / 2);
    });
  }

  #closeEvents(id) {
    const entry = this.events.get(id);
    if (!entry) return;
    this.events.delete(id);
    clearTimeout(entry.timer);
    entry.source.close();
  }

  // --- over HTTP: polling (no EventSource) ---------------------------------------------

  /** Follow every unfinished stream by polling until it is final (no websocket, no EventSource). */
  startPolling() {
    if (this.polling) return;
    this.polling = true;
    this.#pollRound();
  }

  stopPolling() {
    this.polling = false;
    clearTimeout(this.pollTimer);
    this.pollTimer = null;
  }

  async #pollRound() {
    const open = [...this.streams.values()].filter((s) => !s.final);
    await Promise.all(open.map((s) => this.#poll(s).catch(() => {})));
    if (this.polling) this.pollTimer = setTimeout(() => this.#pollRound(), this.pollInterval);
  }

  async #poll(s) {
    const after = s.lastSeq;
    const response = await fetch(this.streamUrl(s.id, after), {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) return;
    const body = await response.json();
    if (!this.polling || s.final || s.lastSeq !== after) return; // overtaken meanwhile
    this.#stopDriving(s, { notify: false });
    if (body.snapshot) {
      this.#replace(s, body.text ?? "", body.reasoning ?? "", body.last_seq);
    } else if (body.last_seq > s.lastSeq) {
      s.text += body.text ?? "";
      s.reasoning += body.reasoning ?? "";
      s.lastSeq = body.last_seq;
      s.version += 1;
    }
    s.error = body.error ?? null;
    if (isFinal(body.status)) {
      this.#finish(s, body, null); // the HTTP body has no digest to check
    } else {
      s.status = body.status;
      this.onUpdate(s);
    }
  }
}

/** A frame's part ("text" when it names none, as before parts existed); null if unknown. */
function partOf(frame) {
  const part = frame.part ?? "text";
  return PARTS.includes(part) ? part : null;
}

/** The driver's tokens begin with what is saved, in every part. */
function tokensCover(s) {
  return PARTS.every((part) => s.tokens[part].startsWith(s[part]));
}

/**
 * true / false: both parts against a final status (length in code points, then SHA-256
 * where crypto.subtle exists); null when it carries nothing to check. A status without
 * the reasoning's fields checks the text alone.
 */
async function matches(s, frame) {
  if (frame.length == null) return null;
  const checks = [[s.text, frame.length, frame.sha256]];
  if (frame.reasoning_length != null) {
    checks.push([s.reasoning, frame.reasoning_length, frame.reasoning_sha256]);
  }
  if (checks.some(([text, length]) => codePointLength(text) !== length)) return false;
  for (const [text, , digest] of checks) {
    if (!digest) continue;
    const mine = await sha256Hex(text);
    if (mine !== null && mine !== digest) return false; // null: no crypto.subtle, length only
  }
  return true;
}
