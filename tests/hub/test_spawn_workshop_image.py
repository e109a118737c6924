"""A profile naming the workshop image, through a real hub, its proxy and a real Docker engine.

gpuhub.yaml's ``profiles[].image`` names ``gpuhub/workshop`` (built by ``images/build.sh
workshop``); a user who picks that profile gets a server from it whose JupyterLab answers
through the proxy, lists the PyTorch and TensorFlow kernels, and runs each of them: the kernels
are started through the server's REST API and fed code over their websocket, as a browser does.
The GPU is the only fake (a made-up UUID; dockerd's NVIDIA hook is a no-op here), so each
framework is seen to load but finds no device.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import docker
import pytest
import requests
import websocket
import yaml
from harness import IMAGE, container_of, fake_gpus
from needs import unavailable

pytestmark = [pytest.mark.docker, pytest.mark.hub]

WORKSHOP_IMAGE = os.environ.get("GPUHUB_WORKSHOP_IMAGE", "gpuhub/workshop:latest")  # as images/build.sh names it
KERNELS = {"pytorch": "Python (PyTorch)", "tensorflow": "Python (TensorFlow)"}
#: code run in each kernel, and what its output must start with
PROBES = {
    "pytorch": "import torch; print('pytorch', torch.__version__.split('+')[0], torch.cuda.is_available())",
    "tensorflow": "import tensorflow as tf; print('tensorflow', tf.__version__, tf.test.is_built_with_cuda())",
}


@pytest.fixture
def workshop_hub(docker_client, hub_factory, tmp_path):
    """A hub whose gpuhub.yaml offers a GPU profile on the workshop image beside CPU-only."""
    try:
        docker_client.images.get(WORKSHOP_IMAGE)
    except docker.errors.ImageNotFound:
        unavailable(f"image {WORKSHOP_IMAGE} missing: run images/build.sh workshop")
    gpu = fake_gpus(1, "ws")[0]
    path = tmp_path / "gpuhub.yaml"
    path.write_text(yaml.safe_dump({
        "images": {"default": IMAGE, "allowed": [IMAGE, WORKSHOP_IMAGE]},
        "inventory": {"discovery": "static",
                      "gpus": [{**gpu, "name": "NVIDIA A100 40GB", "memory_mb": 40960}]},
        "profiles": [
            {"slug": "cpu", "display_name": "CPU only", "pool": None, "default": True},
            {"slug": "workshop", "display_name": "Workshop (PyTorch + TensorFlow)", "pool": "gpu",
             "image": WORKSHOP_IMAGE, "mem_limit": "8G"},
        ],
    }))
    hub = hub_factory(start=False)
    hub.start(env={"GPUHUB_CONFIG": str(path)})
    return hub


def _run_in_kernel(hub, name: str, token: str, kernel_id: str, code: str, timeout: float = 240) -> str:
    """``code`` executed in the kernel over its websocket (through the proxy); its stdout, or the
    error the kernel reported."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{hub.port}/user/{name}/api/kernels/{kernel_id}/channels",
                                     header=[f"Authorization: token {token}"], timeout=timeout)
    request_id = uuid.uuid4().hex
    header = {"msg_id": request_id, "session": uuid.uuid4().hex, "username": name,
              "msg_type": "execute_request", "version": "5.3"}
    content = {"code": code, "silent": False, "store_history": False, "user_expressions": {},
               "allow_stdin": False, "stop_on_error": True}
    ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": content, "buffers": []}))
    text: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != request_id:
                continue
            kind, body = msg.get("msg_type"), msg.get("content", {})
            if kind == "stream" and body.get("name") == "stdout":
                text.append(body["text"])
            elif kind == "error":
                text.append(f"ERROR {body.get('ename')}: {body.get('evalue')}")
            elif kind == "status" and body.get("execution_state") == "idle":
                return "".join(text)
    finally:
        ws.close()
    raise AssertionError(f"{kernel_id}: no answer within {timeout}s (so far: {''.join(text)!r})")


def test_a_workshop_profile_reaches_jupyterlab_with_both_kernels(docker_client, workshop_hub):
    hub = workshop_hub
    hub.create_users(["wanda", "carl"])
    for user, profile in (("wanda", "workshop"), ("carl", "cpu")):
        r = hub.spawn(user, {"profile": profile})
        assert r.status_code in (201, 202), r.text
    hub.wait_ready("wanda", timeout=240)
    container = container_of(docker_client, hub, "wanda")
    assert container.attrs["Config"]["Image"] == WORKSHOP_IMAGE
    assert container.labels["org.gpuhub.unit"].startswith("GPU-ws-")
    # only the profile naming the workshop image gets it: CPU-only stays on the default image
    hub.wait_ready("carl")
    assert container_of(docker_client, hub, "carl").attrs["Config"]["Image"] == IMAGE

    token = hub.new_token("wanda")
    auth = {"Authorization": f"token {token}"}
    lab = requests.get(f"{hub.url}/user/wanda/lab", headers=auth, timeout=60)
    assert lab.status_code == 200 and "JupyterLab" in lab.text, lab.status_code

    specs = requests.get(f"{hub.url}/user/wanda/api/kernelspecs", headers=auth, timeout=30)
    assert specs.ok, specs.text
    listed = {name: spec["spec"]["display_name"] for name, spec in specs.json()["kernelspecs"].items()}
    assert {name: listed.get(name) for name in KERNELS} == KERNELS, listed

    for name, code in PROBES.items():
        started = requests.post(f"{hub.url}/user/wanda/api/kernels", headers=auth, json={"name": name}, timeout=120)
        assert started.status_code == 201, started.text
        kernel_id = started.json()["id"]
        out = _run_in_kernel(hub, "wanda", token, kernel_id, code)
        # the fake GPU is no device: each framework loads, is a CUDA build, and finds none
        words = out.split()
        assert words[:1] == [name] and len(words) == 3, out
        assert words[2] == ("False" if name == "pytorch" else "True"), out
        stopped = requests.delete(f"{hub.url}/user/wanda/api/kernels/{kernel_id}", headers=auth, timeout=60)
        assert stopped.status_code == 204, stopped.text

