#!/usr/bin/env python3
"""Per-kernel device times from a cubecl profiling-logger log (`h200_round.sh` with PROFILE=N).

usage: profile_groups.py prof.txt FIRST_LINE LAST_LINE [GROUP]

Splits the kernel lines between FIRST_LINE and LAST_LINE (0-based; e.g. between the bench's
result lines of two rows) into the groups the logger closes at each sync, prints each group's
total in ms, then every kernel of GROUP (default: the last) in launch order.
"""
import re
import sys

UNITS = {"ms": 1.0, "µs": 1e-3, "ns": 1e-6, "s": 1e3}


def duration_ms(text):
    m = re.match(r"([\d.]+)(ms|µs|ns|s)", text.strip())
    return float(m.group(1)) * UNITS[m.group(2)]


def groups(lines):
    out, cur = [], []
    for line in lines:
        m = re.match(r"^\| ([\d.]+(?:ms|µs|ns|s)) *\| (.*)$", line)
        if m:
            cur.append((duration_ms(m.group(1)), m.group(2)[:70]))
        elif line.startswith("| Total") and cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def main():
    path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pick = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    found = groups(open(path, encoding="utf-8").read().split("\n")[lo:hi])
    print("group totals (ms):", [round(sum(d for d, _ in g), 3) for g in found])
    group = found[pick]
    small = [d for d, _ in group if d < 0.05]
    print(f"group {pick}: {len(group)} kernels, {sum(d for d, _ in group):.3f} ms; "
          f"{len(small)} under 0.05 ms sum to {sum(small):.3f} ms")
    for d, name in group:
        print(f"{d:8.4f} {name}")


if __name__ == "__main__":
    main()
