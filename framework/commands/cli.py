"""What the launch scripts share: user errors become one line on stderr, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from framework.config.schema import ConfigError
from framework.data.formats import DataError


@contextmanager
def exit_on_user_error(*more: type[Exception]) -> Iterator[None]:
    """Exit with `error: <message>` on a config or data error (or any of `more`): the
    message already names the problem and the fix."""
    try:
        yield
    except (ConfigError, DataError, *more) as err:
        sys.exit(f"error: {err}")
