"""Ray's wheel without its Java worker jars (ray/jars, a third of the 79 MB file), so that it travels to a GPU
machine with no package index in one device call. Python workers never load the jars; RECORD drops their lines
so pip installs the rest as it is.

    python bench/tools/trim_ray_wheel.py ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl .carry/ray
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

DROP = "ray/jars/"


def trim(src: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename.startswith(DROP):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(DROP.encode()))
            zout.writestr(info, data)
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: trim_ray_wheel.py RAY_WHEEL OUT_DIR")
    dst = trim(Path(sys.argv[1]), Path(sys.argv[2]))
    print(dst, dst.stat().st_size)
