"""Shared test helpers: where things are, the C scanner built for this run, and skips for
what a machine lacks.

The netsnoop.py under test (NETSNOOP) is a copy of the repository's, made when the tests
start, in a temporary directory every user can read, beside a C scanner built there from
the repository's _fastscan.c (when cffi and a C compiler are present). So a fresh clone,
wherever it lies and whatever its permissions, runs every test without
`python3 build_fastscan.py` or .ci/run, and a stale .so in the work tree is never what a
subprocess test measures.
"""
import atexit
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")

sys.path.insert(0, ROOT)


def c_toolchain_missing():
    """Why the C scanner cannot be built here, or "" when cffi and a compiler are present."""
    try:
        import cffi  # noqa: F401
    except ImportError:
        return "cffi is not installed (requirements-test.txt)"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (cc or gcc)"
    return ""


def build_tree():
    """-> (directory, why the C scanner is absent or ""): netsnoop.py and _fastscan_cffi*.so,
    in a 0755 directory under the system's temporary directory (nobody can read it)."""
    tree = tempfile.mkdtemp(prefix="netsnoop-under-test-")
    atexit.register(shutil.rmtree, tree, True)
    os.chmod(tree, 0o755)
    shutil.copyfile(os.path.join(ROOT, "netsnoop.py"), os.path.join(tree, "netsnoop.py"))
    os.chmod(os.path.join(tree, "netsnoop.py"), 0o644)
    missing = c_toolchain_missing()
    if missing:
        return tree, missing
    import build_fastscan
    work = tempfile.mkdtemp(prefix="netsnoop-build-")
    try:
        built = build_fastscan.ffibuilder.compile(tmpdir=work, verbose=False)
    except Exception as err:        # a compiler error, a missing Python.h, ...
        return tree, "the C scanner did not build: %s: %s" % (type(err).__name__, err)
    else:
        shutil.copy(built, tree)
        os.chmod(os.path.join(tree, os.path.basename(built)), 0o755)
        return tree, ""
    finally:
        shutil.rmtree(work, True)


TREE, FAST_MISSING = build_tree()
NETSNOOP = os.path.join(TREE, "netsnoop.py")
# The tests' own `import netsnoop` is the repository's file (tracebacks point at it); the
# C scanner it may load is the one just built (netsnoop looks beside itself, then sys.path).
sys.path.append(TREE)
FAST_BUILT = not FAST_MISSING


def need_fast():
    """Skip when the C scanner cannot be built here; fail when it should have built."""
    if FAST_MISSING and not c_toolchain_missing():
        pytest.fail(FAST_MISSING, pytrace=False)
    if FAST_MISSING:
        pytest.skip("C scanner not built: " + FAST_MISSING)


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_fast: the test needs the C scanner "
                            "(built for the run by tests/conftest.py)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_fast"):
        need_fast()


needs_fast = pytest.mark.needs_fast


def run_netsnoop(*args, **kw):
    """Run netsnoop.py as a user would; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, NETSNOOP] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=kw.pop("timeout", 60), **kw)


def can_unshare():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"]).returncode == 0


needs_root_netns = pytest.mark.skipif(
    not can_unshare(), reason="needs root and unshare -n (private network namespace)")


# --- running as nobody ---------------------------------------------------------------

NOBODY_UID = 65534


def public_dir(prefix="netsnoop-public-"):
    """A new 0755 directory under the system's temporary directory: user nobody can read
    what is copied there (a clone or pytest's tmp_path may sit under a 0700 directory).
    The caller removes it."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def public_tmp():
    """public_dir() as a pathlib.Path, removed after the test."""
    import pathlib
    path = public_dir()
    yield pathlib.Path(path)
    shutil.rmtree(path, True)


def python_for_nobody(imports="json, curses"):
    """An interpreter user nobody can run, importing `imports` (ours may live under a
    0700 /root or in a venv of a 0700 clone), or None."""
    if os.geteuid() != 0:
        return None
    candidates = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3",
                  "/usr/local/bin/python3"] + sorted(glob.glob("/usr/bin/python3.[0-9]*"))
    for python in candidates:
        if not os.path.isfile(python) or not os.access(python, os.X_OK):
            continue
        try:
            probe = subprocess.run([python, "-c", "import " + imports],
                                   preexec_fn=become_nobody, cwd="/",
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            continue
        if probe.returncode == 0:
            return python
    return None


def become_nobody():
    """preexec_fn: drop to nobody (groups, gid, then uid)."""
    os.setgroups([])
    os.setgid(NOBODY_UID)
    os.setuid(NOBODY_UID)


@pytest.fixture
def sleeper():
    """A live process of our own (root-owned when we are root), alive for any test."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()
