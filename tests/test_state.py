"""Template state survives a restart; a corrupt state file is set aside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.capture import read_capture
from collector.decoder import Decoder
from collector.options import OptionsStore
from collector.state import load, save
from tests.conftest import EXPORTS
from tests.packets import (
    FIVE_TUPLE_FIELDS,
    five_tuple,
    flowset,
    template_record,
    v9_header,
)


def test_restart_decodes_data_at_once_from_saved_templates(tmp_path: Path) -> None:
    """After save and load, data without a template in sight still decodes."""
    state = tmp_path / "state.json"
    first = Decoder()
    options = OptionsStore()
    template = v9_header() + flowset(0, template_record(256, FIVE_TUPLE_FIELDS))
    first.decode(template, "192.0.2.1", 2055, 100.0)
    save(state, first, options)

    second = Decoder()
    assert load(state, second, OptionsStore()) == 1
    data = v9_header() + flowset(256, five_tuple("10.0.0.1", "203.0.113.9", 1, 631))
    out = second.decode(data, "192.0.2.1", 2055, 200.0)
    assert [
        b.layout.values(r)["destinationTransportPort"]
        for b in out.flows
        for r in b.rows
    ] == [631]


def test_options_state_round_trips(tmp_path: Path) -> None:
    """softflowd's system init time comes back after a restart."""
    decoder = Decoder()
    options = OptionsStore()
    for datagram in read_capture(EXPORTS / "softflowd-v10.pcap"):
        for batch in decoder.decode(datagram.data, "127.0.0.1", 1, 0.0).options:
            options.learn(batch)
    state = tmp_path / "state.json"
    save(state, decoder, options)
    restored = OptionsStore()
    load(state, Decoder(), restored)
    assert restored.items() == options.items()
    assert options.items()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"format": "flowtrap-state", "version": 1}',
        json.dumps(
            {
                "format": "flowtrap-state",
                "version": 1,
                "saved_at": 0,
                "exporters": [
                    {
                        "address": "192.0.2.1",
                        "port": 0,
                        "templates": [
                            {
                                "version": 9,
                                "domain": 0,
                                "template_id": 12,
                                "options": False,
                                "scope_count": 0,
                                "fields": [[8, 4, 0]],
                                "refreshed": 0,
                            }
                        ],
                    }
                ],
                "options": [],
            }
        ).encode(),
    ],
    ids=["empty", "not_json", "missing_keys", "template_id_reserved"],
)
def test_corrupt_state_file_is_set_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file that fails validation is renamed, warned about, not loaded."""
    state = tmp_path / "state.json"
    state.write_bytes(content)
    assert load(state, Decoder(), OptionsStore()) == 0
    assert not state.exists()
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1
    assert "state file set aside" in caplog.text


def test_missing_state_file_is_a_first_start(tmp_path: Path) -> None:
    """No file, no templates, no warning."""
    assert load(tmp_path / "absent.json", Decoder(), OptionsStore()) == 0


def test_save_replaces_the_file_atomically(tmp_path: Path) -> None:
    """The old file stays complete until the new one replaces it."""
    state = tmp_path / "state.json"
    save(state, Decoder(), OptionsStore())
    save(state, Decoder(), OptionsStore())
    assert json.loads(state.read_text())["format"] == "flowtrap-state"
    assert not list(tmp_path.glob("*.tmp"))


def test_templates_not_refreshed_expire() -> None:
    """A template not sent again within the age limit is dropped and counted."""
    from collector.templates import Limits

    decoder = Decoder(Limits(template_max_age=600))
    template = v9_header() + flowset(0, template_record(256, FIVE_TUPLE_FIELDS))
    other = v9_header() + flowset(0, template_record(257, FIVE_TUPLE_FIELDS))
    decoder.decode(template, "192.0.2.1", 2055, 0.0)
    decoder.decode(other, "192.0.2.1", 2055, 0.0)
    decoder.decode(other, "192.0.2.1", 2055, 500.0)
    assert decoder.store.expire_templates(700.0) == 1
    assert decoder.stats.counts["templates_expired"] == 1
    state = decoder.store.exporter("192.0.2.1", 2055)
    assert state is not None
    assert list(state.templates) == [(9, 0, 257)]
