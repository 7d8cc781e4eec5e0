#!/usr/bin/env python3
"""Writes the seeds of the `headers` fuzz target into seeds-headers/.

Each seed is a recipe in the format `Recipe` in fuzz_targets/headers.rs
reads: max-attempts byte, frame byte, a header table, a delay byte and the
dead-letter reason. Run it again after changing that format.
"""
import os
import struct

NAMES = ["x-death", "x-attempts", "traceparent", "tracestate", "x-dropped-headers",
         "x-error-kind", "x-error-reason", "x-first-death-queue", "x-last-death-reason",
         "x-delivery-count", "CC", "BCC", "queue", "reason", "count", "x-custom"]
FRAMES = {4096: 0, 8192: 1, 16384: 2, 131072: 3}


def u64(n):
    return struct.pack(">Q", n)


def name(text):
    if text in NAMES:
        return bytes([NAMES.index(text)])
    raw = text.encode()
    return bytes([200, len(raw)]) + raw


def raw_text(raw):
    """A text of these bytes (at most 255)."""
    return bytes([2, 1, len(raw)]) + raw


def filled_text(fill, length):
    """A text of `length` times `fill`."""
    return bytes([2, 0, length // 256, ord(fill), length % 256])


def retry_queue_text(n):
    return bytes([0]) + u64(n)


def traceparent_text():
    return bytes([1]) + u64(0x4BF92F3577B34DA6) + u64(0xA3CE929D0E0E4736) + u64(0x00F067AA0BA902B7)


def long_string(text):
    return bytes([17]) + text


def long_long(n):
    return bytes([7]) + u64(n)


def array(*values):
    return bytes([15, len(values)]) + b"".join(values)


def table(*entries):
    return bytes([16]) + table_body(*entries)


def table_body(*entries):
    return bytes([len(entries)]) + b"".join(name(n) + v for n, v in entries)


def recipe(max_attempts, frame, entries, delay=1, reason=b"provider unavailable"):
    return (bytes([max_attempts - 1, FRAMES[frame]]) + table_body(*entries)
            + bytes([delay]) + raw_text(reason))


def death(n):
    return array(table(("queue", long_string(retry_queue_text(n))),
                       ("reason", long_string(raw_text(b"expired")))))


SEEDS = {
    # A message whose headers nearly fill the smallest frame, retried once.
    "smallest-frame-retried": recipe(4, 4096, [
        ("traceparent", long_string(traceparent_text())),
        ("x-custom", long_string(filled_text("a", 3900))),
        ("x-death", death(1)),
        ("x-attempts", long_long(1)),
    ]),
    # The default frame, a few large headers, and routing headers.
    "default-frame-large-headers": recipe(5, 131072, [
        ("traceparent", long_string(traceparent_text())),
        ("tracestate", long_string(raw_text(b"vendor=opaque"))),
        ("x-a", long_string(filled_text("a", 60000))),
        ("x-b", long_string(filled_text("b", 50000))),
        ("x-c", long_string(filled_text("c", 21000))),
        ("CC", array(long_string(raw_text(b"elsewhere")))),
    ]),
    # A forged x-death naming a retry queue that does not exist.
    "forged-attempts": recipe(4, 131072, [
        ("x-death", death(99)),
        ("x-attempts", long_long(99)),
    ]),
    # An earlier copy's list, a huge broker history, an oversized reason.
    "earlier-list-and-history": recipe(3, 8192, [
        ("x-dropped-headers", array(*[long_string(raw_text(b"x-old-%d" % i)) for i in range(6)])),
        ("x-death", array(*[table(("queue", long_string(retry_queue_text(i)))) for i in range(7)])),
        ("x-first-death-queue", long_string(filled_text("q", 9000))),
        ("x-error-reason", long_string(filled_text("r", 20000))),
    ], reason=b"r" * 255),
}

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds-headers")
os.makedirs(here, exist_ok=True)
for seed, data in SEEDS.items():
    with open(os.path.join(here, seed), "wb") as out:
        out.write(data)
