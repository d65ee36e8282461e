// Fakes for the client's unit tests: an EventSource driven by hand, a clock that only moves when told, and a
// fetch that answers from a script. (The real browser runs in the Playwright tests.)

/** A fresh EventSource class whose instances are recorded on `FakeEventSource.instances`. */
export function fakeEventSourceClass() {
  return class FakeEventSource {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;
    /** @type {FakeEventSource[]} */
    static instances = [];

    constructor(url, init = {}) {
      this.url = url;
      this.withCredentials = Boolean(init.withCredentials);
      this.readyState = 0;
      this.closed = false;
      this.lastId = "";
      /** @type {Map<string, Set<Function>>} */
      this.listeners = new Map();
      FakeEventSource.instances.push(this);
    }

    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set());
      this.listeners.get(type).add(fn);
    }

    removeEventListener(type, fn) {
      this.listeners.get(type)?.delete(fn);
    }

    close() {
      this.readyState = 2;
      this.closed = true;
    }

    /** The `lastEventId` query parameter of this source's URL. */
    get resumeId() {
      return new URL(this.url, "http://test.invalid/").searchParams.get("lastEventId");
    }

    /** The `token` query parameter of this source's URL. */
    get token() {
      return new URL(this.url, "http://test.invalid/").searchParams.get("token");
    }

    dispatch(event) {
      for (const fn of this.listeners.get(event.type) ?? []) fn.call(this, event);
    }

    // -- what the server and the network do --

    open() {
      this.readyState = 1;
      this.dispatch({ type: "open" });
    }

    /** A MessageEvent as the browser dispatches it: the id carries over to events that have none. */
    emit(type, data, id) {
      if (id !== undefined) this.lastId = id;
      const text = typeof data === "string" ? data : JSON.stringify(data);
      this.dispatch({ type, data: text, lastEventId: this.lastId });
    }

    /** The `connected` event the hub sends first. */
    connected(id, heartbeatInterval = 30) {
      this.open();
      this.emit(
        "connected",
        { connection_id: "c1", channels: ["a"], heartbeat_interval: heartbeatInterval, resumed: false },
        id,
      );
    }

    /** A network drop or a cleanly ended stream: the browser would reconnect by itself. */
    drop() {
      this.readyState = 0;
      this.dispatch({ type: "error" });
    }

    /** A refused answer (status other than 200, wrong type): the browser gives up for good. */
    refuse() {
      this.readyState = 2;
      this.dispatch({ type: "error" });
    }
  };
}

/** A clock that only moves in `advance`, running due timers in order. */
export class FakeClock {
  time = 1_000_000;
  #next = 1;
  /** @type {Map<number, {at: number, fn: Function}>} */
  timers = new Map();

  setTimeout = (fn, ms) => {
    const id = this.#next++;
    this.timers.set(id, { at: this.time + Math.max(0, ms), fn });
    return id;
  };

  clearTimeout = (id) => {
    this.timers.delete(id);
  };

  now = () => this.time;

  /** Move time forward by `ms`, running every timer that falls due (including ones set meanwhile). */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let due;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (due === undefined || timer.at < due[1].at)) due = [id, timer];
      }
      if (due === undefined) break;
      this.timers.delete(due[0]);
      this.time = due[1].at;
      due[1].fn();
    }
    this.time = end;
  }
}

/**
 * A fetch that answers each call with the next scripted answer: a Response, an Error (rejects), or a function of
 * (url, init) returning either.
 */
export function scriptedFetch(...answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    const answer = answers.length > 1 ? answers.shift() : answers[0];
    const value = typeof answer === "function" ? answer(url, init) : answer;
    if (value instanceof Error) throw value;
    return value;
  };
  fetch.calls = calls;
  return fetch;
}

/** A JSON error answer as the hub sends it. */
export function errorResponse(status, code, headers = {}) {
  return new Response(JSON.stringify({ error: `refused: ${code}`, code }), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** A 200 event stream answer that never ends (until aborted). */
export function streamResponse() {
  return new Response(new ReadableStream({ start() {} }), {
    status: 200,
    headers: { "content-type": "text/event-stream; charset=utf-8" },
  });
}

/** Let pending promise callbacks and microtasks run. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}
