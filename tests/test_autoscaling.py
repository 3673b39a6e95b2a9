"""A cluster that grows: on a real autoscaling Ray (Ray's fake multi-node provider starts
worker nodes as local processes when there is demand), ``toolagent train`` asks for the
learner node it needs, the autoscaler starts it, and the run's learner lands on it."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT

BIN = pathlib.Path(sys.executable).parent


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _autoscaling_config(gcs_address: str) -> dict:
    empty_lists = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                   "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                   "worker_start_ray_commands")
    return {
        "cluster_name": "toolagent-fake", "max_workers": 1, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
        **{key: [] for key in empty_lists},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            # cluster.yaml's learner node type, its GPU left out: torch sees no CUDA here
            "cpu_learner": {"resources": {"CPU": 1, "learner_node": 1}, "node_config": {},
                            "min_workers": 0, "max_workers": 1},
        },
    }


def _processes_of(temp_dir: str) -> list[int]:
    # ww: the whole command line, whatever COLUMNS says (the temp dir is far into it)
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if temp_dir in line]


@pytest.fixture
def autoscaling_head():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ra", dir="/tmp")
    port = _free_port()
    ip = ray.util.get_node_ip_address()
    config = pathlib.Path(temp_dir, "autoscaling.json")
    config.write_text(json.dumps(_autoscaling_config(f"{ip}:{port}")))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "token",
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = open(pathlib.Path(temp_dir, "head.log"), "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
         f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--include-dashboard=false"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while subprocess.run([str(BIN / "ray"), "status", f"--address={ip}:{port}"], env=env,
                             capture_output=True).returncode != 0:
            assert head.poll() is None and time.time() < deadline, pathlib.Path(log.name).read_text()[-3000:]
            time.sleep(1)
        yield {"address": f"{ip}:{port}", "env": env, "temp_dir": temp_dir}
    finally:
        # These processes only (never `ray stop`: it ends every Ray on the machine). A fake
        # node's daemons can appear a moment after its `ray start` is killed: kill until
        # none has been seen for five seconds in a row.
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)
        quiet_since, deadline = time.time(), time.time() + 120
        while time.time() - quiet_since < 5 and time.time() < deadline:
            found = _processes_of(temp_dir)
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if found:
                quiet_since = time.time()
            time.sleep(0.5)
        log.close()
        left = _processes_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left behind: {left}"


@pytest.mark.integration
def test_a_run_asks_the_autoscaler_for_its_learner_node_and_its_learner_lands_there(autoscaling_head, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rllib_app", "train", "--address", autoscaling_head["address"],
         "--num-learners", "1", "--learner-resource", "learner_node", "--resource-wait-minutes", "3",
         "--max-iterations", "1", "--eval-interval", "1", "--eval-episodes", "10",
         "--num-envs-per-env-runner", "4", "--hidden-size", "16", "--output", str(out)],
        cwd=ROOT, env=autoscaling_head["env"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "asked the autoscaler for 1 bundle(s): 0 env runner(s), 1 learner(s)" in proc.stdout
    placement = json.loads((out / "summary.json").read_text())["placement"]
    # the learner on a node the autoscaler started for it, not on the head (the driver's)
    listed = subprocess.run(
        [sys.executable, "-c", "import json, ray; ray.init(address=__import__('sys').argv[1], logging_level='ERROR');"
         "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))",
         autoscaling_head["address"]], env=autoscaling_head["env"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    nodes = json.loads(listed.stdout.strip().splitlines()[-1])
    assert len(placement["learners"]) == 1 and placement["learners"][0] != placement["driver"]
    assert nodes[placement["learners"][0]].get("learner_node") == 1.0
    assert "learner_node" not in nodes[placement["driver"]]
