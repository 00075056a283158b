"""Drives the Celery side of bench/vs-celery and prints `kv NAME VALUE` lines (stdout) and a
human account (stderr).

  VSC_BROKER=redis://127.0.0.1:P/0 VSC_BACKEND=redis://127.0.0.1:P/1 VSC_REDIS_PID=PID \
      python vsc_drive.py --jobs 10000 --rate 100 --seconds 10

Phases, all against one worker it starts (vsc_tasks.py's settings) and stops:
  enqueue  N no-op tasks from one producer (apply_async in a loop) onto a queue the worker
           does not consume yet -> tasks/s;
  drain    the worker starts consuming that queue (add_consumer); time until all N results
           are in the backend -> tasks/s; the CPU (utime+stime from /proc) of the worker and its
           children, and of redis-server, over the drain, per task;
  status   AsyncResult(id).state, then a direct Redis GET of the result key, for random ids of
           the drained tasks, from --status-procs processes at once -> look-ups/s;
  latency  --rate tasks/s for --seconds s; each task returns time.time() when it starts:
           submit->start p50/p99.
"""

import argparse
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def kv(name, value):
    print(f"kv {name} {value}", flush=True)


def ticks(pid):
    """utime + stime of one process, in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def tree(pid):
    """pid and all its descendants, from /proc's parent ids."""
    parents = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    parents[int(p)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return out


def tree_ticks(pid):
    return {p: ticks(p) for p in tree(pid)}


def spent(before, after):
    """CPU seconds between two {pid: ticks} snapshots (processes new since count in full)."""
    return sum(t - before.get(p, 0) for p, t in after.items()) / TICKS


def wait_results(backend, expected, timeout):
    deadline = time.time() + timeout
    while backend.dbsize() < expected:
        if time.time() > deadline:
            raise SystemExit(f"timed out: {backend.dbsize()} of {expected} results")
        time.sleep(0.01)
    return time.time()


def pct(sorted_values, p):
    i = min(max(int(-(-len(sorted_values) * p // 1)), 1), len(sorted_values)) - 1
    return sorted_values[i]


def lookups(args):
    """One status process: `count` look-ups of random ids; returns (start, end, count)."""
    kind, ids, count, seed = args
    rnd = random.Random(seed)
    if kind == "state":
        from celery.result import AsyncResult

        from vsc_tasks import app

        app.backend.client.ping()
        start = time.time()
        for _ in range(count):
            state = AsyncResult(rnd.choice(ids), app=app).state
            assert state == "SUCCESS", state
    else:
        r = redis.Redis.from_url(os.environ["VSC_BACKEND"])
        r.ping()
        start = time.time()
        for _ in range(count):
            assert r.get(b"celery-task-meta-" + rnd.choice(ids).encode()) is not None
    return start, time.time(), count


def status_rate(kind, ids, total, procs):
    per = total // procs
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.map(lookups, [(kind, ids, per, i) for i in range(procs)])
    start = min(p[0] for p in parts)
    end = max(p[1] for p in parts)
    return sum(p[2] for p in parts) / (end - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--status-requests", type=int, default=20_000)
    ap.add_argument("--status-procs", type=int, default=4)
    ap.add_argument("--worker-log", default=os.devnull, help="where the worker's own output goes")
    args = ap.parse_args()

    sys.path.insert(0, HERE)
    from vsc_tasks import app, noop

    backend = redis.Redis.from_url(os.environ["VSC_BACKEND"])
    redis_pid = int(os.environ["VSC_REDIS_PID"])
    log_file = open(args.worker_log, "ab")  # noqa: SIM115 (closed with the worker)
    hostname = f"vsc-{os.getpid()}@localhost"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "vsc_tasks", "worker", "-P", "prefork", "-c", "2",
         "-Q", "vsc_warm", "-n", hostname, "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-l", "WARNING"],
        cwd=HERE,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        noop.apply_async(queue="vsc_warm").get(timeout=120)
        log(f"celery worker {worker.pid} is up ({len(tree(worker.pid)) - 1} children)")

        t = time.time()
        ids = [noop.apply_async(queue="vsc_drain").id for _ in range(args.jobs)]
        enqueue = args.jobs / (time.time() - t)
        log(f"enqueue  {args.jobs} tasks from one producer: {enqueue:.0f} tasks/s")
        kv("celery.enqueue_per_s", f"{enqueue:.1f}")

        cpu0, redis0 = tree_ticks(worker.pid), {redis_pid: ticks(redis_pid)}
        t0 = time.time()
        app.control.add_consumer("vsc_drain", reply=True, destination=[hostname])
        t1 = wait_results(backend, args.jobs + 1, timeout=600)
        cpu1, redis1 = tree_ticks(worker.pid), {redis_pid: ticks(redis_pid)}
        drain = args.jobs / (t1 - t0)
        worker_ms = spent(cpu0, cpu1) * 1000 / args.jobs
        redis_ms = spent(redis0, redis1) * 1000 / args.jobs
        log(f"drain    {args.jobs} pre-queued tasks in {t1 - t0:.2f} s: {drain:.0f} tasks/s; "
            f"CPU per task: worker {worker_ms:.3f} ms, redis-server {redis_ms:.3f} ms")
        kv("celery.drain_per_s", f"{drain:.1f}")
        kv("celery.cpu_ms_per_job", f"{worker_ms:.4f}")
        kv("celery.redis_cpu_ms_per_job", f"{redis_ms:.4f}")

        kv("celery.status_procs", args.status_procs)
        for kind in ("state", "get"):
            rate = status_rate(kind, ids, args.status_requests, args.status_procs)
            what = "AsyncResult(id).state" if kind == "state" else "Redis GET celery-task-meta-<id>"
            log(f"status   {what}: {rate:.0f} look-ups/s ({args.status_procs} processes)")
            kv(f"celery.status_{kind}_per_s", f"{rate:.1f}")

        total = args.rate * args.seconds
        submitted = []
        start = time.time()
        for i in range(total):
            due = start + i / args.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            at = time.time()
            submitted.append((noop.apply_async(queue="vsc_drain").id, at))
        wait_results(backend, args.jobs + 1 + total, timeout=600)
        raw = backend.mget([f"celery-task-meta-{i}" for i, _ in submitted])
        lat = sorted((json.loads(r)["result"] - at) * 1000 for r, (_, at) in zip(raw, submitted))
        log(f"latency  {total} tasks at {args.rate}/s: submit->start p50 {pct(lat, 0.5):.1f} ms "
            f"p99 {pct(lat, 0.99):.1f} ms")
        kv("celery.latency.start_p50_ms", f"{pct(lat, 0.5):.3f}")
        kv("celery.latency.start_p99_ms", f"{pct(lat, 0.99):.3f}")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log_file.close()


if __name__ == "__main__":
    main()
