"""Waiting on a condition, for tests that watch another process."""

import time


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    """Poll `check()` until it returns something true, and return that; fail
    the test, naming `what`, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
