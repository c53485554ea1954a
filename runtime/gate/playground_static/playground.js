// The warmstart playground: streams chat completions from this gate's public API.
// No framework and no build step; served under a CSP that forbids inline script, so all behaviour
// lives here. The API key never leaves this tab except in the Authorization header to this origin:
// it arrives in the URL fragment (never sent to servers), is kept in sessionStorage, and the
// fragment is wiped from the address bar at once.
"use strict";

(function () {
  const KEY_STORE = "warmstart.playground.key";
  const KEY_RE = /^ws_live_[0-9a-f]{64}$/;
  // The gate holds a request while replicas start; after this long with no token we say so
  // instead of looking frozen.
  const WAKING_AFTER_MS = 1000;

  const $ = (sel, root) => (root || document).querySelector(sel);
  const panes = [$("#pane-a"), $("#pane-b")];
  let running = [];

  // ---- key handling ------------------------------------------------------------------------

  function keyFromFragment() {
    const hash = window.location.hash.replace(/^#/, "");
    if (!hash) return null;
    const params = new URLSearchParams(hash);
    const key = params.get("key");
    // Remove the fragment whatever it held: a key must not linger in the address bar or history.
    history.replaceState(null, "", window.location.pathname + window.location.search);
    return key;
  }

  function currentKey() {
    return sessionStorage.getItem(KEY_STORE) || "";
  }

  function setKey(key) {
    key = (key || "").trim();
    if (!KEY_RE.test(key)) {
      setKeyStatus("that does not look like a warmstart key (ws_live_ + 64 hex)", true);
      return false;
    }
    sessionStorage.setItem(KEY_STORE, key);
    $("#key").value = "";
    setKeyStatus("key " + key.slice(0, 12) + "…" + key.slice(-4) + " in use (this tab only)", false);
    return true;
  }

  function setKeyStatus(text, bad) {
    const el = $("#key-status");
    el.textContent = text;
    el.classList.toggle("bad", !!bad);
  }

  // ---- banner + quota ----------------------------------------------------------------------

  function showBanner(text, kind) {
    const el = $("#banner");
    el.textContent = text;
    el.className = "banner " + (kind || "error");
    el.hidden = !text;
  }

  // Concurrent runs (side by side) answer in any order, so a later response may carry an older
  // count: within one quota window keep the lowest remaining seen; a later reset starts a new window.
  let quotaWindow = null; // {remaining, resetAt}

  function updateQuota(headers) {
    const remainingHeader = headers.get("x-ratelimit-remaining-requests");
    const limit = headers.get("x-ratelimit-limit-requests");
    if (limit !== null) $("#limit").textContent = " / " + limit;
    if (remainingHeader === null) return;
    const remaining = parseInt(remainingHeader, 10);
    if (isNaN(remaining)) return;
    const resetIn = parseResetSeconds(headers.get("x-ratelimit-reset-requests"));
    const resetAt = resetIn === null ? null : Date.now() / 1000 + resetIn;
    const sameWindow = quotaWindow !== null && resetAt !== null && quotaWindow.resetAt !== null &&
      resetAt <= quotaWindow.resetAt + 2;
    quotaWindow = {
      remaining: sameWindow ? Math.min(quotaWindow.remaining, remaining) : remaining,
      resetAt: sameWindow ? Math.max(quotaWindow.resetAt, resetAt) : resetAt,
    };
    $("#remaining").textContent = String(quotaWindow.remaining);
  }

  // Reset times come as seconds ("3600"), OpenAI-style durations ("6h12m3s", "250ms") or an
  // HTTP date; show them as "5h 12m".
  function parseResetSeconds(value) {
    if (value === null || value === undefined || value === "") return null;
    value = String(value).trim();
    if (/^\d+(\.\d+)?$/.test(value)) return parseFloat(value);
    const m = value.match(/^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$/);
    if (m && m[0]) {
      return (+(m[1] || 0)) * 3600 + (+(m[2] || 0)) * 60 + (+(m[3] || 0)) + (+(m[4] || 0)) / 1000;
    }
    const t = Date.parse(value);
    if (!isNaN(t)) return Math.max(0, (t - Date.now()) / 1000);
    return null;
  }

  function humanDuration(seconds) {
    if (seconds === null) return "a while";
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  // ---- models ------------------------------------------------------------------------------

  async function loadModels() {
    const key = currentKey();
    if (!key) {
      showBanner("Paste a playground key above (or open /playground#key=…) to start.", "info");
      return;
    }
    let resp;
    try {
      resp = await fetch("/v1/models", { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
    } catch (e) {
      showBanner("cannot reach the endpoint: " + e.message, "error");
      return;
    }
    // No quota update here: /v1/models is free, and its rate headers describe the plan's
    // concurrency, not this key's daily count. The count shows after the first completion.
    if (!resp.ok) {
      showBanner(await errorText(resp), "error");
      return;
    }
    const body = await resp.json();
    const ids = (body.data || []).map((m) => m.id);
    panes.forEach((pane, i) => {
      const sel = $(".model", pane);
      const previous = sel.value;
      sel.replaceChildren();
      ids.forEach((id) => sel.append(new Option(id, id)));
      // Side by side is only useful on two different variants: preselect the second one for B.
      const wanted = previous || ids[Math.min(i, ids.length - 1)];
      if (ids.includes(wanted)) sel.value = wanted;
    });
    showBanner("", "info");
  }

  async function errorText(resp) {
    let message = resp.statusText || "request failed";
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON: keep the status text */ }
    if (resp.status === 401 || resp.status === 403) {
      return message + " — paste a valid playground key above.";
    }
    return resp.status + ": " + message;
  }

  // ---- one streamed run --------------------------------------------------------------------

  function setState(pane, state, text) {
    pane.dataset.state = state;
    $(".state", pane).textContent = text;
  }

  function resetPane(pane) {
    $(".output", pane).textContent = "";
    ["prompt-tokens", "completion-tokens", "ttft", "latency", "tps"].forEach((c) => {
      $("." + c, pane).textContent = "–";
    });
  }

  function fmtSeconds(ms) {
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  }

  async function run(pane, request, controller) {
    const key = currentKey();
    resetPane(pane);
    pane.dataset.keepalives = "0";
    setState(pane, "sending", "sending…");
    const out = $(".output", pane);
    const t0 = performance.now();
    let tFirst = null, tLast = null, chunks = 0, usage = null, waking = false;

    const wake = () => {
      if (tFirst !== null) return;
      waking = true;
      setState(pane, "waking",
        "waking the endpoint… " + Math.round((performance.now() - t0) / 1000) + " s (a replica is starting)");
    };
    // Ticks once a second so the waking message shows how long the wake has taken so far.
    const wakeTimer = setInterval(() => {
      if (performance.now() - t0 >= WAKING_AFTER_MS) wake();
    }, 250);

    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + key },
        body: JSON.stringify(request),
        signal: controller.signal,
        cache: "no-store",
      });
      if (!resp.ok) {
        updateQuota(resp.headers);
        if (resp.status === 429 && (resp.headers.get("x-should-retry") || "").toLowerCase() === "false") {
          const reset = parseResetSeconds(resp.headers.get("x-ratelimit-reset-requests"))
            ?? parseResetSeconds(resp.headers.get("retry-after"));
          const msg = "daily limit reached, resets in " + humanDuration(reset);
          if (quotaWindow !== null) quotaWindow.remaining = 0;
          $("#remaining").textContent = "0";
          showBanner(msg, "error");
          setState(pane, "capped", msg);
          return;
        }
        const text = await errorText(resp);
        const retry = parseResetSeconds(resp.headers.get("retry-after"));
        setState(pane, "error", text + (retry !== null ? " (retry in " + humanDuration(retry) + ")" : ""));
        return;
      }

      // A held stream (the gate waiting for a replica) commits its headers before admission, so
      // its rate headers describe the capacity it lacked, not this key's daily count: use them
      // only when the answer starts without a hold.
      let quotaPending = true;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "", done = false;
      while (!done) {
        const { value, done: eof } = await reader.read();
        if (eof) break;
        buf += value;
        // SSE events end with a blank line; keep any partial event for the next read.
        const parts = buf.split(/\r?\n\r?\n/);
        buf = parts.pop();
        for (const part of parts) {
          const ev = parseEvent(part);
          if (ev.comment && ev.data === null) {
            // `: keep-alive` while the gate holds the request for a replica that is starting.
            pane.dataset.keepalives = String(+(pane.dataset.keepalives || 0) + 1);
            quotaPending = false;
            wake();
            continue;
          }
          if (ev.data === null) continue;
          if (ev.data === "[DONE]") { done = true; break; }
          let obj;
          try { obj = JSON.parse(ev.data); } catch (e) { continue; }
          if (ev.event === "error" || obj.error) {
            const err = obj.error || obj;
            setState(pane, "error", "error: " + (err.message || "the stream failed"));
            return;
          }
          if (obj.usage) usage = obj.usage;
          const choice = (obj.choices || [])[0];
          const delta = choice && choice.delta && choice.delta.content;
          if (delta) {
            const now = performance.now();
            if (tFirst === null) {
              tFirst = now;
              if (quotaPending) updateQuota(resp.headers);
              setState(pane, "streaming",
                waking ? "streaming (woke in " + fmtSeconds(now - t0) + ")" : "streaming…");
              $(".ttft", pane).textContent = fmtSeconds(now - t0);
            }
            tLast = now;
            chunks += 1;
            out.append(delta);
          }
        }
      }
      const tEnd = performance.now();
      const completion = usage ? usage.completion_tokens : chunks;
      $(".prompt-tokens", pane).textContent = usage ? usage.prompt_tokens : "–";
      $(".completion-tokens", pane).textContent = completion;
      $(".latency", pane).textContent = fmtSeconds(tEnd - t0);
      if (tFirst !== null && tLast > tFirst && completion > 1) {
        $(".tps", pane).textContent = ((completion - 1) / ((tLast - tFirst) / 1000)).toFixed(1);
      }
      setState(pane, "done", "done");
    } catch (e) {
      if (e.name === "AbortError") setState(pane, "stopped", "stopped");
      else setState(pane, "error", "connection failed: " + e.message);
    } finally {
      clearInterval(wakeTimer);
    }
  }

  function parseEvent(text) {
    const ev = { event: "message", data: null, comment: false };
    const data = [];
    for (const line of text.split(/\r?\n/)) {
      if (line.startsWith(":")) { ev.comment = true; continue; }
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") ev.event = value;
    }
    if (data.length) ev.data = data.join("\n");
    return ev;
  }

  // ---- send / stop -------------------------------------------------------------------------

  function buildRequest(model) {
    const messages = [];
    const system = $("#system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: $("#user").value });
    const req = {
      model: model || "default",
      messages,
      stream: true,
      stream_options: { include_usage: true },
    };
    const temperature = parseFloat($("#temperature").value);
    if (!isNaN(temperature)) req.temperature = temperature;
    const maxTokens = parseInt($("#max-tokens").value, 10);
    if (!isNaN(maxTokens)) req.max_tokens = maxTokens;
    return req;
  }

  async function send(ev) {
    if (ev) ev.preventDefault();
    if (running.length) return;
    if (!currentKey()) {
      showBanner("Paste a playground key above first.", "error");
      $("#key").focus();
      return;
    }
    if (!$("#user").value.trim()) {
      showBanner("Write a user prompt first.", "error");
      return;
    }
    showBanner("", "info");
    const active = $("#compare").checked ? panes : [panes[0]];
    $("#send").disabled = true;
    $("#stop").disabled = false;
    running = active.map((pane) => {
      const controller = new AbortController();
      return { controller, done: run(pane, buildRequest($(".model", pane).value), controller) };
    });
    await Promise.all(running.map((r) => r.done));
    running = [];
    $("#send").disabled = false;
    $("#stop").disabled = true;
  }

  function stop() {
    running.forEach((r) => r.controller.abort());
  }

  // ---- wiring ------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("#endpoint-url").textContent = window.location.origin + "/v1";
    const fromFragment = keyFromFragment();
    if (fromFragment) setKey(fromFragment);
    else if (currentKey()) setKeyStatus("key " + currentKey().slice(0, 12) + "…" + currentKey().slice(-4) + " in use (this tab only)");
    $("#key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      if (setKey($("#key").value)) loadModels();
    });
    $("#forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORE);
      setKeyStatus("no key", false);
      showBanner("Paste a playground key above (or open /playground#key=…) to start.", "info");
    });
    $("#compare").addEventListener("change", () => { panes[1].hidden = !$("#compare").checked; });
    $("#prompt-form").addEventListener("submit", send);
    $("#user").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e);
    });
    $("#stop").addEventListener("click", stop);
    panes[1].hidden = !$("#compare").checked;
    loadModels();
  });
})();
