"""
The package metadata builds the way current setuptools wants it: the
licence as a PEP 639 expression, with no deprecation warning on the way.

The wheel is built with this venv's setuptools (C{--no-build-isolation},
C{--no-index}: no network) from a copy of what the wheel is made of, so
the checkout gets no C{build/} or C{*.egg-info}.  One build, bounded by
L{BUILD_TIMEOUT_SECS}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]

#: What the wheel is built from.
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "portunus", "twisted")

BUILD_TIMEOUT_SECS = 180


class WheelMetadataTests(SynchronousTestCase):
    def build_wheel(self) -> tuple[str, Path]:
        """Build the wheel from a copy of the sources; pip's output and the wheel."""
        tree = Path(self.mktemp()).resolve()
        tree.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
        for name in SOURCES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, tree / name, ignore=ignore)
            else:
                shutil.copy2(source, tree / name)
        out = tree / "dist"
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--verbose",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--wheel-dir",
                str(out),
                str(tree),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=BUILD_TIMEOUT_SECS,
            check=False,
        )
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output[-4000:])
        [wheel] = out.glob("portunus-*.whl")
        return output, wheel

    def test_wheel_has_a_license_expression_and_no_deprecation_warning(self) -> None:
        """
        METADATA says C{License-Expression: MIT} and ships LICENSE, and the
        build prints none of setuptools' licence deprecations (the table
        form of C{project.license} stops building in February 2027).
        """
        output, wheel = self.build_wheel()
        self.assertNotIn("project.license` as a TOML table is deprecated", output)
        self.assertNotIn("License classifiers are deprecated", output)
        self.assertNotIn("SetuptoolsDeprecationWarning", output)
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
            headers = archive.read(metadata).decode("utf-8").split("\n\n", 1)[0].splitlines()
            license_files = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        self.assertIn("License-Expression: MIT", headers)
        self.assertIn("License-File: LICENSE", headers)
        self.assertFalse([h for h in headers if h.startswith("License: ")], headers)
        self.assertEqual(len(license_files), 1, names)
        # The plugin module ships, and never a twisted/__init__.py.
        self.assertIn("twisted/plugins/portunus_plugins.py", names)
        self.assertNotIn("twisted/__init__.py", names)
