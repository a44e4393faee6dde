// The page at /: one request at a time, a live mode that aborts the stale request (the server then
// drops it from its queue), a strip of recent images, and every failure said plainly.
"use strict";

const $ = (id) => document.getElementById(id);
const RECENT_MAX = 8;
const LIVE_DELAY_MS = 300;
let inFlight = null; // the AbortController of the request running now
let liveTimer = null;

function requestBody() {
  const [width, height] = $("size").value === "custom"
    ? [Number($("width").value), Number($("height").value)]
    : $("size").value.split("x").map(Number);
  return {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    num_inference_steps: Number($("num_inference_steps").value),
    guidance_scale: Number($("guidance_scale").value),
    seed: $("random_seed").checked ? -1 : Number($("seed").value),
    width,
    height,
    format: $("format").value,
  };
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// An error answer may be ours (JSON) or a proxy's (HTML, text): say what we can either way.
async function describeError(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;
    const field = error.field ? ` (${error.field})` : "";
    return `${response.status}: ${error.message}${field}`;
  } catch {
    const snippet = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200);
    return `${response.status} ${response.statusText}${snippet ? `: ${snippet}` : ""}`;
  }
}

function addRecent(url, seed, ms, format) {
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = url;
  link.download = `sdxl-turbo-${seed}.${format}`;
  link.title = "download";
  const image = document.createElement("img");
  image.src = url;
  image.alt = `seed ${seed}`;
  link.append(image);
  item.append(link, `seed ${seed} · ${ms} ms`);
  $("recent").prepend(item);
  while ($("recent").children.length > RECENT_MAX) {
    const last = $("recent").lastElementChild;
    URL.revokeObjectURL(last.querySelector("a").href);
    last.remove();
  }
}

async function generate() {
  if (!$("prompt").value.trim()) {
    say("type a prompt first", true);
    return;
  }
  if (inFlight) inFlight.abort(); // only the newest request matters
  const controller = new AbortController();
  inFlight = controller;
  const body = requestBody();
  $("generate").disabled = true;
  say("generating…");
  const started = performance.now();
  try {
    const response = await fetch("/generate-image", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      $("result").hidden = true; // never leave the previous image under an error
      say(await describeError(response), true);
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const ms = Math.round(performance.now() - started);
    const seed = response.headers.get("X-Seed");
    $("image").src = url;
    $("result").hidden = false;
    $("caption").textContent = `seed ${seed} · ${ms} ms · ${response.headers.get("X-Cache")} · ${response.headers.get("X-Engine")}`;
    say("");
    addRecent(url, seed, ms, body.format);
  } catch (error) {
    if (error.name === "AbortError") return; // replaced by a newer request
    $("result").hidden = true;
    say(`network error: ${error.message}`, true);
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      $("generate").disabled = false;
    }
  }
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
$("random_seed").addEventListener("change", () => { $("seed").disabled = $("random_seed").checked; });
$("size").addEventListener("change", () => { $("custom_size").hidden = $("size").value !== "custom"; });
$("form").addEventListener("input", (event) => {
  if (!$("live").checked || event.target === $("live")) return;
  clearTimeout(liveTimer);
  liveTimer = setTimeout(generate, LIVE_DELAY_MS);
});
