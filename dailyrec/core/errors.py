"""Error kinds, each with its own exit status, so a scheduler and the alerts can tell them apart.

    status  class                 meaning                                       retry?
    0       -                     done
    1       (any other exception) a bug: the traceback says where              after a fix
    2       ConfigError           a setting, argument or input file is unusable after a fix
    3       NotPublished          the quality gate kept the model back          no: a verdict
    65      DataError             bad data: the day is rejected or the input    after a look
                                  is not canonical (EX_DATAERR)
    69      ServiceUnavailable    database, Redis, MLflow, SMTP or the DVC      yes, later
                                  remote cannot be reached (EX_UNAVAILABLE)
    75      Busy                  another run or publish holds the lock         yes, later
                                  (EX_TEMPFAIL)

docs/operations.md lists them for operators.
"""

from __future__ import annotations


class DailyrecError(Exception):
    """Base of the errors this project raises on purpose; the message says what and where.

    verdict: the stage did its job and said no (the gate kept the model back, validate rejected
    the day). Running the same day again gives the same answer, so the daily runner records the
    day as done and goes on to the next one instead of retrying it every night."""

    exit_code = 1
    kind = "error"
    verdict = False


class ConfigError(DailyrecError):
    """A setting, argument or input file that cannot be used; the message says which and where."""

    exit_code = 2
    kind = "config"


class NotPublished(DailyrecError):
    """publish declined: the quality gate failed. The served version is unchanged."""

    exit_code = 3
    kind = "not_published"
    verdict = True


class DataError(DailyrecError):
    """The data is bad: validate rejected the day, or an input is not canonical events."""

    exit_code = 65
    kind = "data"


class DayRejected(DataError):
    """validate rejected the day (or its training window): recorded in the rejection ledger, so
    later runs leave it out of training until a person admits it."""

    verdict = True


class ServiceUnavailable(DailyrecError):
    """A service the run needs does not answer (database, Redis, MLflow, SMTP, DVC remote)."""

    exit_code = 69
    kind = "unavailable"


class Busy(DailyrecError):
    """Another daily run or publish holds the lock; nothing was changed."""

    exit_code = 75
    kind = "busy"


EXIT_CODES: dict[int, str] = {0: "ok", 1: "bug"} | {
    cls.exit_code: cls.kind for cls in (ConfigError, NotPublished, DataError, ServiceUnavailable,
                                        Busy)}


def kind_of(exit_code: int) -> str:
    """The error kind an exit status stands for ("bug" for any status not listed)."""
    return EXIT_CODES.get(exit_code, "bug")
