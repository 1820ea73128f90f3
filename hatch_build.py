"""Build hook: compile ``wallwatch._native`` (the passive hot loops), ``wallwatch._probeloop``
(the prober's UDP loop) and ``wallwatch._border`` (the lab border's forwarding), all C, when a
compiler is there.

Why a hook and not setuptools: the package builds with hatchling; each extension is one C
file with no dependency but Python's headers, so the compiler Python was built with is
called directly. Without a compiler or headers the build goes on and wallwatch uses the
pure-Python twins (``wallwatch.fastwire``, the prober's and the border's Python loops),
saying so once on stderr.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if os.environ.get("WALLWATCH_NO_NATIVE"):
            return
        # _native: the passive readers; _probeloop: the prober's UDP loop; _border: the
        # lab border's forwarding.
        for name in ("_native", "_probeloop", "_border"):
            self._compile(name, version, build_data)

    def _compile(self, name: str, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        source = root / "src" / "wallwatch" / f"{name}.c"
        target = source.with_name(name + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
        compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
        command = [
            *compiler, "-O2", "-fPIC", "-shared", "-Wall", "-Werror=implicit-function-declaration",
            f"-I{sysconfig.get_paths()['include']}", str(source), "-o", str(target),
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except OSError as exc:
            print(f"wallwatch: {name} was not built ({exc}); "
                  "its pure-Python twin is used", file=sys.stderr)  # fmt: skip
            return
        if done.returncode != 0:
            print(f"wallwatch: {name} was not built:\n{done.stderr}"
                  "its pure-Python twin is used", file=sys.stderr)  # fmt: skip
            return
        if self.target_name == "wheel" and version != "editable":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["force_include"][str(target)] = f"wallwatch/{target.name}"
