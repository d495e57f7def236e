"""What an app costs to start and to keep: `prefillshare up CONFIG` from a cold Ray, the time to
RUNNING, and the memory of everything it started, measured once it has settled; optionally a
command runs against it while it is up (an accuracy run, a load run). One JSON row out.

    python -m bench.start_cost config.yaml --out runs/start_cost/lora.json \\
        -- python -m bench.served_accuracy --url {url} --out runs/acc/lora.json

Memory: the RSS of every process of this user created after the launch (Ray's head, the Serve
replicas, their vLLM engine cores: nothing else runs on a bench box), and the drop in the
system's MemAvailable, which also counts shared memory the RSS sum sees once per process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from vllm_runtime.replica_env import free_port

_READY = re.compile(r"ready in (\d+)s")


def _started_after(t0: float) -> list[psutil.Process]:
    me = os.getuid()
    out = []
    for p in psutil.process_iter(["create_time", "uids"]):
        if p.info["create_time"] >= t0 - 0.5 and p.info["uids"] and p.info["uids"].real == me \
                and p.pid != os.getpid():
            out.append(p)
    return out


def _rss_gib(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**30


def _with_port(config: Path, port: int, out_dir: Path) -> Path:
    """The config on a free HTTP port (the bench must not collide with a running app)."""
    doc = yaml.safe_load(config.read_text())
    doc.setdefault("http_options", {})["port"] = port
    path = out_dir / config.name
    path.write_text(yaml.safe_dump(doc))
    return path


def measure(config: Path, settle_s: float, then: list[str], run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port("127.0.0.1")
    served = _with_port(config, port, run_dir)
    ray_dir = Path(tempfile.mkdtemp(prefix="psc-", dir="/tmp"))  # AF_UNIX paths stop at 107 B
    available_before = psutil.virtual_memory().available
    t0 = time.time()
    cmd = [sys.executable, "-m", "deployments", "up", str(served),
           "--ray-port", str(free_port("127.0.0.1")),
           "--dashboard-port", str(free_port("127.0.0.1")),
           "--metrics-export-port", str(free_port("127.0.0.1")),
           "--ray-temp-dir", str(ray_dir), "--run-dir", str(run_dir)]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True)
    row: dict[str, Any] = {"config": str(config), "ready_s": None}
    log = (run_dir / "up.log").open("w")
    try:
        assert up.stdout is not None
        for line in up.stdout:
            log.write(line)
            log.flush()
            m = _READY.search(line)
            if m:
                row["ready_s"] = round(time.time() - t0, 1)
                break
        if row["ready_s"] is None:
            raise SystemExit(f"the app never became ready: see {run_dir / 'up.log'}")
        print(f"[start_cost] ready in {row['ready_s']} s; settling {settle_s:.0f} s", flush=True)
        time.sleep(settle_s)
        procs = _started_after(t0)
        row.update(processes=len(procs), rss_gib=round(_rss_gib(procs), 2),
                   mem_available_drop_gib=round(
                       (available_before - psutil.virtual_memory().available) / 2**30, 2))
        if then:
            url = f"http://127.0.0.1:{port}"
            command = [part.replace("{url}", url) for part in then]
            print(f"[start_cost] running: {' '.join(command)}", flush=True)
            row["then_exit_code"] = subprocess.run(command).returncode
            row["peak_rss_gib_after_then"] = round(_rss_gib(_started_after(t0)), 2)
    finally:
        up.send_signal(signal.SIGINT)  # `up` stops exactly what it started
        try:
            for line in up.stdout or []:
                log.write(line)
            up.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)  # our own session only
        log.close()
    return row


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    then: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, then = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m bench.start_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the JSON row")
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds between RUNNING and the memory sample")
    p.add_argument("--run-dir", type=Path, default=None, help="logs (default: beside --out)")
    args = p.parse_args(argv)
    run_dir = args.run_dir or args.out.with_suffix("")
    row = measure(args.config, args.settle, then, run_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps(row))
    return 0 if row.get("then_exit_code", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
