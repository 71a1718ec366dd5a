#!/usr/bin/env python3
"""Generate the benchmark zone in both formats, plus a dnsperf query file.

Writes, into OUTDIR:
  toml/<zone>.toml   signpost's TOML zone (one zone per file)
  <zone>.zone        the equivalent RFC 1035 master file, for Knot
  queries.txt        dnsperf input ("name TYPE" per line), shuffled with a fixed seed

Records, for service i (1..N) with instances j (1..K):
  _svc-i._tcp.<zone>  SRV 0 1 8080 inst-i-j.<zone>.   (one per instance)
  svc-i.<zone>        SRV (same set) and A (all instance addresses)
  inst-i-j.<zone>     A 10.x.y.z                      (unique per instance)
plus the apex SOA and NS ns1.<zone>, and ns1.<zone> A 127.0.0.1.

Query mix (default): for each service one SRV query for _svc-i._tcp, one A
query for svc-i and one A query for a random instance inst-i-j, shuffled;
then nonexistent names nx-i.<zone> A are added so they make up --nx-percent
(default 5%) of all lines.
"""
import argparse
import os
import random
import sys


def addr(n):
    # n >= 1; 10.0.0.1, 10.0.0.2, ... (never .0 in the last octet, for readability)
    n = n + (n - 1) // 255  # skip x.x.x.0
    return "10.%d.%d.%d" % ((n >> 16) & 255, (n >> 8) & 255, n & 255)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--zone", default="bench.example")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=3, help="instances per service")
    ap.add_argument("--port", type=int, default=8080, help="SRV port of every service")
    ap.add_argument("--ttl", type=int, default=30)
    ap.add_argument("--nx-percent", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    if a.services < 1 or a.instances < 1:
        sys.exit("gen.py: --services and --instances must be >= 1")
    if a.services * a.instances >= 255 * 65536:
        sys.exit("gen.py: too many instances for the 10.0.0.0/8 address plan")

    zone = a.zone.rstrip(".")
    os.makedirs(os.path.join(a.outdir, "toml"), exist_ok=True)
    rnd = random.Random(a.seed)

    # --- signpost TOML ---------------------------------------------------------------
    with open(os.path.join(a.outdir, "toml", zone + ".toml"), "w") as t:
        t.write('zone = "%s"\nttl = %d\nnameservers = ["ns1"]\n\n[hosts]\nns1 = "127.0.0.1"\n' % (zone, a.ttl))
        n = 0
        for i in range(1, a.services + 1):
            t.write('\n[[services]]\nname = "svc-%d"\nprotocol = "tcp"\nport = %d\n' % (i, a.port))
            for j in range(1, a.instances + 1):
                n += 1
                t.write('[[services.instances]]\nname = "inst-%d-%d"\naddress = "%s"\n' % (i, j, addr(n)))

    # --- RFC 1035 zone file for Knot ---------------------------------------------------
    with open(os.path.join(a.outdir, zone + ".zone"), "w") as z:
        z.write("$ORIGIN %s.\n$TTL %d\n" % (zone, a.ttl))
        z.write("@ SOA ns1.%s. hostmaster.%s. 1 3600 600 86400 %d\n" % (zone, zone, a.ttl))
        z.write("@ NS ns1.%s.\n" % zone)
        z.write("ns1 A 127.0.0.1\n")
        n = 0
        for i in range(1, a.services + 1):
            first = n + 1
            n += a.instances
            srv = ["SRV 0 1 %d inst-%d-%d.%s." % (a.port, i, j, zone) for j in range(1, a.instances + 1)]
            for rr in srv:
                z.write("_svc-%d._tcp %s\n" % (i, rr))
            for rr in srv:
                z.write("svc-%d %s\n" % (i, rr))
            for k in range(first, n + 1):
                z.write("svc-%d A %s\n" % (i, addr(k)))
            for j in range(1, a.instances + 1):
                z.write("inst-%d-%d A %s\n" % (i, j, addr(first + j - 1)))

    # --- dnsperf query file -----------------------------------------------------------------
    lines = []
    for i in range(1, a.services + 1):
        lines.append("_svc-%d._tcp.%s SRV" % (i, zone))
        lines.append("svc-%d.%s A" % (i, zone))
        lines.append("inst-%d-%d.%s A" % (i, rnd.randint(1, a.instances), zone))
    pos = len(lines)
    nx = int(round(pos * a.nx_percent / (100.0 - a.nx_percent))) if a.nx_percent > 0 else 0
    for k in range(nx):
        lines.append("nx-%d.%s A" % (k + 1, zone))
    rnd.shuffle(lines)
    with open(os.path.join(a.outdir, "queries.txt"), "w") as q:
        q.write("\n".join(lines) + "\n")
    print("gen.py: zone %s: %d services x %d instances; %d queries (%d NXDOMAIN = %.1f%%)"
          % (zone, a.services, a.instances, len(lines), nx, 100.0 * nx / len(lines)), file=sys.stderr)


if __name__ == "__main__":
    main()
