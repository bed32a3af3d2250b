# Readings and tamper events handed to the messaging layer's outbox (docs/protocol.md).
#
# A reading goes as an application payload (C = 0): cellguard.reading's 10 bytes, whatever its
# quality, so the hub sees faults too and never mistakes them for good data. A tamper event goes as
# a control message TAMPER (0x02) with event code 16 ("enclosure opened", application-defined;
# protocol.md reserves 1-4): u8 0x02, u8 16, u32 tamper sequence, u32 time, u8 flags (bit 0: the
# keys are about to be wiped). It is sealed and sent at once, before a wipe can take the keys:
# retransmissions resend the sealed bytes, so it still reaches the hub after the wipe.
import struct

from cellguard import reading

CTRL_TAMPER = 0x02
TAMPER_ENCLOSURE = 16
WIPE_PENDING = 1


def send_reading(outbox, r):
    """Queue one Reading for the hub; returns the outbox entry id."""
    return outbox.enqueue(reading.encode(r))


def tamper_payload(event, code=TAMPER_ENCLOSURE):
    flags = WIPE_PENDING if event.get("wipe") else 0
    return struct.pack(">BBIIB", CTRL_TAMPER, code, event["seq"], event["t"] & 0xFFFFFFFF, flags)


def tamper_reporter(outbox, code=TAMPER_ENCLOSURE):
    """An on_tamper hook for TamperMonitor that reports each event to the hub."""

    def report(event):
        outbox.enqueue(tamper_payload(event, code), control=True)
        outbox.send_due()  # seal now, while the keys exist

    return report
