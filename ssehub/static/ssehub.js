/**
 * ssehub browser client: an `EventSource` that does not lose events.
 *
 * A native `EventSource` gives up for good on any non-200 answer (a 503 while the hub is full, a proxy's 502
 * during a deploy), forgets its last id when a new one is built, cannot tell a quiet stream from a dead one and
 * cannot refresh a token. {@link SSEHubClient} wraps it and owns every reconnect itself:
 *
 * - every (re)connect builds a new `EventSource` whose URL carries the last id received as the `lastEventId`
 *   query parameter (and a fresh `token`), so the hub replays exactly what was missed;
 * - after an `error` the source is closed and a new one is opened after an exponential backoff with full jitter
 *   (`random() * min(maxRetryDelay, initialRetryDelay * 2 ** (attempt - 1))`); when the browser reports a refusal
 *   (readyState CLOSED: the status is hidden from `EventSource`), the URL is probed once with `fetch` to read the
 *   status and `Retry-After`: 401/403 and other 4xx end the client (state "closed" with the error), 408/429/5xx
 *   wait at least `Retry-After`, a 200 reconnects at once;
 * - the `connected` event announces `heartbeat_interval`; no event for twice that (plus a second) means the
 *   stream is dead: it is replaced;
 * - a `reset` event (history expired) calls `onReset` so the application reloads its state.
 *
 * Dependency-free ES module, no build step. See docs/client.md.
 *
 * @module ssehub
 */

/** `EventSource.readyState` of a source the browser will not reconnect. */
const CLOSED = 2;

/** Event types the client reads itself on every stream; apps get them only when they ask by name. */
const INTERNAL_TYPES = ["connected", "heartbeat", "reset"];

/** The pseudo event type of state changes (`client.on("state", fn)`). */
const STATE = "state";

/** Slack added to twice the heartbeat interval before a silent stream counts as dead (busy machines, timers). */
const WATCHDOG_SLACK_MS = 1000;

/**
 * An error the client reports in its state info (`info.error`) or when it gives up.
 *
 * `code` is one of the client's own codes (`DISCONNECTED`, `HEARTBEAT_TIMEOUT`, `CONNECT_TIMEOUT`, `REFUSED`,
 * `UNREACHABLE`, `NOT_AN_EVENT_STREAM`, `TOKEN_ERROR`, `NO_CONTENT`, `EVENTSOURCE_ERROR`, `HTTP_<status>`) or the
 * hub's `code` from its JSON error body (`MAX_CONNECTIONS`, `UNKNOWN_CHANNEL`, ...).
 */
export class SSEHubError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, retryAfter?: number, cause?: unknown}} [details]
   */
  constructor(message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "SSEHubError";
    /** HTTP status of a refused connect, when known. @type {number | undefined} */
    this.status = details.status;
    /** Machine-readable reason. @type {string | undefined} */
    this.code = details.code;
    /** Milliseconds the server asked to wait (`Retry-After`), when it did. @type {number | undefined} */
    this.retryAfter = details.retryAfter;
  }
}

/**
 * The delay before reconnect attempt `attempt` (1, 2, ...): exponential backoff with full jitter.
 *
 * @param {number} attempt 1 for the first reconnect.
 * @param {number} initial initialRetryDelay, ms.
 * @param {number} max maxRetryDelay, ms.
 * @param {() => number} [random] a number in [0, 1).
 * @returns {number} ms, in [0, min(max, initial * 2 ** (attempt - 1))).
 */
export function backoffDelay(attempt, initial, max, random = Math.random) {
  const ceiling = Math.min(max, initial * 2 ** Math.max(0, attempt - 1));
  return random() * ceiling;
}

/**
 * A `Retry-After` header value in milliseconds (delta-seconds or an HTTP date), or undefined.
 *
 * @param {string | null | undefined} value
 * @param {number} [now] the current time, ms since the epoch (for HTTP dates).
 * @returns {number | undefined}
 */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/**
 * Event data as the app wants it: parsed JSON, or the raw text when it is not JSON.
 *
 * @param {string} text
 * @returns {unknown}
 */
function parseData(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text; // not JSON: the app gets the text as the hub sent it
  }
}

/**
 * Hand an error thrown by application code to the host's error reporting, never to the caller of the client.
 *
 * @param {unknown} error
 */
function report(error) {
  if (typeof globalThis.reportError === "function") {
    globalThis.reportError(error); // the browser's window "error" event and console, as an uncaught error
  } else {
    console.error(error);
  }
}

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} ConnectionState */

/**
 * The clock the client runs on (injectable, so tests drive time by hand).
 *
 * @typedef {{setTimeout(fn: () => void, ms: number): unknown, clearTimeout(handle: unknown): void, now(): number}} Timers
 */

/** @type {Timers} */
const DEFAULT_TIMERS = {
  // Wrapped so they are never called with a foreign `this` ("Illegal invocation" in browsers).
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(/** @type {any} */ (handle)),
  now: () => Date.now(),
};

/**
 * A reconnecting, resuming client of one ssehub stream.
 *
 * @example
 * const client = new SSEHubClient("/api/v1/events/stream?channels=download:updates", {
 *   storage: sessionStorage,
 *   onReset: () => reloadEverything(),
 * });
 * client.on("download_progress", (data) => render(data));
 * client.onState((state, { attempt }) => indicator.textContent = state === "reconnecting" ? `retry ${attempt}` : state);
 */
export class SSEHubClient {
  /** @type {string} */ #url;
  /** @type {string | (() => string | null | undefined | Promise<string | null | undefined>) | undefined} */ #token;
  /** @type {boolean} */ #withCredentials;
  /** @type {number} */ #initialRetryDelay;
  /** @type {number} */ #maxRetryDelay;
  /** @type {number} */ #connectTimeout;
  /** @type {number} */ #probeTimeout;
  /** @type {{getItem(key: string): string | null, setItem(key: string, value: string): void} | undefined} */ #storage;
  /** @type {string} */ #storageKey;
  /** @type {((info: any) => void) | undefined} */ #onReset;
  /** @type {any} */ #EventSource;
  /** @type {typeof fetch | undefined} */ #fetch;
  /** @type {Timers} */ #timers;
  /** @type {() => number} */ #random;

  /** @type {ConnectionState} */ #state = "closed";
  #attempt = 0;
  /** @type {string | undefined} */ #lastEventId;
  /** @type {SSEHubError | undefined} */ #error;
  /** @type {number | undefined} */ #delay;

  /** Listeners by event type ("state" holds the state listeners). @type {Map<string, Set<Function>>} */
  #listeners = new Map();

  /** The live source, or null between connections. @type {any} */ #source = null;
  /** Types listened to on the live source. @type {Set<string>} */ #sourceTypes = new Set();
  /** The live source's message handler. @type {(event: any) => void} */ #sourceHandler = () => {};
  /** Bumped by every open and close: async steps of an older connection see it changed and stop. */ #generation = 0;
  /** A token callback is running for the current generation. */ #opening = false;
  /** @type {unknown} */ #retryTimer = null;
  /** @type {unknown} */ #watchdogTimer = null;
  /** @type {AbortController | null} */ #probeController = null;
  /** Heartbeat interval announced by the live stream's `connected` event, ms. @type {number | undefined} */
  #heartbeatMs;
  /** When the live source last showed life (creation, open, any event), per the client's clock. */ #lastActivity = 0;
  /** `autoConnect` will open the first connection after the constructor's task. */ #autoConnectPending = false;
  /** The `online` listener is installed (only while a reconnect waits). */ #watchingOnline = false;

  /**
   * @param {string | URL} url the stream URL, e.g. "/api/v1/events/stream?channels=a,b".
   * @param {import("./ssehub.js").SSEHubClientOptions} [options] see ssehub.d.ts and docs/client.md.
   */
  constructor(url, options = {}) {
    if (typeof url !== "string" && !(url instanceof URL)) throw new TypeError("SSEHubClient: url must be a string");
    const {
      token,
      withCredentials = false,
      initialRetryDelay = 1000,
      maxRetryDelay = 30000,
      connectTimeout = 30000,
      probeTimeout = 10000,
      lastEventId,
      storage,
      storageKey = "ssehub:lastEventId",
      onReset,
      EventSource = globalThis.EventSource,
      fetch = globalThis.fetch,
      autoConnect = true,
      timers = DEFAULT_TIMERS,
      random = Math.random,
    } = options;
    for (const [name, value] of Object.entries({ initialRetryDelay, maxRetryDelay, connectTimeout, probeTimeout })) {
      if (!(typeof value === "number" && value > 0 && Number.isFinite(value))) {
        throw new RangeError(`SSEHubClient: ${name} must be a positive number of milliseconds, not ${value}`);
      }
    }
    if (maxRetryDelay < initialRetryDelay) {
      throw new RangeError("SSEHubClient: maxRetryDelay must not be smaller than initialRetryDelay");
    }
    if (typeof EventSource !== "function") {
      throw new TypeError(
        "SSEHubClient: no EventSource here: pass options.EventSource (an EventSource implementation)",
      );
    }
    if (token !== undefined && typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("SSEHubClient: token must be a string or a function returning one");
    }
    if (onReset !== undefined && typeof onReset !== "function") {
      throw new TypeError("SSEHubClient: onReset must be a function");
    }
    this.#url = String(url);
    try {
      new URL(this.#url, globalThis.location?.href ?? "http://ssehub.invalid/");
    } catch (cause) {
      throw new TypeError(`SSEHubClient: invalid url ${JSON.stringify(this.#url)}`, { cause });
    }
    this.#token = token;
    this.#withCredentials = Boolean(withCredentials);
    this.#initialRetryDelay = initialRetryDelay;
    this.#maxRetryDelay = maxRetryDelay;
    this.#connectTimeout = connectTimeout;
    this.#probeTimeout = probeTimeout;
    this.#storage = storage;
    this.#storageKey = storageKey;
    this.#onReset = onReset;
    this.#EventSource = EventSource;
    this.#fetch = typeof fetch === "function" ? fetch : undefined;
    this.#timers = timers;
    this.#random = random;
    this.#lastEventId = lastEventId || this.#readStoredId() || undefined;

    if (autoConnect) {
      // Connect after the current task, so that listeners registered right after `new` see "connecting" and
      // every event; `state` already says where the client is going.
      this.#state = "connecting";
      this.#autoConnectPending = true;
      queueMicrotask(() => {
        if (!this.#autoConnectPending) return; // connect() or close() came first
        this.#autoConnectPending = false;
        this.#emitState();
        this.#open();
      });
    }
  }

  // -- public surface -------------------------------------------------------------------------------------------

  /** "connecting" (first connect), "open", "reconnecting" (see `attempt`) or "closed". */
  get state() {
    return this.#state;
  }

  /** The reconnect attempt in progress or waited for (1, 2, ...); 0 while open, connecting the first time, or closed. */
  get attempt() {
    return this.#attempt;
  }

  /** The id of the last event received (or the one to resume from): sent as `lastEventId` on every connect. */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** Why the client last lost or gave up its connection; undefined while open. */
  get error() {
    return this.#error;
  }

  /** The stream URL as given. */
  get url() {
    return this.#url;
  }

  /**
   * Call `fn(data, event)` for every event of `type`: data is the parsed JSON, or the text when it is not JSON.
   * Works before the connection opens and survives reconnects. `"state"` registers a state listener instead.
   * `connected`, `heartbeat` and `reset` reach only listeners registered for them by name.
   *
   * @param {string} type event type as published (`download_progress`), or "state".
   * @param {Function} fn the listener; what it throws is reported (`reportError`), never thrown to the client.
   * @returns {() => void} a function that removes the listener.
   */
  on(type, fn) {
    if (typeof type !== "string" || type === "") {
      throw new TypeError("SSEHubClient.on: type must be a non-empty string");
    }
    if (typeof fn !== "function") throw new TypeError("SSEHubClient.on: the listener must be a function");
    let set = this.#listeners.get(type);
    if (set === undefined) {
      set = new Set();
      this.#listeners.set(type, set);
    }
    set.add(fn);
    if (type !== STATE) this.#listen(type);
    return () => this.off(type, fn);
  }

  /**
   * Remove a listener added with {@link SSEHubClient#on} (or {@link SSEHubClient#onState} for "state").
   *
   * @param {string} type
   * @param {Function} fn
   */
  off(type, fn) {
    const set = this.#listeners.get(type);
    if (set === undefined) return;
    set.delete(fn);
    if (set.size === 0) this.#listeners.delete(type);
  }

  /**
   * Call `fn(state, info)` on every state change and on every new reconnect attempt.
   *
   * @param {(state: string, info: {attempt: number, delay: number | undefined, lastEventId: string | undefined, error: SSEHubError | undefined}) => void} fn
   * @returns {() => void} a function that removes the listener.
   */
  onState(fn) {
    return this.on(STATE, fn);
  }

  /**
   * Connect now: after `close()`, or during a reconnect wait to skip it. Does nothing while a connection is
   * open or being opened.
   */
  connect() {
    if (this.#autoConnectPending) {
      this.#autoConnectPending = false;
      this.#emitState(); // "connecting", not yet announced
      this.#open();
      return;
    }
    if (this.#source !== null || this.#opening) return;
    this.#cancelRetry();
    if (this.#state === "closed") {
      this.#attempt = 0;
      this.#error = undefined;
      this.#setState("connecting");
    }
    this.#open();
  }

  /** Close the stream and stop every timer, probe and reconnect; `connect()` starts again from the last id. */
  close() {
    this.#autoConnectPending = false;
    this.#generation += 1;
    this.#opening = false;
    this.#dropSource();
    this.#cancelRetry();
    this.#attempt = 0;
    this.#error = undefined;
    if (this.#state !== "closed") this.#setState("closed");
  }

  // -- connecting ------------------------------------------------------------------------------------------------

  /** Get a token (maybe async), then open a source; a failing token callback counts as a failed attempt. */
  #open() {
    const generation = ++this.#generation;
    let token;
    try {
      token = typeof this.#token === "function" ? this.#token() : this.#token;
    } catch (cause) {
      this.#retry(new SSEHubError("the token callback failed", { code: "TOKEN_ERROR", cause }));
      return;
    }
    if (token !== null && typeof token === "object" && typeof token.then === "function") {
      this.#opening = true;
      Promise.resolve(token).then(
        (value) => {
          if (generation !== this.#generation) return; // closed or reconnected meanwhile
          this.#opening = false;
          this.#start(value);
        },
        (cause) => {
          if (generation !== this.#generation) return;
          this.#opening = false;
          this.#retry(new SSEHubError("the token callback failed", { code: "TOKEN_ERROR", cause }));
        },
      );
      return;
    }
    this.#start(token);
  }

  /**
   * Open a new EventSource on the stream URL with `lastEventId` and `token`.
   *
   * @param {unknown} token
   */
  #start(token) {
    const url = this.#streamUrl(token);
    let source;
    try {
      source = new this.#EventSource(url, { withCredentials: this.#withCredentials });
    } catch (cause) {
      // A URL the page may not open (a SecurityError under a Content-Security-Policy): retrying cannot help.
      // The message leaves out the URL: it may carry a token, and apps log error messages.
      this.#giveUp(new SSEHubError("the browser refused to open the stream", { code: "EVENTSOURCE_ERROR", cause }));
      return;
    }
    this.#source = source;
    this.#sourceTypes = new Set();
    this.#heartbeatMs = undefined;
    this.#lastActivity = this.#timers.now();
    // Handlers check that their source is still the live one: a replaced source may still have queued events.
    source.addEventListener("open", () => {
      if (source === this.#source) this.#handleOpen();
    });
    source.addEventListener("error", () => {
      if (source === this.#source) this.#handleError(source, url);
    });
    this.#sourceHandler = (event) => {
      if (source === this.#source) this.#handleMessage(event);
    };
    for (const type of INTERNAL_TYPES) this.#listen(type);
    for (const type of this.#listeners.keys()) if (type !== STATE) this.#listen(type);
    this.#armWatchdog();
  }

  /**
   * The URL of the next connect: the app's URL with `lastEventId` and `token` set.
   *
   * @param {unknown} token
   * @returns {string}
   */
  #streamUrl(token) {
    const base = globalThis.location?.href;
    const absolute = /^[a-z][a-z\d+.-]*:/i.test(this.#url);
    const url = new URL(this.#url, base ?? "http://ssehub.invalid/");
    if (this.#lastEventId) url.searchParams.set("lastEventId", this.#lastEventId);
    if (token !== undefined && token !== null && token !== "") url.searchParams.set("token", String(token));
    // Outside a page (tests, workers without location) a relative URL stays relative.
    return base !== undefined || absolute ? url.href : url.pathname + url.search + url.hash;
  }

  /**
   * Listen to `type` on the live source (once per source).
   *
   * @param {string} type
   */
  #listen(type) {
    if (this.#source === null || this.#sourceTypes.has(type)) return;
    this.#sourceTypes.add(type);
    this.#source.addEventListener(type, this.#sourceHandler);
  }

  #handleOpen() {
    this.#lastActivity = this.#timers.now();
    this.#attempt = 0;
    this.#error = undefined;
    this.#setState("open");
  }

  /**
   * @param {any} event a MessageEvent from the source.
   */
  #handleMessage(event) {
    if (typeof event.data !== "string") return; // the source's own open/error events, under an app's type name
    this.#lastActivity = this.#timers.now();
    const id = event.lastEventId;
    if (id && id !== this.#lastEventId) this.#rememberId(id);
    const type = event.type;
    const listeners = this.#listeners.get(type);
    const internal = type === "connected" || type === "reset";
    if (listeners === undefined && !internal) return; // a heartbeat nobody asked for: it fed the watchdog
    const data = parseData(event.data);
    if (type === "connected") {
      this.#handleConnected(data);
    } else if (type === "reset" && this.#onReset !== undefined) {
      try {
        this.#onReset(data);
      } catch (error) {
        report(error);
      }
    }
    if (listeners === undefined) return;
    for (const fn of listeners) {
      try {
        fn(data, event);
      } catch (error) {
        report(error);
      }
    }
  }

  /**
   * Read the announced heartbeat interval and tighten the watchdog to it.
   *
   * @param {any} data the `connected` event's data.
   */
  #handleConnected(data) {
    const seconds = Number(data?.heartbeat_interval);
    if (seconds > 0 && Number.isFinite(seconds)) {
      this.#heartbeatMs = seconds * 1000;
      this.#armWatchdog();
    }
  }

  /**
   * The source failed. readyState CLOSED means the browser refused the answer (a status other than 200, another
   * content type): probe for the status. Otherwise the stream dropped (network, server ended it): the browser
   * would retry by itself, without backoff, a fresh token or our `lastEventId`; the client does it instead.
   *
   * @param {any} source
   * @param {string} url the URL the source was opened with.
   */
  #handleError(source, url) {
    const refused = source.readyState === CLOSED;
    this.#dropSource();
    if (refused) {
      this.#probe(url);
    } else {
      this.#retry(new SSEHubError("the stream was interrupted", { code: "DISCONNECTED" }));
    }
  }

  // -- the watchdog ----------------------------------------------------------------------------------------------

  /** The longest silence allowed on the live source, ms. */
  #silenceLimit() {
    return this.#heartbeatMs === undefined ? this.#connectTimeout : 2 * this.#heartbeatMs + WATCHDOG_SLACK_MS;
  }

  /** (Re)start the watchdog. Events only stamp `#lastActivity`; the timer re-arms itself for the remainder. */
  #armWatchdog() {
    if (this.#watchdogTimer !== null) this.#timers.clearTimeout(this.#watchdogTimer);
    this.#watchdogTimer = this.#timers.setTimeout(this.#checkWatchdog, this.#silenceLimit());
  }

  #checkWatchdog = () => {
    this.#watchdogTimer = null;
    if (this.#source === null) return;
    const limit = this.#silenceLimit();
    const silent = this.#timers.now() - this.#lastActivity;
    if (silent < limit) {
      this.#watchdogTimer = this.#timers.setTimeout(this.#checkWatchdog, limit - silent);
      return;
    }
    const error =
      this.#heartbeatMs === undefined
        ? new SSEHubError(`no answer within ${limit} ms`, { code: "CONNECT_TIMEOUT" })
        : new SSEHubError(`no event for ${limit} ms (heartbeat every ${this.#heartbeatMs} ms): the stream is dead`, {
            code: "HEARTBEAT_TIMEOUT",
          });
    this.#dropSource();
    this.#retry(error);
  };

  // -- reconnecting ----------------------------------------------------------------------------------------------

  /**
   * Count a new attempt and wait the backoff delay before it.
   *
   * @param {SSEHubError} error why the previous connection ended.
   */
  #retry(error) {
    this.#attempt += 1;
    this.#wait(backoffDelay(this.#attempt, this.#initialRetryDelay, this.#maxRetryDelay, this.#random), error);
  }

  /**
   * Enter "reconnecting" and open a new source after `delay` ms.
   *
   * @param {number} delay
   * @param {SSEHubError} error
   */
  #wait(delay, error) {
    this.#error = error;
    this.#setState("reconnecting", delay);
    this.#retryTimer = this.#timers.setTimeout(() => {
      this.#retryTimer = null;
      this.#stopWatchingOnline();
      this.#open();
    }, delay);
    this.#watchOnline();
  }

  /** While a reconnect waits, the browser's `online` event (the network is back) cuts the wait short. */
  #watchOnline() {
    if (this.#watchingOnline || typeof globalThis.addEventListener !== "function") return;
    globalThis.addEventListener("online", this.#handleOnline);
    this.#watchingOnline = true;
  }

  #stopWatchingOnline() {
    if (!this.#watchingOnline) return;
    globalThis.removeEventListener("online", this.#handleOnline);
    this.#watchingOnline = false;
  }

  #handleOnline = () => {
    if (this.#retryTimer !== null) this.connect();
  };

  /**
   * Learn why the browser refused the stream: `fetch` the same URL, read the status and headers, abort.
   *
   * Decisions: 200 with an event stream: the refusal has passed, reconnect at once (on the first attempt; later
   * attempts wait their backoff, so a browser that keeps refusing what fetch accepts cannot spin); 204: the server
   * says stop; 401, 403 and every other 4xx except 408 and 429: give up, state "closed" with the error (retrying
   * cannot fix a credential or a request); 408, 429, 5xx: wait the backoff, and at least `Retry-After` plus a
   * jitter of up to initialRetryDelay (so clients told the same Retry-After do not return together); the cap does
   * not shorten a server's Retry-After. A probe that fails (network, CORS, timeout) waits the backoff.
   *
   * @param {string} url
   */
  async #probe(url) {
    const generation = this.#generation;
    this.#attempt += 1;
    this.#error = new SSEHubError("the hub refused the stream", { code: "REFUSED" });
    this.#setState("reconnecting", undefined); // delay unknown until the probe answers
    const backoff = backoffDelay(this.#attempt, this.#initialRetryDelay, this.#maxRetryDelay, this.#random);
    const fetchFn = this.#fetch;
    if (fetchFn === undefined) {
      this.#wait(backoff, this.#error);
      return;
    }
    const controller = new AbortController();
    this.#probeController = controller;
    const timeout = this.#timers.setTimeout(() => controller.abort(), this.#probeTimeout);
    /** @type {{status: number, type: string, retryAfter: number | undefined, body: any} | undefined} */
    let answer;
    /** @type {unknown} */
    let failure;
    try {
      const response = await fetchFn(url, {
        method: "GET",
        headers: { accept: "text/event-stream" },
        credentials: this.#withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: controller.signal,
      });
      const type = response.headers.get("content-type") ?? "";
      const retryAfter = parseRetryAfter(response.headers.get("retry-after"), this.#timers.now());
      let body;
      if (response.status !== 200 && /json/i.test(type)) {
        // The hub's error body is small JSON ({"error", "code"}): worth reading for the message. A body that
        // does not parse only loses that detail.
        body = await response.json().catch(() => undefined);
      }
      answer = { status: response.status, type, retryAfter, body };
    } catch (error) {
      failure = error;
    } finally {
      this.#timers.clearTimeout(timeout);
      controller.abort(); // a 200 answer is a live stream: hang up as soon as its headers are read
      if (this.#probeController === controller) this.#probeController = null;
    }
    if (generation !== this.#generation) return; // closed or connected meanwhile
    if (answer === undefined) {
      this.#wait(backoff, new SSEHubError("the hub could not be reached", { code: "UNREACHABLE", cause: failure }));
      return;
    }
    const { status, type, retryAfter, body } = answer;
    const message = typeof body?.error === "string" ? body.error : `the hub answered ${status}`;
    const code = typeof body?.code === "string" ? body.code : `HTTP_${status}`;
    const error = new SSEHubError(message, { status, code, retryAfter });
    if (status === 200) {
      if (/text\/event-stream/i.test(type)) {
        this.#wait(this.#attempt === 1 ? 0 : backoff, error);
      } else {
        const notStream = `the URL answers ${type || "no content type"}, not text/event-stream`;
        this.#wait(backoff, new SSEHubError(notStream, { status, code: "NOT_AN_EVENT_STREAM" }));
      }
    } else if (status === 204) {
      this.#giveUp(new SSEHubError("the hub answered 204: no stream here", { status, code: "NO_CONTENT" }));
    } else if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
      this.#giveUp(error);
    } else if (retryAfter !== undefined && (status === 408 || status === 429 || status >= 500)) {
      this.#wait(Math.max(backoff, retryAfter + this.#random() * this.#initialRetryDelay), error);
    } else {
      this.#wait(backoff, error);
    }
  }

  /**
   * Stop for good after a refusal retrying cannot fix; `connect()` tries again.
   *
   * @param {SSEHubError} error
   */
  #giveUp(error) {
    this.#generation += 1;
    this.#attempt = 0;
    this.#error = error;
    this.#setState("closed");
  }

  // -- bookkeeping -----------------------------------------------------------------------------------------------

  /** Close and forget the live source and its watchdog. */
  #dropSource() {
    if (this.#watchdogTimer !== null) {
      this.#timers.clearTimeout(this.#watchdogTimer);
      this.#watchdogTimer = null;
    }
    if (this.#source !== null) {
      const source = this.#source;
      this.#source = null; // first: its handlers check it, and close() may dispatch synchronously in some shims
      source.close();
    }
  }

  /** Cancel a pending reconnect timer and a running probe. */
  #cancelRetry() {
    this.#stopWatchingOnline();
    if (this.#retryTimer !== null) {
      this.#timers.clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
    }
    if (this.#probeController !== null) {
      this.#probeController.abort();
      this.#probeController = null;
    }
  }

  /**
   * @param {string} id
   */
  #rememberId(id) {
    this.#lastEventId = id;
    if (this.#storage === undefined) return;
    try {
      this.#storage.setItem(this.#storageKey, id);
    } catch (error) {
      // A full or forbidden storage (private browsing) only costs resume across page loads; say so once.
      this.#storage = undefined;
      console.warn("SSEHubClient: cannot store the last event id; a page reload will not resume", error);
    }
  }

  /** @returns {string | null | undefined} */
  #readStoredId() {
    if (this.#storage === undefined) return undefined;
    try {
      return this.#storage.getItem(this.#storageKey);
    } catch (error) {
      console.warn("SSEHubClient: cannot read the stored last event id", error);
      return undefined;
    }
  }

  /**
   * @param {ConnectionState} state
   * @param {number} [delay] ms until the next attempt (reconnecting only).
   */
  #setState(state, delay) {
    this.#state = state;
    this.#delay = state === "reconnecting" ? delay : undefined;
    this.#emitState();
  }

  #emitState() {
    const listeners = this.#listeners.get(STATE);
    if (listeners === undefined) return;
    const state = this.#state;
    const info = { attempt: this.#attempt, delay: this.#delay, lastEventId: this.#lastEventId, error: this.#error };
    for (const fn of listeners) {
      try {
        fn(state, info);
      } catch (error) {
        report(error);
      }
    }
  }
}
