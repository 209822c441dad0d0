"""Export packet decoding for NetFlow v5, v9 and IPFIX.

The decoder turns one export packet into batches of rows, each with the compiled
layout that reads them. It never raises on input: every length is checked against
the bytes that remain, a flowset that does not parse costs only itself, and every
loss is counted by a reason slug (``Stats.error``).
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from collector.capture import Datagram
from collector.ie import V9_SCOPE
from collector.layout import FieldSpec, Layout, Row
from collector.sequence import SequenceRules, SequenceTracker
from collector.stats import Stats
from collector.templates import (
    ExportContext,
    ExporterState,
    Held,
    Limits,
    TemplateKey,
    TemplateStore,
)

log = logging.getLogger(__name__)

# Distinct compiled templates kept for sharing between exporters.
MAX_SHARED_LAYOUTS = 4_096

# A template with more fields than this is taken as garbage rather than compiled;
# the largest real templates (VMware vDS, Netscaler) have under 100.
MAX_TEMPLATE_FIELDS = 1024

_V5_HEADER = struct.Struct(">HHIIIIBBH")
_V9_HEADER = struct.Struct(">HHIIII")
_IPFIX_HEADER = struct.Struct(">HHIII")
_SET_HEADER = struct.Struct(">HH")
_V9_OPTIONS_HEADER = struct.Struct(">HHH")

# The v5 record (Cisco's NetFlow v5 format) expressed as an IPFIX template, so that
# v5 goes through the same layout and flow-record code as v9 and IPFIX.
_V5_FIELDS = (
    FieldSpec(8, 4),  # srcaddr
    FieldSpec(12, 4),  # dstaddr
    FieldSpec(15, 4),  # nexthop
    FieldSpec(10, 2),  # input ifIndex
    FieldSpec(14, 2),  # output ifIndex
    FieldSpec(2, 4),  # dPkts
    FieldSpec(1, 4),  # dOctets
    FieldSpec(22, 4),  # First, sysUptime ms at flow start
    FieldSpec(21, 4),  # Last, sysUptime ms at flow end
    FieldSpec(7, 2),  # srcport
    FieldSpec(11, 2),  # dstport
    FieldSpec(210, 1),  # pad1
    FieldSpec(6, 1),  # tcp_flags
    FieldSpec(4, 1),  # prot
    FieldSpec(5, 1),  # tos
    FieldSpec(16, 2),  # src_as
    FieldSpec(17, 2),  # dst_as
    FieldSpec(9, 1),  # src_mask
    FieldSpec(13, 1),  # dst_mask
    FieldSpec(210, 2),  # pad2
)
V5_LAYOUT = Layout.compile(0, _V5_FIELDS)
V5_RECORD_LENGTH = 48


class Batch:
    """The records of one flowset, the layout that reads them, their export packet.

    Records of a fixed-length layout stay as the flowset's bytes (``body``,
    ``count`` records long) until someone asks for ``rows``: the pipeline tests
    the few columns its detectors need on the bytes and unpacks only the
    records that pass. Variable-length records are split as they are decoded.
    """

    __slots__ = ("_rows", "body", "context", "count", "layout")

    def __init__(
        self,
        layout: Layout,
        rows: list[Row] | None,
        context: ExportContext,
        body: bytes = b"",
    ) -> None:
        """Keep either decoded rows or the body of a fixed-length layout."""
        self.layout = layout
        self.context = context
        self.body = body
        self._rows = rows
        if rows is not None:
            self.count = len(rows)
        else:
            self.count = len(body) // layout.record_length

    @property
    def rows(self) -> list[Row]:
        """Return every record as a row tuple, unpacking the body once."""
        if self._rows is None:
            codec = self.layout.codec
            assert codec is not None, "a body is kept only for fixed layouts"
            self._rows = list(codec.iter_unpack(self.body))
        return self._rows

    def row(self, index: int) -> Row:
        """Return one record as a row tuple."""
        if self._rows is not None:
            return self._rows[index]
        codec = self.layout.codec
        assert codec is not None, "a body is kept only for fixed layouts"
        return codec.unpack_from(self.body, index * self.layout.record_length)


@dataclass(slots=True)
class Decoded:
    """What one export packet (plus any held data it released) decoded to."""

    flows: list[Batch] = field(default_factory=list)
    options: list[Batch] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Sets:
    """The flowset ids that mean template and options template in one version."""

    template: int
    options: int
    ipfix: bool


_V9_SETS = _Sets(template=0, options=1, ipfix=False)
_IPFIX_SETS = _Sets(template=2, options=3, ipfix=True)


class Decoder:
    """Decodes export packets from any number of exporters."""

    def __init__(
        self,
        limits: Limits | None = None,
        stats: Stats | None = None,
        sequence_rules: SequenceRules | None = None,
    ):
        """Start with no templates; no I/O."""
        self.stats = stats if stats is not None else Stats()
        self.store = TemplateStore(limits or Limits(), self.stats)
        self.sequences = SequenceTracker(sequence_rules)
        self._layouts: OrderedDict[
            tuple[int, tuple[FieldSpec, ...], bool, int], Layout
        ] = OrderedDict()
        # Per message: data records decoded from its own flowsets, and whether
        # any of its flowsets had to be held (then its record count is unknown).
        self._message_records = 0
        self._message_held = False

    def _compiled(
        self,
        template_id: int,
        fields: tuple[FieldSpec, ...],
        options: bool,
        scope_count: int,
    ) -> Layout:
        """Compile a template, or share the layout of an identical one.

        Thousands of exporters of one model send the same templates: one
        compiled layout (about 2.7 kB) serves them all.
        """
        key = (template_id, fields, options, scope_count)
        layout = self._layouts.get(key)
        if layout is None:
            layout = Layout.compile(
                template_id, fields, options=options, scope_count=scope_count
            )
            self._layouts[key] = layout
            if len(self._layouts) > MAX_SHARED_LAYOUTS:
                self._layouts.popitem(last=False)
        else:
            self._layouts.move_to_end(key)
        return layout

    def _sequence(self, context: ExportContext, units: int | None) -> None:
        """Account the export packet's sequence number."""
        lost = self.sequences.observe(
            context.exporter, context.version, context.domain, context.sequence, units
        )
        if lost:
            self.stats.add("sequence_lost", lost)

    def decode(self, data: bytes, exporter: str, port: int, received: float) -> Decoded:
        """Decode one export packet; input problems are counted, never raised."""
        out = Decoded()
        self.stats.add("export_packets")
        try:
            self._dispatch(Datagram(exporter, port, received, data), out)
        except Exception:
            # Every read is bounds-checked, so this is a bug in flowtrap, not bad
            # input; keep the collector alive and keep what decoded.
            self.stats.error(exporter, "decoder_bug")
            log.exception("decoder failed", extra={"exporter": exporter})
        return out

    def _dispatch(self, packet: Datagram, out: Decoded) -> None:
        """Pick the decoder by the version in the first two bytes."""
        data, exporter = packet.data, packet.exporter
        if len(data) < 2:
            self.stats.error(exporter, "truncated_header")
            return
        version = int.from_bytes(data[:2], "big")
        if version == 5:
            self._decode_v5(packet, out)
        elif version == 9:
            self._decode_v9(packet, out)
        elif version == 10:
            self._decode_ipfix(packet, out)
        else:
            self.stats.error(exporter, "unsupported_version")

    def _decode_v5(self, packet: Datagram, out: Decoded) -> None:
        """Decode v5 export packets; captures written to files may chain several."""
        data, exporter = packet.data, packet.exporter
        if len(data) < _V5_HEADER.size:
            self.stats.error(exporter, "truncated_header")
            return
        offset = 0
        while True:
            offset = self._v5_packet(packet, offset, out)
            rest = len(data) - offset
            if rest < _V5_HEADER.size or data[offset : offset + 2] != b"\x00\x05":
                break
            self.stats.add("chained_messages")
        if any(data[offset:]):
            self.stats.error(exporter, "v5_count_mismatch")

    def _v5_packet(self, packet: Datagram, offset: int, out: Decoded) -> int:
        """Decode one v5 packet at offset: a 24-byte header, 48-byte records."""
        data, exporter = packet.data, packet.exporter
        _, count, uptime, secs, nsecs, sequence, engine_type, engine_id, sampling = (
            _V5_HEADER.unpack_from(data, offset)
        )
        start = offset + _V5_HEADER.size
        fit = (len(data) - start) // V5_RECORD_LENGTH
        if count > fit:
            # The header count is not trusted (B23); keep the records that fit.
            self.stats.error(exporter, "v5_count_mismatch")
        end = start + min(int(count), fit) * V5_RECORD_LENGTH
        records = (end - start) // V5_RECORD_LENGTH

        context = ExportContext(
            exporter=exporter,
            port=packet.port,
            version=5,
            domain=(engine_type << 8) | engine_id,
            export_time_ms=secs * 1000 + nsecs // 1_000_000,
            sys_uptime=uptime,
            sequence=sequence,
            received=packet.received,
            # The top two bits are the sampling mode, the rest the interval.
            sampling_interval=sampling & 0x3FFF,
        )
        if records:
            out.flows.append(Batch(V5_LAYOUT, None, context, data[start:end]))
            self.stats.add("flow_records", records)
        # v5 numbers flow records (Cisco's v5 format: flow_sequence).
        self._sequence(context, records)
        return end

    def _decode_v9(self, packet: Datagram, out: Decoded) -> None:
        """Decode a v9 export packet (RFC 3954 §5)."""
        data, exporter = packet.data, packet.exporter
        if len(data) < _V9_HEADER.size:
            self.stats.error(exporter, "truncated_header")
            return
        _, _count, uptime, secs, sequence, source_id = _V9_HEADER.unpack_from(data)
        context = ExportContext(
            exporter=exporter,
            port=packet.port,
            version=9,
            domain=source_id,
            export_time_ms=secs * 1000,
            sys_uptime=uptime,
            sequence=sequence,
            received=packet.received,
        )
        # The header count is never used to bound parsing (RFC 3954 §5.1 vs
        # exporters that count flowsets): flowsets are walked by their lengths.
        self._walk(data, _V9_HEADER.size, len(data), context, _V9_SETS, out)
        self._sequence(context, 1)

    def _decode_ipfix(self, packet: Datagram, out: Decoded) -> None:
        """Decode IPFIX messages (RFC 7011 §3); files and relays may chain several."""
        data, exporter = packet.data, packet.exporter
        if len(data) < _IPFIX_HEADER.size:
            self.stats.error(exporter, "truncated_header")
            return
        offset = 0
        while len(data) - offset >= _IPFIX_HEADER.size:
            message_end = self._ipfix_message(packet, offset, out)
            if message_end is None:
                return
            offset = message_end
            if data[offset : offset + 2] != b"\x00\x0a":
                break
            self.stats.add("chained_messages")
        if any(data[offset:]):
            self.stats.error(exporter, "bytes_after_message")

    def _ipfix_message(self, packet: Datagram, offset: int, out: Decoded) -> int | None:
        """Decode one IPFIX message at offset; return where it ends, or None."""
        data, exporter = packet.data, packet.exporter
        _, length, export_time, sequence, domain = _IPFIX_HEADER.unpack_from(
            data, offset
        )
        if length < _IPFIX_HEADER.size:
            self.stats.error(exporter, "message_length")
            return None
        end = offset + int(length)
        if end > len(data):
            self.stats.error(exporter, "message_truncated")
            end = len(data)
        context = ExportContext(
            exporter=exporter,
            port=packet.port,
            version=10,
            domain=domain,
            export_time_ms=export_time * 1000,
            sys_uptime=None,
            sequence=sequence,
            received=packet.received,
        )
        self._message_records = 0
        self._message_held = False
        end = self._walk(
            data, offset + _IPFIX_HEADER.size, end, context, _IPFIX_SETS, out
        )
        self._sequence(context, None if self._message_held else self._message_records)
        return end

    def _walk(
        self,
        data: bytes,
        offset: int,
        end: int,
        context: ExportContext,
        sets: _Sets,
        out: Decoded,
    ) -> int:
        """Visit every flowset by its declared length; return where the walk ended."""
        state = self.store.exporter(context.exporter, context.port, context.received)
        if state is None:
            return end
        exporter = context.exporter
        while end - offset >= _SET_HEADER.size:
            set_id, length = _SET_HEADER.unpack_from(data, offset)
            if sets.ipfix and end < offset + length <= len(data) and length >= 4:
                # The message length understates the message (seen from
                # generators): the set still fits the datagram, so keep it.
                self.stats.error(exporter, "message_length_short")
                end = offset + length
            if length < _SET_HEADER.size or offset + length > end:
                # Zero fill after the last flowset is padding (Palo Alto, NX-OS);
                # anything else is a bad length that ends this packet.
                if any(data[offset:end]):
                    self.stats.error(exporter, "flowset_length")
                return end
            body = data[offset + _SET_HEADER.size : offset + length]
            offset += length
            self.stats.add("flowsets")
            if set_id == sets.template:
                self._templates(body, context, state, sets, out)
            elif set_id == sets.options:
                if sets.ipfix:
                    self._ipfix_options_templates(body, context, state, out)
                else:
                    self._v9_options_templates(body, context, state, out)
            elif set_id >= 256:
                self._data(set_id, body, context, state, out)
            else:
                self.stats.error(exporter, "reserved_set_id")

        if any(data[offset:end]):
            self.stats.error(exporter, "trailing_bytes")
        return end

    def _templates(
        self,
        body: bytes,
        context: ExportContext,
        state: ExporterState,
        sets: _Sets,
        out: Decoded,
    ) -> None:
        """Read the template records of one template flowset."""
        position = 0
        while len(body) - position >= 4:
            template_id, count = _SET_HEADER.unpack_from(body, position)
            if template_id == 0 and count == 0 and not any(body[position:]):
                return
            position += 4
            if sets.ipfix and count == 0:
                self._withdraw(template_id, context, state, sets)
                continue
            parsed = self._field_specs(body, position, count, sets.ipfix, context)
            if parsed is None:
                return
            fields, position = parsed
            self._learn(template_id, fields, context, state, out)

    def _ipfix_options_templates(
        self, body: bytes, context: ExportContext, state: ExporterState, out: Decoded
    ) -> None:
        """Read IPFIX options template records (RFC 7011 §3.4.2.2)."""
        position = 0
        while len(body) - position >= 4:
            template_id, count = _SET_HEADER.unpack_from(body, position)
            if count == 0:
                if template_id == 0 and not any(body[position:]):
                    return
                position += 4
                self._withdraw(template_id, context, state, _IPFIX_SETS)
                continue
            if len(body) - position < 6:
                self.stats.error(context.exporter, "template_truncated")
                return
            scope_count = int.from_bytes(body[position + 4 : position + 6], "big")
            position += 6
            parsed = self._field_specs(body, position, count, True, context)
            if parsed is None:
                return
            fields, position = parsed
            if not 0 < scope_count <= count:
                # RFC 7011 §3.4.2.2: scope count must be at least 1; the template
                # is skipped, its neighbours still count.
                self.stats.error(context.exporter, "options_scope_count")
                continue
            self._learn(
                template_id, fields, context, state, out, scope_count=scope_count
            )

    def _v9_options_templates(
        self, body: bytes, context: ExportContext, state: ExporterState, out: Decoded
    ) -> None:
        """Read v9 options template records (RFC 3954 §6.1): lengths in bytes."""
        position = 0
        while len(body) - position >= _V9_OPTIONS_HEADER.size:
            template_id, scope_bytes, option_bytes = _V9_OPTIONS_HEADER.unpack_from(
                body, position
            )
            if template_id == 0 and not any(body[position:]):
                return
            position += _V9_OPTIONS_HEADER.size
            if scope_bytes % 4 or option_bytes % 4:
                self.stats.error(context.exporter, "options_template_length")
                return
            scope = self._field_specs(body, position, scope_bytes // 4, False, context)
            if scope is None:
                return
            scope_fields, position = scope
            option = self._field_specs(
                body, position, option_bytes // 4, False, context
            )
            if option is None:
                return
            option_fields, position = option
            scope_fields = tuple(
                FieldSpec(spec.element_id, spec.length, V9_SCOPE)
                for spec in scope_fields
            )
            self._learn(
                template_id,
                scope_fields + option_fields,
                context,
                state,
                out,
                scope_count=len(scope_fields),
                options=True,
            )

    def _field_specs(
        self,
        body: bytes,
        position: int,
        count: int,
        ipfix: bool,
        context: ExportContext,
    ) -> tuple[tuple[FieldSpec, ...], int] | None:
        """Read count field specifiers, or None when they run past the flowset."""
        if count > MAX_TEMPLATE_FIELDS:
            self.stats.error(context.exporter, "template_too_many_fields")
            return None
        fields = []
        end = len(body)
        for _ in range(count):
            if end - position < 4:
                self.stats.error(context.exporter, "template_truncated")
                return None
            element_id, length = _SET_HEADER.unpack_from(body, position)
            position += 4
            enterprise = 0
            if ipfix and element_id & 0x8000:
                # RFC 7011 §3.2: the enterprise bit adds a 4-byte number.
                if end - position < 4:
                    self.stats.error(context.exporter, "template_truncated")
                    return None
                element_id &= 0x7FFF
                enterprise = int.from_bytes(body[position : position + 4], "big")
                position += 4
            fields.append(FieldSpec(element_id, length, enterprise))
        return tuple(fields), position

    def _withdraw(
        self,
        template_id: int,
        context: ExportContext,
        state: ExporterState,
        sets: _Sets,
    ) -> None:
        """Apply an IPFIX template withdrawal (RFC 7011 §8.1)."""
        if template_id in (sets.template, sets.options):
            self.store.withdraw_all(
                state, 10, context.domain, options=template_id == sets.options
            )
        elif template_id >= 256:
            key = (10, context.domain, template_id)
            self.store.withdraw(state, key, context.exporter)
        else:
            self.stats.error(context.exporter, "template_id_reserved")

    def _learn(
        self,
        template_id: int,
        fields: tuple[FieldSpec, ...],
        context: ExportContext,
        state: ExporterState,
        out: Decoded,
        *,
        scope_count: int = 0,
        options: bool = False,
    ) -> None:
        """Compile and store a template, then decode any data held for it."""
        if template_id < 256:
            self.stats.error(context.exporter, "template_id_reserved")
            return
        key: TemplateKey = (context.version, context.domain, template_id)
        options = options or scope_count > 0
        if self.store.refresh(state, key, fields, options, context.received):
            # Most exporters resend the same template in every packet or every
            # few: only its time is updated, nothing is compiled again.
            return
        if not self.store.may_change(state, key, len(fields), context.received):
            return
        layout = self._compiled(template_id, fields, options, scope_count)
        if layout.record_length == 0:
            # A record of zero bytes cannot be walked (B29): refuse the template.
            self.stats.error(context.exporter, "template_empty_record")
            return
        if not self.store.learn(state, key, layout, context.received):
            return
        for held in self.store.release(state, key):
            self.stats.add("held_decoded")
            self._decode_rows(layout, held.body, held.context, out)

    def _data(
        self,
        set_id: int,
        body: bytes,
        context: ExportContext,
        state: ExporterState,
        out: Decoded,
    ) -> None:
        """Decode a data flowset, or hold it until its template arrives."""
        key: TemplateKey = (context.version, context.domain, set_id)
        layout = state.templates.get(key)
        if layout is None:
            self.store.hold(state, Held(key, bytes(body), context), context.received)
            self._message_held = True
            return
        self._message_records += self._decode_rows(layout, body, context, out)

    def _decode_rows(
        self, layout: Layout, body: bytes, context: ExportContext, out: Decoded
    ) -> int:
        """Split a data flowset into records and file them as flows or options."""
        if layout.codec is None:
            rows, rest = layout.rows(body)
            if any(body[len(body) - rest :]):
                self.stats.error(context.exporter, "record_truncated")
            return self._file(Batch(layout, rows, context), out)
        size = layout.record_length
        count, rest = divmod(len(body), size)
        if count and not body[-1]:
            # Padding longer than a record (NX-OS pads 24-36 bytes) would read as
            # all-zero records; records lying wholly in the zero tail are dropped.
            zero_tail = len(body) - len(body.rstrip(b"\x00")) - rest
            if zero_tail >= size:
                count = max(0, count - zero_tail // size)
                self.stats.add("padding_records_dropped")
        if not count:
            return 0
        if count * size != len(body):
            body = body[: count * size]
        return self._file(Batch(layout, None, context, body), out)

    def _file(self, batch: Batch, out: Decoded) -> int:
        """File a batch as flows or options; return its record count."""
        if not batch.count:
            return 0
        if batch.layout.options:
            out.options.append(batch)
            self.stats.add("options_records", batch.count)
        else:
            out.flows.append(batch)
            self.stats.add("flow_records", batch.count)
        return batch.count
