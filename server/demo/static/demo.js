// lift3d's demo page: submit one photo with the operator's key, follow the job through its
// links (server-sent events), show the stages, the views and the model, offer the GLB.
// The key stays in this tab's sessionStorage; nothing here talks to any other origin.

const KEY_STORAGE = "lift3d.apiKey";
const DEFAULT_STAGES = ["decode", "background", "multiview", "reconstruct", "finish"];

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem(KEY_STORAGE), file: null, objectUrls: [], stream: null };

function setState(name) {
  document.body.dataset.state = name;
}

function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

// A signed link carries its own credential (a query string); other links need the key.
// The server puts them in `signed_links` (short-lived), beside the plain `links`.
function linksOf(job) {
  return job.signed_links || job.links;
}

function isSigned(url) {
  return url.includes("?");
}

function headersFor(url) {
  return isSigned(url) ? {} : authHeaders();
}

async function problemText(response) {
  try {
    const body = await response.json();
    if (body && (body.title || body.detail)) {
      return `${body.title || response.status}: ${body.detail || ""}`.trim();
    }
  } catch (_) {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  setState("error");
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function forgetObjectUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

async function blobUrl(url) {
  const response = await fetch(url, { headers: headersFor(url) });
  if (!response.ok) throw new Error(await problemText(response));
  const objectUrl = URL.createObjectURL(await response.blob());
  state.objectUrls.push(objectUrl);
  return objectUrl;
}

// -- the key --------------------------------------------------------------------------------

function askForKey() {
  $("key-form").hidden = false;
  $("submit").disabled = true;
}

// The pipelines this server's profile loads, its default selected; each says whether its
// licences allow commercial use (/v1/info's licence report).
function showPipelines(pipelines) {
  const select = $("pipeline");
  select.replaceChildren();
  for (const pipeline of pipelines) {
    const option = document.createElement("option");
    option.value = pipeline.name;
    option.textContent = pipeline.commercial_use ? pipeline.name : `${pipeline.name} (non-commercial licence)`;
    option.selected = pipeline.default;
    select.append(option);
  }
  $("pipeline-field").hidden = pipelines.length < 2;
}

async function checkKey() {
  const response = await fetch("/v1/info", { headers: authHeaders() });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    askForKey();
    showError("That API key was refused.");
    return;
  }
  if (!response.ok) {
    showError(await problemText(response));
    return;
  }
  const info = await response.json();
  showPipelines(info.pipelines || []);
  $("key-form").hidden = true;
  $("submit").disabled = state.file === null;
  if (info.weights_mode && info.weights_mode !== "locked") {
    $("weights-note").textContent =
      `This server runs ${info.weights_mode} weights: random models, so the shapes are not a real model's.`;
  }
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  clearError();
  checkKey();
});

// -- the photo ------------------------------------------------------------------------------

function choose(file) {
  if (!file) return;
  state.file = file;
  clearError();
  const preview = $("preview");
  if (file.type.startsWith("image/")) {
    const url = URL.createObjectURL(file);
    preview.onload = () => URL.revokeObjectURL(url);
    preview.src = url;
    preview.hidden = false;
    $("drop-text").hidden = true;
  } else {
    preview.hidden = true;
    $("drop-text").hidden = false;
    $("drop-text").textContent = file.name;
  }
  $("submit").disabled = !state.key;
}

$("image").addEventListener("change", () => choose($("image").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});

// -- progress -------------------------------------------------------------------------------

function renderStages(names) {
  const list = $("stages");
  list.replaceChildren(
    ...names.map((name) => {
      const item = document.createElement("li");
      item.dataset.stage = name;
      item.textContent = name;
      return item;
    }),
  );
}

function markStage(name) {
  const list = $("stages");
  if (!list.querySelector(`[data-stage="${CSS.escape(name)}"]`)) {
    const item = document.createElement("li");
    item.dataset.stage = name;
    item.textContent = name;
    list.append(item);
  }
  let reached = false;
  for (const item of list.children) {
    const current = item.dataset.stage === name;
    item.classList.toggle("active", current);
    item.classList.toggle("done", !current && !reached);
    if (current) reached = true;
  }
}

function onEvent(type, data) {
  if (type === "status" || type === "queue") {
    const position = data.queue_position;
    $("queue").textContent =
      data.status === "queued" && position ? `Queued: #${position} in line` : `Status: ${data.status}`;
  } else if (type === "progress") {
    if (data.stage) markStage(data.stage);
    $("overall").value = data.progress || 0;
    $("queue").textContent = "Running";
  } else if (type === "end") {
    finish(data);
  }
}

// EventSource for signed links (it cannot send a header); a streamed fetch otherwise.
function follow(url) {
  if (isSigned(url)) {
    const source = new EventSource(url);
    state.stream = source;
    for (const type of ["status", "queue", "progress", "end"]) {
      source.addEventListener(type, (event) => {
        const data = JSON.parse(event.data);
        if (type === "end") source.close();
        onEvent(type, data);
      });
    }
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED && document.body.dataset.state === "running") {
        showError("The progress stream closed before the job ended.");
      }
    };
    return;
  }
  readStream(url).catch((error) => showError(String(error.message || error)));
}

async function readStream(url) {
  const response = await fetch(url, { headers: { ...authHeaders(), Accept: "text/event-stream" } });
  if (!response.ok) throw new Error(await problemText(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let split;
    while ((split = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, split);
      buffer = buffer.slice(split).replace(/^\r?\n\r?\n/, "");
      let type = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")));
    }
  }
}

// -- the result -----------------------------------------------------------------------------

function showQa(result) {
  const rows = [
    ["vertices", result.vertices],
    ["faces", result.faces],
    ["watertight", result.watertight],
    ["texture", result.texture_size && `${result.texture_size} px`],
    ["size", result.bytes && `${(result.bytes / 1024).toFixed(0)} KiB`],
    ["weights", result.weights_mode],
  ].filter(([, value]) => value !== undefined && value !== null && value !== "");
  $("qa").replaceChildren(
    ...rows.flatMap(([name, value]) => {
      const term = document.createElement("dt");
      term.textContent = name;
      const detail = document.createElement("dd");
      detail.textContent = String(value);
      return [term, detail];
    }),
  );
}

async function finish(job) {
  if (job.status !== "succeeded") {
    const reason = job.error ? `${job.error.code}: ${job.error.message}` : job.status;
    showError(`The job ${job.status}. ${reason}`);
    return;
  }
  for (const item of $("stages").children) {
    item.classList.remove("active");
    item.classList.add("done");
  }
  $("overall").value = 1;
  $("queue").textContent = "Done";
  try {
    const model = await blobUrl(linksOf(job).model);
    const download = $("download");
    download.href = model;
    download.download = `${job.id}.glb`;
    showQa(job.result || {});
    $("result").hidden = false;
    const viewer = $("viewer");
    if (customElements.get("model-viewer")) {
      viewer.addEventListener("load", () => (viewer.dataset.state = "loaded"), { once: true });
      viewer.addEventListener("error", () => (viewer.dataset.state = "error"), { once: true });
      viewer.dataset.state = "loading";
      viewer.src = model;
    } else {
      $("viewer-missing").hidden = false;
      viewer.hidden = true;
    }
    if (linksOf(job).views) {
      $("views").src = await blobUrl(linksOf(job).views);
      $("views-box").hidden = false;
    }
    setState("done");
  } catch (error) {
    showError(String(error.message || error));
  }
}

// -- submit ---------------------------------------------------------------------------------

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.file || !state.key) return;
  clearError();
  forgetObjectUrls();
  if (state.stream) state.stream.close();
  $("result").hidden = true;
  $("views-box").hidden = true;

  const form = new FormData();
  form.append("image", state.file);
  for (const field of new FormData($("job-form")).entries()) {
    const [name, value] = field;
    if (name !== "image" && value !== "") form.append(name, value);
  }
  if (!form.has("return_views")) form.append("return_views", "false");

  setState("submitting");
  $("submit").disabled = true;
  try {
    const response = await fetch("/v1/jobs", { method: "POST", headers: authHeaders(), body: form });
    if (!response.ok) {
      showError(await problemText(response));
      return;
    }
    const job = await response.json();
    renderStages(DEFAULT_STAGES);
    $("overall").value = 0;
    $("progress").hidden = false;
    onEvent("status", job);
    setState("running");
    follow(linksOf(job).events);
  } catch (error) {
    showError(String(error.message || error));
  } finally {
    $("submit").disabled = false;
  }
});

if (state.key) {
  checkKey();
} else {
  askForKey();
}
