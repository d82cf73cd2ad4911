// Two SSE parsers people use, unmodified, on tokenfan's native stream
// (GET /chat/{id}/stream): the `eventsource` package (the EventSource of
// browsers, in Node) and `@microsoft/fetch-event-source`.
//
//   node sse_clients.mjs eventsource <stream URL> <close-on-done|until-stopped> <quiet ms>
//   node sse_clients.mjs fetch-event-source <stream URL>
//
// Prints one JSON line: {messages: [{event, data}], text, connections:
// [{status, lastEventId}], pings, readyState} or {error}. Each connection
// goes through a fetch that counts it and tees its bytes to count the
// heartbeat comment lines the parser had to step over.

import { EventSource } from "eventsource";
import fetchEventSourcePackage from "@microsoft/fetch-event-source";

const { fetchEventSource } = fetchEventSourcePackage;
const [client, url, mode, quietMs] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const connections = [];
let pings = 0;
const counting = async (input, init = {}) => {
  const response = await fetch(input, init);
  connections.push({ status: response.status, lastEventId: new Headers(init.headers).get("last-event-id") });
  if (!response.body) return response;
  const [mine, theirs] = response.body.tee();
  (async () => {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const bytes of mine) {
      const lines = (pending + decoder.decode(bytes, { stream: true })).split("\n");
      pending = lines.pop();
      pings += lines.filter((line) => line.startsWith(":")).length;
    }
  })().catch(() => {});
  return new Response(theirs, { status: response.status, statusText: response.statusText, headers: response.headers });
};

const messages = [];
let text = "";
const take = (event, data) => {
  messages.push({ event, data });
  let parsed;
  try {
    parsed = JSON.parse(data);
  } catch {
    return; // the test reports every message whose data is not JSON
  }
  if (event === "token") text += parsed.text;
  if (event === "reset") text = "";
};

const deadline = (ms, what) => {
  const until = Date.now() + ms;
  return async (predicate) => {
    while (!predicate()) {
      if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
};

try {
  if (client === "eventsource") {
    const es = new EventSource(url, { fetch: counting });
    let finished = false;
    for (const type of ["message", "token", "reset", "done"]) {
      es.addEventListener(type, (e) => {
        take(type, e.data);
        if (type === "done") {
          finished = true;
          if (mode === "close-on-done") es.close(); // as the README says
        }
      });
    }
    es.addEventListener("error", (e) => {
      if (e.data !== undefined) take("error", e.data); // the server's error event; else a dropped connection
    });
    await deadline(20000, "the done event")(() => finished);
    if (mode === "until-stopped") {
      // Not closed: the server ends the stream, EventSource reconnects with
      // the terminal id, gets 204 and must stop for good.
      await deadline(20000, "EventSource to stop (readyState CLOSED)")(() => es.readyState === EventSource.CLOSED);
    }
    // A quiet spell (many retry intervals): no connection comes after.
    await new Promise((resolve) => setTimeout(resolve, Number(quietMs)));
    out({ messages, text, connections, pings, readyState: es.readyState });
    es.close();
  } else if (client === "fetch-event-source") {
    // What a browser has and Node lacks: fetch-event-source calls
    // window.setTimeout/clearTimeout and document.removeEventListener.
    globalThis.window ??= globalThis;
    globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };
    let closed = false;
    await fetchEventSource(url, {
      fetch: counting,
      openWhenHidden: true,
      onmessage: (msg) => take(msg.event, msg.data),
      onclose: () => {
        closed = true; // the server ended the stream (after done): resolves, no reconnect
      },
      onerror: (error) => {
        throw error; // no retry: any failure fails the test
      },
    });
    out({ messages, text, connections, pings, closed });
  } else {
    throw new Error(`unknown client ${client}`);
  }
} catch (error) {
  out({ error: String(error?.stack ?? error), messages, connections });
}
