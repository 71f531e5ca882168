// The browser side of the `streaming` component (the equivalent of Convex's useStream).
//
// It knows streams, not chat: for each stream it follows it holds the text, the last
// seq and the status, and applies the component's frames (token, chunk, snapshot,
// status) so the text is exact: in seq order, none twice, none missing, verified
// against the final status's length and SHA-256. The page owns the websocket and the
// rendering: it passes frames in (handleFrame), a `send` function out, and gets
// callbacks when a stream changes. Without a websocket at all, it follows streams by
// polling GET <streams url>/<id>/?after=N.
//
//   const streams = new StreamClient({ send: (frame) => socket.send(JSON.stringify(frame)),
//                                      onUpdate: (s) => render(s.id, s.shown, s.status) });
//   streams.follow(id, { text, lastSeq, status });       // what the page already shows
//   socket.onopen = () => streams.resumeAll();
//   socket.onclose = () => streams.connectionLost();
//   socket.onmessage = (e) => streams.handleFrame(JSON.parse(e.data));

const FINAL = new Set(["done", "error", "cancelled", "timeout"]);
/** How often a stream's end is fetched again (text missing or not matching) before we give up. */
const MAX_RESYNCS = 3;
/**
 * Milliseconds an unfinished stream may stay silent before it is resumed. Broadcasts are
 * at most once: a lost chunk shows as a gap at the next one, but a lost final status
 * (or last chunks) shows as nothing at all, so silence is the only sign. A resume costs
 * the server one read, and a stream that is merely slow answers it with nothing.
 */
const SILENCE_TIMEOUT = 10000;

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

/** One followed stream. `shown` is what a page should display. */
export class StreamState {
  constructor(id, { text = "", lastSeq = -1, status = "pending", error = null } = {}) {
    this.id = id;
    this.text = text; // persisted text: the chunks 0..lastSeq joined
    this.lastSeq = lastSeq;
    this.status = status; // a final status is set only once the text is verified
    this.error = error;
    this.driving = false; // this socket runs the generation and receives its tokens
    this.tokens = ""; // what the driver has shown, persisted or not yet
    this.verified = null; // true / false once final; null: not final, or nothing to check
    this.resyncs = 0;
    this.resumedAfter = null; // the `after` of the resume in flight, to send it once
    this.heardAt = performance.now(); // the last frame of this stream, or our last resume
    this.version = 0; // bumped on every change of text, so a late verification is dropped
  }

  get final() {
    return isFinal(this.status);
  }

  /** The driver shows its tokens (ahead of the chunks); everyone else the chunks. */
  get shown() {
    return this.driving ? this.tokens : this.text;
  }
}

export class StreamClient {
  /**
   * @param {object} options
   * @param {(frame: object) => boolean} options.send  sends a frame on the socket; false when closed
   * @param {(s: StreamState) => void} [options.onUpdate]  text, status or error changed
   * @param {(s: StreamState) => void} [options.onFinal]  reached its final status (once)
   * @param {(id: string, after: number) => string} [options.streamUrl]  the HTTP fallback's URL
   * @param {number} [options.pollInterval]  milliseconds between polls of the fallback
   * @param {number} [options.silenceTimeout]  milliseconds of silence before an unfinished
   *   stream is resumed (0: never)
   */
  constructor({
    send,
    onUpdate = () => {},
    onFinal = () => {},
    streamUrl = (id, after) => `/api/streams/${encodeURIComponent(id)}/?after=${after}`,
    pollInterval = 1000,
    silenceTimeout = SILENCE_TIMEOUT,
  }) {
    this.send = send;
    this.onUpdate = onUpdate;
    this.onFinal = onFinal;
    this.streamUrl = streamUrl;
    this.pollInterval = pollInterval;
    /** @type {Map<string, StreamState>} */
    this.streams = new Map();
    this.polling = false;
    this.pollTimer = null;
    this.silenceTimeout = silenceTimeout;
    this.watchTimer = null;
  }

  get(id) {
    return this.streams.get(id);
  }

  /**
   * Follow a stream from what the page already holds. Known already: the state with
   * more text wins (a page may learn the same stream from a frame and from a fetch).
   */
  follow(id, { text = "", lastSeq = -1, status = "pending", error = null, driving = false } = {}) {
    let s = this.streams.get(id);
    if (!s) {
      // Start from what the page holds; a final status given here is taken as it is.
      s = new StreamState(id, { text, lastSeq: lastSeq ?? -1, status, error });
      this.streams.set(id, s);
    } else if (!s.final && (lastSeq ?? -1) > s.lastSeq) {
      this.#replace(s, text, lastSeq);
    }
    if (driving && !s.final && !s.driving) {
      s.driving = true;
      s.tokens = s.text;
    }
    if (!s.final) this.#watch();
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
      this.#stopDriving(s);
      if (!s.final) this.resume(s.id, { force: true });
    }
  }

  /** Resume one stream from its last seq (once per position unless forced). */
  resume(id, { force = false } = {}) {
    const s = this.streams.get(id);
    if (!s) return;
    if (!force && s.resumedAfter === s.lastSeq) return;
    if (this.send({ type: "resume", stream_id: s.id, after: s.lastSeq })) {
      s.resumedAfter = s.lastSeq;
      s.heardAt = performance.now();
    }
  }

  /** The socket closed: its tokens stop, and what the page shows falls back to the chunks. */
  connectionLost() {
    for (const s of this.streams.values()) {
      s.resumedAfter = null;
      this.#stopDriving(s);
    }
  }

  // --- silence -----------------------------------------------------------------------

  #watch() {
    if (this.watchTimer !== null || !this.silenceTimeout) return;
    this.watchTimer = setInterval(() => this.#resumeSilent(), this.silenceTimeout / 2);
  }

  /** Resume every unfinished stream silent for too long; stop watching when none is left. */
  #resumeSilent() {
    const now = performance.now();
    let open = 0;
    for (const s of this.streams.values()) {
      if (s.final) continue;
      open += 1;
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
    s.tokens += frame.text;
    this.onUpdate(s);
  }

  #chunk(s, frame) {
    if (s.final || frame.seq <= s.lastSeq) return; // held already
    if (frame.seq !== s.lastSeq + 1) {
      // A broadcast was lost on the way (a slow socket): ask for what is missing.
      this.resume(s.id);
      return;
    }
    s.text += frame.text;
    s.lastSeq = frame.seq;
    s.version += 1;
    if (s.status === "pending") s.status = "streaming";
    // The chunks mark text saved: it must be what the driver showed, or we stop trusting
    // the tokens and show the saved text.
    if (s.driving && !s.tokens.startsWith(s.text)) this.#stopDriving(s);
    this.onUpdate(s);
  }

  #snapshot(s, frame) {
    if (s.final) return;
    this.#replace(s, frame.text, frame.last_seq);
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
    const ok = await this.#matches(s.text, frame);
    if (s.final || s.version !== version) return; // changed meanwhile: a later status decides
    if (ok === false && s.resyncs < MAX_RESYNCS) {
      // The text we hold is not the server's: start again from nothing.
      s.resyncs += 1;
      this.#replace(s, "", -1);
      this.resume(s.id, { force: true });
      return;
    }
    this.#finish(s, frame.status, frame.error ?? null, ok);
  }

  /** true / false against the final status; null when it carries nothing to check. */
  async #matches(text, frame) {
    if (frame.length == null) return null;
    if (codePointLength(text) !== frame.length) return false;
    if (!frame.sha256) return true;
    const digest = await sha256Hex(text);
    return digest === null ? true : digest === frame.sha256; // no crypto.subtle: length only
  }

  #finish(s, status, error, verified) {
    this.#stopDriving(s, { notify: false });
    s.status = status;
    s.error = error;
    s.verified = verified;
    this.onUpdate(s);
    this.onFinal(s);
  }

  #replace(s, text, lastSeq) {
    s.text = text;
    s.lastSeq = lastSeq;
    s.version += 1;
    s.resumedAfter = null;
    // Saved text the driver has not shown (or shown otherwise): show the saved text.
    if (s.driving && !s.tokens.startsWith(text)) this.#stopDriving(s, { notify: false });
  }

  #stopDriving(s, { notify = true } = {}) {
    if (!s.driving) return;
    s.driving = false;
    s.tokens = "";
    if (notify) this.onUpdate(s);
  }

  // --- HTTP fallback -------------------------------------------------------------------

  /** Follow every unfinished stream by HTTP until it is final (no websocket at all). */
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
      this.#replace(s, body.text, body.last_seq);
    } else if (body.last_seq > s.lastSeq) {
      s.text += body.text;
      s.lastSeq = body.last_seq;
      s.version += 1;
    }
    s.error = body.error ?? null;
    if (isFinal(body.status)) {
      this.#finish(s, body.status, s.error, null); // the HTTP body has no digest to check
    } else {
      s.status = body.status;
      this.onUpdate(s);
    }
  }
}
