#!/usr/bin/env python3
"""Small, dependency-free DNS helpers for bench/run (standard library only).

  freeport                         print a port free on 127.0.0.1 for both UDP and TCP
  wait --port P --name N          print "ready", read "PID T0" from stdin, then poll the server with
                                   UDP SOA queries for N every ~2 ms until it answers NOERROR;
                                   print the seconds since T0 (epoch seconds, float)
  rss PID                          print "VmHWM_KiB VmRSS_KiB" from /proc/PID/status
  tcp --port P --name N --type T --count C [--reuse]
                                   time C sequential queries over TCP (new connection each,
                                   like `dig +tcp`, or all on one connection with --reuse);
                                   print answer count, size and latencies
  cpubusy [SECONDS]                print the % of all CPUs busy over SECONDS (default 1), from /proc/stat
  snap PID                         print "total_ticks busy_ticks pid_ticks" (all CPUs from /proc/stat,
                                   utime+stime of PID), for CPU accounting around a run
  latency FILE                     read `dnsperf -v` output, print "count mean_s p50_s p99_s p999_s"
"""
import os
import random
import socket
import struct
import subprocess
import sys
import time

TYPES = {"A": 1, "NS": 2, "SOA": 6, "AAAA": 28, "SRV": 33}


def query(name, qtype, qid=None):
    qid = random.randrange(65536) if qid is None else qid
    q = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0)  # RD=0: we talk to authoritative servers
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", TYPES[qtype.upper()], 1), qid


def header(resp):
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", resp[:12])
    return qid, flags, an, ns, ar


def arg(args, flag, default=None):
    if flag in args:
        return args[args.index(flag) + 1]
    if default is None:
        sys.exit("dnsq.py: missing %s" % flag)
    return default


def freeport():
    for _ in range(100):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        print(port)
        return
    sys.exit("dnsq.py: no free port found")


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait(args):
    port = int(arg(args, "--port"))
    name = arg(args, "--name")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.002)
    # Handshake with bench/run, so that Python's own start-up is not counted: say "ready",
    # then read "PID T0": the server's pid and the wall-clock time it was started at.
    print("ready", flush=True)
    pid, t0 = sys.stdin.readline().split()
    pid, t0 = int(pid), float(t0)
    timeout = float(arg(args, "--timeout", "300"))
    while True:
        if not alive(pid):
            sys.exit("dnsq.py: server process %d exited before answering" % pid)
        if time.time() - t0 > timeout:
            sys.exit("dnsq.py: server process %d did not answer within %.0f s" % (pid, timeout))
        msg, qid = query(name, "SOA")
        try:
            s.sendto(msg, ("127.0.0.1", port))
            while True:
                resp = s.recv(65535)
                rid, flags, an, _, _ = header(resp)
                if rid == qid:
                    break
            if flags & 0xF == 0 and an >= 1:  # NOERROR with the SOA: zone loaded
                break
            time.sleep(0.002)  # answered, but e.g. SERVFAIL while the zone loads
        except (socket.timeout, ConnectionRefusedError):
            pass
    print("%.3f" % (time.time() - t0))


def rss(args):
    vals = {}
    with open("/proc/%s/status" % args[0]) as f:
        for line in f:
            k, _, v = line.partition(":")
            vals[k] = v.split()[0] if v.split() else "0"
    print("%s %s" % (vals.get("VmHWM", "0"), vals.get("VmRSS", "0")))


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def tcp(args):
    port = int(arg(args, "--port"))
    name, qtype = arg(args, "--name"), arg(args, "--type", "SRV")
    count = int(arg(args, "--count", "200"))
    reuse = "--reuse" in args
    times, size, an, ar, tc, s = [], 0, 0, 0, 0, None
    for i in range(count + 5):  # 5 warm-up queries
        msg, qid = query(name, qtype)
        t0 = time.perf_counter()
        if s is None:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(struct.pack(">H", len(msg)) + msg)
        (n,) = struct.unpack(">H", recv_exact(s, 2))
        resp = recv_exact(s, n)
        t1 = time.perf_counter()
        if not reuse:
            s.close()
            s = None
        rid, flags, an, _, ar = header(resp)
        if rid != qid or flags & 0xF:
            sys.exit("dnsq.py: bad TCP answer (id %d/%d, rcode %d)" % (rid, qid, flags & 0xF))
        tc, size = (flags >> 9) & 1, n
        if i >= 5:
            times.append(t1 - t0)
    times.sort()
    pct = lambda p: times[min(len(times) - 1, int(p * len(times)))]
    print("answers=%d additional=%d bytes=%d tc=%d queries=%d min_ms=%.3f median_ms=%.3f p99_ms=%.3f mean_ms=%.3f"
          % (an, ar, size, tc, count, times[0] * 1e3, pct(0.5) * 1e3, pct(0.99) * 1e3, sum(times) / len(times) * 1e3))


def latency(args):
    # `> NOERROR name TYPE 0.000123` per answered query; timeouts are "> T ..." without a latency.
    lat = []
    with open(args[0], errors="replace") as f:
        for line in f:
            if line.startswith("> ") and not line.startswith("> T ") and not line.startswith("> I "):
                try:
                    lat.append(float(line.rsplit(None, 1)[1]))
                except (ValueError, IndexError):
                    pass
    if not lat:
        print("0 nan nan nan nan")
        return
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    print("%d %.6f %.6f %.6f %.6f" % (len(lat), sum(lat) / len(lat), pct(0.5), pct(0.99), pct(0.999)))


def cpubusy(args):
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v), idle
    t0, i0 = sample()
    time.sleep(float(args[0]) if args else 1.0)
    t1, i1 = sample()
    print("%.0f" % (100.0 * (1 - (i1 - i0) / max(1, t1 - t0))))


def snap(args):
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])  # guest time is already included in user
    busy = total - v[3] - v[4]
    with open("/proc/%s/stat" % args[0]) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    print("%d %d %d" % (total, busy, int(fields[11]) + int(fields[12])))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    {"freeport": lambda a: freeport(), "wait": wait, "rss": rss, "tcp": tcp, "latency": latency, "cpubusy": cpubusy, "snap": snap}.get(
        cmd, lambda a: sys.exit(__doc__))(args)


if __name__ == "__main__":
    main()
