"""Ship it anywhere: the Python 3.7 syntax check, netsnoop.py alone under the
oldest Python, `pip install .` into a fresh venv (with and without a
compiler), a quick run of the load bench, and nothing lost: --log through
SIGTERM/SIGINT/SIGHUP and a full disk, and log paths it must refuse."""
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import venv
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader

import pytest

from conftest import NETSNOOP, ROOT, can_unshare



def load_script(name, path):
    """Import a script by path (.ci/matrix has no .py suffix)."""
    spec = spec_from_loader(name, SourceFileLoader(name, path))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


matrix = load_script("matrix", os.path.join(ROOT, ".ci", "matrix"))
bench = load_script("bench_load", os.path.join(ROOT, "bench", "bench_load.py"))

VERMIN = shutil.which("vermin")
VERMIN_ARGS = ["-q", "-t=3.7-", "--no-tips", "--violations", "--eval-annotations"]


# --- vermin: the 3.7 syntax check in .ci/run really catches newer Python ---------

def vermin(path):
    return subprocess.run([VERMIN] + VERMIN_ARGS + [str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)


@pytest.mark.skipif(not VERMIN, reason="vermin not installed (requirements-test.txt)")
def test_vermin_accepts_netsnoop():
    r = vermin(NETSNOOP)
    assert r.returncode == 0, r.stdout


@pytest.mark.skipif(not VERMIN, reason="vermin not installed (requirements-test.txt)")
@pytest.mark.parametrize("construct, needs", [
    ("def _late(xs):\n    if (n := len(xs)) > 1:\n        return n\n", "3.8"),
    ("def _late(a, /, b):\n    return a\n", "3.8"),
    ("def _late():\n    return 'ab'.removeprefix('a')\n", "3.9"),
    ("@functools.cache\ndef _late():\n    return 1\n", "3.9"),
    ("def _late(a, b):\n    return dict(a) | dict(b)\n", "3.9"),
])
# Blind spot (measured): vermin does not flag a method of an untyped name,
# e.g. `text.removeprefix("x")`; the 3.7 run of .ci/matrix is the backstop.
def test_vermin_flags_newer_constructs(tmp_path, construct, needs):
    copy = tmp_path / "netsnoop.py"
    with open(NETSNOOP) as f:
        copy.write_text(f.read() + "\n\n" + construct)
    r = vermin(copy)
    assert r.returncode != 0, "vermin let a %s construct through:\n%s" % (needs, r.stdout)
    assert needs in r.stdout, r.stdout


# --- netsnoop.py alone under the oldest Python (the full list: .ci/matrix) -------

def oldest_python():
    found = matrix.discover_interpreters()
    return found[0] if found else (tuple(sys.version_info[:3]), sys.executable)


def test_lone_copy_under_oldest_python():
    version, python = oldest_python()
    results = matrix.smoke(python)
    by_case = {r.case: r for r in results}
    assert by_case["once"].status == "ok", results
    assert [r for r in results if r.status != "ok"] == [], (version, results)


# --- pip install . into a fresh venv ---------------------------------------------

def packaging_present():
    return any(os.path.exists(os.path.join(ROOT, f)) for f in ("setup.py", "pyproject.toml"))


needs_packaging = pytest.mark.skipif(
    not packaging_present(),
    reason="setup.py / pyproject.toml not landed yet (packaging comes with the C scanner)")


def source_copy(tmp_path):
    """The repository without .git or build leftovers, so pip writes nothing into it."""
    dest = tmp_path / "src"
    # symlinks=True: fixture trees hold dangling links (socket:[N], net:[...]).
    shutil.copytree(ROOT, str(dest), symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "_fastscan*.so", "_fastscan_cffi*"))
    return dest


# setuptools, cffi and a bdist_wheel (setuptools >= 70.1 has its own, older
# ones need the wheel package): what pip --no-build-isolation needs.
OFFLINE_BUILD_CHECK = """
import cffi, setuptools
try:
    from setuptools.command import bdist_wheel
except ImportError:
    import wheel
"""


def offline_build_possible():
    return subprocess.run([sys.executable, "-c", OFFLINE_BUILD_CHECK],
                          stderr=subprocess.DEVNULL).returncode == 0


def pip_install(tmp_path, env_extra=None):
    """A fresh venv with `pip install .` done -> its bin directory.

    Offline when this interpreter has the build requirements: the venv sees
    them and pip builds without isolation.  Otherwise, or with
    NETSNOOP_PIP_ISOLATED=1, pip's normal isolated build (fetches the build
    requirements from PyPI).
    """
    env_dir = tmp_path / "venv"
    isolated = os.environ.get("NETSNOOP_PIP_ISOLATED") == "1" or not offline_build_possible()
    venv.EnvBuilder(with_pip=True, system_site_packages=not isolated).create(str(env_dir))
    bindir = env_dir / "bin"
    cmd = [str(bindir / "python"), "-m", "pip", "install", "-q"]
    if not isolated:
        # The venv sees this interpreter's cffi (the C scanner imports _cffi_backend).
        cmd += ["--no-build-isolation", "--no-deps"]
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", **(env_extra or {}))
    r = subprocess.run(cmd + [str(source_copy(tmp_path))], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, env=env,
                       cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, "pip install . failed:\n" + r.stdout[-3000:]
    assert (bindir / "netsnoop").exists(), "no netsnoop command installed"
    return bindir


def run_installed(bindir, *args, cwd):
    return subprocess.run([str(bindir / "netsnoop")] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, cwd=str(cwd),
                          timeout=60)


def check_installed_works(bindir, cwd):
    r = run_installed(bindir, str(os.getpid()), "--once", "--tab", "traffic", "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert any(i["name"] == "lo" for i in json.loads(r.stdout)["tabs"]["traffic"]["interfaces"])
    where = subprocess.run([str(bindir / "python"), "-c",
                            "import netsnoop; print(netsnoop.__file__)"],
                           stdout=subprocess.PIPE, universal_newlines=True, cwd=str(cwd)).stdout
    assert where.startswith(str(bindir.parent)), "netsnoop imported from %s" % where


@needs_packaging
@pytest.mark.skipif(not shutil.which("cc") and not shutil.which("gcc"), reason="no C compiler")
def test_pip_install_builds_the_c_scanner(tmp_path):
    bindir = pip_install(tmp_path)
    r = run_installed(bindir, "--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"scanner: fast", r.stdout), "C scanner not used: %r" % r.stdout
    check_installed_works(bindir, tmp_path)
    r = run_installed(bindir, "--procs", "--backend", "fast", "--duration", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


@needs_packaging
def test_pip_install_without_a_compiler_falls_back(tmp_path):
    """CC that always fails: the install still succeeds, netsnoop runs pure Python."""
    bindir = pip_install(tmp_path, {"CC": "/bin/false", "LDSHARED": "/bin/false"})
    r = run_installed(bindir, "--version", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "python" in r.stdout and not re.search(r"scanner: fast", r.stdout), r.stdout
    check_installed_works(bindir, tmp_path)
    r = run_installed(bindir, "--procs", "--duration", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


# --- under load (bench/bench_load.py, quick) ---------------------------------------

@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare -n")
def test_crowded_namespace_quick():
    r = bench.socket_run(3000, runs=1)
    assert r["listed"] == 3000 and r["owned"] == 3000, r
    assert r["text_s"] < 10 and r["json_s"] < 10, r


def test_fork_storm_quick():
    r = bench.fork_storm_run(rate=1000, seconds=2)
    assert r["alive_throughout"], (r["status"], r["stderr"][-2000:], r["summary"])
    assert r["status"] in (0, 130), r
    # the lone script's own peak (its compile) is ~38-40 MB; the storm's 2,000 events,
    # held by one step until it ends, add ~8 MB
    assert r["vm_hwm_before_kb"] > 0, r
    assert r["vm_hwm_kb"] - r["vm_hwm_before_kb"] <= 16 * 1024, r
    assert r["summary"] is not None, "no summary line: %r" % r
    assert r["summary"]["seen"] + r["summary"]["missed"] >= r["forks"] * 0.5, r
    assert r["events_new"] >= 1, r


# --- nothing lost: --log through signals and a full disk -------------------------------

def spawn_marked(marker, pad=0, life=0.5):
    """A short-lived process whose command line carries `marker` (and `pad` bytes)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(%s)" % life,
                             marker, "p" * pad])


def log_events(path):
    """-> (complete JSON events, unterminated tail bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    return [json.loads(line.decode("ascii")) for line in lines[:-1]], lines[-1]


def wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def logged(path, marker):
    try:
        with open(path, "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_log_survives_signal(tmp_path, sig):
    log = tmp_path / "events.log"
    marker = "netsnoop-log-%d-%d" % (os.getpid(), sig)
    ns = subprocess.Popen([sys.executable, NETSNOOP, "--procs", "--json", "--interval", "0.1",
                           "--log", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          universal_newlines=True)
    try:
        time.sleep(1)
        child = spawn_marked(marker)
        assert wait_for(lambda: logged(log, marker), 10), "event not in the log before the signal"
        child.wait()
        ns.send_signal(sig)
        _, err = ns.communicate(timeout=15)
    finally:
        if ns.poll() is None:
            ns.kill()
            ns.wait()
    assert "Traceback" not in err, err
    events, tail = log_events(log)
    assert tail == b"", "a half-written line was left: %r" % tail[:200]
    assert any(marker in (e.get("cmdline") or []) for e in events)
    assert stat.S_IMODE(os.stat(str(log)).st_mode) == 0o600
    if sig == signal.SIGINT:
        assert ns.returncode in (0, 130), err


@pytest.mark.skipif(not can_unshare(), reason="needs root and unshare -m (private tmpfs)")
def test_log_disk_full(tmp_path):
    """64k tmpfs nearly full: one clear line, status 1, the events before it kept."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    keep = tmp_path / "kept.log"
    shell = ('mount -t tmpfs -o size=64k tmpfs "$1" || exit 97; '
             'dd if=/dev/zero of="$1/filler" bs=4k count=13 2>/dev/null; '
             '"$3" "$4" --procs --json --interval 0.1 --log "$1/events.log" >/dev/null; rc=$?; '
             'cp "$1/events.log" "$2" 2>/dev/null; exit $rc')
    ns = subprocess.Popen(["unshare", "-m", "sh", "-c", shell, "sh", str(mnt), str(keep),
                           sys.executable, NETSNOOP], stderr=subprocess.PIPE,
                          universal_newlines=True)
    try:
        time.sleep(1)
        deadline = time.time() + 30
        while ns.poll() is None and time.time() < deadline:
            spawn_marked("netsnoop-fill", pad=1500, life=0.3)
            time.sleep(0.05)
        _, err = ns.communicate(timeout=15)
    finally:
        if ns.poll() is None:
            ns.kill()
            ns.wait()
    if ns.returncode == 97:
        pytest.skip("cannot mount a tmpfs here: " + err)
    assert ns.returncode == 1, err
    assert "Traceback" not in err, err
    # One line says it (a banner may come before it, nothing after it).
    errors = [ln for ln in err.splitlines() if re.search(r"space|full", ln, re.I)]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    assert errors[0].startswith("netsnoop: "), errors
    # Any process may fill it (the machine is shared): events, whole and parseable.
    events, _ = log_events(keep)
    assert [e for e in events if e.get("event") in ("new", "exec")], \
        "the events written before the disk filled are gone"


@pytest.mark.parametrize("kind", ["symlink", "dangling_symlink", "directory"])
def test_log_path_refused_without_touching_target(tmp_path, kind):
    target = tmp_path / "target"
    path = tmp_path / "log"
    if kind == "symlink":
        target.write_text("precious\n")
        os.utime(str(target), (1000000000, 1000000000))
        path.symlink_to(target)
    elif kind == "dangling_symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    r = subprocess.run([sys.executable, NETSNOOP, "--procs", "--log", str(path),
                        "--duration", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=60)
    assert r.returncode == 1, r
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("netsnoop: "), r.stderr
    if kind == "symlink":
        assert target.read_text() == "precious\n"
        assert os.stat(str(target)).st_mtime == 1000000000
    elif kind == "dangling_symlink":
        assert not target.exists()
    else:
        assert os.listdir(str(path)) == []


def test_new_log_is_private(tmp_path):
    log = tmp_path / "new.log"
    r = subprocess.run([sys.executable, NETSNOOP, "--procs", "--log", str(log),
                        "--duration", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(str(log)).st_mode) == 0o600
