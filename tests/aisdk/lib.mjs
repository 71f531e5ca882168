// Shared by the harness scripts: what they print, and how they read a UI message stream.
// Every script prints JSON lines on stdout: {"chunk": …} for each UI message chunk as it
// arrives, {"error": "…"} for each error the SDK reports, then {"message": UIMessage}, the
// message the SDK assembled (null when it assembled none).
import { readUIMessageStream } from 'ai';

export function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

export async function report(stream) {
  const tap = new TransformStream({
    transform(chunk, controller) {
      emit({ chunk });
      controller.enqueue(chunk);
    },
  });
  let message = null;
  const states = readUIMessageStream({
    stream: stream.pipeThrough(tap),
    onError: error => emit({ error: error.message }),
  });
  for await (const state of states) message = state;
  emit({ message });
}

export async function readAll(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks);
}
