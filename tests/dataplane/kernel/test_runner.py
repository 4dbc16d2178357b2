"""Running nft as a child of the reactor: the batch in, JSON out, bounded."""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from portunus.dataplane.kernel import NftError, NftRunner
from portunus.dataplane.kernel._runner import parse_output

#: Echoes the batch it read and its arguments back, as two JSON documents.
ECHO = """
import json, sys
batch = json.load(sys.stdin)
print(json.dumps({"nftables": [{"metainfo": {}}, {"argv": sys.argv[1:]}]}))
print(json.dumps({"nftables": [{"metainfo": {}}, {"batch": batch}]}))
"""
REFUSE = """
import sys
sys.stdin.read()
sys.stderr.write("Error: Could not process rule: No such file or directory\\n  add rule x\\n")
sys.exit(1)
"""
HANG = "import time\ntime.sleep(60)\n"


class ParseTests(SynchronousTestCase):
    def test_documents_concatenated_without_metainfo(self) -> None:
        """One document per list command; their objects in order, metainfo left out."""
        text = (
            b'{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"name": "a"}}]}\n'
            b'{"nftables": [{"metainfo": {}}, {"quota": {"name": "q"}}]}\n'
        )
        self.assertEqual(parse_output(text), [{"counter": {"name": "a"}}, {"quota": {"name": "q"}}])
        self.assertEqual(parse_output(b""), [])
        self.assertEqual(parse_output(b"  \n"), [])

    def test_garbage(self) -> None:
        """Anything but JSON is an NftError, not a crash."""
        self.assertRaises(NftError, parse_output, b"table inet x {")


class RunnerTests(TestCase):
    def script(self, text: str) -> tuple[str, ...]:
        path = Path(self.mktemp())
        path.write_text(text)
        return (sys.executable, str(path))

    async def nft(self, command: tuple[str, ...], timeout: float = 30.0) -> list[dict[str, object]]:
        return await NftRunner(reactor, command, timeout=timeout).run([{"list": {"tables": None}}])

    def test_batch_on_stdin_json_back(self) -> None:
        """The batch goes to `nft -j -f -` on stdin; every printed document is parsed."""

        async def check() -> None:
            out = await self.nft(self.script(ECHO))
            self.assertEqual(
                out,
                [
                    {"argv": ["-j", "-f", "-"]},
                    {"batch": {"nftables": [{"list": {"tables": None}}]}},
                ],
            )

        return ensureDeferred(check())

    def test_refusal_carries_nfts_message(self) -> None:
        """A non-zero exit fails with nft's own error lines."""

        async def check() -> None:
            with self.assertRaises(NftError) as raised:
                await self.nft(self.script(REFUSE))
            self.assertEqual(
                raised.exception.message,
                "Error: Could not process rule: No such file or directory / add rule x",
            )

        return ensureDeferred(check())

    def test_hung_nft_is_killed(self) -> None:
        """An nft that does not answer in time is killed and the run fails."""

        async def check() -> None:
            with self.assertRaises(NftError) as raised:
                await self.nft(self.script(HANG), timeout=0.5)
            self.assertIn("did not answer within 0.5 s", raised.exception.message)

        return ensureDeferred(check())

    def test_missing_command(self) -> None:
        """A command that is not installed fails at once, saying so."""

        async def check() -> None:
            with self.assertRaises(NftError) as raised:
                await self.nft(("portunus-no-such-nft",))
            self.assertIn("not installed", raised.exception.message)

        return ensureDeferred(check())
