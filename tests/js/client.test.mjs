// Unit tests of ssehub/static/ssehub.js (the browser client) against a fake EventSource, fetch and clock.
// Run: node --test tests/js/
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SSEHubClient, SSEHubError, backoffDelay, parseRetryAfter } from "../../ssehub/static/ssehub.js";
import { FakeClock, errorResponse, fakeEventSourceClass, flush, scriptedFetch, streamResponse } from "./fakes.mjs";

const URL_A = "http://hub.test/api/v1/events/stream?channels=a";

/** A client on fakes, recording its states; `random` 0.5 puts every backoff at half its ceiling. */
async function setup(options = {}) {
  const ES = fakeEventSourceClass();
  const clock = new FakeClock();
  const states = [];
  const client = new SSEHubClient(options.url ?? URL_A, {
    EventSource: ES,
    timers: clock,
    random: () => 0.5,
    fetch: scriptedFetch(new Error("no fetch scripted")),
    ...options,
  });
  client.onState((state, info) => states.push({ state, ...info }));
  await flush();
  return {
    ES,
    clock,
    client,
    states,
    /** The newest EventSource. */
    get source() {
      return ES.instances.at(-1);
    },
  };
}

/** Silence reportError/console.error while `body` runs and return what was reported. */
async function capturingReports(body) {
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (error) => reported.push(error);
  try {
    await body();
  } finally {
    if (saved === undefined) delete globalThis.reportError;
    else globalThis.reportError = saved;
  }
  return reported;
}

describe("events", () => {
  test("listeners registered before the connection opens receive its events, and survive a reconnect", async () => {
    const { client, clock, source, ES } = await setup();
    const got = [];
    client.on("download_progress", (data) => got.push(data.progress));
    source.connected("1-0");
    source.emit("download_progress", { progress: 10 }, "2-0");
    source.drop();
    clock.advance(1000);
    ES.instances[1].connected("2-0");
    ES.instances[1].emit("download_progress", { progress: 20 }, "3-0");
    assert.deepEqual(got, [10, 20]);
  });

  test("a listener added while the stream is open starts receiving at once", async () => {
    const { client, source } = await setup();
    source.connected("1-0");
    const got = [];
    client.on("queue_update", (data) => got.push(data));
    source.emit("queue_update", { size: 3 }, "2-0");
    assert.deepEqual(got, [{ size: 3 }]);
  });

  test("JSON data arrives parsed and other data as its text, with the MessageEvent second", async () => {
    const { client, source } = await setup();
    const got = [];
    client.on("note", (data, event) => got.push([data, event.lastEventId]));
    source.connected("1-0");
    source.emit("note", { a: [1, 2] }, "2-0");
    source.emit("note", "plain text, not JSON", "3-0");
    source.emit("note", "42", "4-0");
    source.emit("note", "", "5-0");
    assert.deepEqual(got, [
      [{ a: [1, 2] }, "2-0"],
      ["plain text, not JSON", "3-0"],
      [42, "4-0"],
      ["", "5-0"],
    ]);
  });

  test("a throwing listener is reported and does not stop the other listeners or the client", async () => {
    const { client, source } = await setup();
    const got = [];
    const boom = new Error("app bug");
    client.on("x", () => {
      throw boom;
    });
    client.on("x", (data) => got.push(data));
    const reported = await capturingReports(async () => {
      source.connected("1-0");
      source.emit("x", { n: 1 }, "2-0");
    });
    assert.deepEqual(got, [{ n: 1 }]);
    assert.deepEqual(reported, [boom]);
    assert.equal(client.lastEventId, "2-0");
    assert.equal(client.state, "open");
  });

  test("connected and heartbeat events reach only listeners that ask for them by name", async () => {
    const { client, source } = await setup();
    const app = [];
    client.on("download_progress", (data) => app.push(data));
    source.connected("1-0");
    source.emit("heartbeat", { time: 1 });
    assert.deepEqual(app, []);
    const beats = [];
    const hellos = [];
    client.on("heartbeat", (data) => beats.push(data));
    client.on("connected", (data) => hellos.push(data.heartbeat_interval));
    source.emit("heartbeat", { time: 2 });
    source.emit("connected", { heartbeat_interval: 5 }, "1-0");
    assert.deepEqual(beats, [{ time: 2 }]);
    assert.deepEqual(hellos, [5]);
  });

  test("off and the function on returns both remove a listener", async () => {
    const { client, source } = await setup();
    const got = [];
    const first = (data) => got.push(["first", data]);
    const second = (data) => got.push(["second", data]);
    client.on("x", first);
    const unsubscribe = client.on("x", second);
    source.connected("1-0");
    source.emit("x", 1, "2-0");
    client.off("x", first);
    unsubscribe();
    source.emit("x", 2, "3-0");
    assert.deepEqual(got, [
      ["first", 1],
      ["second", 1],
    ]);
  });

  test("on rejects a listener that is not a function", async () => {
    const { client } = await setup();
    assert.throws(() => client.on("x", "nope"), TypeError);
  });
});

describe("state", () => {
  test("states go connecting, open, reconnecting with growing attempts, open again with attempt 0", async () => {
    const { client, clock, states, ES } = await setup();
    assert.equal(client.state, "connecting");
    ES.instances[0].connected("1-0");
    assert.equal(client.state, "open");
    ES.instances[0].drop();
    assert.equal(client.state, "reconnecting");
    assert.equal(client.attempt, 1);
    clock.advance(500); // attempt 1 waits 0.5 * 1000
    ES.instances[1].drop();
    assert.equal(client.attempt, 2);
    clock.advance(1000); // attempt 2 waits 0.5 * 2000
    ES.instances[2].connected("1-0");
    assert.equal(client.attempt, 0);
    assert.deepEqual(
      states.map((s) => [s.state, s.attempt, s.delay]),
      [
        ["connecting", 0, undefined],
        ["open", 0, undefined],
        ["reconnecting", 1, 500],
        ["reconnecting", 2, 1000],
        ["open", 0, undefined],
      ],
    );
    assert.equal(states[2].error.code, "DISCONNECTED");
    assert.equal(states[4].error, undefined);
  });

  test('client.on("state") is the same as onState', async () => {
    const { client, source } = await setup();
    const seen = [];
    client.on("state", (state, info) => seen.push([state, info.attempt]));
    source.connected("1-0");
    assert.deepEqual(seen, [["open", 0]]);
  });

  test("with autoConnect false nothing connects until connect()", async () => {
    const { client, ES, states } = await setup({ autoConnect: false });
    assert.equal(client.state, "closed");
    assert.equal(ES.instances.length, 0);
    client.connect();
    assert.equal(ES.instances.length, 1);
    assert.deepEqual(
      states.map((s) => s.state),
      ["connecting"],
    );
  });
});

describe("backoff", () => {
  test("backoffDelay is full jitter below a ceiling that doubles per attempt up to the cap", () => {
    assert.equal(
      backoffDelay(1, 1000, 30000, () => 0),
      0,
    );
    const ceilings = [1, 2, 3, 4, 5, 6, 7, 10].map((attempt) => backoffDelay(attempt, 1000, 30000, () => 1));
    assert.deepEqual(ceilings, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    for (let attempt = 1; attempt < 40; attempt += 1) {
      const delay = backoffDelay(attempt, 1000, 30000);
      assert.ok(delay >= 0 && delay < Math.min(30000, 1000 * 2 ** (attempt - 1)), `attempt ${attempt}: ${delay}`);
    }
  });

  test("the client waits growing, capped delays between failed attempts and opens nothing earlier", async () => {
    const { clock, ES, states } = await setup({ initialRetryDelay: 100, maxRetryDelay: 1000, random: () => 0.999 });
    ES.instances[0].connected("1-0");
    ES.instances[0].drop();
    const waits = [];
    for (let attempt = 1; attempt <= 7; attempt += 1) {
      const delay = states.at(-1).delay;
      waits.push(Math.round(delay));
      const before = ES.instances.length;
      clock.advance(delay - 1);
      assert.equal(ES.instances.length, before, `attempt ${attempt} opened early`);
      clock.advance(1);
      assert.equal(ES.instances.length, before + 1);
      ES.instances.at(-1).drop();
    }
    assert.deepEqual(waits, [100, 200, 400, 799, 999, 999, 999]);
  });

  test("the jitter spreads each delay over its whole range", async () => {
    const values = [0, 0.25, 0.75];
    const { clock, ES, states } = await setup({ random: () => values.shift() });
    ES.instances[0].drop();
    clock.advance(0);
    ES.instances[1].drop();
    clock.advance(500);
    ES.instances[2].drop();
    assert.deepEqual(
      states.slice(1).map((s) => s.delay),
      [0, 500, 3000],
    );
  });
});

describe("refused connects (the status is probed with fetch)", () => {
  test("a 503 with Retry-After is retried no earlier than Retry-After, with a jitter of at most initialRetryDelay", async () => {
    const fetch = scriptedFetch(errorResponse(503, "MAX_CONNECTIONS", { "retry-after": "5" }));
    const { client, clock, ES, states } = await setup({ fetch, random: () => 0.5 });
    ES.instances[0].refuse();
    assert.equal(client.state, "reconnecting");
    assert.equal(states.at(-1).delay, undefined); // probing
    await flush();
    const info = states.at(-1);
    assert.equal(info.delay, 5500);
    assert.equal(info.error.status, 503);
    assert.equal(info.error.code, "MAX_CONNECTIONS");
    assert.equal(info.error.retryAfter, 5000);
    assert.equal(fetch.calls[0].init.headers.accept, "text/event-stream");
    clock.advance(5499);
    assert.equal(ES.instances.length, 1);
    clock.advance(1);
    assert.equal(ES.instances.length, 2);
  });

  test("Retry-After is honoured even above maxRetryDelay", async () => {
    const fetch = scriptedFetch(errorResponse(429, "TOO_MANY", { "retry-after": "60" }));
    const { ES, states } = await setup({ fetch, random: () => 0, maxRetryDelay: 5000 });
    ES.instances[0].refuse();
    await flush();
    assert.equal(states.at(-1).delay, 60000);
  });

  test("a 502 from a proxy without Retry-After waits the ordinary backoff", async () => {
    const fetch = scriptedFetch(new Response("bad gateway", { status: 502, headers: { "content-type": "text/html" } }));
    const { ES, states } = await setup({ fetch });
    ES.instances[0].refuse();
    await flush();
    assert.equal(states.at(-1).delay, 500);
    assert.equal(states.at(-1).error.code, "HTTP_502");
  });

  test("401 and 403 end the client with the hub's error, and nothing retries", async () => {
    for (const status of [401, 403]) {
      const fetch = scriptedFetch(errorResponse(status, status === 401 ? "UNAUTHORIZED" : "FORBIDDEN"));
      const { client, clock, ES, states } = await setup({ fetch });
      ES.instances[0].refuse();
      await flush();
      assert.equal(client.state, "closed");
      assert.equal(client.attempt, 0);
      assert.equal(client.error.status, status);
      assert.equal(states.at(-1).error.code, status === 401 ? "UNAUTHORIZED" : "FORBIDDEN");
      assert.match(states.at(-1).error.message, /refused/);
      clock.advance(10 * 60 * 1000);
      assert.equal(ES.instances.length, 1);
      assert.equal(clock.timers.size, 0);
    }
  });

  test("a 404 for an unknown channel ends the client; connect() tries again", async () => {
    const fetch = scriptedFetch(errorResponse(404, "UNKNOWN_CHANNEL"));
    const { client, ES } = await setup({ fetch });
    ES.instances[0].refuse();
    await flush();
    assert.equal(client.state, "closed");
    assert.equal(client.error.code, "UNKNOWN_CHANNEL");
    client.connect();
    assert.equal(client.state, "connecting");
    assert.equal(client.error, undefined);
    assert.equal(ES.instances.length, 2);
  });

  test("a probe answered 200 reconnects at once and hangs up the probe's stream", async () => {
    let signal;
    const fetch = scriptedFetch((url, init) => {
      signal = init.signal;
      return streamResponse();
    });
    const { clock, ES, states } = await setup({ fetch });
    ES.instances[0].connected("7-0");
    ES.instances[0].refuse();
    await flush();
    assert.equal(states.at(-1).delay, 0);
    assert.ok(signal.aborted, "the probe's stream was not aborted");
    assert.equal(fetch.calls[0].url, ES.instances[0].url); // the refused URL itself
    clock.advance(0);
    assert.equal(ES.instances.length, 2);
  });

  test("a second refusal in a row that the probe answers 200 waits its backoff (no spinning)", async () => {
    const fetch = scriptedFetch(() => streamResponse());
    const { clock, ES, states } = await setup({ fetch });
    ES.instances[0].refuse();
    await flush();
    assert.equal(states.at(-1).delay, 0);
    clock.advance(0);
    ES.instances[1].refuse();
    await flush();
    assert.equal(states.at(-1).attempt, 2);
    assert.equal(states.at(-1).delay, 1000);
  });

  test("a 204 means stop: state closed, no retry", async () => {
    const fetch = scriptedFetch(new Response(null, { status: 204 }));
    const { client, clock, ES } = await setup({ fetch });
    ES.instances[0].refuse();
    await flush();
    assert.equal(client.state, "closed");
    assert.equal(client.error.code, "NO_CONTENT");
    clock.advance(60 * 60 * 1000);
    assert.equal(ES.instances.length, 1);
  });

  test("a probe that cannot reach the hub waits the backoff", async () => {
    const fetch = scriptedFetch(new TypeError("Failed to fetch"));
    const { client, ES, states } = await setup({ fetch });
    ES.instances[0].refuse();
    await flush();
    assert.equal(client.state, "reconnecting");
    assert.equal(states.at(-1).delay, 500);
    assert.equal(states.at(-1).error.code, "UNREACHABLE");
  });

  test("a 200 that is not an event stream (an HTML page) waits the backoff", async () => {
    const fetch = scriptedFetch(new Response("<html>", { status: 200, headers: { "content-type": "text/html" } }));
    const { ES, states } = await setup({ fetch });
    ES.instances[0].refuse();
    await flush();
    assert.equal(states.at(-1).error.code, "NOT_AN_EVENT_STREAM");
    assert.equal(states.at(-1).delay, 500);
  });

  test("parseRetryAfter reads seconds and HTTP dates", () => {
    const now = Date.parse("2026-01-01T00:00:00Z");
    assert.equal(parseRetryAfter("5", now), 5000);
    assert.equal(parseRetryAfter(" 0 ", now), 0);
    assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:30 GMT", now), 30000);
    assert.equal(parseRetryAfter("Wed, 31 Dec 2025 00:00:00 GMT", now), 0);
    assert.equal(parseRetryAfter("soon", now), undefined);
    assert.equal(parseRetryAfter(null, now), undefined);
  });
});

describe("watchdog", () => {
  test("a stream silent for twice the announced heartbeat interval (plus a second) is replaced", async () => {
    const { client, clock, ES, states } = await setup();
    ES.instances[0].connected("1-0", 2); // heartbeat every 2 s: dead after 5 s of silence
    for (let i = 0; i < 5; i += 1) {
      clock.advance(2000);
      ES.instances[0].emit("heartbeat", { time: i });
    }
    assert.equal(ES.instances.length, 1, "heartbeats kept it alive");
    clock.advance(4999);
    assert.equal(ES.instances.length, 1);
    clock.advance(1);
    assert.ok(ES.instances[0].closed);
    assert.equal(client.state, "reconnecting");
    assert.equal(states.at(-1).error.code, "HEARTBEAT_TIMEOUT");
    clock.advance(500);
    assert.equal(ES.instances.length, 2);
    assert.equal(ES.instances[1].resumeId, "1-0");
  });

  test("any event, not only heartbeats, keeps the stream alive", async () => {
    const { client, clock, ES } = await setup();
    client.on("x", () => {});
    ES.instances[0].connected("1-0", 1);
    for (let i = 0; i < 10; i += 1) {
      clock.advance(2500);
      ES.instances[0].emit("x", i, `${i + 2}-0`);
    }
    assert.equal(ES.instances.length, 1);
    assert.equal(client.state, "open");
  });

  test("a connect that never opens is abandoned after connectTimeout", async () => {
    const { clock, ES, states } = await setup({ connectTimeout: 10000 });
    clock.advance(9999);
    assert.equal(ES.instances.length, 1);
    clock.advance(1);
    assert.ok(ES.instances[0].closed);
    assert.equal(states.at(-1).error.code, "CONNECT_TIMEOUT");
  });
});

describe("resume", () => {
  test("every new EventSource carries the last id received as lastEventId, the first one the given id", async () => {
    const { client, clock, ES } = await setup({ lastEventId: "5-0" });
    assert.equal(ES.instances[0].resumeId, "5-0");
    assert.equal(new URL(ES.instances[0].url).searchParams.get("channels"), "a");
    client.on("x", () => {});
    ES.instances[0].connected("5-0");
    ES.instances[0].emit("x", 1, "6-0");
    ES.instances[0].emit("x", 2, "7-3");
    ES.instances[0].drop();
    clock.advance(500);
    assert.equal(ES.instances[1].resumeId, "7-3");
    assert.equal(client.lastEventId, "7-3");
  });

  test("ids of events the app does not listen to advance through the heartbeats that follow them", async () => {
    const { client, ES } = await setup();
    ES.instances[0].connected("1-0");
    ES.instances[0].emit("unheard", 1, "2-0"); // not listened to: invisible to the client
    ES.instances[0].emit("heartbeat", {}); // carries the last id, as a browser's MessageEvent does
    assert.equal(client.lastEventId, "2-0");
  });

  test("the last id is stored and a new client (a page reload) resumes from it", async () => {
    const items = new Map();
    const storage = { getItem: (key) => items.get(key) ?? null, setItem: (key, value) => items.set(key, value) };
    const first = await setup({ storage, storageKey: "k" });
    first.client.on("x", () => {});
    first.source.connected("1-0");
    first.source.emit("x", 1, "9-1");
    assert.equal(items.get("k"), "9-1");
    first.client.close();
    const second = await setup({ storage, storageKey: "k" });
    assert.equal(second.source.resumeId, "9-1");
    assert.equal(second.client.lastEventId, "9-1");
  });

  test("a storage that throws only costs the persistence", async () => {
    const storage = {
      getItem: () => null,
      setItem: () => {
        throw new Error("QuotaExceededError");
      },
    };
    const warn = console.warn;
    const warnings = [];
    console.warn = (...args) => warnings.push(args);
    try {
      const { client, source } = await setup({ storage });
      source.connected("1-0");
      source.connected("2-0");
      assert.equal(client.lastEventId, "2-0");
      assert.equal(warnings.length, 1);
    } finally {
      console.warn = warn;
    }
  });

  test("a reset event calls onReset with its data, reaches reset listeners, and moves the id on", async () => {
    const resets = [];
    const heard = [];
    const { client, source } = await setup({ lastEventId: "1-0", onReset: (info) => resets.push(info) });
    client.on("reset", (data) => heard.push(data.reason));
    source.connected("1-0");
    source.emit("reset", { reason: "history_expired", channels: ["a"] }, "50-0");
    assert.deepEqual(resets, [{ reason: "history_expired", channels: ["a"] }]);
    assert.deepEqual(heard, ["history_expired"]);
    assert.equal(client.lastEventId, "50-0");
  });

  test("a relative URL stays relative and keeps its own parameters", async () => {
    const { source } = await setup({ url: "/api/v1/events/stream?channels=a,b&download_id=4", lastEventId: "3-0" });
    assert.ok(source.url.startsWith("/api/v1/events/stream?"), source.url);
    const params = new URL(source.url, "http://x.invalid").searchParams;
    assert.equal(params.get("channels"), "a,b");
    assert.equal(params.get("download_id"), "4");
    assert.equal(params.get("lastEventId"), "3-0");
  });
});

describe("tokens and credentials", () => {
  test("a token function is called before every connect and its value sent as the token parameter", async () => {
    let calls = 0;
    const { clock, ES } = await setup({ token: () => `t${++calls}` });
    assert.equal(ES.instances[0].token, "t1");
    ES.instances[0].connected("1-0");
    ES.instances[0].drop();
    clock.advance(500);
    assert.equal(ES.instances[1].token, "t2");
    assert.equal(ES.instances[1].resumeId, "1-0");
    assert.equal(calls, 2);
  });

  test("an async token function is awaited; a rejection counts as a failed attempt", async () => {
    const answers = [async () => "a1", async () => Promise.reject(new Error("auth server down")), async () => "a3"];
    const { client, clock, ES, states } = await setup({ token: () => answers.shift()() });
    assert.equal(ES.instances[0].token, "a1");
    ES.instances[0].connected("1-0");
    ES.instances[0].drop();
    clock.advance(500);
    await flush();
    assert.equal(ES.instances.length, 1);
    assert.equal(client.attempt, 2);
    assert.equal(states.at(-1).error.code, "TOKEN_ERROR");
    clock.advance(1000);
    await flush();
    assert.equal(ES.instances[1].token, "a3");
  });

  test("a string token and withCredentials are passed to every EventSource", async () => {
    const { clock, ES } = await setup({ token: "fixed", withCredentials: true });
    ES.instances[0].drop();
    clock.advance(500);
    for (const source of ES.instances) {
      assert.equal(source.token, "fixed");
      assert.equal(source.withCredentials, true);
    }
  });

  test("withCredentials makes the probe send cookies too", async () => {
    const fetch = scriptedFetch(errorResponse(503, "X", { "retry-after": "1" }));
    const { ES } = await setup({ fetch, withCredentials: true });
    ES.instances[0].refuse();
    await flush();
    assert.equal(fetch.calls[0].init.credentials, "include");
  });
});

describe("close and connect", () => {
  test("close() closes the source and cancels the watchdog and every pending reconnect", async () => {
    const { client, clock, ES, states } = await setup();
    ES.instances[0].connected("1-0");
    client.close();
    assert.ok(ES.instances[0].closed);
    assert.equal(client.state, "closed");
    assert.equal(clock.timers.size, 0);
    ES.instances[0].drop(); // a late event of the closed source changes nothing
    clock.advance(60 * 60 * 1000);
    assert.equal(ES.instances.length, 1);
    assert.equal(states.at(-1).state, "closed");
    client.close();
    assert.equal(states.filter((s) => s.state === "closed").length, 1);
  });

  test("close() during a reconnect wait stops it", async () => {
    const { client, clock, ES } = await setup();
    ES.instances[0].drop();
    client.close();
    clock.advance(60 * 60 * 1000);
    assert.equal(ES.instances.length, 1);
    assert.equal(clock.timers.size, 0);
  });

  test("close() during a probe aborts it and nothing follows", async () => {
    let signal;
    const fetch = scriptedFetch(
      (url, init) =>
        new Promise((resolve, reject) => {
          signal = init.signal;
          signal.addEventListener("abort", () => reject(signal.reason));
        }),
    );
    const { client, clock, ES } = await setup({ fetch });
    ES.instances[0].refuse();
    client.close();
    await flush();
    assert.ok(signal.aborted);
    assert.equal(client.state, "closed");
    clock.advance(60 * 60 * 1000);
    assert.equal(ES.instances.length, 1);
  });

  test("close() while an async token is pending opens nothing", async () => {
    let resolve;
    const { client, ES } = await setup({ token: () => new Promise((r) => (resolve = r)) });
    client.close();
    resolve("late");
    await flush();
    assert.equal(ES.instances.length, 0);
  });

  test("close() right after construction means autoConnect never connects", async () => {
    const ES = fakeEventSourceClass();
    const client = new SSEHubClient(URL_A, { EventSource: ES, timers: new FakeClock() });
    client.close();
    await flush();
    assert.equal(ES.instances.length, 0);
    assert.equal(client.state, "closed");
  });

  test("connect() during a reconnect wait connects at once, once", async () => {
    const { client, clock, ES } = await setup({ random: () => 0.9 });
    ES.instances[0].connected("1-0");
    ES.instances[0].drop();
    client.connect();
    client.connect();
    assert.equal(ES.instances.length, 2);
    assert.equal(ES.instances[1].resumeId, "1-0");
    ES.instances[1].connected("1-0");
    clock.advance(60 * 1000);
    assert.equal(ES.instances.length, 2);
  });

  test("the browser's online event cuts a reconnect wait short, and is listened to only while waiting", async () => {
    const window = new EventTarget();
    const installed = new Set();
    globalThis.addEventListener = (type, fn) => {
      installed.add(fn);
      window.addEventListener(type, fn);
    };
    globalThis.removeEventListener = (type, fn) => {
      installed.delete(fn);
      window.removeEventListener(type, fn);
    };
    try {
      const { client, ES } = await setup({ random: () => 0.9 });
      ES.instances[0].connected("1-0");
      ES.instances[0].drop();
      assert.equal(ES.instances.length, 1);
      assert.equal(installed.size, 1);
      window.dispatchEvent(new Event("online"));
      assert.equal(ES.instances.length, 2);
      assert.equal(ES.instances[1].resumeId, "1-0");
      assert.equal(installed.size, 0);
      window.dispatchEvent(new Event("online")); // no longer waiting: nothing happens
      assert.equal(ES.instances.length, 2);
      ES.instances[1].drop();
      client.close();
      window.dispatchEvent(new Event("online"));
      assert.equal(ES.instances.length, 2);
      assert.equal(installed.size, 0); // close() left no listener behind
    } finally {
      delete globalThis.addEventListener;
      delete globalThis.removeEventListener;
    }
  });

  test("connect() after close() resumes from the last id", async () => {
    const { client, ES } = await setup();
    ES.instances[0].connected("4-0");
    client.close();
    client.connect();
    assert.equal(ES.instances[1].resumeId, "4-0");
    assert.equal(client.state, "connecting");
  });

  test("bad options are refused with a clear error", () => {
    const ES = fakeEventSourceClass();
    assert.throws(() => new SSEHubClient(URL_A, { EventSource: ES, initialRetryDelay: -1 }), /initialRetryDelay/);
    assert.throws(
      () => new SSEHubClient(URL_A, { EventSource: ES, initialRetryDelay: 5000, maxRetryDelay: 1000 }),
      /maxRetryDelay/,
    );
    assert.throws(() => new SSEHubClient(URL_A, { EventSource: undefined }), /EventSource/);
    assert.throws(() => new SSEHubClient(URL_A, { EventSource: ES, token: 42 }), /token/);
  });

  test("an invalid URL is refused at construction", () => {
    assert.throws(() => new SSEHubClient("http://[bad", { EventSource: fakeEventSourceClass() }), /invalid url/);
  });

  test("an EventSource the browser will not create ends the client instead of throwing into the app", async () => {
    class Forbidden {
      constructor() {
        throw new Error("SecurityError: refused by Content-Security-Policy");
      }
    }
    const { client, clock, states } = await setup({ EventSource: Forbidden, token: "secret-token" });
    assert.equal(client.state, "closed");
    assert.equal(states.at(-1).error.code, "EVENTSOURCE_ERROR");
    assert.doesNotMatch(states.at(-1).error.message, /secret-token/); // apps log messages; URLs carry tokens
    assert.equal(clock.timers.size, 0);
  });

  test("SSEHubError carries status, code and retryAfter", () => {
    const error = new SSEHubError("m", { status: 503, code: "MAX_CONNECTIONS", retryAfter: 5000 });
    assert.ok(error instanceof Error);
    assert.deepEqual(
      [error.name, error.status, error.code, error.retryAfter],
      ["SSEHubError", 503, "MAX_CONNECTIONS", 5000],
    );
  });
});
