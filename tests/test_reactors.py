"""
Tests for L{portunus.reactors}: the reactor the twistd entry points get
provides every Twisted interface the combined types promise.
"""

from __future__ import annotations

import inspect

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface

from portunus import reactors
from portunus.reactors import installed_reactor


class InstalledReactorTests(SynchronousTestCase):
    def test_provides_every_promised_interface(self) -> None:
        """
        Each interface the combined types extend (IReactorTCP, IReactorFDSet,
        IReactorProcess, ...) is provided by the installed reactor, so
        typing it as L{reactors.IProcessReactor} promises nothing false.
        """
        reactor = installed_reactor()
        for combined in (
            reactors.IStoreReactor,
            reactors.IDataplaneReactor,
            reactors.IStatsSocketReactor,
        ):
            self.assertTrue(set(combined.__iro__) <= set(reactors.IProcessReactor.__iro__))
        promised = [
            iface
            for iface in reactors.IProcessReactor.__iro__
            if iface.__module__ != reactors.__name__ and iface is not Interface
        ]
        self.assertGreaterEqual(len(promised), 9)
        missing = [iface.__name__ for iface in promised if not iface.providedBy(reactor)]
        self.assertEqual(missing, [])

    def test_stats_client_reactor(self) -> None:
        """
        The default reactor C{portunus-standalone stats} runs on provides
        every interface L{reactors.IStatsClientReactor} promises.
        """
        reactor = installed_reactor()
        promised = [
            iface
            for iface in reactors.IStatsClientReactor.__iro__
            if iface.__module__ != reactors.__name__ and iface is not Interface
        ]
        self.assertGreaterEqual(len(promised), 4)
        self.assertEqual([i.__name__ for i in promised if not i.providedBy(reactor)], [])

    def test_run_takes_install_signal_handlers(self) -> None:
        """The installed reactor's C{run} takes what L{reactors.IProcessReactor} says."""
        parameters = inspect.signature(installed_reactor().run).parameters
        self.assertIn("installSignalHandlers", parameters)
