"""Log lines an operator can read in `kubectl logs`: plain text or one JSON object each.

A few functions instead of the logging package: istio-init logs a dozen lines, and
importing logging costs ~5 ms of CPU at pod start (see `make bench`).
"""

from __future__ import annotations

import sys
import time


class _Settings:
    format = "text"
    threshold = 20
    last_error = ""  # the CNI plugin repeats it in its error JSON
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def setup_logging(fmt: str, debug: bool = False) -> None:
    """Choose 'text' or 'json'; lines go to stderr (stdout carries dry-run output)."""
    _Settings.format = fmt
    _Settings.threshold = 10 if debug else 20


def format_line(level: str, message: str, now: float, fmt: str) -> str:
    """One log line, without the newline."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    if fmt == "json":
        import json

        millis = int((now % 1) * 1000)
        return json.dumps({"time": f"{stamp}.{millis:03d}Z", "level": level, "msg": message})
    return f"{stamp} {level.upper()} {message}"


def _emit(level: str, message: str, args: tuple[object, ...]) -> None:
    if _LEVELS[level] < _Settings.threshold:
        return
    text = message % args if args else message
    if level == "error":
        _Settings.last_error = text
    sys.stderr.write(format_line(level, text, time.time(), _Settings.format) + "\n")


def last_error() -> str:
    """The text of the latest error line (empty if none), for callers that must also
    report it elsewhere than the log."""
    return _Settings.last_error


def debug(message: str, *args: object) -> None:
    _emit("debug", message, args)


def info(message: str, *args: object) -> None:
    _emit("info", message, args)


def warning(message: str, *args: object) -> None:
    _emit("warning", message, args)


def error(message: str, *args: object) -> None:
    _emit("error", message, args)
