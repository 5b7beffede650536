#!/usr/bin/env python3
"""Writes an address-spraying nginx combined log: N lines, each from a new random client
(IPv4, and IPv6 spread over many /64s), every one a 404, with a few planted attackers
whose requests are spread through the stream. Fixed seed; prints the planted truth.

usage: gen_spray.py LINES OUT
"""
import random
import sys

lines, out = int(sys.argv[1]), sys.argv[2]
rng = random.Random(7)
attackers = {"203.0.113.%d" % i: 80 for i in range(1, 6)}
planted = [a for a, n in attackers.items() for _ in range(n)]
every = max(1, lines // (len(planted) + 1))
with open(out, "w") as f:
    t0 = 1_700_000_000
    p = 0
    for i in range(lines):
        sec = t0 + i * 600 // lines
        stamp = "14/Nov/2023:%02d:%02d:%02d +0000" % (22, 13 + (sec - t0) // 60 % 47, (sec - t0) % 60)
        if i % every == 0 and p < len(planted):
            ip = planted[p]
            p += 1
        elif i % 3 == 0:
            ip = "2001:db8:%x:%x::%x" % (rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(16))
        else:
            ip = "%d.%d.%d.%d" % (rng.randint(1, 223), rng.getrandbits(8), rng.getrandbits(8), rng.randint(1, 254))
        f.write('%s - - [%s] "GET /p%d HTTP/1.1" 404 0 "-" "spray"\n' % (ip, stamp, i % 7))
print(" ".join(sorted(attackers)))
