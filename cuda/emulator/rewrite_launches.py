"""One cuda/*.cu file as the C++ that the emulator (cuda/emulator/emulator.h) compiles: each launch
`kernel<<<grid, block, smem, stream>>>(args);` becomes `::emu::Launch(grid, block, smem,
stream).run(kernel, args);`, `extern __shared__ T name[];` a pointer to the launch's dynamic
shared memory, and each `__shared__ T a[..], b;` is followed by `::emu::fresh_shared(&a, sizeof a);`
for each name (so every block starts with them poisoned); everything else is kept, line for line
(#line points errors at the .cu). The .cuh headers are not rewritten: their shared variables (the
block reductions' partial sums) start a block holding the last block's values.

    usage: python rewrite_launches.py SOURCE.cu OUT.cpp
"""

from __future__ import annotations

import re
import sys

LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(\s*(\)?)", re.S)
DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")
# A static shared declaration: its type (an optional __align__, a name with template arguments),
# then its declarators up to the semicolon.
STATIC_SHARED = re.compile(r"(?<!extern )__shared__\s+(?:__align__\(\d+\)\s+)?[\w:]+(?:<[^;<>]*>)?\s+([^;]+);")


def rewrite(text: str) -> str:
    def launch(m: re.Match) -> str:
        kernel, config, no_args = m.group(1), m.group(2), m.group(3)
        return f"::emu::Launch({config}).run({kernel}" + (")" if no_args else ", ")

    def fresh(m: re.Match) -> str:
        names = [re.match(r"\s*(\w+)", d).group(1) for d in m.group(1).split(",")]
        return m.group(0) + "".join(f" ::emu::fresh_shared(&{n}, sizeof {n});" for n in names)

    text = LAUNCH.sub(launch, text)
    text = STATIC_SHARED.sub(fresh, text)
    return DYNAMIC_SHARED.sub(r"\1* \2 = static_cast<\1*>(::emu::dynamic_shared());", text)


def main(argv: list[str]) -> int:
    src, out = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    with open(out, "w", encoding="utf-8") as f:
        f.write(f'#line 1 "{src}"\n' + rewrite(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
