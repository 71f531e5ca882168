// The summary page: the server rendered the summary as persisted; this continues it
// live through the component's stream client, over the summary's websocket. Every tab
// does the same; the one socket the server made the driver also shows its tokens.
import { StreamClient } from "../streaming/stream-client.js";

const state = JSON.parse(document.getElementById("summary-state").textContent);
const textEl = document.getElementById("summary-text");
const reasoningBlock = document.getElementById("reasoning-block");
const reasoningEl = document.getElementById("summary-reasoning");
const statusEl = document.getElementById("summary-status");

function render(s) {
  textEl.textContent = s.shown;
  // Reasoning kept apart by stream clients that know parts (`s.reasoning`).
  if (typeof s.reasoning === "string") {
    reasoningEl.textContent = s.reasoning;
    reasoningBlock.hidden = !s.reasoning;
    reasoningBlock.open = !s.final && Boolean(s.reasoning);
  }
  statusEl.textContent = s.error ? `${s.status}: ${s.error}` : s.status;
}

let socket = null;
const streams = new StreamClient({
  send(frame) {
    if (socket?.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  },
  onUpdate: render,
});

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}${state.ws_path}`);
  socket.onopen = () => streams.resumeAll(); // from the last seq this page holds
  socket.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === "summary" && frame.driving) {
      streams.follow(frame.stream_id, { driving: true });
    } else {
      streams.handleFrame(frame);
    }
  };
  socket.onclose = () => {
    streams.connectionLost();
    if (!streams.get(state.stream_id).final) setTimeout(connect, 1000);
  };
}

if (state.stream_id) {
  const s = streams.follow(state.stream_id, {
    text: state.text,
    reasoning: state.reasoning,
    lastSeq: state.last_seq,
    status: state.status,
    error: state.error,
  });
  if (!s.final) connect();
}
