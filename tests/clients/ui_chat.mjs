// One useChat conversation, React-free: the `ai` package's AbstractChat with
// its DefaultChatTransport, exactly as an app uses them, driven by a test.
//
//   node ui_chat.mjs <package: ai | ai-v5> <tokenfan base URL> <chat id> [messages JSON]
//
// Commands arrive on stdin, one JSON object a line:
//   {"cmd": "send", "text": "...", "body": {...}}   chat.sendMessage (body: the transport's extra fields)
//   {"cmd": "resume"}                              chat.resumeStream (GET {api}/{id}/stream)
//   {"cmd": "stop"}                                POST {api}/{id}/stop, then chat.stop()
//   {"cmd": "drop-partial"}                        forget a trailing assistant message
//   {"cmd": "exit"}
// and everything it sees goes to stdout, one JSON object a line:
//   {"posted": "<X-Chat-Id>"}      the POST was answered (tokenfan's chat id)
//   {"text": "...", "parts": N}    the assistant message changed
//   {"status": "..."}              the chat's status changed
//   {"done": "<cmd>", "state": {status, error, messages}}   a command finished

import readline from "node:readline";

const [pkg, base, chatId, initial] = process.argv.slice(2);
const { AbstractChat, DefaultChatTransport } = await import(pkg);

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function textOf(message) {
  return message.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
}

// The state a framework binding (React, Vue, Svelte) would keep: plain arrays here.
class PlainState {
  constructor(messages) {
    this.messages = messages;
    this._status = "ready";
    this.error = undefined;
  }
  get status() {
    return this._status;
  }
  set status(value) {
    if (value !== this._status) out({ status: value });
    this._status = value;
  }
  report(message) {
    if (message.role === "assistant") out({ text: textOf(message), parts: message.parts.length, id: message.id });
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
    this.report(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
    this.report(message);
  };
  snapshot = (thing) => structuredClone(thing);
}

class PlainChat extends AbstractChat {
  constructor(options) {
    const state = new PlainState(options.messages ?? []);
    super({ ...options, state });
    this.plain = state;
  }
}

// Record tokenfan's chat id (X-Chat-Id) of each POST, as an app could.
const recordingFetch = async (url, init) => {
  const response = await fetch(url, init);
  if (init?.method === "POST") out({ posted: response.headers.get("x-chat-id"), status: response.status });
  return response;
};

const api = `${base}/api/chat`;
const chat = new PlainChat({
  id: chatId,
  messages: initial ? JSON.parse(initial) : [],
  transport: new DefaultChatTransport({ api, fetch: recordingFetch }),
  onError: (error) => out({ onError: String(error.message ?? error) }),
});

const state = () => ({
  status: chat.status,
  error: chat.error ? String(chat.error.message ?? chat.error) : null,
  messages: chat.messages.map((m) => ({ id: m.id, role: m.role, parts: m.parts, text: textOf(m) })),
});

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  const finished = (what) => () => out({ done: what, state: state() });
  const failed = (what) => (error) => out({ done: what, thrown: String(error?.message ?? error), state: state() });
  switch (command.cmd) {
    case "send":
      chat.sendMessage({ text: command.text }, { body: command.body ?? {} }).then(finished("send"), failed("send"));
      break;
    case "resume":
      chat.resumeStream().then(finished("resume"), failed("resume"));
      break;
    case "stop": {
      const response = await fetch(`${api}/${chatId}/stop`, { method: "POST" });
      out({ stopped: response.status, body: await response.json() });
      await chat.stop();
      break;
    }
    case "drop-partial":
      if (chat.messages.at(-1)?.role === "assistant") chat.messages = chat.messages.slice(0, -1);
      finished("drop-partial")();
      break;
    case "exit":
      process.exit(0);
  }
}
