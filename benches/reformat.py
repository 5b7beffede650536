#!/usr/bin/env python3
"""Rewrites a `combined` corpus from gen_corpus.py in another format nginx or Kubernetes
writes, line for line, so that the same traffic (and the same ground truth) can be scanned
in each format.

usage: reformat.py FORMAT IN OUT

FORMAT:
  json     an access log_format with `escape=json` (nginx writes a `"` in a value as `\\"`)
  ingress  ingress-nginx's default format: combined plus request length, request time,
           upstream name, alternatives, address, response length, time and status, and id
  kubectl  what `kubectl logs --prefix --timestamps` prints: the pod and container, an
           RFC 3339 time with nanoseconds, then the line
"""
import json
import re
import sys

LINE = re.compile(r'(\S+) - (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\d+) "([^"]*)" "((?:[^"\\]|\\.)*)"$')
MONTHS = {m: i + 1 for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())}


def iso(stamp):
    """15/Jan/2024:09:00:00 +0000 -> 2024-01-15T09:00:00+00:00"""
    day, mon, rest = stamp.split("/", 2)
    year, clock = rest[:4], rest[5:13]
    zone = rest[14:]
    return f"{year}-{MONTHS[mon]:02d}-{day}T{clock}{zone[:3]}:{zone[3:]}"


def unescape(value):
    """nginx's default escaping writes a `"` as \\x22; the JSON form carries the quote."""
    return value.replace("\\x22", '"')


def as_json(m, n):
    ip, user, stamp, request, status, size, referer, agent = m.groups()
    return json.dumps({
        "time_iso8601": iso(stamp),
        "remote_addr": ip,
        "remote_user": "" if user == "-" else user,
        "request": unescape(request),
        "status": int(status),
        "body_bytes_sent": int(size),
        "request_time": 0.003,
        "http_referer": "" if referer == "-" else unescape(referer),
        "http_user_agent": unescape(agent),
    }, ensure_ascii=False)


def as_ingress(m, n):
    status = m.group(5)
    return (f"{m.group(0)} {380 + n % 200} 0.00{n % 10} [default-web-80] [] 10.244.0.{12 + n % 4}:8080 "
            f"{m.group(6)} 0.00{n % 10} {status} {n:032x}")


def as_kubectl(m, n):
    t = iso(m.group(3))[:19]
    return f"[pod/web-7d9f{n % 3}/nginx] {t}.{n % 1_000_000_000:09d}Z {m.group(0)}"


def main():
    fmt, src, dst = sys.argv[1:4]
    write = {"json": as_json, "ingress": as_ingress, "kubectl": as_kubectl}[fmt]
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        buf = []
        for n, line in enumerate(f):
            m = LINE.match(line.rstrip("\n"))
            if m is None:
                sys.exit(f"{src}:{n + 1}: not a combined line the generator writes: {line[:120]!r}")
            buf.append(write(m, n))
            if len(buf) >= 10000:
                out.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            out.write("\n".join(buf) + "\n")


if __name__ == "__main__":
    main()
