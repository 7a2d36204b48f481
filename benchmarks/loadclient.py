"""Socket clients for the benchmark scenarios wrk cannot drive.

Run as a subprocess by benchmarks/run.py; every sub-command prints one JSON
line on stdout.  Only loopback addresses are accepted.

    python loadclient.py probe    --port P [--path /ping]
    python loadclient.py download --port P [--path /stream] [--timeout 120]
    python loadclient.py upload   --port P --size BYTES [--path /upload]
    python loadclient.py idle     --port P --count 10000

``idle`` opens COUNT kept-alive connections (raising RLIMIT_NOFILE first), sends
one request on each and reads the response, then prints
``{"event": "ready", ...}`` and keeps them open.  Each line written to its stdin
afterwards is a command: ``check`` prints how many connections the server has not
closed, ``close`` (or EOF) closes them all and exits.
"""

import argparse
import asyncio
import json
import resource
import socket
import sys
import time

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
RECV_BUF = 4 << 20


def _check_host(host):
    if host not in LOOPBACK and not host.startswith("127."):
        raise SystemExit(f"refusing non-loopback host {host!r}")


def _read_head(sock, deadline):
    """Read up to the end of the response head; return (status, headers, leftover)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if time.monotonic() > deadline:
            raise TimeoutError("timed out reading response head")
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"connection closed before response head ({len(buf)} bytes)")
        buf += data
        if len(buf) > 1 << 20:
            raise ValueError("response head too large")
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def _read_body(sock, headers, rest, deadline):
    """Read a Content-Length (or until-close) body, discarding it; return (n, first bytes)."""
    clen = headers.get("content-length")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        # Not used by the apps (they set Content-Length); read until close.
        clen = None
    total = len(rest)
    sample = bytes(rest[:64])
    buf = bytearray(RECV_BUF)
    view = memoryview(buf)
    want = int(clen) if clen is not None else None
    while want is None or total < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {total} body bytes")
        n = sock.recv_into(view)
        if n == 0:
            if want is None:
                break
            raise ConnectionError(f"connection closed after {total} of {want} body bytes")
        if len(sample) < 64:
            sample += bytes(view[: 64 - len(sample)])
        total += n
    return total, sample


def cmd_probe(args):
    deadline = time.monotonic() + args.timeout
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
        s.sendall(
            f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n".encode()
        )
        status, headers, rest = _read_head(s, deadline)
        n, sample = _read_body(s, headers, rest, deadline)
    return {"status": status, "bytes": n}


def cmd_download(args):
    deadline = time.monotonic() + args.timeout
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUF)
        t0 = time.perf_counter()
        s.sendall(f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode())
        status, headers, rest = _read_head(s, deadline)
        t_head = time.perf_counter()
        n, _ = _read_body(s, headers, rest, deadline)
        t1 = time.perf_counter()
    secs = t1 - t0
    return {
        "status": status,
        "bytes": n,
        "expected": int(headers.get("content-length", -1)),
        "seconds": secs,
        "ttfb": t_head - t0,
        "bytes_per_s": n / secs if secs > 0 else 0.0,
    }


def cmd_upload(args):
    size = args.size
    chunk = memoryview(b"u" * (1 << 20))
    deadline = time.monotonic() + args.timeout
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RECV_BUF)
        t0 = time.perf_counter()
        s.sendall(
            (
                f"POST {args.path} HTTP/1.1\r\nHost: {args.host}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
        )
        sent = 0
        while sent < size:
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after sending {sent} bytes")
            piece = chunk[: min(len(chunk), size - sent)]
            s.sendall(piece)
            sent += len(piece)
        t_sent = time.perf_counter()
        status, headers, rest = _read_head(s, deadline)
        clen = int(headers.get("content-length", "0") or 0)
        body = rest
        while len(body) < clen:
            data = s.recv(65536)
            if not data:
                break
            body += data
        t1 = time.perf_counter()
    try:
        echoed = int(body[:clen].decode() or -1)
    except ValueError:
        echoed = -1
    secs = t1 - t0
    return {
        "status": status,
        "bytes": sent,
        "server_counted": echoed,
        "seconds": secs,
        "send_seconds": t_sent - t0,
        "bytes_per_s": sent / secs if secs > 0 else 0.0,
    }


# ---------------------------------------------------------------- idle connections


def _raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _open_one(host, port, path, sem, conns, errors, stats, attempts=5):
    """One idle connection: connect, one request, read the response, keep it.

    A 503 (a server shedding load while the burst of opens queues up) is retried on a
    new connection after a short pause, up to `attempts` times.
    """
    async with sem:
        for attempt in range(attempts):
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                clen = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        clen = int(line.split(b":", 1)[1])
                if clen:
                    await asyncio.wait_for(reader.readexactly(clen), 30)
                status = head.split(b"\r\n", 1)[0].decode("latin-1")
                if status.startswith("HTTP/1.1 503") and attempt + 1 < attempts:
                    stats["retried_503"] = stats.get("retried_503", 0) + 1
                    writer.close()
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                if not status.startswith("HTTP/1.1 200"):
                    raise ValueError(status)
                conns.append((reader, writer))
                return
            except Exception as exc:  # noqa: BLE001 - counted and reported
                key = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
                if writer is not None:
                    writer.close()
                return


async def _idle(args):
    limit = _raise_nofile(args.count + 1024)
    if limit < args.count + 64:
        print(json.dumps({"event": "error", "error": f"RLIMIT_NOFILE only {limit}"}), flush=True)
        return
    conns, errors, stats = [], {}, {}
    sem = asyncio.Semaphore(args.parallel)
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_open_one(args.host, args.port, args.path, sem, conns, errors, stats)
          for _ in range(args.count))
    )
    print(
        json.dumps(
            {
                "event": "ready",
                "requested": args.count,
                "open": len(conns),
                "errors": errors,
                "retried_503": stats.get("retried_503", 0),
                "seconds": time.perf_counter() - t0,
            }
        ),
        flush=True,
    )
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip()
        if cmd == "check":
            await asyncio.sleep(0)  # let pending EOFs be processed
            alive = sum(1 for r, w in conns if not r.at_eof() and not w.is_closing())
            print(json.dumps({"event": "check", "alive": alive, "open": len(conns)}), flush=True)
        elif cmd == "close" or not line:
            break
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.1)
    print(json.dumps({"event": "closed", "count": len(conns)}), flush=True)


def cmd_idle(args):
    asyncio.run(_idle(args))
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("command", choices=["probe", "download", "upload", "idle"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default=None)
    p.add_argument("--size", type=int, default=1 << 30)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=64,
                   help="idle: connections being opened at once (keep it under the server's "
                        "request-queue bound, or it sheds the burst with 503s)")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    _check_host(args.host)
    if args.path is None:
        args.path = {"probe": "/ping", "download": "/stream", "upload": "/upload", "idle": "/"}[
            args.command
        ]
    try:
        result = {"probe": cmd_probe, "download": cmd_download, "upload": cmd_upload,
                  "idle": cmd_idle}[args.command](args)
    except Exception as exc:  # noqa: BLE001 - reported as JSON to the harness
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
