#!/usr/bin/env python3
"""Persistent attackers in nginx `combined` format, for the memory bound (`--max-memory`).

  gen_hostile.py heavy K L        K addresses, each L lines: a 404 on a new path every
                                  second (long event series, full distinct-path sets)
  gen_hostile.py long K L P U     K addresses, each L lines of a new P-byte path and a
                                  new U-byte user agent (top lists full of long values)

Lines go to stdout, interleaved by second, from 2023-11-14T22:13:20Z. Deterministic.
"""
import sys
import time

T0 = 1_700_000_000


def line(c, t, path, agent):
    ts = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(T0 + t))
    ip = f"198.18.{c // 250}.{c % 250 + 1}"
    return f'{ip} - - [{ts}] "GET {path} HTTP/1.1" 404 153 "-" "{agent}"\n'


def main(shape, *args):
    out = sys.stdout
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
