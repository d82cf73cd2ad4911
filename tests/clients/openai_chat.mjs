// The official `openai` Node SDK against tokenfan's /v1, unmodified:
// chat.completions.create({stream: true}) and the README's resume snippet
// (Stream.fromSSEResponse from openai/streaming, Last-Event-ID = the last
// chunk's tokenfan_seq).
//
//   node openai_chat.mjs <baseURL> <prompt> <max_tokens> <chunks before the drop; 0: read it all>
//
// Prints one JSON line: {chatId, head, rest, lastSeq, seqs, finishReason, usage, headers} or {error}.

import OpenAI from "openai";
import { Stream } from "openai/streaming";

const [baseURL, prompt, maxTokens, dropAfter] = process.argv.slice(2);
const apiKey = "unused";
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

try {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
  const { data: stream, response: created } = await client.chat.completions
    .create({
      model: "simulated",
      messages: [{ role: "user", content: prompt }],
      max_tokens: Number(maxTokens),
      stream: true,
      stream_options: { include_usage: true },
    })
    .withResponse();
  const chatId = created.headers.get("x-chat-id");

  const seqs = []; // tokenfan_seq of every chunk, undefined where it has none
  let finishReason = null, usage = null, contentChunks = 0;
  const note = (chunk) => {
    seqs.push(chunk.tokenfan_seq);
    if (chunk.usage) usage = chunk.usage;
    finishReason = chunk.choices[0]?.finish_reason ?? finishReason;
  };

  // The README's snippet from here on, as written there (plus note() and the drop).
  let text = "", lastSeq = 0;
  for await (const chunk of stream) { // until the connection drops
    lastSeq = chunk.tokenfan_seq ?? lastSeq;
    text += chunk.choices[0]?.delta?.content ?? "";
    note(chunk);
    if (chunk.choices[0]?.delta?.content) contentChunks += 1;
    if (Number(dropAfter) > 0 && contentChunks >= Number(dropAfter)) break; // the connection drops
  }
  const head = text, resumedAfter = lastSeq;
  if (Number(dropAfter) > 0) {
    // Resume after the last tokenfan_seq received:
    const response = await fetch(`${baseURL}/chat/completions/${chatId}/stream`, {
      headers: { "Last-Event-ID": String(lastSeq), Authorization: `Bearer ${apiKey}` },
    });
    for await (const chunk of Stream.fromSSEResponse(response, new AbortController())) {
      lastSeq = chunk.tokenfan_seq ?? lastSeq;
      text += chunk.choices[0]?.delta?.content ?? "";
      note(chunk);
    }
  }
  const rest = text.slice(head.length);
  out({ chatId, head, rest, resumedAfter, lastSeq, seqs, finishReason, usage });
} catch (error) {
  out({ error: String(error?.stack ?? error) });
}
