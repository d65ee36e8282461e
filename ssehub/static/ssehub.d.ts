// TypeScript declarations of ssehub.js, the ssehub browser client (served by the hub at {prefix}/client.d.ts).
// Reference: docs/client.md.

/** Where the client is: first connect, connected, waiting/retrying after a loss, stopped. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** What state listeners receive with each state. */
export interface StateInfo {
  /** Reconnect attempt number (1, 2, ...); 0 when open, connecting the first time, or closed. */
  attempt: number;
  /** ms until the next attempt ("reconnecting"); undefined while a refused connect is being probed, and in other states. */
  delay: number | undefined;
  /** The id the next connect resumes from. */
  lastEventId: string | undefined;
  /** Why the connection was lost ("reconnecting") or given up ("closed" after a refusal); undefined otherwise. */
  error: SSEHubError | undefined;
}

/** Data of the hub's `reset` event: the history needed to resume is gone; reload the application's state. */
export interface ResetInfo {
  reason: "history_expired" | "invalid_last_event_id" | string;
  channels: string[];
}

/** Data of the hub's `connected` event, the first event of every stream. */
export interface ConnectedInfo {
  connection_id: string;
  channels: string[];
  /** Seconds between heartbeats; the client's watchdog allows twice that plus a second of silence. */
  heartbeat_interval: number;
  resumed: boolean;
}

/** The clock the client runs on (tests inject a fake one). */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

/** A minimal Web Storage: `sessionStorage`, `localStorage` or your own. */
export interface IdStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export type TokenSource = string | (() => string | null | undefined | Promise<string | null | undefined>);

export interface SSEHubClientOptions {
  /** Sent as the `token` query parameter; a function is called again before every (re)connect. */
  token?: TokenSource;
  /** Send cookies on a cross-origin stream (the hub must allow credentials for the origin). Default false. */
  withCredentials?: boolean;
  /** ms; the first reconnect waits up to this (full jitter), doubling per attempt. Default 1000. */
  initialRetryDelay?: number;
  /** ms; cap of the backoff (a server's Retry-After may exceed it). Default 30000. */
  maxRetryDelay?: number;
  /** ms a new connection may stay silent before it is abandoned and retried. Default 30000. */
  connectTimeout?: number;
  /** ms the status probe of a refused connect may take. Default 10000. */
  probeTimeout?: number;
  /** Resume from this id on the first connect (wins over `storage`). */
  lastEventId?: string;
  /** Persist the last id here (e.g. `sessionStorage`) so a page reload resumes. */
  storage?: IdStorage;
  /** Key under which `storage` keeps the last id. Default "ssehub:lastEventId". */
  storageKey?: string;
  /** Called with the `reset` event's data: history expired; resync the application's state. */
  onReset?: (info: ResetInfo) => void;
  /** The EventSource implementation. Default `globalThis.EventSource`. */
  EventSource?: new (url: string, init?: { withCredentials?: boolean }) => EventSource;
  /** fetch, used to read the status and Retry-After of a refused connect. Default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Connect right after construction (in a microtask). Default true. */
  autoConnect?: boolean;
  /** For tests: the clock. */
  timers?: Timers;
  /** For tests: the jitter source, a number in [0, 1). Default `Math.random`. */
  random?: () => number;
}

/** An error in state info, with the status and hub code of a refused connect. */
export class SSEHubError extends Error {
  constructor(message: string, details?: { status?: number; code?: string; retryAfter?: number; cause?: unknown });
  readonly name: "SSEHubError";
  /** HTTP status of a refused connect, when known. */
  status: number | undefined;
  /**
   * The hub's error code (`MAX_CONNECTIONS`, `UNKNOWN_CHANNEL`, ...) or the client's own: `DISCONNECTED`,
   * `HEARTBEAT_TIMEOUT`, `CONNECT_TIMEOUT`, `REFUSED`, `UNREACHABLE`, `NOT_AN_EVENT_STREAM`, `TOKEN_ERROR`,
   * `NO_CONTENT`, `EVENTSOURCE_ERROR`, `HTTP_<status>`.
   */
  code: string | undefined;
  /** ms the server asked to wait (Retry-After). */
  retryAfter: number | undefined;
}

export type EventListener<T = unknown> = (data: T, event: MessageEvent<string>) => void;
export type StateListener = (state: ConnectionState, info: StateInfo) => void;

/** A reconnecting, resuming client of one ssehub stream. */
export class SSEHubClient {
  constructor(url: string | URL, options?: SSEHubClientOptions);
  /** "connecting" | "open" | "reconnecting" | "closed". */
  readonly state: ConnectionState;
  /** Reconnect attempt number; 0 when open. */
  readonly attempt: number;
  /** The id of the last event received; sent as `lastEventId` on every connect. */
  readonly lastEventId: string | undefined;
  /** Why the connection was last lost or given up; undefined while open. */
  readonly error: SSEHubError | undefined;
  /** The stream URL as given. */
  readonly url: string;

  /** Listen to the client's state (same as `onState`). */
  on(type: "state", fn: StateListener): () => void;
  on(type: "connected", fn: EventListener<ConnectedInfo>): () => void;
  on(type: "reset", fn: EventListener<ResetInfo>): () => void;
  /** Listen to an event type: data parsed as JSON, or the text when not JSON. Returns an unsubscribe function. */
  on<T = any>(type: string, fn: EventListener<T>): () => void;
  off(type: string, fn: (...args: any[]) => void): void;
  /** Called on every state change and every new reconnect attempt. Returns an unsubscribe function. */
  onState(fn: StateListener): () => void;
  /** Connect now: after close(), or to skip a reconnect wait. */
  connect(): void;
  /** Close the stream; stop every timer, probe and reconnect. */
  close(): void;
}

/** Delay before reconnect attempt `attempt`: random() * min(max, initial * 2 ** (attempt - 1)). */
export function backoffDelay(attempt: number, initial: number, max: number, random?: () => number): number;

/** A Retry-After value (seconds or HTTP date) in ms, or undefined. */
export function parseRetryAfter(value: string | null | undefined, now?: number): number | undefined;
