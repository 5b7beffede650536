#!/usr/bin/env python3
"""Alternated runs of two or more logwarden builds on one input: how the project judges a
change to its speed (docs/performance-log.md), since single runs on this 2-core machine
differ by 10-40%.

    benches/ab.py FILE BIN [BIN...] [--threads N] [--runs N] [-- EXTRA SCAN ARGS]

Each round runs every build once, the order reversed every other round, and reads FILE
once, untimed, before every run: this machine's kernel pages out file pages left idle
for about a minute (a DAMON `pageout` scheme, /sys/kernel/mm/damon), and the first runs
of a series then read part of the input from disk. Prints, per build, the median wall,
user and system seconds and peak RSS (GNU time), every run's wall time, and the md5 of
its first run's document, so that a change that alters the answer shows. Never used as a
test assertion.
"""
import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def run_once(binary, path, threads, extra):
    """One scan: (wall, user, sys, peak RSS in MB) and the md5 of its document."""
    with tempfile.NamedTemporaryFile() as times:
        cmd = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", times.name, binary, "scan",
               "--threads", str(threads), "--output", "json", *extra, path]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        wall, user, system, rss = open(times.name).read().split()[-4:]
    return (float(wall), float(user), float(system), int(rss) / 1024), hashlib.md5(out).hexdigest()


def main():
    args, extra = sys.argv[1:], []
    if "--" in args:
        at = args.index("--")
        args, extra = args[:at], args[at + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("builds", nargs="+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    o = p.parse_args(args)
    results = {b: [] for b in o.builds}
    digest = {}
    for r in range(o.runs):
        for b in (o.builds if r % 2 == 0 else o.builds[::-1]):
            warm(o.file)
            times, md5 = run_once(b, o.file, o.threads, extra)
            results[b].append(times)
            digest.setdefault(b, md5)
    for b in o.builds:
        rows = results[b]
        med = [statistics.median(x[i] for x in rows) for i in range(4)]
        walls = ", ".join(f"{x[0]:.2f}" for x in rows)
        print(f"{b}: wall {med[0]:.2f} s, user {med[1]:.2f} s, sys {med[2]:.2f} s, "
              f"peak {med[3]:.1f} MB (medians of {len(rows)}); walls {walls}; md5 {digest[b]}")


if __name__ == "__main__":
    main()
