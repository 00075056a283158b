"""Prints bench/vs-celery's table from the `kv NAME VALUE` lines of its runs (files on argv)."""

import sys


def load(paths):
    values = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "kv":
                    values[parts[1]] = float(parts[2])
    return values


def main():
    v = load(sys.argv[1:])
    # Everything a job cost on the machine: the worker (or runq) processes plus the store.
    for mine, store, total in (
        ("celery.cpu_ms_per_job", "celery.redis_cpu_ms_per_job", "celery.total_cpu_ms_per_job"),
        ("single.cpu_ms_per_job", "single.pg_cpu_ms_per_job", "single.total_cpu_ms_per_job"),
        ("batch.cpu_ms_per_job", "batch.pg_cpu_ms_per_job", "batch.total_cpu_ms_per_job"),
    ):
        if mine in v and store in v:
            v[total] = v[mine] + v[store]

    def fmt(x, unit):
        if x is None:
            return "-"
        if unit == "ms":
            return f"{x:.3f} ms" if x < 1 else f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"
        if unit == "B":
            return f"{x:,.0f} B"
        if unit == "":
            return f"{x:.2f}"
        return f"{x:,.0f}{unit}"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b else "-"

    rows = []

    def row(name, celery_key, runq_key, unit, better):
        c = v.get(celery_key) if celery_key else None
        r = v.get(runq_key) if runq_key else None
        rows.append((name, fmt(c, unit), fmt(r, unit), ratio(r, c), better))

    row("throughput jobs/s, POST /jobs (Celery: drain)", "celery.drain_per_s", "single.jobs_per_s", "/s", "higher")
    row("throughput jobs/s, POST /jobs:batch (Celery: drain)", "celery.drain_per_s", "batch.jobs_per_s", "/s", "higher")
    row("submit->start p50", "celery.latency.start_p50_ms", "latency.start_p50_ms", "ms", "lower")
    row("submit->start p99", "celery.latency.start_p99_ms", "latency.start_p99_ms", "ms", "lower")
    row("runq p99 vs Celery p50 (submit->start)", "celery.latency.start_p50_ms", "latency.start_p99_ms", "ms", "lower")
    status = next((k for k in v if k.startswith("api.status_per_s.")), None)
    procs = int(v.get("celery.status_procs", 0))
    row(f"status look-ups/s (Celery: AsyncResult.state, {procs} procs; runq: concurrency {status and status.rsplit('.c', 1)[1]})",
        "celery.status_state_per_s", status, "/s", "higher")
    row("status look-ups/s (Celery: Redis GET of the result key)", "celery.status_get_per_s", status, "/s", "higher")
    row("enqueue/s, one producer, one at a time", "celery.enqueue_per_s", "api.submit_per_s.c1", "/s", "higher")
    conc = next((k for k in v if k.startswith("api.submit_per_s.") and not k.endswith(".c1")), None)
    if conc:
        row(f"enqueue/s, one producer (Celery: one at a time; runq: {conc.rsplit('.c', 1)[1]} in flight)", "celery.enqueue_per_s", conc, "/s",
            "higher")
    row("CPU per job: worker / runq process (POST /jobs)", "celery.cpu_ms_per_job", "single.cpu_ms_per_job", "ms",
        "lower")
    row("CPU per job: worker / runq process (batch)", "celery.cpu_ms_per_job", "batch.cpu_ms_per_job", "ms", "lower")
    row("CPU per job: redis-server / Postgres (POST /jobs)", "celery.redis_cpu_ms_per_job",
        "single.pg_cpu_ms_per_job", "ms", "lower")
    row("CPU per job: redis-server / Postgres (batch)", "celery.redis_cpu_ms_per_job", "batch.pg_cpu_ms_per_job",
        "ms", "lower")
    row("CPU per job, both together (POST /jobs)", "celery.total_cpu_ms_per_job", "single.total_cpu_ms_per_job",
        "ms", "lower")
    row("CPU per job, both together (batch)", "celery.total_cpu_ms_per_job", "batch.total_cpu_ms_per_job", "ms",
        "lower")
    for phase in ("single", "batch"):
        row(f"Postgres WAL per job ({phase})", None, f"{phase}.wal_bytes_per_job", "B", "lower")
        row(f"Postgres transaction ids per job ({phase})", None, f"{phase}.xids_per_job", "", "lower")
        row(f"Postgres commits per job, read-only incl. ({phase})", None, f"{phase}.commits_per_job", "", "lower")
        row(f"row updates of jobs per job ({phase})", None, f"{phase}.jobs_updates_per_job", "", "lower")
        row(f"  of them HOT, no index touched ({phase})", None, f"{phase}.jobs_hot_updates_per_job", "", "higher")

    headers = ("figure", "Celery", "runq", "runq / Celery", "better")
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(5)]
    line = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for r in rows:
        print(line.format(*r))

    print()
    ceiling = v.get("pg.pk_read_per_s")
    if ceiling and status:
        print(f"Postgres primary-key read ceiling (pgbench, same server, same run): {ceiling:,.0f} reads/s; "
              f"runq status look-ups are {v[status] / ceiling:.2f}x of it, "
              f"Celery AsyncResult.state {v.get('celery.status_state_per_s', 0) / ceiling:.2f}x")
    if "query.stats_ms" in v:
        print(f"At {v.get('prefill', 0):,.0f} prefilled finished jobs: GET /dashboard/stats {v['query.stats_ms']:.1f} ms; "
              f"GET /jobs?limit=50 admin {v['query.list_admin_ms']:.1f} ms, one owner's {v['query.list_owner_ms']:.1f} ms, "
              f"admin status=failed {v['query.list_status_ms']:.1f} ms (median of 7)")


if __name__ == "__main__":
    main()
