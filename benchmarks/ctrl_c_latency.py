"""How fast Ctrl-C stops a bundle training run, as a multiple of one training iteration, measured in one run.

A small default-network training on the built-in ``shapes`` data is started; once it has logged its time per
iteration it gets SIGINT. Printed: the seconds from the signal to the process's exit, the seconds per training
iteration the run itself logged, and their ratio (the handler stops after the current iteration, so the ratio is
about 1 plus the interpreter's shutdown), with the CPU model and whether it computes bf16 natively.

    python benchmarks/ctrl_c_latency.py [--image-size 64]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from monai_probunet.engines.precision import cpu_model_name, native_bf16_text

REPO = Path(__file__).resolve().parents[1]



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=64, help="shapes image size (default 64)")
    args = p.parse_args()
    cpu, bf16 = cpu_model_name(), native_bf16_text()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "models"
        cmd = [
            sys.executable, "-m", "monai.bundle", "run", "training",
            "--config_file", str(REPO / "bundle" / "configs" / "train.yaml"),
            "--dataset_name", "shapes", "--dataset_dir", str(Path(tmp) / "data"),
            "--dataset_kwargs", f"{{'num_patients': 40, 'image_size': {args.image_size}}}",
            "--max_epochs", "50", "--ckpt_dir", str(ckpt),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            head = []
            for line in proc.stdout:  # type: ignore[union-attr]
                head.append(line)
                if "per training iteration" in line:
                    break
            else:
                print("".join(head)[-3000:])
                return 1
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            log = "".join(head) + proc.communicate(timeout=300)[0]
            seconds = time.monotonic() - t0
        finally:
            proc.kill()
            proc.wait()
    per_it = [float(v) for v in re.findall(r"about ([0-9.]+) s per training iteration", log)]
    print(f"CPU: {cpu}; native bf16: {bf16}; exit status {proc.returncode} (130 = Ctrl-C)")
    print(f"Ctrl-C to exit: {seconds:.2f} s")
    print(f"one training iteration (the run's own log): {per_it[-1]:.2f} s; ratio {seconds / per_it[-1]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
