"""Independent client test of `cvmm manager`, written against proto/manager.proto alone.

The gRPC client is generated from the proto at test time with grpcio-tools. The test starts
`cvmm manager` (CVMM_BIN) with the probe guest as the VM kernel, creates a VM, reads the VM's
environment file back through the forwarded port (the probe answers `GET env_share/environment`),
calls CVMInfo and RemoveVm, and checks that a bad TTL is refused. Skipped without /dev/kvm.
"""

import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"


def kvm_usable():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


pytestmark = pytest.mark.skipif(not kvm_usable(), reason="/dev/kvm is not available on this host")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_range(width):
    """A start port such that start..start+width-1 can all be bound right now."""
    for _ in range(200):
        start = free_port()
        if start + width > 65535:
            continue
        socks = []
        try:
            for p in range(start, start + width):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def wait_for(what, cond, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {limit}s waiting for {what}")


@pytest.fixture(scope="session")
def pb(tmp_path_factory):
    """The generated `manager_pb2` and `manager_pb2_grpc` modules."""
    out = tmp_path_factory.mktemp("gen")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
         f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO_DIR / "manager.proto")],
        check=True,
    )
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("manager_pb2"), importlib.import_module("manager_pb2_grpc")
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="session")
def cvmm_bin():
    default = ROOT / "target/x86_64-unknown-linux-gnu/debug/cvmm"
    path = Path(os.environ.get("CVMM_BIN", default))
    if not os.access(path, os.X_OK):
        pytest.fail(f"cvmm binary {path} not found: build it or set CVMM_BIN")
    return path


@pytest.fixture(scope="session")
def probe_kernel(tmp_path_factory):
    """The probe guest (PVH ELF), built with tests/probe-guest/build.sh."""
    out = tmp_path_factory.mktemp("probe")
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", str(ROOT / "target" / "python-probe"))
    subprocess.run(["sh", str(ROOT / "tests/probe-guest/build.sh"), str(out)], check=True, env=env)
    return out / "probe-pvh.elf"


class Manager:
    def __init__(self, proc, grpc_port, fwd_lo, fwd_hi, state, log):
        self.proc, self.grpc_port, self.state, self.log = proc, grpc_port, state, log
        self.fwd = (fwd_lo, fwd_hi)

    def log_text(self):
        return Path(self.log).read_text(errors="replace")


@pytest.fixture
def manager(cvmm_bin, probe_kernel):
    state = Path(tempfile.mkdtemp(prefix="cvmm-pytest-"))
    initrd = state.parent / f"{state.name}-initrd.img"
    # The probe ignores its initrd; the manager passes one as the Go manager does.
    initrd.write_bytes(bytes(4096))
    grpc_port, http_port, fwd = free_port(), free_port(), free_range(10)
    env = dict(os.environ)
    env.update({
        "MANAGER_GRPC_HOST": "127.0.0.1",
        "MANAGER_GRPC_PORT": str(grpc_port),
        "MANAGER_HTTP_HOST": "127.0.0.1",
        "MANAGER_HTTP_PORT": str(http_port),
        "MANAGER_STATE_DIR": str(state),
        "MANAGER_VMM_EXE": str(cvmm_bin),
        "MANAGER_VMM_TEE": "none",
        "MANAGER_VMM_HOST_FWD_ADDR": "127.0.0.1",
        "MANAGER_QEMU_HOST_FWD_RANGE": f"{fwd}-{fwd + 9}",
        "MANAGER_QEMU_DISK_IMG_KERNEL_FILE": str(probe_kernel),
        "MANAGER_QEMU_DISK_IMG_ROOTFS_FILE": str(initrd),
        "MANAGER_QEMU_KERNEL_CMDLINE": "probe.net=dhcp probe.exit=halt",
        "MANAGER_QEMU_MEMORY_SIZE": "128M",
        "MANAGER_QEMU_SMP_COUNT": "1",
        "MANAGER_QEMU_CPU": "EPYC",
        "MANAGER_QEMU_OVMF_VERSION": "edk2-pytest",
        "MANAGER_EOS_VERSION": "eos-pytest",
        "CVMM_LOG": "warn",
    })
    log = state.parent / f"{state.name}-manager.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen([str(cvmm_bin), "manager"], env=env, stdout=logf,
                                stderr=subprocess.STDOUT)
    m = Manager(proc, grpc_port, fwd, fwd + 9, state, log)

    def listening():
        assert proc.poll() is None, f"manager exited early: {m.log_text()}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", grpc_port)) == 0

    wait_for("the manager to listen", listening, 30)
    try:
        yield m
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # A VM left running after a failed assertion would outlive the manager: stop it.
        for rec in state.glob("*/vm.json"):
            try:
                os.kill(json.loads(rec.read_text())["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass
        shutil.rmtree(state, ignore_errors=True)
        initrd.unlink(missing_ok=True)
        log.unlink(missing_ok=True)


def ask_guest(port, request, limit):
    """Sends one request line to the forwarded port until the guest answers; returns the answer."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
                s.sendall(request)
                chunks = []
                while True:
                    b = s.recv(4096)
                    if not b:
                        break
                    chunks.append(b)
                if chunks:
                    return b"".join(chunks).decode()
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no answer on port {port} within {limit}s")


def test_create_read_env_info_remove_and_bad_ttl(pb, manager):
    manager_pb2, manager_pb2_grpc = pb
    with grpc.insecure_channel(f"127.0.0.1:{manager.grpc_port}") as ch:
        stub = manager_pb2_grpc.ManagerServiceStub(ch)

        res = stub.CreateVm(manager_pb2.CreateReq(
            agent_log_level="debug", agent_cvm_server_url="10.0.2.2:7001", ttl="5m"), timeout=30)
        cvm_id = res.cvm_id
        assert str(uuid.UUID(cvm_id)) == cvm_id and uuid.UUID(cvm_id).version == 4
        port = int(res.forwarded_port)
        assert manager.fwd[0] <= port <= manager.fwd[1], res.forwarded_port

        env = ask_guest(port, b"GET env_share/environment\n", 60)
        lines = env.splitlines()
        assert f"AGENT_CVM_ID={cvm_id}" in lines, env
        assert "AGENT_LOG_LEVEL=debug" in lines, env
        assert "AGENT_CVM_GRPC_URL=10.0.2.2:7001" in lines, env

        info = stub.CVMInfo(manager_pb2.CVMInfoReq(id="any-id"), timeout=10)
        assert (info.id, info.ovmf_version, info.cpu_num, info.cpu_type, info.kernel_cmd,
                info.eos_version) == ("any-id", "edk2-pytest", 1, "EPYC", "", "eos-pytest")

        stub.RemoveVm(manager_pb2.RemoveReq(cvm_id=cvm_id), timeout=30)
        wait_for("the VM's state to be removed", lambda: not (manager.state / cvm_id).exists(), 10)
        with socket.socket() as s:
            # The forwarded port is free again for a listener. SO_REUSEADDR (which the manager's
            # own binds use too) lets the bind ignore our closed connection's TIME_WAIT entry.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()

        with pytest.raises(grpc.RpcError) as bad:
            stub.RemoveVm(manager_pb2.RemoveReq(cvm_id=cvm_id), timeout=10)
        assert bad.value.details() == "entity not found"

        with pytest.raises(grpc.RpcError) as bad:
            stub.CreateVm(manager_pb2.CreateReq(ttl="ten minutes"), timeout=10)
        assert bad.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN)
        assert "invalid duration" in bad.value.details(), bad.value.details()
        assert not [d for d in manager.state.iterdir() if d.is_dir()], "nothing started"
