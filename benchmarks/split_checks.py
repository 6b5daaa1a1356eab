"""The check of a split's outputs against the files it reads (fifteenth session): every
output against every input, as ``safe_write._same`` compared each pair, against one
``safe_write.ReadFiles`` index built once.

    python benchmarks/split_checks.py 1000
"""
import sys
import tempfile
import time
from pathlib import Path

from tiledepth.safe_write import OutputPaths, ReadFiles, _same, check_output_paths


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "o").mkdir()
        ins = []
        for i in range(n):
            p = root / f"in{i}.tif"
            p.write_bytes(b"x")
            ins.append(p)
        targets = [root / "o" / f"in{i}.depth.tif" for i in range(n)]
        t = time.perf_counter()
        for tg in targets:  # the old per-pair comparison
            for _, path in OutputPaths(tg, None, None, None).files():
                for src in ins:
                    _same(path, src)
        old = time.perf_counter() - t
        t = time.perf_counter()
        read = ReadFiles(ins)
        for tg in targets:
            check_output_paths(OutputPaths(tg, None, None, None), read, overwrite=True)
        new = time.perf_counter() - t
    print(f"{n} inputs, {n} outputs: every pair {old:.2f} s, index {new:.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
