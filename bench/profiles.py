"""Template layouts that real exporters use, read from captures at bench time.

The layouts (field ids and lengths, in the exporter's order) come from the
project's own softflowd and pmacctd captures in ``tests/fixtures/exports``, and
from a few vendor captures in ``../shared/captures`` when that folder is present.
Only the layouts are taken; the benchmark fills them with its own records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from collector.capture import read_capture
from collector.decoder import Decoder
from collector.layout import FieldSpec

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = ROOT / "tests" / "fixtures" / "exports"
CAPTURES = ROOT.parent / "shared" / "captures"

# Files in the captures folder that are not pcap are one raw export packet each.
_CAPTURE_SUFFIXES = (".pcap", ".pcapng")

# (label, fixture file, template id): the IPv4 and IPv6 flow templates of
# softflowd and pmacctd, for NetFlow v9 and IPFIX.
_FIXTURE_LAYOUTS = (
    ("softflowd v9", "softflowd-v9.pcap", 1024),
    ("softflowd v9 IPv6", "softflowd-v9.pcap", 2048),
    ("pmacctd v9", "pmacctd-v9.pcap", 1024),
    ("pmacctd v9 IPv6", "pmacctd-v9.pcap", 2048),
    ("softflowd IPFIX", "softflowd-v10.pcap", 1024),
    ("softflowd IPFIX IPv6", "softflowd-v10.pcap", 2048),
    ("pmacctd IPFIX", "pmacctd-v10.pcap", 1024),
    ("pmacctd IPFIX IPv6", "pmacctd-v10.pcap", 2048),
)

# (label, replay group of the captures manifest, template id): fixed-length
# vendor flow templates with addresses, protocol and ports, records of 50-81 bytes.
_VENDOR_LAYOUTS = (
    ("Cisco IOS-XR v9", "akvorado: nfv9", 260),
    ("Palo Alto v9", "logstash: Netflow 9 Palo Alto PAN-OS with app-id", 256),
    ("Fortigate v9", "logstash: Netflow 9 Fortigate FortiOS 54x appid", 262),
    ("Cisco ASR1001-X v9", "logstash: Netflow 9 Cisco ASR1001-X", 259),
    ("Huawei v9", "logstash: Netflow 9 Huawei Netstream", 1315),
    ("VMware vDS IPFIX", "logstash: IPFIX VMware virtual distributed switch", 256),
    ("Barracuda IPFIX", "logstash: IPFIX Barracuda firewall", 256),
    ("OpenBSD pflow IPFIX", "logstash: IPFIX OpenBSD pflow", 256),
    ("ipfixprobe IPFIX", "akvorado: ipfixprobes", 258),
    ("Mikrotik IPFIX", "logstash: IPFIX Mikrotik RouterOS 6.39.2", 258),
)


@dataclass(frozen=True, slots=True)
class Profile:
    """One exporter's flow template: its version, scope and fields."""

    label: str
    version: int
    domain: int
    template_id: int
    fields: tuple[FieldSpec, ...]

    @property
    def record_length(self) -> int:
        """Return the bytes of one data record."""
        return sum(spec.length for spec in self.fields)


# The v5 record (Cisco's fixed format), as field ids for the record writer.
V5_PROFILE = Profile(
    label="NetFlow v5",
    version=5,
    domain=0,
    template_id=0,
    fields=tuple(
        FieldSpec(element, length)
        for element, length in (
            (8, 4),
            (12, 4),
            (15, 4),
            (10, 2),
            (14, 2),
            (2, 4),
            (1, 4),
            (22, 4),
            (21, 4),
            (7, 2),
            (11, 2),
            (210, 1),
            (6, 1),
            (4, 1),
            (5, 1),
            (16, 2),
            (17, 2),
            (9, 1),
            (13, 1),
            (210, 2),
        )
    ),
)


def _datagrams(path: Path) -> Iterator[tuple[str, int, float, bytes]]:
    """Yield every export packet of a capture file, or the file as one packet."""
    if path.suffix in _CAPTURE_SUFFIXES:
        for datagram in read_capture(path):
            yield datagram.exporter, datagram.port, datagram.received, datagram.data
    else:
        yield "192.0.2.1", 9995, 0.0, path.read_bytes()


def _learned(paths: list[Path]) -> dict[int, tuple[int, int, tuple[FieldSpec, ...]]]:
    """Decode files in order; return {template id: (version, domain, fields)}."""
    decoder = Decoder()
    for path in paths:
        for exporter, port, received, data in _datagrams(path):
            decoder.decode(data, exporter, port, received)
    found = {}
    for _, _, state in decoder.store.exporters():
        for (version, domain, template_id), layout in state.templates.items():
            if not layout.options and not layout.variable:
                found[template_id] = (version, domain, layout.fields)
    return found


def fixture_profiles() -> list[Profile]:
    """Return the softflowd and pmacctd layouts from the repository's captures."""
    profiles = []
    for label, name, template_id in _FIXTURE_LAYOUTS:
        learned = _learned([EXPORTS / name]).get(template_id)
        if learned is not None:
            version, domain, fields = learned
            profiles.append(Profile(label, version, domain, template_id, fields))
    return profiles


def vendor_profiles() -> list[Profile]:
    """Return the vendor layouts, or none when the captures folder is absent."""
    manifest_path = CAPTURES / "manifest.json"
    if not manifest_path.is_file():
        return []
    groups = json.loads(manifest_path.read_text())["replay_groups"]
    profiles = []
    for label, group, template_id in _VENDOR_LAYOUTS:
        files = groups.get(group, {}).get("files", [])
        paths = [CAPTURES / name for name in files]
        if not paths or not all(path.is_file() for path in paths):
            continue
        learned = _learned(paths).get(template_id)
        if learned is not None:
            version, domain, fields = learned
            profiles.append(Profile(label, version, domain, template_id, fields))
    return profiles


def by_version(profiles: list[Profile]) -> dict[int, list[Profile]]:
    """Group profiles by export version, v5 included."""
    grouped: dict[int, list[Profile]] = {5: [V5_PROFILE], 9: [], 10: []}
    for profile in profiles:
        grouped[profile.version].append(profile)
    return grouped
