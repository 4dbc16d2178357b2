"""
What the twistd plugins share: the logging options and installing the
chosen log observer on the application twistd hands a plugin's service.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from portunus.logging import LOG_FORMATS, parse_log_level

__all__ = ["LOG_OPTIONS", "LoggingOptions", "install_log_observer"]

#: --log-level and --log-format as the server and the client take them.
LOG_OPTIONS: list[list[Any]] = [
    ["log-level", None, "info", "debug, info, warn, error or critical."],
    ["log-format", None, "json", "json or pretty."],
]


class LoggingOptions(usage.Options):
    """Options with --log-level/--log-format checked; C{self.level} after parsing."""

    def postOptions(self) -> None:
        try:
            self.level = parse_log_level(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")


def install_log_observer(parent: Any, observer: ILogObserver) -> None:
    """
    twistd gives the application to the service a plugin made; an
    ILogObserver component on it is how an application chooses its log
    format (an explicit --logger on the command line still wins).
    """
    if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
        parent.setComponent(ILogObserver, observer)
