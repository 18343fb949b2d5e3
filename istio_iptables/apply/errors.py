"""The one error the apply layers share."""


class ApplyError(RuntimeError):
    """The apply failed; the namespace was put back as it was (or the message says not)."""
