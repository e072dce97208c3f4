"""Fixtures of the experiment runner's tests."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises ``KeyboardInterrupt`` in the test process, as in a terminal.

    A test run started in the background (``pytest &`` in a script, ``nohup``, some CI
    runners) inherits SIGINT ignored, and so do the processes it starts: a Ctrl-C would
    then reach neither. The test's SIGINT handler is Python's own until it ends (a process
    it starts gets the default, which Python turns into its own); the previous handler is
    restored unless it was set from outside Python (no handler to restore).
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
