// The chat page of `edgewise serve`: plain JavaScript over the server's own OpenAI-compatible API, no build step and
// no network beyond this server. Every URL is relative to the page, so the page works behind a reverse proxy's path
// prefix. Each pane is one conversation with its own model (an adapter or the base); "compare two" sends each
// question to both panes at once. Answers stream in (server-sent events) and "stop" aborts them.
"use strict";

const $ = (selector) => document.querySelector(selector);
const STORE = "edgewise-chat";
const state = {key: sessionStorage.getItem("edgewise-key") || "", models: [], busy: 0};
const panes = [...document.querySelectorAll(".pane")].map((el) => ({
  el, select: el.querySelector(".model"), list: el.querySelector(".messages"), history: [], controller: null,
}));

function headers() {
  const h = {"Content-Type": "application/json"};
  if (state.key) h.Authorization = `Bearer ${state.key}`;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

function setStatus(text) { $("#status").textContent = text; }

function askForKey(message) {
  $("#key-form").hidden = false;
  $("#key-error").textContent = message || "";
  setStatus("this server needs an API key");
  $("#key").focus();
}

async function loadModels() {
  const response = await fetch("v1/models", {headers: headers()});
  if (response.status === 401) {
    askForKey(state.key ? `the server refused this key: ${await errorText(response)}` : "");
    return false;
  }
  if (!response.ok) {
    setStatus(`cannot list the models: ${await errorText(response)}`);
    return false;
  }
  state.models = (await response.json()).data.map((m) => m.id);
  $("#key-form").hidden = true;
  panes.forEach((pane, i) => {
    const previous = pane.select.value;
    pane.select.replaceChildren(...state.models.map((id) => new Option(id, id)));
    const wanted = previous || (i === 1 && state.models.length > 1 ? state.models[1] : state.models[0]);
    if (state.models.includes(wanted)) pane.select.value = wanted;
  });
  restore();
  setStatus(`ready · ${state.models.length} model${state.models.length === 1 ? "" : "s"}`);
  $("#send").disabled = false;
  return true;
}

function settings() {
  const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));
  const body = {temperature: number("#temperature"), top_p: number("#top_p"), max_tokens: number("#max_tokens")};
  if ($("#seed").value !== "") body.seed = number("#seed");
  return body;
}

function addMessage(pane, role, text) {
  const item = document.createElement("li");
  item.className = role;
  item.dataset.role = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  item.append(body);
  pane.list.append(item);
  pane.list.scrollTop = pane.list.scrollHeight;
  return item;
}

function finish(item, stateName, meta) {
  item.classList.remove("streaming");
  item.dataset.state = stateName;
  if (stateName === "failed") item.classList.add("failed");
  if (meta) {
    const line = document.createElement("span");
    line.className = "meta";
    line.textContent = meta;
    item.append(line);
  }
}

// One answer, streamed into `item`; resolves when the stream ends, fails or is stopped.
async function answer(pane, item) {
  const model = pane.select.value;
  const system = $("#system").value.trim();
  const messages = [...(system ? [{role: "system", content: system}] : []), ...pane.history];
  pane.controller = new AbortController();
  const text = item.querySelector(".text");
  const started = performance.now();
  let tokens = 0, reason = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), signal: pane.controller.signal,
      body: JSON.stringify({model, messages, stream: true, stream_options: {include_usage: true}, ...settings()}),
    });
    if (!response.ok) {
      const message = await errorText(response);
      if (response.status === 401) askForKey(`the server refused this key: ${message}`);
      text.textContent = message;
      finish(item, "failed", `${model} · error ${response.status}`);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (event === "[DONE]") continue;
        const chunk = JSON.parse(event);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) text.textContent += choice.delta.content;
          if (choice.finish_reason) reason = choice.finish_reason;
        }
        pane.list.scrollTop = pane.list.scrollHeight;
      }
    }
    const seconds = (performance.now() - started) / 1000;
    pane.history.push({role: "assistant", content: text.textContent});
    finish(item, "done", `${model} · ${tokens} tokens · ${(tokens / seconds).toFixed(1)} tok/s · ${reason}`);
  } catch (error) {
    if (error.name === "AbortError") {
      pane.history.push({role: "assistant", content: text.textContent});
      finish(item, "stopped", `${model} · stopped`);
    } else {
      text.textContent += (text.textContent ? "\n" : "") + error.message;
      finish(item, "failed", `${model} · error`);
    }
  } finally {
    pane.controller = null;
  }
}

function activePanes() { return panes.filter((pane) => !pane.el.hidden); }

async function send(event) {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question || state.busy) return;
  $("#question").value = "";
  const asked = activePanes();
  state.busy = asked.length;
  $("#send").disabled = true;
  $("#stop").disabled = false;
  await Promise.all(asked.map((pane) => {
    pane.history.push({role: "user", content: question});
    addMessage(pane, "user", question);
    const item = addMessage(pane, "assistant", "");
    item.classList.add("streaming");
    item.dataset.state = "streaming";
    return answer(pane, item);
  }));
  state.busy = 0;
  $("#send").disabled = false;
  $("#stop").disabled = true;
  save();
}

function stop() { panes.forEach((pane) => pane.controller && pane.controller.abort()); }

function save() {
  localStorage.setItem(STORE, JSON.stringify({
    compare: $("#compare").checked,
    panes: panes.map((pane) => ({model: pane.select.value, history: pane.history})),
  }));
}

function restore() {
  if (panes[0].history.length) return;
  let saved;
  try { saved = JSON.parse(localStorage.getItem(STORE) || "null"); } catch (_) { saved = null; }
  if (!saved) return;
  $("#compare").checked = Boolean(saved.compare);
  showCompare();
  saved.panes.forEach((stored, i) => {
    const pane = panes[i];
    if (!pane) return;
    if (state.models.includes(stored.model)) pane.select.value = stored.model;
    pane.history = stored.history || [];
    pane.history.forEach((m) => finish(addMessage(pane, m.role, m.content), "done"));
  });
}

function clear() {
  stop();
  panes.forEach((pane) => { pane.history = []; pane.list.replaceChildren(); });
  save();
}

function showCompare() { panes[1].el.hidden = !$("#compare").checked; }

$("#ask").addEventListener("submit", send);
$("#stop").addEventListener("click", stop);
$("#clear").addEventListener("click", clear);
$("#compare").addEventListener("change", () => { showCompare(); save(); });
panes.forEach((pane) => pane.select.addEventListener("change", save));
$("#question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#ask").requestSubmit();
  }
});
$("#settings-button").addEventListener("click", () => {
  const shown = $("#settings").hidden;
  $("#settings").hidden = !shown;
  $("#settings-button").setAttribute("aria-expanded", String(shown));
});
$("#key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = $("#key").value;
  sessionStorage.setItem("edgewise-key", state.key);
  await loadModels();
});
$("#send").disabled = true;
loadModels().catch((error) => setStatus(`cannot reach the server: ${error.message}`));
