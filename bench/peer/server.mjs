// The benchmark's peer: Vercel's resumable-stream (npm, 2.2.13) in one Node
// process, on the benchmark's Redis, behind a plain node:http server. Started
// by the benchmark (bench/procs.py) as `node bench/peer/server.mjs`.
//
//   POST /chat {"prompt", "max_tokens"}  creates the stream (createNewResumableStream)
//                                        and answers 202 {"id", "status", "stream_url"}
//   GET  /chat/:id/stream                follows it as SSE (resumeExistingStream);
//                                        with Last-Event-ID, events up to it are dropped
//   GET  /healthz
//
// It speaks tokenfan's HTTP shape (the same POST body and answer, the same SSE
// events: id, event token|done, JSON data), so every benchmark client reads it
// unchanged. Its token source is the same simulated model as tokenfan's workers
// and the direct baseline (worker/providers/simulated.py): the same settings
// (TOKENFAN_SIM_TTFT_MS, TOKENFAN_SIM_TOKENS_PER_S), the same absolute schedule,
// the same answer length per prompt (so max_tokens gives the same token count),
// words from the same list. With TOKENFAN_STAMP_EVENTS=true each token event
// carries "ts", the wall clock when the token is handed to resumable-stream,
// which publishes it at once: the time the token came from the model, as
// tokenfan's worker stamps an event with when its first token arrived. TOKENFAN_PROVIDER=bench.provider:numbered
// gives bench/provider.py's tokens (" t0", " t1", ... 1 ms apart) instead, and
// BENCH_PEER_HOLD_S keeps such a stream open that long after its last token,
// since resumable-stream can only resume a stream that is still running.
//
// One event per token, as an app on resumable-stream writes them; heartbeats
// are left out (the scenarios that use the peer end well within tokenfan's 15 s).

import { createHash } from "node:crypto";
import http from "node:http";
import { createClient } from "redis";
import { createResumableStreamContext } from "resumable-stream";

const env = process.env;
const PORT = Number(env.BENCH_PORT);
const REDIS_URL = env.TOKENFAN_REDIS_URL;
const TTFT_MS = Number(env.TOKENFAN_SIM_TTFT_MS ?? 50);
const TOKENS_PER_S = Number(env.TOKENFAN_SIM_TOKENS_PER_S ?? 50);
const STAMP = ["1", "true", "yes", "on"].includes((env.TOKENFAN_STAMP_EVENTS ?? "").toLowerCase());
const NUMBERED = env.TOKENFAN_PROVIDER === "bench.provider:numbered";
const HOLD_MS = Number(env.BENCH_PEER_HOLD_S ?? 0) * 1000;

// --- the simulated model ----------------------------------------------------

const WORDS = (
  "the queue carries every token from the model to each reader in order and a stream that " +
  "drops comes back where it left off while workers scale on their own so nothing is lost " +
  "when a process restarts because the log in redis keeps what was said"
).split(" ");

function seed(prompt) {
  return createHash("sha256").update(prompt).digest().readBigUInt64BE(0);
}

// 20..419 tokens, exactly as worker/providers/simulated.py's answer_length().
function answerLength(prompt) {
  return 20 + Number(seed(prompt) % 400n);
}

// The shape of simulated.answer_tokens(): a first word, then " word" tokens
// (one space each, as the benchmark counts tokens by spaces). The words are
// picked by a small PRNG seeded from the prompt (Python's Mersenne Twister and
// sentence corpus are not ported): same count, similar sizes, not the same text.
function answerTokens(prompt, maxTokens) {
  let state = Number(seed(prompt) & 0xffffffffn);
  const random = () => {
    // mulberry32
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = (list) => list[Math.floor(random() * list.length)];
  const count = Math.min(answerLength(prompt), maxTokens);
  const tokens = [];
  for (let i = 0; i < count; i++) {
    const word = pick(WORDS);
    if (i === 0) tokens.push(word[0].toUpperCase() + word.slice(1));
    else if (random() < 0.08) tokens.push(pick([",", "."]) + " " + word);
    else tokens.push(" " + word);
  }
  return tokens;
}

const now = () => performance.timeOrigin + performance.now(); // wall clock, ms, sub-ms resolution
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function sse(id, type, data) {
  return `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
}

// The answer as a stream of SSE event strings, on an absolute schedule (the
// rate holds however long the reader takes). highWaterMark 0: a token is made
// (and stamped) when resumable-stream asks for it, not queued ahead.
function makeAnswer(prompt, maxTokens) {
  let tokens, start, interval;
  if (NUMBERED) {
    tokens = Array.from({ length: maxTokens }, (_, i) => ` t${i}`);
    start = now();
    interval = 1;
  } else {
    tokens = answerTokens(prompt, maxTokens);
    start = now() + TTFT_MS;
    interval = TOKENS_PER_S > 0 ? 1000 / TOKENS_PER_S : 0;
  }
  let i = 0;
  return new ReadableStream(
    {
      async pull(controller) {
        if (i < tokens.length) {
          const delay = start + i * interval - now();
          if (delay > 0) await sleep(delay);
          const data = STAMP ? { text: tokens[i], ts: now() / 1000 } : { text: tokens[i] };
          i += 1;
          controller.enqueue(sse(i, "token", data));
          return;
        }
        if (HOLD_MS > 0) await sleep(HOLD_MS);
        const finishReason = NUMBERED || tokens.length < answerLength(prompt) ? "length" : "stop";
        const usage = { prompt_tokens: prompt.split(/\s+/).filter(Boolean).length, completion_tokens: tokens.length };
        controller.enqueue(sse(tokens.length + 1, "done", { finish_reason: finishReason, usage }));
        controller.close();
      },
    },
    { highWaterMark: 0 },
  );
}

// --- the server ---------------------------------------------------------------

const publisher = createClient({ url: REDIS_URL });
const subscriber = createClient({ url: REDIS_URL });
for (const client of [publisher, subscriber]) client.on("error", (err) => console.error("redis:", err.message));
await Promise.all([publisher.connect(), subscriber.connect()]);
const streams = createResumableStreamContext({ waitUntil: null, publisher, subscriber });

function json(res, status, body) {
  const payload = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(payload) });
  res.end(payload);
}

async function readBody(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return JSON.parse(Buffer.concat(parts).toString() || "{}");
}

async function createChat(req, res) {
  const body = await readBody(req);
  const prompt = String(body.prompt ?? "");
  const maxTokens = Number(body.max_tokens ?? 512);
  const id = crypto.randomUUID().replaceAll("-", "");
  const stream = await streams.createNewResumableStream(id, () => makeAnswer(prompt, maxTokens));
  // Nobody reads the creator's copy (readers GET the stream): the producer runs
  // on, and keeps publishing to every reader, without it.
  await stream.cancel();
  json(res, 202, { id, status: "queued", stream_url: `/chat/${id}/stream` });
}

// Drop the events with ids up to `after` from a chunk (the first chunk of a
// resume is everything so far, joined; later ones are single, newer events).
function dropUpTo(chunk, after) {
  let out = "";
  for (const frame of chunk.split("\n\n")) {
    if (!frame) continue;
    const id = Number(frame.slice(4, frame.indexOf("\n")));
    if (id > after) out += frame + "\n\n";
  }
  return out;
}

function drained(res) {
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

async function followChat(req, res, id) {
  const after = Number(req.headers["last-event-id"] ?? 0) || 0;
  const stream = await streams.resumeExistingStream(id);
  if (stream === undefined) return json(res, 404, { error: "no such stream" });
  if (stream === null) {
    // Finished: resumable-stream keeps no log to replay.
    res.writeHead(204, { "Content-Length": 0 });
    return res.end();
  }
  res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
  res.flushHeaders();
  const reader = stream.getReader();
  res.on("close", () => reader.cancel().catch(() => {}));
  let first = after > 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const text = first ? dropUpTo(value, after) : value;
    first = false;
    if (text && !res.write(text)) await drained(res);
  }
  res.end();
}

const server = http.createServer({ noDelay: true, keepAliveTimeout: 65_000 }, (req, res) => {
  const url = req.url ?? "/";
  let handled;
  if (req.method === "POST" && url === "/chat") handled = createChat(req, res);
  else if (req.method === "GET" && url === "/healthz") handled = Promise.resolve(json(res, 200, { status: "ok" }));
  else {
    const match = req.method === "GET" && /^\/chat\/([0-9a-f]+)\/stream$/.exec(url);
    handled = match ? followChat(req, res, match[1]) : Promise.resolve(json(res, 404, { error: "not found" }));
  }
  handled.catch((err) => {
    console.error(`${req.method} ${url}:`, err);
    if (!res.headersSent) json(res, 500, { error: String(err) });
    else res.destroy();
  });
});
process.on("SIGTERM", () => process.exit(0));
process.on("SIGINT", () => process.exit(0));
server.listen(PORT, "127.0.0.1", () => console.log(`peer: resumable-stream on http://127.0.0.1:${PORT}`));
