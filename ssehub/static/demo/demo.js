// The ssehub demo dashboard: live downloads over one ssehub.js connection, no polling, no build step.
//
// State comes from one snapshot (GET /demo/state, at load and after a reset) and then only from events.
// Every event the simulator publishes carries `seq`, one counter over the three channels: the page checks
// that it received each once, in order, across reconnects and page reloads (window.demo, for the tests too).

const prefix = document.documentElement.dataset.prefix;
const { SSEHubClient } = await import(`${prefix}/client.js`);

const CHANNELS = ["download:updates", "queue:updates", "system:notifications"];
const SEQ_KEY = "ssehub-demo:seq";
const MAX_NOTIFICATIONS = 40;

const $ = (id) => document.getElementById(id);
const stored = sessionStorage.getItem(SEQ_KEY);

/** What the page received, for people (the header) and for tests. */
const demo = (window.demo = {
  seqs: [], // every seq received, in order (bounded)
  gaps: 0, // events missing between two received ones
  duplicates: 0, // events received again
  resets: 0,
  events: 0,
  lastSeq: stored === null ? null : Number(stored), // continuity survives a reload: the client resumes too
  resumedFrom: stored === null ? null : Number(stored),
  states: [], // connection states seen, e.g. "reconnecting:2"
});

const rows = new Map(); // download_id -> <li>
let snapshotSeq = -1;
const recent = []; // recent events, re-applied on top of a snapshot older than them

// -- formatting ----------------------------------------------------------------------------------------------

function bytes(n) {
  if (n >= 1024 ** 3) return `${(n / 1024 ** 3).toFixed(2)} GB`;
  if (n >= 1024 ** 2) return `${(n / 1024 ** 2).toFixed(n >= 100 * 1024 ** 2 ? 0 : 1)} MB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${n} B`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds}s left`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${String(seconds % 60).padStart(2, "0")}s left`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m left`;
}

function extension(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 && name.length - dot <= 9 ? name.slice(dot + 1, dot + 5) : "file";
}

// -- sequence check ------------------------------------------------------------------------------------------

function track(seq) {
  if (typeof seq !== "number") return;
  demo.events += 1;
  if (demo.lastSeq !== null) {
    if (seq <= demo.lastSeq) demo.duplicates += 1;
    else if (seq > demo.lastSeq + 1) demo.gaps += seq - demo.lastSeq - 1;
  }
  if (demo.lastSeq === null || seq > demo.lastSeq) demo.lastSeq = seq;
  demo.seqs.push(seq);
  if (demo.seqs.length > 20000) demo.seqs.splice(0, 10000);
  sessionStorage.setItem(SEQ_KEY, String(demo.lastSeq));
  $("seq").textContent = `#${demo.lastSeq}`;
  const ok = demo.gaps === 0 && demo.duplicates === 0;
  const check = $("seq-check");
  check.dataset.ok = String(ok);
  check.textContent = ok ? "no gaps" : `${demo.gaps} missing · ${demo.duplicates} repeated`;
  $("events-count").textContent = String(demo.events);
  $("last-id").textContent = client.lastEventId || "—";
}

// -- rendering -----------------------------------------------------------------------------------------------

function row(state) {
  let li = rows.get(state.download_id);
  if (li === undefined) {
    li = document.createElement("li");
    li.className = "download";
    li.dataset.id = state.download_id;
    li.innerHTML = `
      <div class="file-icon"></div>
      <div>
        <div class="download-top"><span class="download-name"></span><span class="badge"></span></div>
        <div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"><div class="bar-fill"></div></div>
        <div class="meta"><span class="pct"></span><span class="amount"></span><span class="speed"></span><span class="eta"></span></div>
      </div>
      <div class="actions">
        <button type="button" data-action="pause">Pause</button>
        <button type="button" data-action="resume">Resume</button>
        <button type="button" data-action="cancel" class="danger">Cancel</button>
      </div>`;
    li.querySelector(".file-icon").textContent = extension(state.name);
    li.querySelector(".download-name").textContent = state.name;
    li.querySelector(".download-name").title = state.name;
    rows.set(state.download_id, li);
    $("downloads").append(li);
  }
  li.dataset.status = state.status;
  li.querySelector(".badge").textContent = state.status;
  li.querySelector(".bar").setAttribute("aria-valuenow", String(state.progress));
  li.querySelector(".bar-fill").style.width = `${state.progress}%`;
  li.querySelector(".pct").textContent = `${state.progress.toFixed(1)}%`;
  li.querySelector(".amount").textContent = `${bytes(state.downloaded)} of ${bytes(state.size)}`;
  li.querySelector(".speed").textContent = state.status === "downloading" ? `${bytes(state.speed)}/s` : "";
  li.querySelector(".eta").textContent = state.status === "downloading" ? duration(state.eta) : "";
  $("empty").hidden = rows.size > 0;
  return li;
}

function queue(data) {
  const keep = new Set(data.downloads.map((d) => d.download_id));
  for (const [id, li] of rows) {
    if (!keep.has(id)) {
      li.remove();
      rows.delete(id);
    }
  }
  // Unfinished downloads first, then finished ones, each in the queue's order (moving existing nodes keeps
  // their state and transitions).
  const finished = (state) => state.status === "completed" || state.status === "cancelled";
  const ordered = [...data.downloads.filter((s) => !finished(s)), ...data.downloads.filter(finished)];
  for (const state of ordered) $("downloads").append(row(state));
  $("stat-active").textContent = String(data.active);
  $("stat-queued").textContent = String(data.queued);
  $("stat-paused").textContent = String(data.paused);
  $("stat-completed").textContent = String(data.completed);
  $("stat-speed").textContent = `${bytes(data.total_speed)}/s`;
  $("empty").hidden = rows.size > 0;
}

function notify(message, level = "info", time = Date.now() / 1000) {
  const li = document.createElement("li");
  li.className = "notification";
  li.dataset.level = level;
  const stamp = new Date(time * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  li.innerHTML = `<span class="level"></span><div><p></p><time></time></div>`;
  li.querySelector("p").textContent = message;
  li.querySelector("time").textContent = stamp;
  const list = $("notifications");
  list.prepend(li);
  while (list.children.length > MAX_NOTIFICATIONS) list.lastElementChild.remove();
}

// -- events and snapshots ------------------------------------------------------------------------------------

const handlers = {
  download_progress: (data) => row(data),
  queue_update: (data) => queue(data),
  system_notification: (data) => notify(data.message, data.level, data.time),
};

function receive(type, data) {
  track(data.seq);
  recent.push({ type, data });
  if (recent.length > 300) recent.splice(0, 100);
  // An event older than the snapshot on screen is already in it. Before the first snapshot everything is
  // shown; the snapshot then replaces it.
  if (data.seq > snapshotSeq) handlers[type](data);
}

async function loadSnapshot() {
  const response = await fetch("/demo/state", { cache: "no-store" });
  if (!response.ok) throw new Error(`GET /demo/state answered ${response.status}`);
  const snapshot = await response.json();
  snapshotSeq = snapshot.seq;
  queue(snapshot);
  $("notifications").replaceChildren();
  for (const n of snapshot.notifications) notify(n.message, n.level, n.time);
  // Events that arrived while the snapshot was on its way and are newer than it.
  for (const { type, data } of recent) {
    if (data.seq > snapshot.seq) handlers[type](data);
  }
}

const client = new SSEHubClient(`${prefix}/stream?channels=${CHANNELS.join(",")}`, {
  storage: sessionStorage,
  storageKey: "ssehub-demo:lastEventId",
  initialRetryDelay: 500,
  maxRetryDelay: 8000,
  onReset: () => {
    // History no longer reaches back to our last event (e.g. a restarted hub on the memory broker): the
    // sequence starts over, and the state on screen may be stale.
    demo.resets += 1;
    demo.lastSeq = null;
    recent.length = 0; // events of the previous history: the snapshot replaces them all
    snapshotSeq = -1;
    sessionStorage.removeItem(SEQ_KEY);
    loadSnapshot()
      .then(() => notify("The hub's history no longer covers this page: reloaded the queue", "warning"))
      .catch((error) => notify(String(error), "error"));
  },
});
window.demoClient = client;
for (const type of Object.keys(handlers)) client.on(type, (data) => receive(type, data));

function showState(state, info) {
  const pill = $("connection");
  pill.dataset.state = state;
  document.body.dataset.connection = state;
  demo.states.push(state === "reconnecting" ? `reconnecting:${info.attempt}` : state);
  if (demo.states.length > 500) demo.states.splice(0, 250);
  const text = {
    connecting: "Connecting…",
    open: "Connected",
    reconnecting: `Reconnecting · attempt ${info.attempt}`,
    closed: "Disconnected",
  }[state];
  if (state === "closed") {
    $("offline").textContent = `Disconnected${info.error ? `: ${info.error.message || info.error}` : ""}. Reload the page to try again.`;
  }
  $("connection-text").textContent = text;
  pill.title = info.error ? String(info.error.message || info.error) : "";
}
client.onState(showState);
showState(client.state, { attempt: client.attempt }); // the first change may have happened already

loadSnapshot().catch((error) => notify(`Could not load the queue: ${error.message}`, "error"));

// -- actions -------------------------------------------------------------------------------------------------

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}),
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(problem.error || `HTTP ${response.status}`);
  }
  return response.json();
}

$("downloads").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (button === null) return;
  const id = button.closest(".download").dataset.id;
  button.disabled = true;
  try {
    // The answer is not rendered: the change arrives as an event like everyone else's.
    await post(`/demo/downloads/${encodeURIComponent(id)}/${button.dataset.action}`);
  } catch (error) {
    notify(error.message, "error");
  } finally {
    button.disabled = false;
  }
});

$("add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("add-name").value.trim();
  if (!name) return;
  try {
    await post("/demo/downloads", { name, size_mb: Number($("add-size").value) });
    $("add-name").value = "";
  } catch (error) {
    notify(error.message, "error");
  }
});
