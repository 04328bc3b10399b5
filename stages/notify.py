"""Email: alerts on failures and the business owner's daily report.

Interface used by the rest of the project (the alerts issue implements it fully):

    alert(subject, error=None, context=None, log_tail=None) -> bool
        Send an alert email (throttled, secrets scrubbed). Never raises; returns True if a mail
        went out.
"""

from __future__ import annotations


def alert(subject: str, error: BaseException | None = None, context: dict | None = None,
          log_tail: str | None = None) -> bool:
    """Not built yet: no mail is sent. Never raises."""
    return False
