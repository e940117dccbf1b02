#!/usr/bin/env python3
"""cpu.py PID -- print "BUSY TOTAL OURS STEAL" in clock ticks (USER_HZ)

BUSY/TOTAL: the machine's user+system and total CPU time (/proc/stat, all
CPUs; interrupt, softirq and steal time left out of BUSY);
OURS: user+system time of PID and all its live descendants, plus what they
reaped from finished children (cutime/cstime). dev/bench takes two snapshots
around a measurement with its own PID: (dBUSY - dOURS) / dTOTAL is the share
of the machine used by other processes meanwhile (background load that skews
the numbers on a shared host); dSTEAL / dTOTAL the share the hypervisor
gave to other guests (interference from outside this machine).
"""
import os
import sys


def main():
    root = int(sys.argv[1])
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])  # user nice system idle iowait irq softirq steal
    # Process-context time only: softirq time (loopback TCP's receive path,
    # a large share of a GB/s transfer) is charged to no process, so counting
    # it would make our own traffic look like someone else's load.
    busy = v[0] + v[1] + v[2]
    children, times = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        pid, ppid = int(d), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        times[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    ours, todo = 0, [root]
    while todo:
        p = todo.pop()
        ours += times.get(p, 0)
        todo.extend(children.get(p, []))
    print(busy, total, ours, v[7])


if __name__ == "__main__":
    main()
