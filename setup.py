"""Ships ``dedupgraph_startup.pth`` into site-packages (metadata lives in pyproject.toml).

A ``.pth`` file must sit at the top of site-packages, which setuptools has
no setting for: regular wheels get it copied to the root of the build
directory, editable wheels (``pip install -e``) to the root of the wheel.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "dedupgraph_startup.pth"
HERE = Path(__file__).resolve().parent


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(str(HERE / PTH), str(Path(self.build_lib) / PTH))


cmdclass: dict[str, type] = {"build_py": BuildPyWithPth}

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools without PEP 660 support: no editable wheels to patch
    pass
else:

    class EditableWheelWithPth(editable_wheel):
        # Everything in the unpacked wheel directory lands in site-packages.
        # (A private hook, stable from setuptools 64 to 80+; if it goes away,
        # editable installs simply lack the environment activation.)
        def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):  # type: ignore[no-untyped-def]
            result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
            self.copy_file(str(HERE / PTH), str(Path(unpacked_wheel) / PTH))
            return result

    cmdclass["editable_wheel"] = EditableWheelWithPth

setup(cmdclass=cmdclass)
