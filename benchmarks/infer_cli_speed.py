"""Wall and CPU time of the inference CLI, side by side in one run: ``--help``, one 2-D inference end to end, and
``--batch`` over several images against one CLI call per image.

One inference is ``python -m monai_probunet.infer CT_small.dcm --center 64 70`` (pydicom's 128 x 128 CT slice, the
shipped model and train.yaml, 16 hypotheses, CPU) in a fresh interpreter, so the figure includes Python's start,
the imports, building and loading the model, the inference and writing the NIfTI files. It is timed twice,
interleaved round by round: as the CLI runs (MONAI imported without the optional packages the path never uses,
:data:`monai_probunet.infer.IMPORT_DIET`) and with ``PROBUNET_FULL_IMPORT=1`` (a plain ``import monai``). CPU
time (user + sys of the child) is printed beside the wall time: on a shared machine it is the steadier figure.

    python benchmarks/infer_cli_speed.py                # 3 rounds, 4 images for the batch comparison
    python benchmarks/infer_cli_speed.py --rounds 5 --images 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from monai_probunet.engines.precision import cpu_model_name, native_bf16_text

REPO = Path(__file__).resolve().parents[1]



def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """``(wall s, cpu s)`` of one child process; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO), check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def show(name: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
    wall = statistics.median(w for w, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    print(f"  {name:44s} wall {wall:6.2f} s   cpu {cpu:6.2f} s   (n={len(runs)})")
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--images", type=int, default=4, help="images in the batch comparison (default 4; 0 skips it)")
    args = p.parse_args()
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    print(f"CPU: {cpu_model_name()}, {os.cpu_count()} logical cores, native bf16: {native_bf16_text()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    full_env = {**env, "PROBUNET_FULL_IMPORT": "1"}
    cli = [sys.executable, "-m", "monai_probunet.infer"]
    work = Path(tempfile.mkdtemp(prefix="infer_cli_speed."))
    try:
        helps, diet, full = [], [], []
        for k in range(args.rounds):
            helps.append(timed([*cli, "--help"], env))
            for runs, e in ((diet, env), (full, full_env)) if k % 2 == 0 else ((full, full_env), (diet, env)):
                out = work / f"one_{len(runs)}_{id(runs)}"
                runs.append(timed([*cli, ct, "--center", "64", "70", "--out", str(out)], e))
        print("one CT_small.dcm inference end to end (fresh interpreter, median):")
        show("--help", helps)
        d_wall, d_cpu = show("CLI (MONAI without unused optional packages)", diet)
        f_wall, f_cpu = show("PROBUNET_FULL_IMPORT=1 (plain import monai)", full)
        print(f"  ratio full / CLI: wall {f_wall / d_wall:.2f}x, cpu {f_cpu / d_cpu:.2f}x")
        if args.images > 0:
            data = work / "batch"
            data.mkdir()
            centers = {}
            for i in range(args.images):
                shutil.copy(ct, data / f"ct{i}.dcm")
                centers[f"ct{i}.dcm"] = [60 + i, 70]
            (data / "centers.json").write_text(json.dumps(centers))
            batch = timed([*cli, "--batch", str(data / "centers.json"), "--out", str(work / "batch_out")], env)
            single = [timed([*cli, str(data / f"ct{i}.dcm"), "--center", str(60 + i), "70", "--out",
                             str(work / f"single_{i}")], env) for i in range(args.images)]
            s_wall, s_cpu = sum(w for w, _ in single), sum(c for _, c in single)
            print(f"{args.images} images:")
            print(f"  {'--batch (model loaded once)':44s} wall {batch[0]:6.2f} s   cpu {batch[1]:6.2f} s")
            print(f"  {'one CLI call per image':44s} wall {s_wall:6.2f} s   cpu {s_cpu:6.2f} s")
            print(f"  ratio: wall {s_wall / batch[0]:.2f}x, cpu {s_cpu / batch[1]:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
