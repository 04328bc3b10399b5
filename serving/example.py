"""For `make serve-bg`: wait for the API to answer, then print a user id it knows.

    python -m serving.example http://127.0.0.1:8000    -> a user id of the served version
                                                         (or "nobody" when none is published)
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request

from dailyrec.publish import connection
from dailyrec.publish import keys as K


def wait_until_up(base_url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise SystemExit(f"the API did not answer at {base_url} within {timeout:.0f} s "
                                 "(see logs/serve.log)")
            time.sleep(0.2)


def known_user() -> str:
    layout = K.Layout.from_env()
    client = connection.client(timeout=2.0)
    try:
        version = client.get(layout.current)
        if version is None:
            return "nobody"
        version = version.decode()
        buckets = int(client.hget(layout.meta(version), "buckets") or 1)
        for bucket in range(buckets):
            user = client.hrandfield(layout.bucket(version, bucket))
            if user is not None:
                return user.decode()
    except Exception as err:  # the demo still shows the API's answer (a 503) below
        print(f"(Redis: {err})", file=sys.stderr)
    return "nobody"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wait_until_up(argv[0] if argv else "http://127.0.0.1:8000")
    print(known_user())
    return 0


if __name__ == "__main__":
    sys.exit(main())
