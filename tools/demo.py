"""``make demo``: a live collector on 127.0.0.1 fed the bundled exporter captures.

The bundled captures are what softflowd (v5, v9, IPFIX) and pmacctd (v9, IPFIX)
sent for the lab pcap; each is replayed from its own loopback address, as five
exporters would send, to a real ``flowtrap run`` over UDP.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.runner import CollectorProcess, send_capture  # noqa: E402

EXPORTS = REPO / "tests" / "fixtures" / "exports"
CASES = (
    ("softflowd-v5.pcap", "127.0.0.11"),
    ("softflowd-v9.pcap", "127.0.0.12"),
    ("softflowd-v10.pcap", "127.0.0.13"),
    ("pmacctd-v9.pcap", "127.0.0.14"),
    ("pmacctd-v10.pcap", "127.0.0.15"),
)


def main() -> int:
    """Run the demo and print the events."""
    with tempfile.TemporaryDirectory(prefix="flowtrap-demo-") as scratch:
        events_path = Path(scratch) / "events.jsonl"
        with CollectorProcess(events_path) as collector:
            print(f"flowtrap run is listening on 127.0.0.1:{collector.port}")
            for name, source in CASES:
                sent = send_capture(EXPORTS / name, collector.port, source)
                print(f"  sent {sent} export packets of {name} from {source}")
            events = collector.stop()

    print(f"\n{len(events)} events (one JSON object per line on the event output):\n")
    for event in events:
        print(json.dumps(event, separators=(",", ":"))[:300] + " ...")
    print("\nsummary:")
    print(f"  {'exporters':<22} {'source':<22} {'destination':<24} flows  message")
    for event in events:
        observers = ",".join(event["observer"]["ip"])
        source = f"{event['source']['ip']}:{event['source']['port']}"
        destination = f"{event['destination']['ip']}:{event['destination']['port']}"
        flows = event["flowtrap"]["flows"]
        print(f"  {observers:<22} {source:<22} {destination:<24} {flows:<6}", end="")
        print(f" {event['message'][:60]}")
    return 0 if events else 1


if __name__ == "__main__":
    sys.exit(main())
