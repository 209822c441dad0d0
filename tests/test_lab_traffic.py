"""The lab's traffic script: the packets it builds and the URLs it follows.

No sockets here; the live lab (tests/test_lab.py) plays the whole exchange.
"""

from __future__ import annotations

import socket
import struct

import pytest

from lab.traffic import (
    browse_packet,
    dns_answer,
    dns_query,
    ipp_post,
    printer_url,
)


def test_browse_packet_carries_the_printer_url_it_advertises() -> None:
    """A browse packet built for a URL parses back to that URL's parts."""
    packet = browse_packet("http://203.0.113.10:8631/printers/lab")
    assert packet == b'0 3 http://203.0.113.10:8631/printers/lab "lab" "Lab printer"\n'
    assert printer_url(packet) == ("203.0.113.10", 8631, "/printers/lab")


def test_ipp_url_without_a_port_means_port_631() -> None:
    """An ipp:// URL with no port is fetched on 631, as CUPS does."""
    packet = b"0 3 ipp://198.51.100.7/printers/x\n"
    assert printer_url(packet) == ("198.51.100.7", 631, "/printers/x")


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"0 3\n", id="no-url"),
        pytest.param(b"0 3 ftp://203.0.113.10/printers/x\n", id="other-scheme"),
        pytest.param(b"0 3 http:///printers/x\n", id="no-host"),
        pytest.param(b"0 3 http://203.0.113.10:99999/x\n", id="port-out-of-range"),
        pytest.param(b"\xff\xfe \x00 \x80\n", id="not-ascii"),
    ],
)
def test_packets_without_a_usable_url_are_ignored(packet: bytes) -> None:
    """A packet that names no fetchable printer URL gives no callback target."""
    assert printer_url(packet) is None


def test_dns_answer_keeps_the_query_id_and_question_and_adds_one_a_record() -> None:
    """The outside host's answer matches the workstation's query (RFC 1035 §4.1)."""
    query = dns_query(7, "printers.example.com")
    answer = dns_answer(query, "203.0.113.80")
    assert answer is not None
    query_id, flags, questions, answers, _, _ = struct.unpack_from(">HHHHHH", answer)
    assert (query_id, flags, questions, answers) == (7, 0x8180, 1, 1)
    assert answer[12 : len(query)] == query[12:]
    assert answer[-4:] == socket.inet_aton("203.0.113.80")


@pytest.mark.parametrize(
    "query",
    [
        pytest.param(b"\x00\x07", id="shorter-than-header"),
        pytest.param(dns_query(7, "printers.example.com")[:-3], id="cut-question"),
    ],
)
def test_dns_answer_to_a_truncated_query_is_none(query: bytes) -> None:
    """A query cut short gets no answer rather than a malformed one."""
    assert dns_answer(query, "203.0.113.80") is None


def test_ipp_post_declares_the_length_of_its_body() -> None:
    """The callback's HTTP POST says its IPP body's length and carries it whole."""
    request = ipp_post("203.0.113.10", 8631, "/printers/lab")
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /printers/lab HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Host: 203.0.113.10:8631" in head
