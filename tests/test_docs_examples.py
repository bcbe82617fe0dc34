"""docs/adding-a-mixer.md keeps working: its example mixer, loaded as a plug-in, passes.

The guide's example (``docs/examples/my_mixer.py``) is loaded the way the guide tells a
reader to load theirs, through ``$WERSA_PLUGINS`` in a fresh process, and must pass its own
tests (``docs/examples/test_my_mixer.py``) and the capability matrix's checks of causality,
padding, recurrence and gradients. A change to the Mixer contract, the registry, the
plug-in loading or ``wersa.ops.linear_attention`` that breaks the guide fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"

# The matrix checks run on the plug-in (a few of the ~45, to keep this under ~20 s).
MATRIX = "causal_prefix or padding or step or gradcheck or bad_construction"


def test_guide_example_passes_as_a_plugin():
    env = {**os.environ, "WERSA_PLUGINS": "my_mixer",
           "PYTHONPATH": os.pathsep.join([str(EXAMPLES), *sys.path]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
           str(EXAMPLES / "test_my_mixer.py"), str(ROOT / "tests" / "mixers" / "test_matrix.py"),
           "-k", f"test_my_mixer or (linear_transformer and ({MATRIX}))"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = out.stdout[-4000:] + out.stderr[-2000:]
    assert out.returncode == 0, log
    passed = [line for line in out.stdout.splitlines() if line.endswith("PASSED") or " PASSED " in line]
    # Both files ran: the example's own tests, and the matrix on the registered plug-in.
    assert sum("test_my_mixer.py::" in line for line in passed) >= 10, log
    assert sum("test_matrix.py::" in line and "linear_transformer" in line for line in passed) >= 15, log


def test_guide_shows_the_tested_code():
    """The mixer printed in the guide is the file the test above runs."""
    guide = (ROOT / "docs" / "adding-a-mixer.md").read_text()
    marker = "<!-- my_mixer.py: kept identical to docs/examples/my_mixer.py by tests/test_docs_examples.py -->\n```python\n"
    assert marker in guide
    shown = guide.split(marker, 1)[1].split("\n```\n", 1)[0] + "\n"
    assert shown == (EXAMPLES / "my_mixer.py").read_text()
