"""The package as `pip install nvfp4tools` lays it out, for the benchmarks: a throw-away venv
whose only other path is this venv's site-packages (the dependencies), and the console script pip
writes for it. A setuptools editable install of this checkout would instead add a meta-path
finder that every interpreter start imports (pathlib, urllib, ...: `python -c pass` 14 -> 33 ms on
the 2-vCPU development VM), which users of a wheel never pay."""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
import sysconfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pip's console-script template (pip 23-25, distlib), whose `import re` is part of every start
SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from nvfp4tools.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def installed_python(work: str) -> str:
    """A venv under WORK holding the package as a wheel lays it out, plus this venv's dependencies."""
    pkg = os.path.join(work, "pkg")
    shutil.copytree(os.path.join(REPO, "nvfp4tools"), os.path.join(pkg, "nvfp4tools"))
    for sub in ("formats", "kernels_ref"):  # [tool.setuptools.package-dir]
        shutil.copytree(os.path.join(REPO, sub), os.path.join(pkg, "nvfp4tools", sub))
    compileall.compile_dir(pkg, quiet=1)  # pip byte-compiles on install
    venv = os.path.join(work, "venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = os.path.join(venv, "bin", "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "nvfp4tools-bench.pth"), "w") as fh:
        # plain directory lines: added to sys.path, but .pth files inside them are not run,
        # so the editable finder of this checkout stays out
        fh.write(pkg + "\n" + sysconfig.get_paths()["purelib"] + "\n")
    return py


def installed_command(work: str) -> str:
    """The `nvfp4tools` command of installed_python(WORK), as pip writes it."""
    py = installed_python(work)
    exe = os.path.join(os.path.dirname(py), "nvfp4tools")
    with open(exe, "w") as fh:
        fh.write(SCRIPT.format(python=py))
    os.chmod(exe, 0o755)
    return exe
