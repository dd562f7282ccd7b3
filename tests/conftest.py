"""Settings for every suite."""

from __future__ import annotations

import os

# `make binaries` builds the control plane and Helm before pytest starts. A build started from a test would run
# for many minutes against that test's timeout, so here the build scripts only look their binaries up and, when
# one is missing, fail naming `make binaries`.
os.environ["EBBTIDE_NO_BUILD"] = "1"
