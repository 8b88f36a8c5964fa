"""How long parsing a large FAILOVER_BCAST_IPS takes (issue 11: 40k targets took 120 s).

Usage: .venv/bin/python bench/config_parse.py [N ...]; prints N and seconds per parse.
"""

from __future__ import annotations

import ipaddress
import sys
import time

from ipfailover.core import config


def text(n: int) -> str:
    base = int(ipaddress.IPv6Address("2001:db8::"))
    targets = " ".join(str(ipaddress.IPv6Address(base + i + 1)) for i in range(n))
    return f'FAILOVER_BCAST_IPS="{targets}"\n'


def main(argv: list[str]) -> int:
    for n in [int(a) for a in argv] or [1000, 5000, 10000, 40000]:
        t = text(n)
        start = time.perf_counter()
        cfg = config.parse_config(t)
        took = time.perf_counter() - start
        assert len(cfg.bcast_ips) == n
        print(f"{n:6d} targets ({len(t)} bytes): {took:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
