"""A warm worker for ``python -m ltpipe classify``: the fixed start-up cost (``import torch``,
numpy, the cache backends, the method modules; on a GPU a CUDA context) is paid once per machine
and environment instead of once per job, while every job stays its own process for Snakemake.

``python -m ltpipe classify ...`` first runs :func:`client_main`, which imports nothing heavy. It
connects to a Unix socket named by a key of everything that must match for a job run by the
worker to behave like a fresh process (host, uid, the Python executable and its flags,
``sys.path``, this checkout's path, a digest of the ltpipe sources, a digest of the environment
less :data:`PER_JOB_ENV`). If nobody listens, it starts a worker (detached; a lock file makes sure
that two clients never start two) and waits until it listens. It sends its argv, working
directory and environment, with its stdin, stdout and stderr file descriptors (SCM_RIGHTS).

Two kinds of worker:

* ``fork`` (the CPU): imports everything once, runs no torch operation, and per request forks a
  child that takes the client's descriptors as 0/1/2, its directory and environment, and runs
  :func:`ltpipe.cli.main` (the same function as the direct path); the worker sends the client the
  child's pid and, when it ends, its exit status. Children run side by side.
* ``serial`` (a job whose device is a GPU: a forked child cannot use its parent's CUDA context):
  the worker runs the jobs itself, one at a time, so its CUDA context is made once. Each
  concurrent client takes its own slot (``.s0``, ``.s1``, ...: one worker per slot), so jobs on
  several GPUs still run side by side.

The client exits with the job's status. SIGTERM / SIGINT / SIGHUP to the client kill the job; a
client that disappears (its connection closes) has its job killed by the worker; a worker that
dies takes its children with it (PR_SET_PDEATHSIG) and the client fails with a message. A job's
crash never touches the worker or the other jobs. The worker exits after ``LTPIPE_WORKER_IDLE``
seconds (default 60) without a job.

Any failure to reach or start a worker runs the job in the client's own process, as without a
worker, after one line on stderr. ``LTPIPE_WORKER=off`` turns the worker off; ``serial`` forces
the serial kind (to test it on a CPU). Inside a Slurm job step (``SLURM_STEP_ID`` set: the
executor runs each job of a group submission as its own ``srun`` step, and Slurm kills a step's
processes when it ends) the worker is off. ``LTPIPE_WORKER_DIR`` overrides the socket directory
(default ``$XDG_RUNTIME_DIR/ltpipe`` or ``/tmp/ltpipe-<uid>``, mode 0700).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys

MODE_ENV = "LTPIPE_WORKER"  # off | serial | anything else (default): on
IDLE_ENV = "LTPIPE_WORKER_IDLE"
DIR_ENV = "LTPIPE_WORKER_DIR"
DEFAULT_IDLE_S = 60.0
START_WAIT_S = 300.0  # a worker's imports on a loaded machine; then the client gives up
#: variables that differ between the jobs of one run without changing what a job's imports do
PER_JOB_ENV = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "LTPIPE_WORKER_IDLE"})
_LEN = struct.Struct("!I")


# --------------------------------------------------------------------------- the key


def checkout_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_key(environ: dict[str, str] | None = None) -> str:
    """A digest of everything a worker shares with the jobs it runs (see the module doc)."""
    from ltpipe.provenance import package_sha256

    environ = dict(os.environ if environ is None else environ)
    env = sorted((k, v) for k, v in environ.items() if k not in PER_JOB_ENV)
    parts = {
        "host": socket.gethostname(), "uid": os.getuid(), "python": sys.executable,
        "version": sys.version, "flags": subprocess._args_from_interpreter_flags(),
        "path": sys.path, "checkout": checkout_dir(),
        "code": package_sha256(), "env": env,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def socket_dir() -> str:
    """The private directory of the sockets (made 0700; refused unless ours and private)."""
    path = os.environ.get(DIR_ENV)
    if not path:
        run = os.environ.get("XDG_RUNTIME_DIR")
        path = os.path.join(run, "ltpipe") if run and os.path.isdir(run) else \
            f"/tmp/ltpipe-{os.getuid()}"
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{path} is not a private directory of this user (mode 0700)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise OSError(f"{path} is not writable")
    return path


# --------------------------------------------------------------------------- messages


def send_msg(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    payload = _LEN.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [payload], fds)
        payload = payload[sent:]
    if payload:
        sock.sendall(payload)


def recv_msg(sock: socket.socket, with_fds: bool = False):
    """One message (and the descriptors that came with it); None at end of stream."""
    fds: list[int] = []
    if with_fds:
        buf, fds, _, _ = socket.recv_fds(sock, 1 << 16, 3)
    else:
        buf = sock.recv(1 << 16)
    if not buf:
        return (None, fds) if with_fds else None
    while len(buf) < _LEN.size or len(buf) < _LEN.size + _LEN.unpack(buf[:_LEN.size])[0]:
        more = sock.recv(1 << 16)
        if not more:
            for fd in fds:
                os.close(fd)
            return (None, []) if with_fds else None
        buf += more
    n = _LEN.unpack(buf[:_LEN.size])[0]
    obj = json.loads(buf[_LEN.size:_LEN.size + n])
    return (obj, fds) if with_fds else obj


# --------------------------------------------------------------------------- the client


class _NoWorker(Exception):
    """The worker could not be reached or started (the job then runs in the client)."""


class _HandedOver(Exception):
    """A failure after the worker took the job (the client must not run it again)."""


def client_main(argv: list[str]) -> int | None:
    """Run ``ltpipe classify`` ``argv`` through a worker; its exit status, or None where no worker
    could be used (the caller then runs the job itself)."""
    mode = os.environ.get(MODE_ENV, "on").strip().lower()
    if mode in ("off", "0", "no", "false"):
        return None
    if "SLURM_STEP_ID" in os.environ:  # Slurm ends, binds and accounts each step on its own
        return None
    try:
        kind = "serial" if mode == "serial" else "fork"
        key = worker_key()
        sdir = socket_dir()
        for _ in range(3):  # a worker that went idle while we connected: try again
            reply = _attempt(argv, sdir, key, kind)
            if reply == "serial" and kind == "fork":
                kind = "serial"
                continue
            if reply is not None and reply != "serial":
                return reply
        raise _NoWorker("the worker closed the connection before taking the job")
    except _HandedOver as err:  # the worker has the job: never run it a second time here
        print(f"ltpipe classify: lost the warm worker's answer ({err.__cause__!r}); rerun the "
              f"job (with {MODE_ENV}=off to run it without a worker)", file=sys.stderr,
              flush=True)
        return 1
    except Exception as err:  # OSError, _NoWorker, or a bug here: the direct path still works
        print(f"ltpipe classify: no warm worker ({err}); running the job in this process",
              file=sys.stderr, flush=True)
        return None


def _connect(path: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        return None
    return s


def _attempt(argv: list[str], sdir: str, key: str, kind: str):
    """One try: the job's exit status; "serial" where the fork worker says the job needs the
    serial kind; None where the worker went away before taking the job."""
    import fcntl

    if kind == "fork":
        sock, slot_lock = _connect_or_start(sdir, f"{key}.f", kind), None
    else:
        sock, slot_lock = _serial_slot(sdir, key)
    try:
        send_msg(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}, [0, 1, 2])
        first = recv_msg(sock)
        if first is None:
            return None
        if first.get("serial"):
            return "serial"
        try:
            pid = first["pid"]
            _forward_signals(sock, pid if kind == "fork" else None)
            last = recv_msg(sock)
        except Exception as err:
            raise _HandedOver() from err
        if last is None:
            print("ltpipe classify: the warm worker died while running this job; rerun it (with "
                  f"{MODE_ENV}=off to run it without a worker)", file=sys.stderr, flush=True)
            return 1
        code = int(last["exit"])
        if code < 0:  # killed by a signal: end the same way as a fresh process would
            sys.stdout.flush()
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            return 128 - code
        return code
    finally:
        sock.close()
        if slot_lock is not None:
            fcntl.flock(slot_lock, fcntl.LOCK_UN)
            os.close(slot_lock)


def _forward_signals(sock: socket.socket, pid: int | None) -> None:
    def handler(signum, frame):
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        sock.close()  # the worker sees the end of the stream and kills the job
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def _serial_slot(sdir: str, key: str) -> tuple[socket.socket, int]:
    """The first serial slot no other client holds (held until the job ends) and its worker."""
    import fcntl

    for slot in range(256):
        fd = os.open(os.path.join(sdir, f"{key}.s{slot}.busy"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            return _connect_or_start(sdir, f"{key}.s{slot}", "serial"), fd
        except BaseException:
            os.close(fd)
            raise
    raise _NoWorker("all 256 serial slots are busy")


def _connect_or_start(sdir: str, name: str, kind: str) -> socket.socket:
    import fcntl
    import time

    path = os.path.join(sdir, name + ".sock")
    sock = _connect(path)
    if sock is not None:
        return sock
    lock = os.open(os.path.join(sdir, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(path)  # another client started it while we waited
        if sock is not None:
            return sock
        with open(os.path.join(sdir, name + ".log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *subprocess._args_from_interpreter_flags(), "-m",
                 "ltpipe.worker", path, kind],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            sock = _connect(path)
            if sock is not None:
                return sock
            if proc.poll() is not None:
                raise _NoWorker(f"the worker exited with status {proc.returncode} at start; see "
                                f"{os.path.join(sdir, name + '.log')}")
            time.sleep(0.02)
        raise _NoWorker(f"the worker did not listen within {START_WAIT_S:.0f} s")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)


# --------------------------------------------------------------------------- the worker


def _preload() -> None:
    """Import what the jobs import (no torch operation: the fork children must be safe)."""
    import h5py  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import zarr  # noqa: F401

    import ltpipe.classifiers.job  # noqa: F401
    import ltpipe.cli  # noqa: F401
    from ltpipe.classifiers import get_method, method_names
    from ltpipe.classifiers.inputs import features_from_cache  # noqa: F401
    from ltpipe.data import read_split  # noqa: F401
    from ltpipe.evaluate import accuracy_report  # noqa: F401
    from ltpipe.train.device import lease_device  # noqa: F401
    from ltpipe.utils import LtpipeError

    for name in method_names():  # the built-ins and the installed plug-ins, as a job looks them up
        try:
            get_method(name)
        except LtpipeError:  # a broken plug-in: the job that names it reports it, as directly
            pass


def _needs_serial(argv: list[str]) -> bool:
    """Whether this job's device is not the CPU (decided as the job will: job_device)."""
    from ltpipe.classifiers.device import job_device
    from ltpipe.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
        device = job_device(args.device, args.job["method"])
    except (Exception, SystemExit):  # the job itself will report it
        return False
    return device is None or not str(device).startswith("cpu")


def _run_job(argv: list[str]) -> int:
    """``ltpipe.cli.main`` as the direct path runs it, with every exit turned into a status."""
    from ltpipe.cli import main

    try:
        return int(main(argv) or 0)
    except SystemExit as err:
        code = err.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # what the interpreter would print before exiting 1
        import traceback

        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _take_job(req: dict, fds: list[int]) -> None:
    """Become the client's process: its descriptors as 0/1/2, its directory, its environment."""
    import io

    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = [sys.argv[0], *req["argv"]]
    # fresh text streams on the new descriptors, buffered as a fresh process would buffer them
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        new = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False),
                               encoding=old.encoding, errors=old.errors,
                               line_buffering=name == "stderr" or os.isatty(fd),
                               write_through=False)
        setattr(sys, name, new)
        setattr(sys, f"__{name}__", new)


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def serve(path: str, kind: str) -> None:
    import fcntl
    import resource
    import selectors
    import time

    idle = float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))
    _preload()
    tmp = f"{path}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    listener.listen(64)
    os.rename(tmp, path)  # clients connect only once it listens
    ino = os.stat(path).st_ino
    print(f"ltpipe worker {kind} pid {os.getpid()}: listening on {path} (idle exit after "
          f"{idle:g} s)", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    children: dict[int, tuple[socket.socket | None, int]] = {}  # pidfd -> (conn, pid)
    served = 0
    last = time.monotonic()
    while True:
        timeout = None if children else max(0.0, last + idle - time.monotonic())
        events = sel.select(timeout)
        if not events and not children and time.monotonic() >= last + idle:
            break
        for skey, _ in events:
            tag = skey.data
            if tag == "accept":
                conn, _ = listener.accept()
                conn.settimeout(30)  # a client that connects and sends nothing
                try:
                    req, fds = recv_msg(conn, with_fds=True)
                except (OSError, ValueError):
                    conn.close()
                    continue
                conn.settimeout(None)
                if req is None or len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                served += 1
                if kind == "fork" and _needs_serial(req["argv"]):
                    for fd in fds:
                        os.close(fd)
                    _reply(conn, {"serial": True})
                    conn.close()
                elif kind == "fork":
                    pid = _fork_child(req, fds, listener, children)
                    for fd in fds:
                        os.close(fd)
                    if pid is None:
                        conn.close()
                        continue
                    pidfd = os.pidfd_open(pid)
                    children[pidfd] = (conn, pid)
                    sel.register(pidfd, selectors.EVENT_READ, ("child", pidfd))
                    sel.register(conn, selectors.EVENT_READ, ("conn", pidfd))
                    _reply(conn, {"pid": pid})
                else:
                    _serial_job(req, fds, conn, served)
                    conn.close()
                    last = time.monotonic()
            elif tag[0] == "child":
                pidfd = tag[1]
                conn, pid = children.pop(pidfd)
                _, status = os.waitpid(pid, 0)
                sel.unregister(pidfd)
                os.close(pidfd)
                if conn is not None:
                    sel.unregister(conn)
                    _reply(conn, {"exit": os.waitstatus_to_exitcode(status)})
                    conn.close()
                last = time.monotonic()
            else:  # the client's connection: readable only at its end (or garbage)
                pidfd = tag[1]
                conn, pid = children[pidfd]
                try:
                    more = conn.recv(1, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    more = b""
                if not more:
                    try:
                        os.kill(pid, signal.SIGKILL)  # not reaped yet: still our child
                    except ProcessLookupError:
                        pass
                    sel.unregister(conn)
                    conn.close()
                    children[pidfd] = (None, pid)
    # idle: stop taking jobs (under the start lock, so no client starts a worker meanwhile)
    lock = os.open(path[:-len(".sock")] + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except FileNotFoundError:
        pass
    listener.close()  # clients still in the backlog see the end of the stream and retry
    fcntl.flock(lock, fcntl.LOCK_UN)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"ltpipe worker {kind} pid {os.getpid()}: exit after {idle:g} s idle; {served} jobs; "
          f"cpu_self {ru.ru_utime + ru.ru_stime:.3f} s", flush=True)


def _reply(conn, obj: dict) -> None:
    try:
        send_msg(conn, obj)
    except OSError:
        pass


def _fork_child(req: dict, fds: list[int], listener, children) -> int | None:
    try:
        pid = os.fork()
    except OSError as err:
        os.write(fds[2], f"ltpipe classify: the warm worker could not fork ({err})\n".encode())
        return None
    if pid:
        return pid
    code = 1
    try:
        _die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        listener.close()
        for pidfd, (conn, _) in children.items():
            if conn is not None:
                conn.close()
            os.close(pidfd)
        _take_job(req, fds)
        code = _run_job(req["argv"])
    finally:
        os._exit(code)


def _serial_job(req: dict, fds: list[int], conn: socket.socket, served: int) -> None:
    """Run one job in this process (the serial kind), its output on the client's descriptors;
    a watcher thread ends the worker if the client goes away (that kills the job)."""
    import threading

    import ltpipe.classifiers.job as job
    from ltpipe.provenance import _code_version

    saved = [os.dup(i) for i in range(3)]
    saved_streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    _reply(conn, {"pid": os.getpid()})
    done = threading.Event()

    def watch():
        try:
            while not done.is_set():
                if not conn.recv(1):
                    break
        except OSError:
            pass
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()
    print(f"ltpipe worker serial pid {os.getpid()}: job {served} starts", flush=True)
    _code_version.cache_clear()  # a fresh process would look at the checkout again
    job.CPU_ORIGIN = job.cpu_seconds(0.0)
    try:
        _take_job(req, fds)
        code = _run_job(req["argv"])
    finally:
        done.set()
        for i, fd in enumerate(saved):
            os.dup2(fd, i)
            os.close(fd)
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        job.CPU_ORIGIN = 0.0
    conn.shutdown(socket.SHUT_RD)
    _reply(conn, {"exit": code})


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
