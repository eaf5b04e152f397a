"""`platform` is a standard-library module; our folder of that name must never shadow it."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_is_stdlib_inside_pytest():
    import platform

    assert Path(platform.__file__).resolve().parent != REPO / "platform"
    assert callable(platform.python_version)
    assert platform.python_version().startswith(f"{sys.version_info.major}.")


def test_platform_folder_has_no_top_level_init():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_platform_is_stdlib_with_repo_root_on_sys_path():
    # Ray's working_dir and `python -c` from the repo root both put the root first on sys.path.
    code = (
        "import sys; sys.path.insert(0, {root!r}); import platform; "
        "print(platform.__file__); print(platform.machine())"
    ).format(root=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert not out[0].startswith(str(REPO / "platform"))
    assert out[1]  # a real machine name, e.g. x86_64


def test_platform_package_imports_alongside_stdlib():
    import platform

    import clef_platform

    assert Path(clef_platform.__file__).resolve().parent == REPO / "platform" / "clef_platform"
    assert platform.system()
