"""First-click and next-click latency of a real `monailabel start_server`, with and without the start-up warm-up.

    python apps/monailabel/bench_latency.py [--3d] [--hypotheses] [--next 5] [--samples 16] [--open 3]
        [--venv .venv-label]

For each of ``--conf warmup true`` and ``false`` (side by side, one run): start the server on a free loopback port
with the shipped model (bundle/models/model.pt) and a synthetic CT volume, time the start until ``/info/`` answers,
then the first click and ``--next`` further clicks (``POST /infer/probunet``, Slicer's parameters: one
``foreground`` point, ``result_extension`` ``.nrrd``), wall clock at the client, and the CPU seconds the server's
processes spent on each click (``/proc``: user + system of the server's process group). Prints a JSON summary with the
CPU model, its native-bf16 flags, the core count and the load average before and after each server's clicks (the
machine may be shared: wall time above CPU time / threads means the click waited for a core).

Default: a 96 x 80 x 10 volume (0.8 x 0.8 x 2.5 mm), ``mode`` ``2d`` (the clicked slice). ``--3d``: a 512 x 512 x 40
int16 CT volume (0.7 x 0.7 x 2.5 mm) with a soft-tissue ellipsoid of semi-axes 10 x 8 x 12.5 mm (10 slices) in lung,
``mode`` ``3d`` (the lesion followed through its slices; the presence-rule 3-D label, or with ``--hypotheses`` the 16
3-D hypotheses); the reply's ``extent_slices`` is printed with the times. ``--open S``: before the first click the
image is opened as 3D Slicer opens it (``GET /datastore/image``, timed as ``open_s``) and the click comes ``S``
seconds later, as a radiologist's does (the server reads the image in that time).
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

from monai_probunet.engines.precision import cpu_model_name, native_bf16_text

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reply(response) -> dict:
    """The reply JSON of a multipart answer (the ``params`` part)."""
    import email.parser
    import email.policy

    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "params":
            return json.loads(part.get_payload(decode=True))
    return {}


def _server_latencies(result: dict) -> dict:
    """The ``latencies`` MONAI Label puts in the reply JSON (infer / write / total seconds) and the task's timings."""
    lat = result.get("latencies", {})
    return {**{k: lat.get(k) for k in ("infer", "write", "total")}, **result.get("timings_s", {})}


def _group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (``/proc/<pid>/stat``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # fields[0] is the state: pgrp is the 5th field of stat, index 2 here
            total += int(fields[11]) + int(fields[12])
    return total / tick


def write_volume(studies: Path, three_d: bool) -> tuple[str, list[int]]:
    """The synthetic CT of the run; returns (image id, click)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    if not three_d:
        vol = (-850.0 + 20 * rng.standard_normal((96, 80, 10))).astype(np.float32)
        ii, jj = np.meshgrid(np.arange(96), np.arange(80), indexing="ij")
        for k in range(2, 8):
            vol[..., k][(ii - 40) ** 2 + (jj - 36) ** 2 <= 56] = 40.0
        affine = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(vol, affine), str(studies / "chest.nii.gz"))
        return "chest", [40, 36, 4]
    shape, spacing = (512, 512, 40), (0.7, 0.7, 2.5)
    vol = np.rint(-850.0 + 30 * rng.standard_normal(shape)).astype(np.int16)
    centre, radii = (250.0, 270.0, 19.5), (10.0, 8.0, 12.5)
    box = tuple(slice(int(c - r / s) - 2, int(c + r / s) + 3) for c, r, s in zip(centre, radii, spacing))
    grids = np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij")
    inside = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grids, centre, spacing, radii)) <= 1.0
    sub = vol[box]
    sub[inside] = np.rint(30 + 10 * rng.standard_normal(int(inside.sum()))).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [180.0, 180.0, -50.0]
    nib.save(nib.Nifti1Image(vol, affine), str(studies / "chest.nii.gz"))
    return "chest", [250, 270, 19]


def run(warmup: bool, venv: Path, studies: Path, work: Path, n_next: int, samples: int, image: str,
        click: list[int], extra: dict, open_wait: float | None = None) -> dict:
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
        open_s = None
        if open_wait is not None:  # as Slicer opens the image, then the radiologist looks before clicking
            t = time.perf_counter()
            r = requests.get(f"{url}/datastore/image", params={"image": image}, timeout=600)
            open_s = round(time.perf_counter() - t, 3)
            if r.status_code != 200:
                raise RuntimeError(f"GET /datastore/image answered {r.status_code}: {r.text[:300]}")
            time.sleep(open_wait)
        load_before = os.getloadavg()
        times, cpu, server, extents = [], [], [], []
        for i in range(1 + n_next):
            params = {"label": "lesion", "foreground": [[click[0], click[1] + (i % 3) - 1, click[2]]],
                      "background": [], "slice": click[2], "num_samples": samples, "seed": i,
                      "result_extension": ".nrrd", "result_dtype": "uint8", **extra}
            c = _group_cpu_s(proc.pid)
            t = time.perf_counter()
            r = requests.post(f"{url}/infer/probunet", params={"image": image},
                              data={"params": json.dumps(params)}, timeout=600)
            times.append(time.perf_counter() - t)
            cpu.append(_group_cpu_s(proc.pid) - c)
            if r.status_code != 200:
                raise RuntimeError(f"infer answered {r.status_code}: {r.text[:300]}")
            result = _reply(r)
            server.append(_server_latencies(result))
            extents.append(result.get("extent_slices"))
        return {"warmup": warmup, "start_to_info_s": round(start_s, 2), "open_s": open_s, "open_wait_s": open_wait,
                "first_click_s": round(times[0], 3),
                "first_click_cpu_s": round(cpu[0], 2),
                "next_click_median_s": round(statistics.median(times[1:]), 3) if n_next else None,
                "next_click_median_cpu_s": round(statistics.median(cpu[1:]), 2) if n_next else None,
                "next_clicks_s": [round(t, 3) for t in times[1:]], "next_clicks_cpu_s": [round(c, 2) for c in cpu[1:]],
                "extent_slices": extents, "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in os.getloadavg()],
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
    ap.add_argument("--3d", dest="three_d", action="store_true",
                    help="a 512 x 512 x 40 CT volume with a 10-slice lesion, mode 3d")
    ap.add_argument("--hypotheses", action="store_true", help="return all hypotheses (layered .seg.nrrd)")
    ap.add_argument("--next", type=int, default=5, help="clicks after the first")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--open", dest="open_wait", type=float, default=None, metavar="S",
                    help="open the image first (GET /datastore/image, as Slicer does) and click S seconds later")
    ap.add_argument("--venv", type=Path, default=REPO / ".venv-label")
    args = ap.parse_args(argv)
    if not (args.venv / "bin" / "monailabel").exists():
        print(f"bench_latency: {args.venv}/bin/monailabel does not exist (bash apps/monailabel/setup_venv.sh)",
              file=sys.stderr)
        return 2
    extra = {"mode": "3d" if args.three_d else "2d", "hypotheses": args.hypotheses}
    with tempfile.TemporaryDirectory(prefix="probunet_latency_") as tmp:
        work = Path(tmp)
        studies = work / "studies"
        studies.mkdir()
        image, click = write_volume(studies, args.three_d)
        rows = [run(w, args.venv, studies, work, args.next, args.samples, image, click, extra, args.open_wait)
                for w in (True, False)]  # fmt: skip
    print(json.dumps({"cpu": cpu_model_name(), "native_bf16": native_bf16_text(), "cores": os.cpu_count(),
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "num_samples": args.samples,
                      "mode": extra["mode"], "hypotheses": args.hypotheses, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
