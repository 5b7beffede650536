#!/usr/bin/env python3
"""Hostile shapes for the memory bound (`--max-memory`): persistent attackers in nginx
`combined` format, and failed-login sprays in an application's JSON.

  gen_hostile.py heavy K L        K addresses, each L lines: a 404 on a new path every
                                  second (long event series, full distinct-path sets)
  gen_hostile.py long K L P U     K addresses, each L lines of a new P-byte path and a
                                  new U-byte user agent (top lists full of long values)
  gen_hostile.py botnet K L       K addresses, each failing a login (POST /login, 401)
                                  once a second for L seconds, address by address: every
                                  one crosses `login-brute-force` (10 in 5 m) from L = 10;
                                  the capacity of --max-memory in the README's "Capacity
                                  under attack" was measured with it (L = 12)
  gen_hostile.py logins N SHAPE [EVERY]
                                  N failed logins as application JSON lines, over one hour
                                  from 2024-01-15T10:00:00Z; SHAPE is
                                    spray:  a random address each, all on `admin`
                                    both:   a random address and a new name each
                                    stuff:  one address, a new name each
                                    hidden: a random address and a new name each, but
                                            every EVERY-th line (from the 8th) on `victim`

Lines go to stdout; `heavy` and `long` interleaved by second from 2023-11-14T22:13:20Z.
Deterministic.
"""
import random
import sys
import time

T0 = 1_700_000_000


def line(c, t, path, agent):
    ts = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(T0 + t))
    ip = f"198.18.{c // 250}.{c % 250 + 1}"
    return f'{ip} - - [{ts}] "GET {path} HTTP/1.1" 404 153 "-" "{agent}"\n'


def logins(out, n, shape, every=0):
    rng = random.Random(5)
    for i in range(n):
        s = i * 3600 // n
        ts = "2024-01-15T10:%02d:%02dZ" % (s // 60, s % 60)
        ip = "%d.%d.%d.%d" % (rng.randint(1, 223), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254))
        user = "u%07d" % i
        if shape == "spray":
            user = "admin"
        elif shape == "stuff":
            ip = "203.0.113.9"
        elif shape == "hidden" and i % every == 7:
            user = "victim"
        elif shape not in ("both", "hidden"):
            sys.exit(__doc__)
        out.write('{"ts":"%s","level":"warn","event":"auth.failed","user":"%s","client_ip":"%s"}\n' % (ts, user, ip))


def main(shape, *args):
    out = sys.stdout
    if shape == "logins":
        logins(out, int(args[0]), args[1], *(int(a) for a in args[2:]))
        return
    if shape == "botnet":
        k, n = (int(a) for a in args)
        for t in range(n):
            out.writelines(
                f'{11 + c % 100}.{c // 100 % 256}.{c // 25600 % 256}.9 - - [14/Nov/2023:22:13:{t % 60:02d} +0000] '
                f'"POST /login HTTP/1.1" 401 0 "-" "bot"\n'
                for c in range(k)
            )
        return
    if shape == "heavy":
        k, n = (int(a) for a in args)
        for t in range(n):
            out.writelines(line(c, t, f"/probe/{c}/{t}.php", f"scanner/{c}") for c in range(k))
    elif shape == "long":
        k, n, p, u = (int(a) for a in args)
        for t in range(n):
            out.writelines(
                line(c, t, f"/p/{c}/{t}/" + "a" * p, f"agent/{c}/{t} " + "b" * u) for c in range(k)
            )
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(*sys.argv[1:])
