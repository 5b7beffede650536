#!/usr/bin/env python3
"""Writes a realistic nginx `combined` access log of about SIZE bytes, deterministically.

usage: gen_corpus.py SIZE_MB OUT [--truth TRUTH.json] [--seed N]

Traffic: ~60,000 clients (IPv4 and IPv6), browsers and API clients, user agents with
escaped quotes (nginx writes them as \\x22), paths with query strings, mostly 2xx/3xx with
scattered 404s and 5xx; planted: a credential-stuffing client (401 on POST /login), a
scanner (404 probes) and a prober spread thinly (below any threshold). The ground truth
(requests, 4xx and 5xx per planted client, total lines) goes to --truth. --seed (6 by
default, the benchmarks' corpus) draws other traffic of the same kind: the profile-guided
build trains on another seed, so that it is not measured on the lines it learned from.
"""
import json
import random
import sys

MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
    "curl/8.4.0",
    'Mozilla/5.0 (compatible; \\x22Quoted\\x22 Bot/1.0; +https://example.com/bot)',
]
PATHS = ["/", "/products", "/products/{n}", "/cart", "/static/app.{n}.js", "/static/app.css",
         "/api/items?page={n}&sort=price", "/api/cart", "/about", "/favicon.ico", "/api/checkout",
         "/search?q=shoes+size+{n}", "/images/{n}.webp"]


def stamp(t):
    # 2024-01-15 starts at 1705276800; the corpus covers a few hours.
    day, rem = divmod(t - 1705276800, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{15 + day:02d}/Jan/2024:{h:02d}:{m:02d}:{s:02d} +0000"


def main():
    args = sys.argv[1:]
    seed = 6
    if "--seed" in args:
        i = args.index("--seed")
        seed = int(args[i + 1])
        del args[i:i + 2]
    size = int(float(args[0]) * 1_000_000)
    out_path = args[1]
    truth_path = args[3] if len(args) > 3 and args[2] == "--truth" else None
    r = random.Random(seed)
    clients = [f"{r.randrange(1, 224)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}" for _ in range(55000)]
    clients = [c for c in clients if not c.startswith(("10.", "127.", "192.168.", "100.64."))]
    clients += [f"2001:db8:{r.randrange(65536):x}:{r.randrange(65536):x}::{r.randrange(65536):x}" for _ in range(5000)]
    planted = {"198.51.100.23": [0, 0, 0], "192.0.2.66": [0, 0, 0], "203.0.113.99": [0, 0, 0]}
    written, lines, t = 0, 0, 1705309200
    with open(out_path, "w") as f:
        buf = []
        while written < size:
            t += r.random() < 0.01
            roll = r.random()
            if roll < 0.004:
                ip, line_status, req = "198.51.100.23", 401, "POST /login HTTP/1.1"
            elif roll < 0.006:
                ip, line_status = "192.0.2.66", 404
                req = f"GET /{r.choice(['.env', '.git/config', 'wp-login.php', 'phpmyadmin/', 'backup.sql'])}?{r.randrange(10**6)} HTTP/1.1"
            elif roll < 0.00605:
                ip, line_status, req = "203.0.113.99", 404, f"GET /old/{r.randrange(999)} HTTP/1.1"
            else:
                ip = clients[int(r.paretovariate(1.2)) % len(clients)] if r.random() < 0.5 else r.choice(clients)
                req = f"{r.choice(['GET'] * 9 + ['POST'])} {r.choice(PATHS).format(n=r.randrange(1000))} HTTP/1.1"
                line_status = r.choices([200, 304, 301, 404, 500, 502], [85, 6, 3, 4, 1, 1])[0]
            if ip in planted:
                p = planted[ip]
                p[0] += 1
                p[1] += 400 <= line_status < 500
                p[2] += line_status >= 500
            line = f'{ip} - - [{stamp(t)}] "{req}" {line_status} {r.randrange(100, 60000)} "-" "{r.choice(UAS)}"\n'
            buf.append(line)
            written += len(line)
            lines += 1
            if len(buf) >= 10000:
                f.write("".join(buf))
                buf = []
        f.write("".join(buf))
    if truth_path:
        with open(truth_path, "w") as f:
            json.dump({"lines": lines, "bytes": written,
                       "planted": {ip: {"requests": p[0], "status_4xx": p[1], "status_5xx": p[2]} for ip, p in planted.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
