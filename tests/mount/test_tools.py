"""Real programs on a live agentfs mount: git, tar, cp, rsync, editors, sqlite.

Each test works in ``ws`` (a fresh workspace on a real mount, over a local
store and over moto S3; a plain local directory with
``AGENTFS_TEST_TARGET=localdir``).  The programs that only create, rename and
chmod many small files run on the local store only (``local_store_only``): those
operations are checked on both stores by the POSIX tests, and the store
conformance tests pin what the stores do; sqlite and the large files run on both.  Scratch data outside the mount goes to
``tmp_path``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.files import sha256_file
from tests.helpers.mount import local_store_only

BASE_NS = 1_400_000_000_250_000_000  # a past mtime with a fractional second
FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o640, 0o700, 0o664)
TREE_DIRS = {  # relative dir -> mode
    "a": 0o755,
    "a/b": 0o755,
    "a/b/c": 0o700,
    "d": 0o750,
    "d/e": 0o755,
    "with space": 0o775,
    "deep": 0o755,
    "deep/1": 0o755,
    "deep/1/2": 0o755,
    "deep/1/2/3": 0o711,
    "empty": 0o755,
}
FILE_DIRS = ("", "a", "a/b", "a/b/c", "d", "d/e", "with space", "deep/1/2/3")


# ---------------------------------------------------------------- helpers


def tool_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
               LC_ALL="C", TZ="UTC")
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None,
        timeout: float = 300) -> str:
    """Run ``cmd`` with check=True; return stdout; fail with stderr on error."""
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                              cwd=cwd, timeout=timeout).stdout
    except subprocess.CalledProcessError as e:
        pytest.fail(f"{cmd} exited {e.returncode}\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")


def build_tree(root: Path, nfiles: int = 200) -> None:
    """A deterministic tree: nested dirs, ``nfiles`` files of varied sizes and
    modes, symlinks (relative, to a dir, dangling, absolute), some foreign
    owners (as root), and past mtimes with fractional seconds everywhere."""
    rng = random.Random(2024)
    as_root = os.geteuid() == 0
    root.mkdir()
    for d in TREE_DIRS:
        (root / d).mkdir()
    for i in range(nfiles):
        p = root / FILE_DIRS[i % len(FILE_DIRS)] / f"file{i:03d}.dat"
        size = rng.choice([0, 1, 100, 4095, 4096, 4097, 65536, rng.randrange(200_000)])
        p.write_bytes(rng.randbytes(size))
        os.chmod(p, FILE_MODES[i % len(FILE_MODES)])
        if as_root and i % 10 == 3:
            os.chown(p, 1234, 5678)
        os.utime(p, ns=(BASE_NS + i * 1_000_000_007,) * 2)
    links = {
        "link-rel": "a/b/file002.dat",
        "a/b/up": "../../d",
        "dangling": "no/such/target",
        "absolute": "/etc/hostname",
        "with space/link to dir": "../deep",
    }
    for j, (rel, target) in enumerate(links.items()):
        os.symlink(target, root / rel)
        if as_root and j == 0:
            os.lchown(root / rel, 1234, 5678)
        os.utime(root / rel, ns=(BASE_NS - j * 3_000_000_001,) * 2, follow_symlinks=False)
    for k, (d, mode) in enumerate(sorted(TREE_DIRS.items(), reverse=True)):  # deepest first
        os.chmod(root / d, mode)
        os.utime(root / d, ns=(BASE_NS + k * 7_000_000_011,) * 2)


def snapshot(root: Path) -> dict[str, tuple]:
    """Relative path -> (kind, mode, uid, gid, mtime seconds, content) for
    everything under ``root`` (``root`` itself excluded).  ``content`` is a
    sha256 for files and the target for symlinks."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                kind, mode, content = "link", None, os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                kind, mode, content = "dir", stat.S_IMODE(st.st_mode), None
            else:
                assert stat.S_ISREG(st.st_mode), p
                kind, mode, content = "file", stat.S_IMODE(st.st_mode), sha256_file(p)
            out[str(p.relative_to(root))] = (kind, mode, st.st_uid, st.st_gid,
                                             st.st_mtime_ns // 10**9, content)
    return out


def assert_same_tree(src: Path, dst: Path) -> None:
    expected, actual = snapshot(src), snapshot(dst)
    assert sorted(actual) == sorted(expected)
    diffs = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not diffs, f"{len(diffs)} entries differ, e.g. {list(diffs.items())[:5]}"


def git(repo: Path, env: dict[str, str], *args: str) -> str:
    return run(["git", *args], env=env, cwd=repo)


# ---------------------------------------------------------------- git


@local_store_only
def test_git_workflow(ws: Path, tmp_path: Path) -> None:
    env = tool_env(tmp_path)
    repo = ws / "repo"
    run(["git", "init", "-q", "-b", "main", str(repo)], env=env)
    # git init probes the filesystem: chmod +x must stick and symlinks must work
    for probe in ("core.filemode", "core.symlinks"):
        assert git(repo, env, "config", "--type=bool", "--default=true", probe).strip() == "true"
    git(repo, env, "config", "user.name", "Test User")
    git(repo, env, "config", "user.email", "test@example.com")
    (repo / "README.md").write_text("hello\n")
    (repo / "src").mkdir()
    for i in range(30):
        (repo / "src" / f"m{i}.py").write_text(f"x = {i}\n" * (i + 1))
    (repo / "blob.bin").write_bytes(random.Random(5).randbytes(300_000))
    (repo / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("README.md", repo / "readme-link")

    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "-m", "first commit")
    assert git(repo, env, "status", "--porcelain") == ""
    assert git(repo, env, "log", "--format=%s") == "first commit\n"
    assert git(repo, env, "ls-files", "-s", "run.sh").startswith("100755 ")
    assert git(repo, env, "ls-files", "-s", "readme-link").startswith("120000 ")

    (repo / "README.md").write_text("hello again\n")
    (repo / "src" / "m0.py").unlink()
    (repo / "src" / "new.py").write_text("new = True\n")
    assert sorted(git(repo, env, "status", "--porcelain").splitlines()) == [
        " D src/m0.py", " M README.md", "?? src/new.py"]
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "-m", "second commit")
    assert git(repo, env, "status", "--porcelain") == ""
    log = git(repo, env, "log", "--oneline").splitlines()
    assert len(log) == 2
    assert log[0].endswith(" second commit") and log[1].endswith(" first commit")
    git(repo, env, "fsck", "--full", "--strict")

    git(repo, env, "checkout", "-q", "-b", "old", "HEAD~1")
    assert (repo / "README.md").read_text() == "hello\n"
    assert (repo / "src" / "m0.py").read_text() == "x = 0\n"
    assert not (repo / "src" / "new.py").exists()
    git(repo, env, "checkout", "-q", "main")
    assert (repo / "README.md").read_text() == "hello again\n"
    assert git(repo, env, "status", "--porcelain") == ""

    git(repo, env, "gc", "-q")
    git(repo, env, "fsck", "--full", "--strict")
    assert len(git(repo, env, "log", "--oneline").splitlines()) == 2


@local_store_only
def test_git_clone_within_workspace(ws: Path, tmp_path: Path) -> None:
    # A local clone tries hard links for objects and must fall back to copying.
    env = tool_env(tmp_path)
    repo = ws / "origin"
    run(["git", "init", "-q", "-b", "main", str(repo)], env=env)
    for i in range(3):
        (repo / "f.txt").write_text(f"version {i}\n")
        git(repo, env, "add", "f.txt")
        git(repo, env, "-c", "user.name=T", "-c", "user.email=t@e", "commit", "-q", "-m", f"c{i}")
    run(["git", "clone", "-q", str(repo), str(ws / "clone")], env=env)
    clone = ws / "clone"
    assert (clone / "f.txt").read_text() == "version 2\n"
    assert len(git(clone, env, "log", "--oneline").splitlines()) == 3
    git(clone, env, "fsck", "--full", "--strict")


# ---------------------------------------------------------------- tar, cp, rsync


@local_store_only
def test_tar_extract(ws: Path, tmp_path: Path) -> None:
    env = tool_env(tmp_path)
    src = tmp_path / "src"
    build_tree(src)
    archive = tmp_path / "tree.tar"
    run(["tar", "--numeric-owner", "-C", str(src), "-cf", str(archive), "."], env=env)
    dst = ws / "extracted"
    dst.mkdir()
    run(["tar", "--numeric-owner", "-C", str(dst), "-xpf", str(archive)], env=env)
    assert_same_tree(src, dst)
    # and tar reads the mount back into an equivalent archive
    again = tmp_path / "again.tar"
    run(["tar", "--numeric-owner", "-C", str(dst), "-cf", str(again), "."], env=env)

    def listing(a: Path) -> list[str]:
        return sorted(run(["tar", "--numeric-owner", "-tvf", str(a)], env=env).splitlines())

    assert listing(again) == listing(archive)


@local_store_only
def test_cp_a_into_and_out_of_workspace(ws: Path, tmp_path: Path) -> None:
    env = tool_env(tmp_path)
    src = tmp_path / "src"
    build_tree(src)
    run(["cp", "-a", str(src), str(ws / "copy")], env=env)
    assert_same_tree(src, ws / "copy")
    run(["cp", "-a", str(ws / "copy"), str(tmp_path / "back")], env=env)
    assert_same_tree(src, tmp_path / "back")


@local_store_only
def test_rsync_second_run_transfers_nothing(ws: Path, tmp_path: Path) -> None:
    env = tool_env(tmp_path)
    src = tmp_path / "src"
    build_tree(src)
    run(["rsync", "-a", f"{src}/", f"{ws / 'dst'}/"], env=env)
    assert_same_tree(src, ws / "dst")
    second = run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{ws / 'dst'}/"], env=env)
    assert second == "", f"second rsync wanted to change:\n{second}"
    # a real change is still detected and transferred
    (src / "a" / "file001.dat").write_bytes(b"changed")
    third = run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{ws / 'dst'}/"], env=env)
    assert "a/file001.dat" in third
    assert (ws / "dst" / "a" / "file001.dat").read_bytes() == b"changed"


# ---------------------------------------------------------------- editors


@local_store_only
def test_editor_atomic_save_repeated(ws: Path) -> None:
    f, tmp = ws / "f", ws / "f.tmp"
    f.write_bytes(b"version -1\n")
    held = os.open(f, os.O_RDONLY)  # e.g. a language server holding the old file
    try:
        for i in range(20):
            content = f"version {i}\n".encode() * (i + 1)
            with open(tmp, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, f)
            assert f.read_bytes() == content
            assert os.listdir(ws) == ["f"]
        assert os.pread(held, 100, 0) == b"version -1\n"
    finally:
        os.close(held)


@local_store_only
def test_editor_backup_rename_save(ws: Path) -> None:
    f, backup = ws / "f", ws / "f~"
    f.write_bytes(b"original\n")
    for i in range(5):
        old = f.read_bytes()
        os.rename(f, backup)
        with open(f, "wb") as out:
            out.write(f"rewrite {i}\n".encode())
            os.fsync(out.fileno())
        assert backup.read_bytes() == old
        os.unlink(backup)
        assert f.read_bytes() == f"rewrite {i}\n".encode()
        assert os.listdir(ws) == ["f"]


@local_store_only
def test_vim_save_with_backup(ws: Path, tmp_path: Path) -> None:
    f = ws / "notes.txt"
    f.write_text("old line 1\nold line 2\n")
    os.chmod(f, 0o640)
    cmd = ["vim", "-u", "NONE", "-i", "NONE", "-N", "-es",
           "-c", "set backup writebackup backupcopy=no backupdir=. backupskip=",
           "-c", "%s/old/new/g", "-c", "wq", str(f)]
    run(cmd, env=tool_env(tmp_path), cwd=ws, timeout=60)
    assert f.read_text() == "new line 1\nnew line 2\n"
    assert (ws / "notes.txt~").read_text() == "old line 1\nold line 2\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert sorted(os.listdir(ws)) == ["notes.txt", "notes.txt~"]  # swap file removed


# ---------------------------------------------------------------- sqlite


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite(ws: Path, tmp_path: Path, journal_mode: str) -> None:
    db = ws / "db.sqlite"
    con = sqlite3.connect(db, isolation_level=None)
    assert con.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, s TEXT)")
    for batch in range(10):
        con.execute("BEGIN")
        con.executemany("INSERT INTO t (n, s) VALUES (?, ?)",
                        [(batch * 100 + i, "x" * (i % 50)) for i in range(100)])
        con.execute("COMMIT")
    con.execute("BEGIN")
    con.executemany("INSERT INTO t (n, s) VALUES (?, ?)", [(-1, "rolled back")] * 50)
    reader = sqlite3.connect(db, isolation_level=None)
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 1000
    reader.close()
    con.execute("ROLLBACK")
    con.close()
    assert os.listdir(ws) == ["db.sqlite"]  # journal / WAL and shm cleaned up

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == journal_mode
    assert con.execute("SELECT count(*), sum(n) FROM t").fetchone() == (1000, sum(range(1000)))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    out = run(["sqlite3", str(db), "SELECT count(*) FROM t WHERE n >= 0"], env=tool_env(tmp_path))
    assert out.strip() == "1000"
