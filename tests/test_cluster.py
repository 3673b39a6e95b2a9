"""The cluster path: cluster.yaml through Ray's own validator, and a real two-node Ray
cluster on loopback running a training submitted through the Jobs API."""

import copy
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from conftest import ROOT

CLUSTER_YAML = pathlib.Path(ROOT, "cluster.yaml")
BIN = pathlib.Path(sys.executable).parent


def _launcher_config(raw):
    """What `ray up` checks: the config with the provider's defaults filled in, then
    validated against Ray's cluster schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_cluster_yaml_passes_rays_cluster_schema():
    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    config = _launcher_config(raw)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    assert "learner_node" not in head and "rollout_node" not in head  # the head runs the driver only
    assert types["gpu_learner"]["resources"]["learner_node"] >= 1 and types["gpu_learner"]["resources"]["GPU"] >= 1
    assert types["cpu_rollout"]["resources"]["rollout_node"] == types["cpu_rollout"]["resources"]["CPU"]
    # installed exactly as the README does
    assert any("make setup" in c for c in config["setup_commands"])
    assert "." in config["file_mounts"].values()


@pytest.mark.parametrize(
    "typo",
    [
        lambda c: c["available_node_types"]["cpu_rollout"].update(min_worker=1),
        lambda c: c.update(max_worker=3),
        lambda c: c["available_node_types"]["gpu_learner"].update(resources="learner_node"),
        lambda c: c.update(head_node_type="haed"),
    ],
)
def test_a_typo_in_cluster_yaml_fails_validation(typo):
    raw = yaml.safe_load(CLUSTER_YAML.read_text())
    typo(raw)
    with pytest.raises(Exception) as err:
        _launcher_config(raw)
    assert type(err.value).__name__ in ("ValidationError", "ValueError")


def _free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _ephemeral_port_range():
    try:
        low, high = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _node_ports(ports, worker_base):
    """Every port a node opens, its own: another Ray on the machine holds the defaults."""
    return [
        f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
        f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
        f"--metrics-export-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}",
        f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + 199}",
    ]


class LoopbackCluster:
    """`ray start --head` plus a second `ray start --address`, each with --block so that
    stopping exactly these two processes stops their nodes (never `ray stop`, which
    would stop every Ray on the machine)."""

    def __init__(self, head_resources, worker_resources):
        # Short (socket paths), and one per node: two nodes in one temp dir share the
        # runtime-env cache, and one node's cleanup deleted the job's working dir.
        self.temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.worker_temp_dir = tempfile.mkdtemp(prefix="rw", dir="/tmp")
        ports = _free_ports(15)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        # Below the kernel's ephemeral range (32768+ here): a worker port there can be
        # held by any outgoing connection, and a driver that cannot bind its port dies
        # in CoreWorkerProcessImpl (seen once in CI).
        low, _ = _ephemeral_port_range()
        base = 10000 + (os.getpid() % 50) * 400
        assert base + 400 <= low, f"worker ports {base}..{base + 399} overlap the ephemeral range from {low}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
        self.procs = []
        self.logs = []
        self._start("head", [
            "--head", f"--port={self.gcs_port}", "--num-cpus=1", f"--resources={json.dumps(head_resources)}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp_dir}", f"--ray-client-server-port={ports[2]}",
            *_node_ports(ports[3:9], base),
        ])
        self._wait(lambda: self._ray("status").returncode == 0, "the head node")
        self._start("worker", [
            f"--address=127.0.0.1:{self.gcs_port}", "--num-cpus=1", f"--resources={json.dumps(worker_resources)}",
            f"--temp-dir={self.worker_temp_dir}",
            *_node_ports(ports[9:15], base + 200),
        ])
        self._wait(lambda: self.nodes_alive() == 2, "the second node")

    @property
    def address(self):
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self):
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name, args):
        log = open(pathlib.Path(self.temp_dir, f"{name}.log"), "w")
        self.logs.append(log)
        self.procs.append(subprocess.Popen([str(BIN / "ray"), "start", "--block", *args], env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _ray(self, *args, timeout=60):
        return subprocess.run([str(BIN / "ray"), *args, f"--address={self.address}"], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def _wait(self, ready, what, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(1)
        raise RuntimeError(f"{what} did not come up:\n" + self.read_logs())

    def read_logs(self):
        return "\n".join(pathlib.Path(log.name).read_text()[-3000:] for log in self.logs)

    def fatal_lines(self, limit=40):
        """The lines of every node's Ray logs that say why a process died: a failing job's
        own output keeps only the tail of a C++ stack, not its first line."""
        pattern = re.compile(r"Check failed|\] \S+\.cc:\d+: .*(?:Failed|failed|error)|^\[[^]]* [CF] \d+ \d+\]|FATAL")
        found = []
        for d in (self.temp_dir, self.worker_temp_dir):
            for f in sorted(pathlib.Path(d).rglob("*")):
                if f.is_file() and f.suffix in (".log", ".err", ".out"):
                    try:
                        text = f.read_text(errors="replace")
                    except OSError:
                        continue
                    found += [f"{f.name}: {line}" for line in text.splitlines() if pattern.search(line)]
        return "\n".join(found[-limit:])

    def explain(self, proc):
        """What a failed `ray job` call printed, with the fatal lines of the node logs."""
        return (proc.stdout[-3000:] + proc.stderr[-2000:] + "\n--- fatal lines in the nodes' logs ---\n"
                + self.fatal_lines())

    def nodes(self):
        """[{node_id, resources, alive}] from the Jobs/State API (the dashboard)."""
        out = subprocess.run(
            [str(BIN / "ray"), "list", "nodes", "--format=json", f"--address={self.dashboard}"],
            env=self.env, capture_output=True, text=True, timeout=60,
        )
        return json.loads(out.stdout) if out.returncode == 0 else []

    def nodes_alive(self):
        return sum(n.get("state") == "ALIVE" for n in self.nodes())

    def job(self, *args, timeout=600):
        return subprocess.run([str(BIN / "ray"), "job", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
        for log in self.logs:
            log.close()
        for d in (self.temp_dir, self.worker_temp_dir):
            shutil.rmtree(d, ignore_errors=True)


def _ray_processes_of(*temp_dirs):
    # ww: the whole command line, whatever COLUMNS says (the temp dir is far into it)
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if any(d in line for d in temp_dirs)]


@pytest.fixture
def cluster():
    c = LoopbackCluster({"learner_node": 1}, {"rollout_node": 1})
    try:
        yield c
    finally:
        c.stop()
        leftovers = []
        for _ in range(30):
            leftovers = _ray_processes_of(c.temp_dir, c.worker_temp_dir)
            if not leftovers:
                break
            time.sleep(1)
        assert not leftovers, "Ray processes left behind:\n" + "\n".join(leftovers)


@pytest.mark.integration
def test_a_job_trains_on_a_two_node_cluster_with_runners_and_learner_where_they_belong(cluster, tmp_path):
    nodes = {n["node_id"]: n for n in cluster.nodes()}
    by_resource = {
        res: next(i for i, n in nodes.items() if res in n["resources_total"]) for res in ("learner_node", "rollout_node")
    }
    assert by_resource["learner_node"] != by_resource["rollout_node"]
    out = tmp_path / "run"
    submitted = cluster.job(
        "submit", f"--address={cluster.dashboard}", "--working-dir", ".",
        "--", "python", "-m", "rllib_app", "train",
        "--num-env-runners", "1", "--env-runner-resource", "rollout_node",
        "--num-learners", "1", "--learner-resource", "learner_node",
        "--num-envs-per-env-runner", "8", "--train-batch-size-per-learner", "128", "--hidden-size", "32",
        "--max-iterations", "3", "--eval-interval", "3", "--eval-episodes", "50", "--output", str(out),
    )
    assert submitted.returncode == 0, cluster.explain(submitted)
    assert "succeeded" in (submitted.stdout + submitted.stderr).lower()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 3 and summary["env_steps"] > 0
    assert (out / "checkpoint" / "toolagent.json").is_file()
    placed = summary["placement"]
    assert placed["env_runners"] == [by_resource["rollout_node"]]
    assert placed["learners"] == [by_resource["learner_node"]]

    # Follow and stop: `ray job stop` sends SIGTERM; the run saves a last checkpoint.
    stopped_out = tmp_path / "stopped"
    job_id = f"toolagent-stop-{os.getpid()}"
    started = cluster.job(
        "submit", f"--address={cluster.dashboard}", "--working-dir", ".", "--no-wait", f"--submission-id={job_id}",
        "--runtime-env-json", json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}}),
        "--", "python", "-m", "rllib_app", "train", "--num-env-runners", "1", "--env-runner-resource", "rollout_node",
        "--num-envs-per-env-runner", "8", "--train-batch-size-per-learner", "128", "--hidden-size", "32",
        "--eval-interval", "1000", "--output", str(stopped_out),
    )
    assert started.returncode == 0, cluster.explain(started)
    deadline = time.time() + 300
    while "iter    3 |" not in (logs := cluster.job("logs", job_id, f"--address={cluster.dashboard}").stdout):
        assert time.time() < deadline, logs[-3000:] + cluster.job("status", job_id, f"--address={cluster.dashboard}").stdout
        time.sleep(2)
    stop = cluster.job("stop", job_id, f"--address={cluster.dashboard}")
    assert stop.returncode == 0, stop.stderr[-2000:]
    summary = json.loads((stopped_out / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM" and summary["iterations"] >= 3
    evaluated = subprocess.run([sys.executable, "-m", "rllib_app", "eval", str(stopped_out), "--episodes", "20"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]  # the last checkpoint is usable

    # A GPU the cluster does not have: a clear failure, not an endless wait.
    no_gpu = cluster.job(
        "submit", f"--address={cluster.dashboard}", "--working-dir", ".",
        "--", "python", "-m", "rllib_app", "train", "--num-gpus-per-learner", "1",
        "--resource-wait-minutes", "0.1", "--output", str(tmp_path / "gpu"), timeout=300,
    )
    text = no_gpu.stdout + no_gpu.stderr
    assert no_gpu.returncode != 0 and "cannot host this run: it needs GPU 1 (has 0)" in text, text[-3000:]


def test_submit_train_runs_as_the_script_ray_submit_uploads(tmp_path):
    """`ray submit cluster.yaml rllib_app/cli/submit_train.py -- FLAGS` copies the file and runs it."""
    script = tmp_path / "submit_train.py"
    shutil.copy(pathlib.Path(ROOT, "rllib_app", "cli", "submit_train.py"), script)
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--env-runner-resource" in proc.stdout and "--learner-resource" in proc.stdout
    bad = subprocess.run([sys.executable, str(script), "--learner-resource", "learner_node"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "--num-learners is 0" in bad.stderr
