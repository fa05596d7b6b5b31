"""The leader side: one process per directory, elected, ships every writer's records.

    election    the lock, the lease, the epochs: who may send, and the fence against the last one
    liveness    whether a writer's process still runs (proven on this kernel, or by its heartbeat)
    cursor      the cursor book: how far the sink acknowledged each writer
    reading     a writer folder read from its cursor, and what becomes of a damaged span
    roster      the writers tracked: discover, judge, adopt, retire (tombstones); the drain rule
    sender      the loop: read, send (split, bisect, dead letters), advance the cursor on ack
    health      the figures the leader reports in sender.json
    elector     one process's part in the election, hosting the sender once elected
    lead        lead(): the one way in to leadership for a process that leads once (drain,
                tests, benchmarks); build_sender(), the one way a sender is built
    __main__    the sender process a leading rank starts (`python -m distwal.leader`)

Nothing here is imported by `import distwal` until a process contends for leadership.
"""
