// tokenfan's page: POST /chat, then read the chat's SSE stream with EventSource.
//
// The stream URL carries the chat's stream_token (?token=), never an API key.
// When the connection drops, the browser reconnects by itself after the
// server's `retry:` delay and sends Last-Event-ID: the server replays exactly
// what was missed. If the browser gives up (an HTTP error while the server is
// unhealthy), the page opens a new EventSource itself with ?last_event_id=.
//
// The chat on screen (id, stream URL and token, prompt) is kept in
// sessionStorage: a reload reads it back and replays the chat's log from the
// start, then follows it live, so the answer is whole again.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("ask");
  const promptEl = $("prompt");
  const maxTokensEl = $("max-tokens");
  const apiKeyEl = $("api-key");
  const sendBtn = $("send");
  const stopBtn = $("stop");
  const answer = $("answer");
  const errorEl = $("error");
  const status = $("status");
  const st = {
    state: $("st-state"), chat: $("st-chat"), ttft: $("st-ttft"),
    rate: $("st-rate"), event: $("st-event"), conn: $("st-conn"),
  };

  const MANUAL_RETRIES = 8;
  const RESTORED_RETRIES = 2; // a chat kept from before a reload may have expired
  const SAVED = "tokenfan.chat";
  let chat = null; // the chat on screen

  const now = () => performance.now();
  const fmtMs = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`);

  function authHeaders() {
    const key = apiKeyEl.value.trim();
    return key ? { authorization: `Bearer ${key}` } : {};
  }

  // --- the status line ----------------------------------------------------------

  function rateText(c) {
    if (c.tFirst == null) return "";
    if (c.tokens != null && c.tEnd != null) {
      const s = (c.tEnd - c.rateFrom) / 1000;
      return s > 0 ? `${(c.tokens / s).toFixed(1)} tok/s` : "";
    }
    // While streaming the API sends text, not token counts: ~4 characters a token.
    const s = (now() - c.rateFrom) / 1000;
    return s > 0.2 ? `≈${(c.chars / 4 / s).toFixed(0)} tok/s` : "";
  }

  function render() {
    const c = chat;
    if (!c) return;
    status.dataset.state = c.state;
    status.dataset.chatId = c.id || "";
    status.dataset.lastEventId = String(c.lastId);
    status.dataset.resumes = String(c.resumes);
    status.dataset.resumedFrom = c.resumedFrom == null ? "" : String(c.resumedFrom);
    status.dataset.restored = c.restored ? "true" : "";
    st.state.textContent = c.stateText;
    st.chat.textContent = c.id ? `chat ${c.id.slice(0, 8)}` : "";
    st.chat.title = c.id || "";
    // After a reload the first tokens are a replay: no TTFT or rate to show.
    st.ttft.textContent = c.tFirst != null && !c.restored ? `TTFT ${fmtMs(c.tFirst - c.t0)}` : "";
    st.rate.textContent = c.restored ? "" : rateText(c);
    st.event.textContent = c.lastId ? `event ${c.lastId}` : "";
    st.conn.textContent = c.connText;
  }

  function setState(c, state, text) {
    c.state = state;
    c.stateText = text;
    if (c === chat) render();
  }

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = !message;
  }

  function finish(c) {
    c.finished = true;
    if (c.es) c.es.close();
    clearTimeout(c.retryTimer);
    c.tEnd = c.tEnd ?? now();
    if (c === chat) {
      stopBtn.disabled = true;
      sendBtn.disabled = false;
    }
  }

  // --- the stream ------------------------------------------------------------------

  // Each event's id is its sequence number; a number at or below the last one
  // seen is never shown twice.
  function accept(c, e) {
    if (c !== chat || c.finished) return false;
    if (e.lastEventId) {
      const id = Number(e.lastEventId);
      if (id <= c.lastId) return false;
      c.lastId = id;
    }
    return true;
  }

  function onToken(c, e) {
    if (!accept(c, e)) return;
    const { text } = JSON.parse(e.data);
    if (c.tFirst == null) {
      c.tFirst = now();
      c.rateFrom = c.tFirst;
    }
    // Follow the text as it grows, unless the reader scrolled up.
    const follow = answer.scrollHeight - answer.scrollTop - answer.clientHeight < 40;
    c.textNode.appendData(text);
    if (follow) answer.scrollTop = answer.scrollHeight;
    c.chars += text.length;
    if (c.state !== "streaming") setState(c, "streaming", "streaming");
    else render();
  }

  function onReset(c, e) {
    if (!accept(c, e)) return;
    const { attempt, reason } = JSON.parse(e.data);
    c.textNode.data = ""; // the answer restarts from the beginning
    c.chars = 0;
    c.rateFrom = now();
    c.connText = `answer restarted (attempt ${attempt}, ${reason})`;
    render();
  }

  function onDone(c, e) {
    if (!accept(c, e)) return;
    const { finish_reason: reason, usage } = JSON.parse(e.data);
    c.tEnd = now();
    if (usage && typeof usage.completion_tokens === "number") c.tokens = usage.completion_tokens;
    finish(c);
    setState(c, "done", reason === "cancelled" ? "cancelled" : `done (${reason})`);
  }

  function onServerError(c, e) {
    // An error the API says without an id (chat_expired, log_expired: nothing
    // in the log) arrives with the previous event's id, as EventSource keeps
    // it: it ends the chat all the same. It comes once, and ends the stream.
    if (c !== chat || c.finished) return;
    if (e.lastEventId && Number(e.lastEventId) > c.lastId) c.lastId = Number(e.lastEventId);
    let detail = { code: "error", message: e.data };
    try { detail = JSON.parse(e.data); } catch (_) { /* keep the raw text */ }
    finish(c);
    showError(`${detail.code}: ${detail.message}`);
    setState(c, "error", `error: ${detail.code}`);
  }

  function onConnectionError(c) {
    if (c !== chat || c.finished) return;
    c.dropped = true;
    c.connText = `connection lost after event ${c.lastId}`;
    setState(c, "reconnecting", "reconnecting…");
    if (c.es.readyState === EventSource.CLOSED) {
      // The browser gave up (it does on an HTTP error status): retry ourselves.
      if (c.manualRetries >= (c.restored && !c.opened ? RESTORED_RETRIES : MANUAL_RETRIES)) {
        finish(c);
        if (c.restored && !c.opened) {
          forget(c); // expired or gone: a reload should not try it again
          showError(`could not reopen chat ${c.id} (expired?)`);
          setState(c, "error", "disconnected");
          return;
        }
        showError("lost the stream; reload the page to try again");
        setState(c, "error", "disconnected");
        return;
      }
      const delay = Math.min(500 * 2 ** c.manualRetries, 8000);
      c.manualRetries += 1;
      c.retryTimer = setTimeout(() => connect(c, c.lastId), delay);
    }
  }

  function onOpen(c) {
    if (c !== chat || c.finished) return;
    c.manualRetries = 0;
    c.opened = true;
    if (c.dropped) {
      c.dropped = false;
      c.resumes += 1;
      c.resumedFrom = c.lastId;
      c.connText = `resumed from event ${c.lastId}`;
    }
    if (c.tFirst == null) setState(c, "waiting", c.restored ? "replaying…" : "waiting for the first token…");
    else setState(c, "streaming", "streaming");
  }

  function connect(c, after) {
    if (c.finished) return;
    if (c.es) c.es.close();
    const url = new URL(c.streamUrl, location.href);
    if (c.token) url.searchParams.set("token", c.token);
    // Only for a stream the page reopens itself; the browser's own reconnects
    // send the Last-Event-ID header, which the server prefers.
    if (after) url.searchParams.set("last_event_id", String(after));
    const es = new EventSource(url);
    c.es = es;
    es.addEventListener("open", () => onOpen(c));
    es.addEventListener("token", (e) => onToken(c, e));
    es.addEventListener("reset", (e) => onReset(c, e));
    es.addEventListener("done", (e) => onDone(c, e));
    // "error" is both the server's error event (a MessageEvent with data) and
    // the browser's own signal that the connection failed (a plain Event).
    es.addEventListener("error", (e) => {
      if (es !== c.es) return;
      if (e instanceof MessageEvent && e.data !== undefined) onServerError(c, e);
      else onConnectionError(c);
    });
  }

  // --- sending ------------------------------------------------------------------------

  // A new chat on screen, with an empty answer.
  function newChat(fields) {
    if (chat) finish(chat);
    showError("");
    answer.textContent = "";
    const textNode = document.createTextNode("");
    answer.appendChild(textNode);
    const c = {
      id: null, token: null, streamUrl: null, es: null, textNode,
      t0: now(), tFirst: null, tEnd: null, rateFrom: null, chars: 0, tokens: null,
      lastId: 0, dropped: false, resumes: 0, resumedFrom: null, manualRetries: 0,
      opened: false, restored: false,
      state: "sending", stateText: "sending…", connText: "", finished: false, retryTimer: null,
      ...fields,
    };
    chat = c;
    render();
    return c;
  }

  function save(c, prompt) {
    try {
      sessionStorage.setItem(SAVED, JSON.stringify({ id: c.id, token: c.token, streamUrl: c.streamUrl, prompt }));
    } catch (_) { /* storage off or full: a reload then starts afresh */ }
  }

  function forget(c) {
    try {
      const saved = JSON.parse(sessionStorage.getItem(SAVED) || "null");
      if (saved && saved.id === c.id) sessionStorage.removeItem(SAVED);
    } catch (_) { /* nothing to forget */ }
  }

  // After a reload: the chat that was on screen, replayed from its first event.
  function restore() {
    let saved = null;
    try { saved = JSON.parse(sessionStorage.getItem(SAVED) || "null"); } catch (_) { /* none */ }
    if (!saved || typeof saved.id !== "string" || typeof saved.streamUrl !== "string") return;
    if (typeof saved.prompt === "string" && !promptEl.value) promptEl.value = saved.prompt;
    const c = newChat({
      id: saved.id, token: saved.token || null, streamUrl: saved.streamUrl, restored: true,
      state: "connecting", stateText: "reopening…", connText: "restored after a reload",
    });
    stopBtn.disabled = false;
    sendBtn.disabled = true; // as while any chat streams; finish() enables it
    connect(c, 0);
  }

  async function send(prompt) {
    const c = newChat({});
    sendBtn.disabled = true;

    const body = { prompt };
    const maxTokens = parseInt(maxTokensEl.value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    let response;
    let data = {};
    try {
      response = await fetch("/chat", {
        method: "POST",
        headers: { "content-type": "application/json", ...authHeaders() },
        body: JSON.stringify(body),
      });
      data = await response.json().catch(() => ({}));
    } catch (err) {
      finish(c);
      showError(`could not reach the server: ${err.message}`);
      setState(c, "error", "error: network");
      return;
    }
    if (!response.ok) {
      const detail = data.error || {};
      const retry = response.headers.get("retry-after");
      finish(c);
      showError(`${detail.code || response.status}: ${detail.message || response.statusText}` +
        (retry ? ` (retry in ${retry} s)` : ""));
      setState(c, "error", `error: ${detail.code || response.status}`);
      return;
    }
    c.id = data.id;
    c.token = data.stream_token;
    c.streamUrl = data.stream_url || `/chat/${data.id}/stream`;
    save(c, prompt);
    stopBtn.disabled = false;
    setState(c, "connecting", "connecting…");
    connect(c, 0);
  }

  async function stop() {
    const c = chat;
    if (!c || !c.id || c.finished) return;
    stopBtn.disabled = true;
    try {
      await fetch(`/chat/${c.id}`, { method: "DELETE", headers: authHeaders() });
    } catch (_) {
      stopBtn.disabled = false; // the stream ends with done/cancelled when it works
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const prompt = promptEl.value.trim();
    if (prompt) send(prompt);
  });
  promptEl.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  stopBtn.addEventListener("click", stop);
  // Keep the tokens/s figure moving between events.
  setInterval(() => { if (chat && !chat.finished && chat.tFirst != null) render(); }, 500);
  restore();
})();
