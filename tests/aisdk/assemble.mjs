// Reads what a server would send on stdin and lets the real AI SDK parse and assemble it,
// so the tests check the Python encoder against the SDK itself.
//
//   node tests/aisdk/assemble.mjs sse        < SSE response body (data: {chunk} … data: [DONE])
//   node tests/aisdk/assemble.mjs ws-send    < WebSocket server frames, one JSON per line
//   node tests/aisdk/assemble.mjs ws-resume  < (idem, answering reconnectToStream)
//
// sse goes through DefaultChatTransport's parser (SSE framing, chunk schema); ws-* through
// WebSocketChatTransport on a socket that replays the frames under the transport's own
// requestId (sequence checks, chunk schema). Output: JSON lines, as client.mjs.
import { DefaultChatTransport, WebSocketChatTransport } from 'ai';
import { emit, readAll, report } from './lib.mjs';

const mode = process.argv[2];
const input = await readAll(process.stdin);
const request = {
  chatId: 'chat',
  messages: [{ id: 'user', role: 'user', parts: [{ type: 'text', text: 'Hello' }] }],
  trigger: 'submit-message',
  messageId: undefined,
};

class ReplaySocket {
  readyState = 0;
  constructor() {
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.({});
    });
  }
  send(data) {
    const { type, requestId } = JSON.parse(data);
    if (type === 'abort') return;
    for (const line of input.toString('utf8').split('\n').filter(Boolean)) {
      this.onmessage?.({ data: JSON.stringify({ ...JSON.parse(line), requestId }) });
    }
  }
  close() {
    this.readyState = 3;
  }
}

const replay = () => new WebSocketChatTransport({ url: 'ws://replay', webSocket: ReplaySocket });
const respond = async () => new Response(input);
const transports = {
  sse: () => new DefaultChatTransport({ fetch: respond }).sendMessages(request),
  'ws-send': () => replay().sendMessages(request),
  'ws-resume': () => replay().reconnectToStream({ chatId: 'chat' }),
};

if (!transports[mode]) {
  console.error(`usage: assemble.mjs ${Object.keys(transports).join('|')} < input`);
  process.exit(2);
}
try {
  const stream = await transports[mode]();
  await (stream ? report(stream) : emit({ stream: null }));
  process.exit(0);
} catch (error) {
  emit({ error: error.message });
  process.exit(1);
}
