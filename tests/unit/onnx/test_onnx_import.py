"""From the repository root, `import onnx` must be the real package, and torch.onnx must work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_repo_onnx_folder_is_not_a_regular_package():
    # A regular package here would shadow the real onnx for anything run from the root.
    assert (REPO / "onnx").is_dir()
    assert not (REPO / "onnx" / "__init__.py").exists()


def test_import_onnx_from_repo_root_is_the_real_one():
    code = (
        "import onnx, torch.onnx, streamrec.onnx.export as e, pathlib;"
        "print(onnx.__file__);"
        "print(hasattr(onnx, 'helper') and hasattr(onnx, 'checker'));"
        "print(callable(torch.onnx.export));"
        "print(pathlib.Path(e.__file__).resolve())"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    onnx_file, has_api, export_ok, ours = proc.stdout.split("\n")[:4]
    assert "site-packages" in onnx_file and not onnx_file.startswith(str(REPO / "onnx"))
    assert has_api == "True" and export_ok == "True"
    # Ours resolves to the repo's onnx/ (editable install) or to the installed copy (pip install .).
    assert ours in (str(REPO / "onnx" / "export.py"),) or ours.endswith("site-packages/streamrec/onnx/export.py")
