"""
The twistd plugins are discoverable after installation.
"""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase


class PluginDiscoveryTests(SynchronousTestCase):
    def test_all_three_plugins_are_found(self) -> None:
        """getPlugins(IServiceMaker) lists portunus-server, -client and -standalone."""
        names = {p.tapname for p in getPlugins(IServiceMaker)}
        self.assertTrue(
            {"portunus-server", "portunus-client", "portunus-standalone"} <= names, names
        )

    def test_standalone_plugin_builds_its_options(self) -> None:
        """The standalone plugin's options are the standalone tap's."""
        from portunus.standalone import tap

        maker = next(p for p in getPlugins(IServiceMaker) if p.tapname == "portunus-standalone")
        self.assertIsInstance(maker.options(), tap.Options)
