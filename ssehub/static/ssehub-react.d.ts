// TypeScript declarations of ssehub-react.js, the optional React hooks (served at {prefix}/client-react.d.ts).
// Reference: docs/client.md.
import type { ConnectionState, SSEHubClient, SSEHubClientOptions, SSEHubError } from "./ssehub.js";

/** The parts of the React module the hooks use (pass `import * as React from "react"`). */
export interface ReactLike {
  useState: (...args: any[]) => any;
  useEffect: (...args: any[]) => any;
  useMemo: (...args: any[]) => any;
  useRef: (...args: any[]) => any;
}

export interface SSEStateSnapshot {
  state: ConnectionState;
  attempt: number;
  delay: number | undefined;
  lastEventId: string | undefined;
  error: SSEHubError | undefined;
}

export interface SSEHooks {
  /** A client for `url`, connected while mounted, closed on unmount or when `url` changes. */
  useSSEClient(url: string, options?: Omit<SSEHubClientOptions, "autoConnect">): SSEHubClient;
  /** Call `handler` for every event of `type` while mounted (always the latest handler). */
  useSSEEvent<T = any>(
    client: SSEHubClient | null | undefined,
    type: string,
    handler: (data: T, event: MessageEvent<string>) => void,
  ): void;
  /** The latest data of `type` (or the fold of `reduce` over the events). */
  useSSEValue<T = any, V = T>(
    client: SSEHubClient | null | undefined,
    type: string,
    initial?: V,
    reduce?: (previous: V, data: T, event: MessageEvent<string>) => V,
  ): V;
  /** The connection state, re-rendering on each change. */
  useSSEState(client: SSEHubClient | null | undefined): SSEStateSnapshot;
}

/** Build the hooks for the application's React and the client class from ssehub.js. */
export function createHooks(React: ReactLike, Client: typeof SSEHubClient): SSEHooks;
