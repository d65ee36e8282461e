"""A worker that publishes with ``ssehub.Publisher``, driven by the load generator (``loadgen --pub-exec``).

The load generator starts it with a socketpair as stdin and stdout. It prints ``ready`` once connected, then
reads lines ``<g> <channel> <data JSON>`` and answers ``<g> 1`` when the event is published (``<g> 0`` if
not). Each line's data is parsed and handed to the publisher as a value, as a worker would publish its own
data. What arrives together is published together: one line with ``publish``, several with ``publish_many``
(one Redis round trip), which is how a busy worker would batch.

    python bench/relay.py redis://127.0.0.1:6379/0 [max_channels]
"""

from __future__ import annotations

import json
import os
import sys

from ssehub import Publisher, PublishManyError, SSEHubError


def main() -> int:
    url = sys.argv[1]
    max_channels = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    stdin, stdout = 0, 1
    with Publisher.from_url(url, max_channels=max_channels, pool_size=1) as publisher:
        os.write(stdout, b"ready\n")
        pending = b""
        while True:
            chunk = os.read(stdin, 1 << 16)
            if not chunk:
                return 0
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if not lines:
                continue
            seqs, items = [], []
            for line in lines:
                seq, channel, data = line.decode().split(" ", 2)
                seqs.append(seq)
                items.append((channel, "bench", json.loads(data)))
            try:
                if len(items) == 1:
                    publisher.publish(*items[0])
                    flags = ["1"]
                else:
                    publisher.publish_many(items)
                    flags = ["1"] * len(items)
            except PublishManyError as exc:
                flags = ["1" if isinstance(outcome, str) else "0" for outcome in exc.outcomes]
            except SSEHubError as exc:
                print(f"relay: {exc}", file=sys.stderr)
                flags = ["0"] * len(items)
            os.write(stdout, "".join(f"{seq} {flag}\n" for seq, flag in zip(seqs, flags, strict=True)).encode())


if __name__ == "__main__":
    sys.exit(main())
