"""The runtime installs and runs without torch: importing and predicting never loads it."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import sys
from runtime.commands.cli import main
try:
    main(["demo", "--output-dir", sys.argv[1], "--device", "cpu"])
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("torch modules:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_running_the_runtime_never_imports_torch(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "demo")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch modules: []" in result.stdout
    assert "Dice against the phantom's truth" in result.stdout
