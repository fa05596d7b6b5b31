"""The leader side: one process per directory, elected, ships every writer's records.

    election    the lock, the lease, the epochs: who may send, and the fence against the last one
    liveness    whether a writer's process still runs (proven on this kernel, or by its heartbeat)
    reading     a writer folder read from its cursor, and what becomes of a damaged span
    roster      the writers tracked: discover, judge, adopt, retire (tombstones); the drain rule
    sender      the loop: read, send (split, bisect, dead letters), advance the cursor on ack
    health      the figures the leader reports in sender.json
    elector     one process's part in the election, hosting the sender once elected
    rank        the elector init() hands a rank's writer; the preferred `distwal run` sidecar
    lead        lead(): the one way in to leadership for a process that leads once (drain,
                tests, benchmarks); build_sender(), the one way a sender is built
    __main__    the sender process a leading rank starts (`python -m distwal.leader`)

The formats both sides read (marks, the cursor book, the folder reader) are below, in
distwal/_*.py. Nothing here is imported by `import distwal` until a process contends.
"""
