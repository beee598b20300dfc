#!/usr/bin/env python3
"""Mixed FTP load for bench/soak.sh (issue 13): runs worker threads against ftpgate
for --seconds, restarts the backend at the given times, samples ftpgate's open fds,
RSS, threads and session gauges every --sample seconds, checks every completed
transfer's hash, and prints a summary with least-squares slopes after warm-up.

Workloads (one thread each unless noted):
  short     login, EPSV, RETR 1 MiB (hash checked), QUIT, in a loop (4 threads)
  download  RETR of the large file, hash checked, in a loop
  upload    STOR of random data, the stored file's hash checked, in a loop
  idle      20 sessions logged in, one NOOP a minute, replaced when closed
  abort     RETR of the large file, ABOR after a few hundred KiB
  rst       RETR of the large file, then the client vanishes with RST (SO_LINGER 0)
Errors within --restart-grace seconds of a backend restart are counted as provoked.
"""

import argparse
import ftplib
import hashlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

LOCK = threading.Lock()
STATS = {"completed": 0, "hash_ok": 0, "hash_bad": 0, "errors": 0, "provoked": 0,
         "aborted": 0, "rst": 0, "bytes": 0}
ERRORS = []
RESTARTS = []  # times of backend restarts
STOP = threading.Event()


def bump(key, n=1):
    with LOCK:
        STATS[key] += n


def error(kind, exc):
    now = time.time()
    with LOCK:
        provoked = any(abs(now - t) < ARGS.restart_grace for t in RESTARTS) or \
            (BACKEND_DOWN.is_set())
        if provoked:
            STATS["provoked"] += 1
        else:
            STATS["errors"] += 1
            if len(ERRORS) < 50:
                ERRORS.append(f"{time.strftime('%H:%M:%S')} {kind}: {exc!r}")


BACKEND_DOWN = threading.Event()


def connect():
    f = ftplib.FTP(timeout=ARGS.timeout)
    f.connect(ARGS.host, ARGS.port)
    f.login("anonymous", "soak@")
    f.voidcmd("TYPE I")
    return f


def sha_of_retr(f, name, limit=None):
    """RETR `name`, hashing it; with `limit`, stops after that many bytes and returns
    the still-open data socket (the caller aborts or vanishes)."""
    h = hashlib.sha256()
    n = 0
    conn = f.transfercmd(f"RETR {name}")
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
        if limit and n >= limit:
            return h.hexdigest(), n, conn
    conn.close()
    f.voidresp()
    return h.hexdigest(), n, None


def loop(kind, body):
    while not STOP.is_set():
        try:
            body()
        except Exception as e:  # noqa: BLE001 - every failure is counted
            error(kind, e)
            STOP.wait(0.5)
        # Pacing keeps the soak a leak test rather than a CPU hog on shared machines.
        STOP.wait(ARGS.pace)


def short():
    f = connect()
    digest, n, _ = sha_of_retr(f, "1m.bin")
    f.quit()
    check(digest, HASHES["1m.bin"], n)


def download():
    f = connect()
    digest, n, _ = sha_of_retr(f, ARGS.big)
    f.quit()
    check(digest, HASHES[ARGS.big], n)


def upload():
    f = connect()
    data = os.urandom(random.randint(1, 32) * 1024 * 1024)
    name = f"up/soak-{threading.get_ident()}-{random.randint(0, 1 << 30)}.bin"
    with f.transfercmd(f"STOR {name}") as conn:
        view = memoryview(data)
        while view:
            sent = conn.send(view[:65536])
            view = view[sent:]
    f.voidresp()
    f.quit()
    path = os.path.join(ARGS.root, name)
    with open(path, "rb") as fh:
        stored = hashlib.sha256(fh.read()).hexdigest()
    os.unlink(path)
    check(stored, hashlib.sha256(data).hexdigest(), len(data))


def abort():
    f = connect()
    _, _, conn = sha_of_retr(f, ARGS.big, limit=256 * 1024)
    conn.close()
    try:
        f.abort()
    except ftplib.Error:
        pass  # 426/226 orderings differ between servers
    f.voidcmd("NOOP")
    f.quit()
    bump("aborted")


def rst():
    f = connect()
    _, _, conn = sha_of_retr(f, ARGS.big, limit=256 * 1024)
    for s in (conn, f.sock):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    bump("rst")


def idle_pool():
    pool = []
    while not STOP.is_set():
        while len(pool) < 20 and not STOP.is_set():
            try:
                pool.append([connect(), time.time()])
            except Exception as e:  # noqa: BLE001
                error("idle-connect", e)
                STOP.wait(1)
        for entry in list(pool):
            f, last = entry
            if time.time() - last > 60:
                try:
                    f.voidcmd("NOOP")
                    entry[1] = time.time()
                except Exception as e:  # noqa: BLE001
                    error("idle-noop", e)
                    pool.remove(entry)
        STOP.wait(5)
    for f, _ in pool:
        try:
            f.quit()
        except Exception:  # noqa: BLE001
            pass


def check(got, want, n):
    with LOCK:
        STATS["completed"] += 1
        STATS["bytes"] += n
        if got == want:
            STATS["hash_ok"] += 1
        else:
            STATS["hash_bad"] += 1
            ERRORS.append(f"hash mismatch ({n} bytes)")


def sample(pid):
    def metric(text, name):
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = open(f"/proc/{pid}/status").read()
        rss = int(next(l for l in status.splitlines() if l.startswith("VmRSS")).split()[1])
        threads = int(next(l for l in status.splitlines() if l.startswith("Threads")).split()[1])
    except (OSError, StopIteration):
        return None
    sessions = ports = None
    try:
        text = urllib.request.urlopen(f"http://{ARGS.admin}/metrics", timeout=5).read().decode()
        sessions = metric(text, "ftpgate_sessions_active")
        ports = metric(text, "ftpgate_data_ports_in_use")
    except OSError:
        pass
    return {"t": time.time(), "fds": fds, "rss_kib": rss, "threads": threads,
            "sessions": sessions, "data_ports": ports}


def slope(samples, key):
    pts = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    den = sum((t - mt) ** 2 for t, _ in pts)
    if den == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in pts) / den * 3600  # per hour


def restart_backend():
    BACKEND_DOWN.set()
    with LOCK:
        RESTARTS.append(time.time())
    subprocess.run(["bash", "-c", ARGS.restart_cmd], check=False)
    BACKEND_DOWN.clear()
    with LOCK:
        RESTARTS.append(time.time())


def main():
    start = time.time()
    threads = []
    for kind, body, count in [("short", short, 4), ("download", download, 1),
                              ("upload", upload, 1), ("abort", abort, 1), ("rst", rst, 1)]:
        for _ in range(count):
            t = threading.Thread(target=loop, args=(kind, body), daemon=True)
            t.start()
            threads.append(t)
    t = threading.Thread(target=idle_pool, daemon=True)
    t.start()
    threads.append(t)
    restarts = sorted(float(x) * ARGS.seconds for x in ARGS.restart_at.split(",") if x)
    samples = []
    out = open(ARGS.samples, "w")
    while time.time() - start < ARGS.seconds:
        s = sample(ARGS.pid)
        if s:
            samples.append(s)
            out.write(json.dumps(s) + "\n")
            out.flush()
        while restarts and time.time() - start >= restarts[0]:
            restarts.pop(0)
            restart_backend()
        time.sleep(ARGS.sample)
    STOP.set()
    for t in threads:
        t.join(timeout=ARGS.timeout + 5)
    warm = [s for s in samples if s["t"] - start >= ARGS.warmup]
    summary = {
        "duration_s": round(time.time() - start),
        "samples": len(samples),
        **STATS,
        "restarts": len(RESTARTS) // 2,
    }
    for key in ("fds", "rss_kib", "threads", "sessions", "data_ports"):
        vals = [s[key] for s in warm if s.get(key) is not None]
        if vals:
            summary[f"{key}_min"] = min(vals)
            summary[f"{key}_max"] = max(vals)
            sl = slope(warm, key)
            summary[f"{key}_slope_per_h"] = None if sl is None else round(sl, 2)
    print("SOAK " + json.dumps(summary))
    for e in ERRORS:
        print("ERROR " + e)
    ok = STATS["hash_bad"] == 0 and STATS["errors"] == 0 and STATS["completed"] > 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--big", default="big.bin")
    p.add_argument("--seconds", type=float, default=3600)
    p.add_argument("--sample", type=float, default=10)
    p.add_argument("--warmup", type=float, default=300)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--pace", type=float, default=0.0,
                   help="seconds each worker waits between iterations")
    p.add_argument("--restart-at", default="0.33,0.66")
    p.add_argument("--restart-cmd", required=True)
    p.add_argument("--restart-grace", type=float, default=15)
    p.add_argument("--samples", required=True)
    ARGS = p.parse_args()
    HASHES = {}
    for name in ("1m.bin", ARGS.big):
        with open(os.path.join(ARGS.root, name), "rb") as fh:
            HASHES[name] = hashlib.sha256(fh.read()).hexdigest()
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    main()
