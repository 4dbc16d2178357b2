"""
docs/deploy.md against the repository: the files it names exist, the
variables it names are read by the code or the artifacts, and the tests
its closing note cites exist.
"""

from __future__ import annotations

import os
import re
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.deploy._support import CONTRIB, ROOT

DEPLOY_MD = os.path.join(ROOT, "docs", "deploy.md")


def _text() -> str:
    with open(DEPLOY_MD) as f:
        return f.read()


def _expand(path: str) -> list[str]:
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return [
        path[: match.start()] + choice + path[match.end() :] for choice in match.group(1).split(",")
    ]


class DeployDocTests(SynchronousTestCase):
    def test_named_files_exist(self) -> None:
        """Every contrib/ path in docs/deploy.md is in the repository."""
        paths = set(re.findall(r"contrib/[A-Za-z0-9_./{},-]*[A-Za-z0-9_}]", _text()))
        self.assertIn("contrib/install.sh", paths)
        for path in sorted(paths):
            if "<" in path:
                continue
            for one in _expand(path):
                self.assertTrue(os.path.exists(os.path.join(ROOT, one)), one)

    def test_named_variables_are_read_somewhere(self) -> None:
        """Each PORTUNUS_* variable the page names is used by the code or the artifacts."""
        names = set(re.findall(r"PORTUNUS_[A-Z_]+[A-Z]", _text())) - {"PORTUNUS_KEY"}
        self.assertIn("PORTUNUS_ENROLL_URI", names)
        for name in sorted(names):
            found = subprocess.run(
                ["grep", "-rlF", name, os.path.join(ROOT, "portunus"), CONTRIB],
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertTrue(found.stdout, f"{name} is named in docs/deploy.md but used nowhere")

    def test_cited_tests_exist(self) -> None:
        """The closing note cites test modules that exist."""
        cited = set(re.findall(r"`(test_[a-z_]+)`", _text()))
        self.assertTrue(cited)
        here = os.path.dirname(os.path.abspath(__file__))
        for module in cited:
            self.assertTrue(os.path.exists(os.path.join(here, f"{module}.py")), module)

    def test_install_verbs_match_the_script(self) -> None:
        """The verbs the page documents are the ones install.sh dispatches."""
        with open(os.path.join(CONTRIB, "install.sh")) as f:
            script = f.read()
        dispatched = set(re.findall(r"^\t([a-z]+)\) do_", script, re.M))
        self.assertEqual(
            dispatched, {"install", "upgrade", "uninstall", "status", "service", "config"}
        )
        text = _text()
        for verb in dispatched:
            self.assertIn(f"| `{verb}", text, verb)
