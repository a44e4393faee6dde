// The page at /: one request at a time, a live mode that aborts the stale request (the server then
// drops it from its queue), image-to-image from a dropped, pasted or picked file, a strip of recent
// images, the request as a curl command, and every failure said plainly.
"use strict";

const $ = (id) => document.getElementById(id);
const RECENT_MAX = 8;
const LIVE_DELAY_MS = 300;
let inFlight = null; // the AbortController of the request running now
let liveTimer = null;
let inputImage = null; // {name, base64, url} of the image to start from, or null

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
    ...(inputImage && {image: inputImage.base64, strength: Number($("strength").value)}),
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

function hasPrompt() {
  if ($("prompt").value.trim()) return true;
  say("type a prompt first", true);
  return false;
}

async function generate() {
  if (!hasPrompt()) return;
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
    const from = body.image ? ` · from the image at strength ${body.strength}` : "";
    $("image").src = url;
    $("result").hidden = false;
    $("caption").textContent = `seed ${seed} · ${ms} ms · ${response.headers.get("X-Cache")} · ${response.headers.get("X-Engine")}${from}`;
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

// --- Image-to-image ------------------------------------------------------------------------------

// From an image only int(steps × strength) steps run, and the service refuses none: raise the steps
// to the fewest that run one, and say how many run.
function fitSteps() {
  const strength = Number($("strength").value);
  const runs = (steps) => Math.floor(steps * strength); // the service's int(), on the same doubles
  if (runs(Number($("num_inference_steps").value)) < 1) {
    const fit = [...$("num_inference_steps").options].find((option) => runs(Number(option.value)) >= 1);
    if (fit) $("num_inference_steps").value = fit.value;
  }
  showSteps();
}

function showSteps() {
  $("strength_value").textContent = Number($("strength").value).toFixed(2);
  const runs = Math.floor(Number($("num_inference_steps").value) * Number($("strength").value));
  $("steps_hint").textContent = inputImage ? `(${runs} run from the image)` : "";
}

// The preset nearest the input's aspect ratio, so that the service's resize does not squash it; the
// chosen size stays when it is as near as any, and a custom size is the user's.
function fitSize(width, height) {
  const distance = (value) => {
    const [w, h] = value.split("x").map(Number);
    return Math.abs(Math.log(w / h) - Math.log(width / height));
  };
  const presets = [...$("size").options].map((option) => option.value).filter((value) => value !== "custom");
  const best = Math.min(...presets.map(distance));
  if ($("size").value !== "custom" && distance($("size").value) > best) {
    $("size").value = presets.find((value) => distance(value) === best);
  }
}

const readBase64 = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1)); // the data URL's payload
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

async function useImage(file) {
  if (!file.type.startsWith("image/")) {
    say(`${file.name || "that"} is not an image: drop, paste or pick a PNG, JPEG or WebP file`, true);
    return;
  }
  let base64;
  try {
    base64 = await readBase64(file);
  } catch (error) {
    say(`cannot read ${file.name}: ${error.message}`, true);
    return;
  }
  if (inputImage) URL.revokeObjectURL(inputImage.url);
  if (file !== $("image_file").files[0]) $("image_file").value = ""; // a drop or paste replaces a picked file
  inputImage = {name: file.name || "input.png", base64, url: URL.createObjectURL(file)};
  $("input_image").src = inputImage.url;
  $("input_link").href = inputImage.url;
  $("input_link").download = inputImage.name;
  $("input").hidden = false;
  $("input_controls").hidden = false;
  say("");
  try {
    await $("input_image").decode();
    const {naturalWidth: width, naturalHeight: height} = $("input_image");
    $("input_caption").textContent = `${inputImage.name} · ${width} × ${height}`;
    fitSize(width, height);
  } catch {
    $("input_caption").textContent = `${inputImage.name} (this browser cannot show it)`;
  }
  fitSteps();
  changed();
}

function clearImage() {
  if (inputImage) URL.revokeObjectURL(inputImage.url);
  inputImage = null;
  $("image_file").value = "";
  $("input").hidden = true;
  $("input_controls").hidden = true;
  showSteps();
}

// --- Copy as curl --------------------------------------------------------------------------------

const shellQuote = (text) => `'${text.replaceAll("'", "'\\''")}'`;

// The very JSON the page sends. With an image, its base64 is read from the file where the command
// runs and the body goes through stdin: it is too long for one command-line argument (128 KiB on Linux).
function curlCommand(body) {
  const curl = `curl -sS -H 'Content-Type: application/json' -o sdxl-turbo.${body.format} ${shellQuote(`${location.origin}/generate-image`)}`;
  if (!body.image) return `${curl} -d ${shellQuote(JSON.stringify(body))}`;
  const json = JSON.stringify({...body, image: ""});
  const split = json.indexOf('"image":""') + '"image":"'.length; // a key: quotes inside strings are escaped
  return `{ printf '%s' ${shellQuote(json.slice(0, split))}; base64 < ${shellQuote(inputImage.name)} | tr -d '\\n'; `
    + `printf '%s' ${shellQuote(json.slice(split))}; } |\n  ${curl} --data-binary @-`;
}

async function copyCurl() {
  if (!hasPrompt()) return;
  const command = curlCommand(requestBody());
  $("curl").textContent = command;
  $("curl_note").textContent = inputImage
    ? `It reads ${inputImage.name} from the directory it runs in (a click on the input image saves it).` : "";
  $("curl_box").hidden = false;
  const where = inputImage ? `; run it where ${inputImage.name} is` : "";
  try {
    await navigator.clipboard.writeText(command);
    say(`copied the curl command${where}`);
  } catch { // no clipboard on plain http:// other than localhost
    say(`the browser would not copy; select the command below${where}`);
  }
}

// --- Events --------------------------------------------------------------------------------------

function changed() {
  $("curl_box").hidden = true; // it no longer says what the form would send
  if (!$("live").checked) return;
  clearTimeout(liveTimer);
  liveTimer = setTimeout(generate, LIVE_DELAY_MS);
}

$("form").addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    generate();
  }
});
$("random_seed").addEventListener("change", () => { $("seed").disabled = $("random_seed").checked; });
$("size").addEventListener("change", () => { $("custom_size").hidden = $("size").value !== "custom"; });
$("form").addEventListener("input", (event) => {
  if (event.target === $("live") || event.target === $("image_file")) return; // the file: changed() once read
  if (event.target === $("strength")) fitSteps();
  if (event.target === $("num_inference_steps")) showSteps();
  changed();
});
$("copy_curl").addEventListener("click", copyCurl);
$("image_file").addEventListener("change", () => { if ($("image_file").files[0]) useImage($("image_file").files[0]); });
$("clear_image").addEventListener("click", () => { clearImage(); changed(); });

const imageIn = (transfer) => [...(transfer?.files ?? [])].find((file) => file.type.startsWith("image/"));
document.addEventListener("paste", (event) => {
  const file = imageIn(event.clipboardData);
  if (!file) return; // text pastes into the fields as usual
  event.preventDefault();
  useImage(file);
});
document.addEventListener("dragover", (event) => {
  if (!event.dataTransfer.types.includes("Files")) return;
  event.preventDefault(); // allows the drop anywhere on the page
  $("input_zone").classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) $("input_zone").classList.remove("dragging"); // left the window
});
document.addEventListener("drop", (event) => {
  $("input_zone").classList.remove("dragging");
  if (!event.dataTransfer.types.includes("Files")) return;
  event.preventDefault(); // not the browser's own: opening the file in place of the page
  const file = event.dataTransfer.files[0];
  if (file) useImage(file);
});
