/**
 * Optional React hooks over the ssehub browser client (`ssehub.js`).
 *
 * This module imports nothing: the caller hands in React and the client class, so it runs without a bundler
 * (served by the hub at `{prefix}/client-react.js`) and with one (copied next to your code), against whichever
 * React the application has:
 *
 * ```js
 * import * as React from "react";
 * import { SSEHubClient } from "/api/v1/events/client.js";
 * import { createHooks } from "/api/v1/events/client-react.js";
 * export const { useSSEClient, useSSEEvent, useSSEValue, useSSEState } = createHooks(React, SSEHubClient);
 * ```
 *
 * See docs/client.md for a TanStack Query example.
 *
 * @module ssehub-react
 */

/**
 * Build the hooks for one React and one client class.
 *
 * @param {any} React the React module (needs useState, useEffect, useMemo, useRef).
 * @param {any} SSEHubClient the client class from ssehub.js.
 * @returns {{useSSEClient: Function, useSSEEvent: Function, useSSEValue: Function, useSSEState: Function}}
 */
export function createHooks(React, SSEHubClient) {
  for (const name of ["useState", "useEffect", "useMemo", "useRef"]) {
    if (typeof React?.[name] !== "function") {
      throw new TypeError(`createHooks(React, SSEHubClient): React.${name} is missing; pass the React module`);
    }
  }
  if (typeof SSEHubClient !== "function") {
    throw new TypeError("createHooks(React, SSEHubClient): pass the SSEHubClient class from ssehub.js");
  }
  const { useState, useEffect, useMemo, useRef } = React;

  /**
   * A ref that always holds the latest value (so callbacks registered once call the current render's function).
   *
   * @template T
   * @param {T} value
   * @returns {{current: T}}
   */
  function useLatest(value) {
    const ref = useRef(value);
    useEffect(() => {
      ref.current = value;
    });
    return ref;
  }

  /**
   * A client for `url`, connected while the component is mounted and closed when it unmounts or `url` changes.
   *
   * Options are read when the client is made (a new `url` makes a new client); the function options `token`
   * and `onReset` always call the latest render's function. The client is built with `autoConnect: false` and
   * connected in an effect, so React's development double-render and StrictMode's mount-unmount-mount leave no
   * stray connection.
   *
   * @param {string} url
   * @param {import("./ssehub.js").SSEHubClientOptions} [options] SSEHubClient options.
   * @returns {any} the SSEHubClient.
   */
  function useSSEClient(url, options = {}) {
    const token = useLatest(options.token);
    const onReset = useLatest(options.onReset);
    const client = useMemo(
      () =>
        new SSEHubClient(url, {
          ...options,
          autoConnect: false,
          token: typeof options.token === "function" ? () => /** @type {Function} */ (token.current)() : options.token,
          onReset: (/** @type {any} */ info) => onReset.current?.(info),
        }),
      // The client is rebuilt for a new URL only; see the doc comment.
      // eslint-disable-next-line react-hooks/exhaustive-deps
      [url],
    );
    useEffect(() => {
      client.connect();
      return () => client.close();
    }, [client]);
    return client;
  }

  /**
   * Call `handler(data, event)` for every event of `type` while mounted (always the latest handler).
   *
   * @param {any} client an SSEHubClient, or null/undefined (nothing happens).
   * @param {string} type
   * @param {(data: any, event: MessageEvent) => void} handler
   */
  function useSSEEvent(client, type, handler) {
    const latest = useLatest(handler);
    useEffect(
      () => client?.on(type, (/** @type {any} */ data, /** @type {any} */ event) => latest.current(data, event)),
      [client, type],
    );
  }

  /**
   * A value kept up to date from the events of `type`: the latest event's data, or what `reduce(previous, data,
   * event)` makes of it (to merge into a list or a map).
   *
   * @param {any} client an SSEHubClient, or null/undefined.
   * @param {string} type
   * @param {any} [initial] the value before the first event.
   * @param {(previous: any, data: any, event: MessageEvent) => any} [reduce]
   * @returns {any}
   */
  function useSSEValue(client, type, initial, reduce) {
    const [value, setValue] = useState(initial);
    const latestReduce = useLatest(reduce);
    useEffect(
      () =>
        client?.on(type, (/** @type {any} */ data, /** @type {any} */ event) => {
          const fn = latestReduce.current;
          setValue((/** @type {any} */ previous) => (fn === undefined ? data : fn(previous, data, event)));
        }),
      [client, type],
    );
    return value;
  }

  /**
   * The client's connection state as `{state, attempt, delay, lastEventId, error}`, re-rendering on each change.
   *
   * @param {any} client an SSEHubClient, or null/undefined ("closed").
   * @returns {{state: string, attempt: number, delay: number | undefined, lastEventId: string | undefined, error: any}}
   */
  function useSSEState(client) {
    const read = () => ({
      state: client ? client.state : "closed",
      attempt: client ? client.attempt : 0,
      delay: undefined,
      lastEventId: client?.lastEventId,
      error: client?.error,
    });
    const [info, setInfo] = useState(read);
    useEffect(() => {
      setInfo(read()); // what changed between the render and this effect (or the client went away)
      if (!client) return undefined;
      return client.onState((/** @type {string} */ state, /** @type {object} */ details) =>
        setInfo({ state, ...details }),
      );
      // eslint-disable-next-line react-hooks/exhaustive-deps
    }, [client]);
    return info;
  }

  return { useSSEClient, useSSEEvent, useSSEValue, useSSEState };
}
