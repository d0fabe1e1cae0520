// xlsr serve's page: pick or record audio, send it to the server's API, show what comes back.
// Plain JavaScript, no build step, nothing loaded from the network but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { audio: null, name: "", models: [], last: null };

function headers() {
  const key = sessionStorage.getItem("xlsr-key") || $("key").value;
  return key ? { Authorization: "Bearer " + key } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(path, form) {
  const response = await fetch(path, { method: form ? "POST" : "GET", body: form, headers: headers() });
  if (response.status === 401) {
    $("key-row").hidden = false;
    throw new Error("this server needs an API key: type it above and try again");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error(body.error ? body.error.message : String(body));
  return body;
}

async function loadModels() {
  try {
    state.models = (await api("/v1/models")).data;
  } catch (e) {
    showError(e.message);
    return;
  }
  showError("");
  $("models").textContent = state.models.map((m) => m.id).join(" · ");
  const st = state.models.find((m) => m.kind === "st");
  const asr = state.models.find((m) => m.kind === "asr");
  $("task").querySelector("option[value=translate]").disabled = !st;
  $("task").querySelector("option[value=transcribe]").disabled = !asr;
  if (!asr && st) $("task").value = "translate";
  const target = $("target");
  target.replaceChildren();
  for (const lang of st ? st.languages : []) {
    const option = document.createElement("option");
    option.value = option.textContent = lang;
    if (lang.startsWith("en")) option.selected = true;
    target.append(option);
  }
  updateTask();
}

function updateTask() {
  $("target-label").hidden = $("task").value !== "translate";
  $("run").disabled = !state.audio;
}

function setAudio(blob, name) {
  state.audio = blob;
  state.name = name;
  $("source").textContent = name;
  $("player").src = URL.createObjectURL(blob);
  $("player").hidden = false;
  updateTask();
}

function endpoint() {
  return $("task").value === "translate" ? "/v1/audio/translations" : "/v1/audio/transcriptions";
}

function form(format) {
  const f = new FormData();
  f.append("file", state.audio, state.name);
  f.append("response_format", format);
  if ($("task").value === "translate") f.append("target_lang", $("target").value);
  return f;
}

function seconds(t) {
  const m = Math.floor(t / 60);
  return m + ":" + (t - 60 * m).toFixed(2).padStart(5, "0");
}

function showResult(result) {
  $("result-title").textContent = $("task").value === "translate" ? "Translation (" + result.language + ")" : "Transcript";
  $("text").textContent = result.no_speech ? "(no speech)" : result.text;
  const rows = (result.segments || []).map((s) => {
    const tr = document.createElement("tr");
    for (const [value, cls] of [[seconds(s.start), "time"], [seconds(s.end), "time"], [s.text, ""]]) {
      const td = document.createElement("td");
      td.textContent = value;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  });
  $("segments").querySelector("tbody").replaceChildren(...rows);
  $("result").hidden = false;
}

function showLanguages(found) {
  const bars = found.labels.map(({ label, probability }) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.dataset.label = label;
    const name = document.createElement("span");
    name.textContent = label;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * probability).toFixed(1) + "%";
    track.append(fill);
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = (100 * probability).toFixed(1) + "%";
    bar.append(name, track, p);
    return bar;
  });
  $("languages").replaceChildren(...bars);
  $("languages-panel").hidden = bars.length === 0;
}

async function run() {
  showError("");
  $("run").disabled = true;
  $("status").textContent = "working…";
  $("result").hidden = true;
  $("languages-panel").hidden = true;
  const started = performance.now();
  const jobs = [api(endpoint(), form("verbose_json")).then((r) => { state.last = r; showResult(r); })];
  if (state.models.some((m) => m.kind === "lid")) {
    const f = new FormData();
    f.append("file", state.audio, state.name);
    f.append("top_k", "5");
    jobs.push(api("/v1/identify", f).then(showLanguages));
  }
  const outcomes = await Promise.allSettled(jobs);
  const failed = outcomes.find((o) => o.status === "rejected");
  if (failed) showError(failed.reason.message);
  $("status").textContent = failed ? "" : "done in " + ((performance.now() - started) / 1000).toFixed(1) + " s";
  $("run").disabled = false;
}

async function download(format) {
  showError("");
  try {
    const text = format === "txt" ? state.last.text + "\n" : await api(endpoint(), form(format));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
    link.download = state.name.replace(/\.[^.]*$/, "") + "." + format;
    document.body.append(link);
    link.click();
    link.remove();
  } catch (e) {
    showError(e.message);
  }
}

let recorder = null;
async function record() {
  if (recorder) {
    recorder.stop();
    return;
  }
  showError("");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    showError("no microphone: " + e.message);
    return;
  }
  const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"].find((t) => MediaRecorder.isTypeSupported(t));
  recorder = new MediaRecorder(stream, type ? { mimeType: type } : {});
  const chunks = [];
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    const blob = new Blob(chunks, { type: recorder.mimeType });
    recorder = null;
    $("record").textContent = "Record";
    $("record").classList.remove("recording");
    setAudio(blob, blob.type.includes("ogg") ? "recording.ogg" : "recording.webm");
  };
  recorder.start();
  $("record").textContent = "Stop";
  $("record").classList.add("recording");
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) setAudio(file, file.name);
});
$("record").addEventListener("click", record);
$("task").addEventListener("change", updateTask);
$("run").addEventListener("click", run);
$("key").addEventListener("change", () => { sessionStorage.setItem("xlsr-key", $("key").value); loadModels(); });
for (const button of document.querySelectorAll("button[data-format]")) {
  button.addEventListener("click", () => download(button.dataset.format));
}
loadModels();
