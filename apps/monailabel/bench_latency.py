"""First-click and next-click latency of a real `monailabel start_server`, with and without the start-up warm-up.

    python apps/monailabel/bench_latency.py [--next 5] [--samples 16] [--venv .venv-label]

For each of ``--conf warmup true`` and ``false`` (side by side, one run): start the server on a free loopback port
with the shipped model (bundle/models/model.pt) and a synthetic 3-D CT volume, time the start until ``/info/``
answers, then the first click and ``--next`` further clicks (``POST /infer/probunet``, Slicer's parameters: one
``foreground`` point, ``result_extension`` ``.nrrd``), wall clock at the client. Prints a JSON summary with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from monai_probunet.engines.precision import cpu_bf16_flags, cpu_model_name

REPO = Path(__file__).resolve().parents[2]



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_latencies(response) -> dict:
    """The ``latencies`` MONAI Label puts in the reply JSON (pre / infer / write / total seconds)."""
    import email.parser
    import email.policy

    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "params":
            result = json.loads(part.get_payload(decode=True))
            lat = result.get("latencies", {})
            return {**{k: lat.get(k) for k in ("infer", "write", "total")}, **result.get("timings_s", {})}
    return {}


def run(warmup: bool, venv: Path, studies: Path, work: Path, n_next: int, samples: int) -> dict:
    import requests

    port = _free_port()
    app = work / f"app_{int(warmup)}"
    if not app.exists():
        import shutil

        shutil.copytree(REPO / "apps" / "monailabel", app,
                        ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__", "*.sh"))
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "VIRTUAL_ENV": str(venv), "MONAI_LABEL_SESSION_PATH": str(work / "sessions")}
    cmd = [str(venv / "bin" / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
           "--host", "127.0.0.1", "--port", str(port), "--conf", "zoo_source", "local",
           "--conf", "warmup", str(warmup).lower(),
           "--conf", "model_path", str(REPO / "bundle" / "models" / "model.pt"),
           "--conf", "network_config", str(REPO / "bundle" / "configs" / "train.yaml")]
    log = open(work / f"server_{int(warmup)}.log", "wb")  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(work),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}; see {log.name}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        start_s = time.perf_counter() - t0
        times, server = [], []
        for i in range(1 + n_next):
            params = {"label": "lesion", "foreground": [[40, 36 + (i % 3), 4]], "background": [], "slice": 4,
                      "num_samples": samples, "seed": i, "result_extension": ".nrrd", "result_dtype": "uint8"}
            t = time.perf_counter()
            r = requests.post(f"{url}/infer/probunet", params={"image": "chest"},
                              data={"params": json.dumps(params)}, timeout=600)
            times.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise RuntimeError(f"infer answered {r.status_code}: {r.text[:300]}")
            server.append(_server_latencies(r))
        return {"warmup": warmup, "start_to_info_s": round(start_s, 2), "first_click_s": round(times[0], 3),
                "next_click_median_s": round(statistics.median(times[1:]), 3) if n_next else None,
                "next_clicks_s": [round(t, 3) for t in times[1:]],
                "server_latencies_first": server[0], "server_latencies_next": server[1:]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--next", type=int, default=5, help="clicks after the first")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--venv", type=Path, default=REPO / ".venv-label")
    args = ap.parse_args(argv)
    if not (args.venv / "bin" / "monailabel").exists():
        print(f"bench_latency: {args.venv}/bin/monailabel does not exist (bash apps/monailabel/setup_venv.sh)",
              file=sys.stderr)
        return 2
    import nibabel as nib

    with tempfile.TemporaryDirectory(prefix="probunet_latency_") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        rng = np.random.default_rng(0)
        vol = (-850.0 + 20 * rng.standard_normal((96, 80, 10))).astype(np.float32)
        ii, jj = np.meshgrid(np.arange(96), np.arange(80), indexing="ij")
        for k in range(2, 8):
            vol[..., k][(ii - 40) ** 2 + (jj - 36) ** 2 <= 56] = 40.0
        affine = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(vol, affine), str(studies / "chest.nii.gz"))
        rows = [run(w, args.venv, studies, work, args.next, args.samples) for w in (True, False)]
    print(json.dumps({"cpu": cpu_model_name(), "native_bf16": cpu_bf16_flags(), "cores": os.cpu_count(), "num_samples": args.samples, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
