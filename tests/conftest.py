"""Shared test setup: every test gets its own artifacts root and data cache,
so nothing touches the real artifacts/ or ~/.cache, and no test needs a network."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("CIFAR_CACHE_DIR", str(tmp_path / "cache"))
    yield


# ---------------------------------------------------------------- a real Ray head, shared by every Ray test

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _started(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/PID/stat): tells it from a later one with its pid."""
    from pathlib import Path
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """Every process below `pid` with its start time, from /proc (job trainings run in
    sessions of their own, so the head's process group alone does not hold them)."""
    from pathlib import Path
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append((child, _started(child)))
            todo.append(child)
    return found


def _reports_cpus(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"{url}/api/cluster_status", timeout=2) as response:
            return b'"CPU"' in response.read()
    except OSError:
        return False


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """The job server URL of a local Ray head on loopback (2 CPUs), started once per session.

    Stopped by its own processes, not `ray stop`: that command stops every Ray
    process of this user on the machine, other people's heads included."""
    pytest.importorskip("ray.job_submission", reason="ray is not installed (pip install -r requirements.txt)")
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    temp = tmp_path_factory.mktemp("ray")  # short: Ray's socket paths must stay under 107 characters
    dashboard = _free_port()
    ray = Path(sys.executable).with_name("ray")
    command = [str(ray), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(_free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
               "--dashboard-agent-listen-port", str(_free_port()), "--ray-client-server-port", str(_free_port()),
               "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "true", "--temp-dir", str(temp),
               "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats"]
    # The jobs' `python` must be this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(temp / "head.log", "wb") as log:
        head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while not _reports_cpus(url):  # up once the job server answers and the head has counted its CPUs
        if head.poll() is not None or time.monotonic() > deadline:
            head.kill()
            pytest.fail(f"the Ray head did not start: {(temp / 'head.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    everything = _descendants(head.pid)
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=5)
    except subprocess.TimeoutExpired:
        head.kill()
    for pid, started in everything:
        if started is not None and _started(pid) == started:  # still that process, not a newer one
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# ---------------------------------------------------------------- damaged runs

@pytest.fixture(scope="session")
def broken_root(tmp_path_factory):
    """Good runs and one damaged run of every kind in tests/broken_runs.py,
    built once for the session: (root, good ids, {kind: id})."""
    import broken_runs
    root = tmp_path_factory.mktemp("broken") / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_ARTIFACTS", str(root))
        good, broken = broken_runs.make_broken_set()
    return root, good, broken


@pytest.fixture
def broken_set(broken_root, monkeypatch):
    """(good ids, {kind: id}) with $CIFAR_ARTIFACTS pointing at them."""
    root, good, broken = broken_root
    monkeypatch.setenv("CIFAR_ARTIFACTS", str(root))
    return good, broken
