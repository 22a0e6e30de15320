"""The kernel mechanisms behind :mod:`sdft.sandbox`, applied by the sandbox host (:mod:`sdft.sandbox.host`).

Standard library only (plus ``pyseccomp`` for the seccomp filter): the host runs this file outside the
``sdft`` package, in an isolated interpreter. Each function applies one mechanism and raises
``OSError`` when the kernel refuses it; the host decides whether that is fatal (strict mode) or
recorded and skipped (permissive mode).

* :func:`unshare` new mount, PID, network, IPC and UTS namespaces (plus a user namespace when not root);
  :func:`unshare_pid` a PID namespace (and mount namespace, for its own /proc) for the program under test;
* :func:`build_root` a private root: a small tmpfs holding read-only, nosuid, nodev bind mounts of the
  system and Python folders, a minimal ``/dev``, and a size-capped tmpfs ``/tmp`` (the only writable
  place, gone with the namespace: nothing is left on disk); :func:`mount_proc` a fresh ``/proc``
  (``hidepid=invisible``: only the sandbox's own processes exist); :func:`enter_root` chroots into it;
* :func:`drop_privileges` an unprivileged uid that owns nothing, no supplementary groups, empty
  capability sets (bounding and ambient too), ``no_new_privs``;
* :func:`seccomp_filter` a libseccomp filter refusing the dangerous calls (EPERM);
* :func:`landlock_restrict` (Linux >= 5.13) writes only beneath ``/tmp``, no TCP, scoped signals (and,
  where no private root hides the host's files, reads only of the system and Python folders);
and, in :mod:`sdft.sandbox.cgroup` (loaded the same way), a throw-away cgroup: process cap, memory cap, kill-all.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
from pathlib import Path

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_NAMESPACES = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 1, 2, 4
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (new syscalls share one table)
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP = 1, 4, 24
_PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
# Landlock filesystem rights we restrict: every way of changing the file tree.
_FS_WRITE_FILE, _FS_TRUNCATE = 1 << 1, 1 << 14
_FS_READS = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
_FS_FILE_RIGHTS = (1 << 0) | (1 << 1) | (1 << 2) | _FS_TRUNCATE  # the rights a rule on a file may hold
_FS_WRITES_V1 = _FS_WRITE_FILE | sum(1 << b for b in range(4, 13))  # remove dir/file, make char..sym
_FS_REFER = 1 << 13  # ABI 2
_NET_TCP = (1 << 0) | (1 << 1)  # bind, connect (ABI 4)
_SCOPE_ALL = (1 << 0) | (1 << 1)  # abstract unix sockets, signals (ABI 6)
# Host folders the sandbox sees (read-only) besides the Python installation; missing ones are skipped.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
# Refused with EPERM by the seccomp filter: kernel-wide state, other processes, namespaces, devices,
# ownership, keys, tracing and the interfaces that bypass seccomp (io_uring) or widen the attack surface.
DENIED_SYSCALLS = (
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsmount", "fspick",
    "mount_setattr", "setns", "unshare", "sethostname", "setdomainname", "ptrace", "process_vm_readv",
    "process_vm_writev", "kcmp", "pidfd_getfd", "mknod", "mknodat", "chown", "fchown", "lchown", "fchownat",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm", "open_by_handle_at", "name_to_handle_at",
    "fanotify_init", "lookup_dcookie", "sched_setattr",
)
_IOCTL_DENIED = (0x5412, 0x541C, 0x40086602, 0x401C5820)  # TIOCSTI, TIOCLINUX, FS_IOC_SETFLAGS, FSSETXATTR
_SCHED_REALTIME = (1, 2, 6)  # SCHED_FIFO, SCHED_RR, SCHED_DEADLINE
NPROC_MARGIN = 32  # processes (threads count too) one sandboxed program may add

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _syscall(number: int, *args) -> int:
    return _libc.syscall(ctypes.c_long(number), *args)


def prctl(option: int, arg: int = 0, what: str = "prctl") -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), what)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


# ------------------------------------------------------------------------------------------ namespaces

def unshare(as_root: bool) -> list[str]:
    """New namespaces for this process (PID: for its next child). Not root: inside a user namespace
    that maps only our own uid and gid, which is what lets an unprivileged user do the rest."""
    flags = _NAMESPACES | (0 if as_root else CLONE_NEWUSER)
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(flags), "unshare")
    if not as_root:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    return ["mount_ns", "pid_ns", "net_ns", "ipc_ns", "uts_ns"] + ([] if as_root else ["user_ns"])


def unshare_pid() -> None:
    """A PID namespace for our next child, and a mount namespace in which it mounts its own /proc."""
    _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare")


def python_paths(executable: str, prefixes: list[str]) -> list[str]:
    """The folders a Python interpreter needs, outermost only (a folder inside another is covered)."""
    wanted = {os.path.realpath(p) for p in prefixes if p} | {os.path.dirname(os.path.realpath(executable))}
    wanted |= {os.path.abspath(p) for p in prefixes if p}  # a venv path as well as its target
    wanted.add(os.path.dirname(os.path.abspath(executable)))
    ordered = sorted(p for p in wanted if os.path.isdir(p))
    return [p for p in ordered if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in ordered)]


def _read_only(target: str) -> None:
    """Make a bind mount (and every mount below it) read-only, nosuid, nodev."""
    attr = (ctypes.c_uint64 * 4)(_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV, 0, 0, 0)
    if _syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(_AT_FDCWD), target.encode(), ctypes.c_uint(_AT_RECURSIVE),
                ctypes.byref(attr), ctypes.c_size_t(32)) == 0:
        return
    if ctypes.get_errno() != errno.ENOSYS:  # older kernels: the top mount only
        _check(-1, f"mount_setattr {target}")
    mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def build_root(paths: list[str], tmp_mb: int, uid: int, gid: int, where: str = "/tmp") -> str:
    """A new root tree mounted on ``where`` (in our private mount namespace, so the host's ``where`` is
    untouched): ``paths`` bound read-only at their own names, ``/dev`` with a few harmless devices, an
    empty ``/proc`` to mount later, and a writable tmpfs ``/tmp`` of ``tmp_mb`` MiB owned by ``uid``.

    The program's tmpfs ``/tmp`` is mounted before the binds, so a path under ``/tmp`` (a virtualenv or a
    checkout in the system temp folder) is bound read-only on top of it rather than hidden by it."""
    if any(os.path.abspath(p) in ("/", "/tmp") for p in paths):
        raise OSError(errno.EINVAL, "the sandbox cannot bind / or /tmp itself into its private root")
    mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount propagates to the host
    # Sources are opened first: the new root is mounted over ``where``, which may hold some of them.
    sources = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)) for p in paths if os.path.lexists(p)]
    devices = [(f"/dev/{d}", os.open(f"/dev/{d}", os.O_PATH | os.O_CLOEXEC)) for d in DEVICES
               if os.path.exists(f"/dev/{d}")]
    # Top-level entries of /tmp that hold a bound path: each becomes a small tmpfs of its own, read-only once
    # the binds are in, so the program (which owns /tmp) can neither rename it (a mount point) nor plant an
    # interpreter of its own where the tests' process will look for one; /tmp is then 0711 so that the tests'
    # process (another uid when started as root) can reach the interpreter.
    under_tmp = sorted({"/tmp/" + p.split("/")[2] for p in paths if p.startswith("/tmp/")})
    try:
        mount("tmpfs", where, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=4m,mode=0755")
        tmp_mode = "0711" if under_tmp else "0700"
        for sub, size, mode in (("/tmp", tmp_mb, tmp_mode), ("/dev/shm", 16, "1777")):
            os.makedirs(where + sub, 0o755, exist_ok=True)
            mount("tmpfs", where + sub, "tmpfs", _MS_NOSUID | _MS_NODEV,
                  f"size={max(int(size), 1)}m,mode={mode},uid={uid},gid={gid}")
        for top in under_tmp:
            os.makedirs(where + top, 0o755, exist_ok=True)
            mount("tmpfs", where + top, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        for path, fd in sources:
            _bind_read_only(path, fd, where + path)
        for top in under_tmp:
            mount(None, where + top, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        for path, fd in devices:  # the bind keeps the device usable (no nodev on it)
            Path(where + path).touch(0o666)
            mount(f"/proc/self/fd/{fd}", where + path, None, _MS_BIND)
        os.makedirs(where + "/proc", 0o555, exist_ok=True)
    finally:
        for _, fd in sources + devices:
            os.close(fd)
    return where


def _bind_read_only(path: str, fd: int, target: str) -> None:
    if os.path.islink(path):  # merged-/usr systems: /bin -> usr/bin
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        os.symlink(os.readlink(path), target)
        return
    os.makedirs(target, 0o755, exist_ok=True)
    mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
    _read_only(target)


def mount_proc(root: str) -> None:
    """From inside the new PID namespace: a /proc that shows only the sandbox's own processes, and
    (hidepid=invisible) of those only the ones of the reader's uid."""
    mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "hidepid=invisible")


def enter_root(root: str) -> None:
    """Freeze the skeleton read-only and chroot into it. The host's tree stays reachable only by
    processes outside the namespace; nothing inside keeps the capability to chroot back out."""
    mount(None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.chroot(root)
    os.chdir("/tmp")


# ------------------------------------------------------------------------------------------ privileges

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def drop_privileges(uid: int, gid: int) -> list[str]:
    """Become ``uid``/``gid`` with no groups and no capabilities at all (bounding and ambient sets
    included, so nothing executed later gets any back); ``no_new_privs`` makes that final."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text()) if os.path.exists(
        "/proc/sys/kernel/cap_last_cap") else 63
    # A normal user outside a user namespace may not shrink the bounding set, and holds no capability
    # to lose: no_new_privs is what keeps set-user-id and file capabilities from giving any back.
    bounded = os.geteuid() == 0 or _held_capabilities() != []
    for cap in range(last + 1) if bounded else ():
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() != errno.EINVAL:
            _check(-1, "drop the capability bounding set")
    prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clear ambient capabilities")
    if os.getuid() == 0:
        os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    header, data = _CapHeader(0x20080522, 0), (ctypes.c_uint32 * 6)()  # v3: effective/permitted/inheritable
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    prctl(_PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    held = _held_capabilities(with_bounding=bounded)
    if held or _status().get("NoNewPrivs", "0").strip() != "1":
        raise OSError(errno.EPERM, f"capabilities still held: {', '.join(held) or 'no_new_privs unset'}")
    return ["unprivileged_uid", "capabilities_dropped", "no_new_privs"]


def _status() -> dict:
    return dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)


def _held_capabilities(with_bounding: bool = False) -> list[str]:
    status = _status()
    sets = ("CapInh", "CapPrm", "CapEff", "CapAmb") + (("CapBnd",) if with_bounding else ())
    return [k for k in sets if int(status.get(k, "1"), 16)]


def die_with_parent(expected_parent: int | None = None, sig: int = signal.SIGKILL) -> None:
    """``sig`` when the parent dies; if it already died before this was set, go now."""
    prctl(_PR_SET_PDEATHSIG, sig, "parent-death signal")
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def not_dumpable() -> None:
    """Other processes of the same uid can no longer read or write our memory through /proc."""
    prctl(_PR_SET_DUMPABLE, 0, "dumpable")


# -------------------------------------------------------------------------------------------- seccomp

def seccomp_filter():
    """A libseccomp filter: every call allowed except those listed above (EPERM), ioctls that push
    input into a terminal or set immutable flags, real-time scheduling, namespace flags to clone,
    clone3 (ENOSYS: its flags are out of seccomp's reach, libc falls back to clone) and new sockets. Foreign architectures (32-bit calls, x32) kill the process (libseccomp's default)."""
    sc = _pyseccomp()
    deny = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
        except (OSError, RuntimeError, ValueError):
            continue
    for cmd in _IOCTL_DENIED:
        flt.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, cmd))
    for policy in _SCHED_REALTIME:  # the mask drops SCHED_RESET_ON_FORK, which may be OR-ed in
        flt.add_rule(deny, "sched_setscheduler", sc.Arg(1, sc.MASKED_EQ, 0xBFFFFFFF, policy))
    # One rule per flag: a rule's argument tests are ANDed, and "any of these bits" is an OR.
    for bit in (CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, 0x02000000):
        flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # No new sockets of any family (socketpair stays): the network namespace has no network, and a
    # unix socket on a read-only bind mount can still be connected to (connect ignores the mount flag).
    flt.add_rule(deny, "socket")
    return flt


def _pyseccomp():
    """Import pyseccomp without its library search: ``ctypes.util.find_library`` runs ``ldconfig -p``
    (a tenth of a second per sandboxed run); libseccomp 2's soname is fixed."""
    import ctypes.util

    search = ctypes.util.find_library
    known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
    try:
        ctypes.CDLL("libseccomp.so.2")
        ctypes.util.find_library = lambda name: known.get(name) or search(name)
    except OSError:
        pass  # not under that name: let pyseccomp search
    try:
        import pyseccomp
    except ImportError as exc:
        raise ImportError(f"{exc} (pip install pyseccomp; it needs the system's libseccomp2)") from exc
    finally:
        ctypes.util.find_library = search
    return pyseccomp


# ------------------------------------------------------------------------------------------- landlock

class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1  # the kernel struct is __attribute__((packed))
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    return max(0, _syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))


def landlock_restrict(writable: list[str], readable: list[str] | None = None) -> str:
    """Writes only beneath ``writable`` (and to /dev/null), no TCP, scoped signals and abstract sockets;
    with ``readable`` (no private root hides the host's files), reads only beneath those and ``writable``."""
    abi = landlock_abi()
    if not abi:
        raise OSError(errno.ENOSYS, "Landlock is not available")
    writes = _FS_WRITES_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    fs = writes | (_FS_READS if readable is not None else 0)
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # the struct grew with the ABI
    ruleset = _check(_syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                              ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        rules = [(p, fs) for p in writable] + [("/dev/null", fs)]
        if readable is not None:
            rules += [(p, _FS_READS) for p in readable + [f"/dev/{d}" for d in DEVICES if d != "null"]
                      if os.path.exists(p)]
        for path, allowed in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed if os.path.isdir(path) else allowed & _FS_FILE_RIGHTS, fd)
                _check(_syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(1),  # path-beneath
                                ctypes.byref(rule), ctypes.c_uint32(0)), "landlock_add_rule")
            finally:
                os.close(fd)
        _check(_syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return f"landlock_abi_{abi}"
