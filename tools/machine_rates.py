#!/usr/bin/env python3
"""Builds and runs tools/machine_rates.cpp: this machine's DRAM bandwidth and float32 / bf16 /
int16 / int8 peak rates, the ceilings docs/PERFORMANCE.md compares ossrun against. Prints JSON."""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).with_name("machine_rates.cpp")
PROBE = Path(__file__).resolve().parent.parent / "csrc" / "cpu" / "machine_probe.cpp"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        exe = Path(d) / "machine_rates"
        cmd = ["g++", "-O2", "-mavx2", "-std=c++17", "-pthread", str(SRC), str(PROBE), "-o", str(exe)]
        subprocess.run(cmd, check=True)
        return subprocess.run([str(exe), str(a.threads)]).returncode


if __name__ == "__main__":
    sys.exit(main())
