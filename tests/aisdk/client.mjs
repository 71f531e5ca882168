// The real AI SDK as a client of the server, for the tests (no React: the transports
// useChat uses, driven directly).
//
//   node tests/aisdk/client.mjs MODE --url http://127.0.0.1:8000 --chat CONVERSATION_ID
//        [--cookie 'sessionid=…; csrftoken=…'] [--csrf TOKEN] [--prompt TEXT]
//        [--chunks N] [--last-sequence N]
//
// MODE: send | resume | send-then-leave (DefaultChatTransport on /api/ui-chat),
//       ws-send | ws-resume | ws-abort (WebSocketChatTransport on /ws/ui-chat/).
// send-then-leave and ws-abort stop after --chunks N chunks (default 3): the first closes
// the response as a client that went away, the second sends the transport's `abort`.
// ws-resume with --last-sequence sends a raw `resume` frame with lastSequence, which the
// transport itself never does, and prints each server frame as {"frame": …}.
// Output: JSON lines (see lib.mjs); {"stream": null} when a resume finds nothing; on a
// failed request {"error": …} and exit status 1.
import { parseArgs } from 'node:util';
import { DefaultChatTransport, WebSocketChatTransport, uiMessageChunkSchema } from 'ai';
import { WebSocket } from 'ws';
import { emit, report } from './lib.mjs';

const { positionals, values: args } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: 'string' },
    cookie: { type: 'string', default: '' },
    csrf: { type: 'string', default: '' },
    chat: { type: 'string' },
    prompt: { type: 'string', default: 'Hello' },
    chunks: { type: 'string', default: '3' },
    'last-sequence': { type: 'string' },
  },
});
const mode = positionals[0];
const modeNames = ['send', 'resume', 'send-then-leave', 'ws-send', 'ws-resume', 'ws-abort'];
if (!modeNames.includes(mode) || !args.url || !args.chat) {
  console.error(`usage: client.mjs ${modeNames.join('|')} --url URL --chat ID [options]`);
  process.exit(2);
}
const stopAfter = Number(args.chunks);
const userMessage = {
  id: `user-${Date.now()}`,
  role: 'user',
  parts: [{ type: 'text', text: args.prompt }],
};
const sendOptions = abortSignal => ({
  chatId: args.chat,
  messages: [userMessage],
  trigger: 'submit-message',
  messageId: undefined,
  abortSignal,
});

// A browser sends the session cookie itself; Node's fetch has no cookie jar.
const http = new DefaultChatTransport({
  api: new URL('/api/ui-chat', args.url).href,
  headers: { 'X-CSRFToken': args.csrf },
  credentials: 'same-origin',
  fetch: (input, init) =>
    fetch(input, { ...init, headers: { ...init.headers, cookie: args.cookie } }),
});

// Node 20 has no global WebSocket: the `ws` package, with the handshake headers a browser
// would send on its own (session cookie, the page's Origin).
const handshake = { cookie: args.cookie, origin: new URL(args.url).origin };
class SessionWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { headers: handshake });
  }
}
const wsUrl = new URL('/ws/ui-chat/', args.url).href;
const socket = () => new WebSocketChatTransport({ url: wsUrl, webSocket: SessionWebSocket });

async function readSome(stream, abort) {
  const reader = stream.getReader();
  for (let count = 0; count < stopAfter; count++) {
    const { done, value } = await reader.read();
    if (done) break;
    emit({ chunk: value });
  }
  abort();
}

async function rawResume(lastSequence) {
  const requestId = 'raw-resume';
  const resume = { type: 'resume', requestId, id: args.chat, lastSequence, headers: {}, body: {} };
  const ws = new SessionWebSocket(wsUrl);
  let expected = lastSequence + 1;
  let frames = Promise.resolve();
  await new Promise((resolve, reject) => {
    const handle = async data => {
      const frame = JSON.parse(data);
      emit({ frame });
      if (frame.type === 'chunk') {
        // What the transport checks: the next sequence, and a valid UI message chunk.
        if (frame.sequence !== expected++) {
          throw new Error('Out-of-order WebSocket chat chunk sequence.');
        }
        const valid = await uiMessageChunkSchema().validate(frame.chunk);
        if (!valid.success) throw new Error('Invalid UI message chunk in WebSocket response.');
      }
      if (['end', 'error', 'no-active'].includes(frame.type)) resolve();
    };
    ws.on('open', () => ws.send(JSON.stringify(resume)));
    ws.on('message', data => {
      frames = frames.then(() => handle(data)).catch(reject);
    });
    ws.on('error', reject);
    ws.on('close', code => reject(new Error(`WebSocket closed (code ${code}) before the end.`)));
  });
  ws.close();
}

const modes = {
  send: async () => report(await http.sendMessages(sendOptions())),
  resume: async () => {
    const stream = await http.reconnectToStream({ chatId: args.chat });
    return stream ? report(stream) : emit({ stream: null });
  },
  'send-then-leave': async () => {
    const leave = new AbortController();
    await readSome(await http.sendMessages(sendOptions(leave.signal)), () => leave.abort());
    emit({ left: true });
  },
  'ws-send': async () => report(await socket().sendMessages(sendOptions())),
  'ws-resume': async () => {
    if (args['last-sequence'] !== undefined) return rawResume(Number(args['last-sequence']));
    const stream = await socket().reconnectToStream({ chatId: args.chat });
    return stream ? report(stream) : emit({ stream: null });
  },
  'ws-abort': async () => {
    const stop = new AbortController();
    await readSome(await socket().sendMessages(sendOptions(stop.signal)), () => stop.abort());
    emit({ aborted: true });
    await new Promise(resolve => setTimeout(resolve, 200)); // let the abort frame go out
  },
};

try {
  await modes[mode]();
  process.exit(0); // sockets the transport keeps open must not keep the process alive
} catch (error) {
  emit({ error: error.message });
  process.exit(1);
}
