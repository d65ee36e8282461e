// Unit tests of ssehub/static/ssehub-react.js on a minimal hook runtime (tests/js/mini-react.mjs).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { createHooks } from "../../ssehub/static/ssehub-react.js";
import { SSEHubClient } from "../../ssehub/static/ssehub.js";
import { FakeClock, fakeEventSourceClass, flush } from "./fakes.mjs";
import { React, mount } from "./mini-react.mjs";

const { useSSEClient, useSSEEvent, useSSEValue, useSSEState } = createHooks(React, SSEHubClient);

function options(extra = {}) {
  return { EventSource: fakeEventSourceClass(), timers: new FakeClock(), random: () => 0.5, ...extra };
}

describe("react hooks", () => {
  test("useSSEClient connects while mounted, keeps one client across renders, closes on unmount", async () => {
    const opts = options();
    const ES = opts.EventSource;
    const seen = [];
    const view = mount(
      (props) => {
        const client = useSSEClient(props.url, opts);
        seen.push(client);
        return client.state;
      },
      { url: "http://hub.test/s?channels=a" },
    );
    await flush();
    assert.equal(ES.instances.length, 1);
    view.render({ url: "http://hub.test/s?channels=a" });
    assert.equal(ES.instances.length, 1);
    assert.equal(new Set(seen).size, 1);
    view.unmount();
    assert.ok(ES.instances[0].closed);
    assert.equal(seen[0].state, "closed");
  });

  test("useSSEClient replaces the client when the URL changes, closing the old one", async () => {
    const opts = options();
    const ES = opts.EventSource;
    const view = mount((props) => useSSEClient(props.url, opts), { url: "http://hub.test/s?channels=a" });
    view.render({ url: "http://hub.test/s?channels=b" });
    assert.equal(ES.instances.length, 2);
    assert.ok(ES.instances[0].closed);
    assert.equal(new URL(ES.instances[1].url).searchParams.get("channels"), "b");
    assert.ok(!ES.instances[1].closed);
    view.unmount();
  });

  test("useSSEValue holds the latest data of its event type, or the reducer's fold of them", async () => {
    const opts = options();
    const view = mount(() => {
      const client = useSSEClient("http://hub.test/s", opts);
      const latest = useSSEValue(client, "download_progress", null);
      const total = useSSEValue(client, "download_progress", 0, (sum, data) => sum + data.progress);
      return { latest, total };
    });
    const source = opts.EventSource.instances[0];
    source.connected("1-0");
    assert.deepEqual(view.output, { latest: null, total: 0 });
    source.emit("download_progress", { progress: 10 }, "2-0");
    source.emit("download_progress", { progress: 15 }, "3-0");
    assert.deepEqual(view.output, { latest: { progress: 15 }, total: 25 });
    view.unmount();
  });

  test("useSSEState follows the connection state and the attempt number", async () => {
    const opts = options();
    const view = mount(() => {
      const client = useSSEClient("http://hub.test/s", opts);
      const { state, attempt } = useSSEState(client);
      return `${state}:${attempt}`;
    });
    assert.equal(view.output, "connecting:0");
    const source = opts.EventSource.instances[0];
    source.connected("1-0");
    assert.equal(view.output, "open:0");
    source.drop();
    assert.equal(view.output, "reconnecting:1");
    view.unmount();
  });

  test("useSSEEvent calls the handler of the latest render, subscribed once", async () => {
    const opts = options();
    const calls = [];
    const view = mount(
      (props) => {
        const client = useSSEClient("http://hub.test/s", opts);
        useSSEEvent(client, "queue_update", (data) => calls.push([props.label, data.size]));
        return null;
      },
      { label: "first" },
    );
    view.render({ label: "second" });
    const source = opts.EventSource.instances[0];
    source.connected("1-0");
    source.emit("queue_update", { size: 2 }, "2-0");
    assert.deepEqual(calls, [["second", 2]]);
    view.unmount();
    source.emit("queue_update", { size: 3 }, "3-0");
    assert.equal(calls.length, 1);
  });

  test("the onReset and token options of useSSEClient call the latest render's functions", async () => {
    const opts = options();
    const resets = [];
    const view = mount(
      (props) =>
        useSSEClient("http://hub.test/s", {
          ...opts,
          token: () => `token-${props.user}`,
          onReset: (info) => resets.push([props.user, info.reason]),
        }),
      { user: "alice" },
    );
    view.render({ user: "bob" });
    const ES = opts.EventSource;
    assert.equal(ES.instances[0].token, "token-alice"); // connected on the first render's effect
    ES.instances[0].connected("1-0");
    ES.instances[0].emit("reset", { reason: "history_expired", channels: [] }, "9-0");
    ES.instances[0].drop();
    opts.timers.advance(500);
    assert.equal(ES.instances[1].token, "token-bob");
    assert.deepEqual(resets, [["bob", "history_expired"]]);
    view.unmount();
  });

  test("the hooks accept no client: the value stays initial and the state is closed", () => {
    const view = mount(() => {
      const value = useSSEValue(null, "x", "initial");
      useSSEEvent(undefined, "x", () => {});
      return [value, useSSEState(null).state];
    });
    assert.deepEqual(view.output, ["initial", "closed"]);
    view.unmount();
  });

  test("createHooks refuses something that is not React or not the client class", () => {
    assert.throws(() => createHooks({}, SSEHubClient), /React\.useState/);
    assert.throws(() => createHooks(React), /SSEHubClient/);
  });
});
