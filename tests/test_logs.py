"""Log hygiene (issue 13, item 3): long lines cut, repeated lines rate-limited, query strings redacted."""

from __future__ import annotations

import logging

from multimodal_mcp.logs import Hygiene, RedactQuery, prefix


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"test-hygiene-{id(handler)}")
    log.propagate, log.level = False, logging.INFO
    log.addHandler(handler)
    return log


def test_a_line_repeated_past_the_burst_is_dropped_until_the_window_ends_then_counted() -> None:
    now = [0.0]
    handler = Collect()
    handler.addFilter(Hygiene(burst=5, window=60, clock=lambda: now[0]))
    log = _logger(handler)
    for i in range(100):  # the accept loop: one format string, thousands of times
        log.error("socket.accept() out of system resource (%d)", i)
    log.warning("another line")
    assert len(handler.lines) == 6 and handler.lines[-1] == "another line"
    assert handler.lines[4] == "socket.accept() out of system resource (4)"
    now[0] = 60.0
    log.error("socket.accept() out of system resource (%d)", 100)
    assert handler.lines[-1] == (
        "socket.accept() out of system resource (100) [95 more like this dropped in the last 60 s]"
    )


def test_a_long_message_is_cut_saying_how_long_it_was() -> None:
    handler = Collect()
    handler.addFilter(Hygiene(max_chars=100))
    uri = "image://" + "a" * 50_000
    _logger(handler).info("Resource %r failed", uri)
    (line,) = handler.lines
    whole = len(f"Resource {uri!r} failed")
    assert len(line) < 150 and line.endswith(f"... (cut: {whole} characters)")


def test_query_strings_never_reach_the_access_log() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/mcp?access_token=s3cret-token&x=1", "1.1", 401),
        None,
    )
    assert RedactQuery().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "POST /mcp?<redacted> HTTP/1.1" 401'


def test_a_prefix_quotes_little_and_says_how_long_the_value_was() -> None:
    assert prefix("short") == "'short'"
    assert prefix("x" * 1000, 10) == "'xxxxxxxxxx'... (1000 characters)"
