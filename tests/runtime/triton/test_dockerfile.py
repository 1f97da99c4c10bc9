"""What can be checked of the Dockerfile without Docker: every path it copies exists, it installs
the runtime alone, its image's Python reads the runtime's sources, it runs as a non-root user,
exposes Triton's ports, checks the readiness endpoint and runs `runtime serve` with arguments the
command accepts, and its build context holds what it copies alone."""
from __future__ import annotations

import ast
import json
import re
import tomllib

from tests.conftest import REPO

REPO_MODELS = str(REPO / "model_repository")

# The Python of the image the Dockerfile starts FROM (nvcr.io/nvidia/tritonserver:24.08-py3).
IMAGE_PYTHON = (3, 10)


def instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_every_copied_path_exists_and_only_the_runtime_is_installed():
    found = instructions()
    copied = [source for kind, rest in found if kind == "COPY" for source in rest.split()[:-1]]
    assert copied and all((REPO / source).exists() for source in copied), copied
    assert "trainer" not in copied and "export" not in copied
    installs = " ".join(rest for kind, rest in found if kind == "RUN")
    assert re.search(r"pip install --no-cache-dir '\.\[openvino,dicom\]'", installs)
    assert "[train" not in installs and "torch" not in installs
    assert "import runtime.triton.model" in installs


def test_the_image_python_reads_every_runtime_source_and_the_project_allows_it():
    required = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    assert tuple(int(p) for p in required.removeprefix(">=").split(".")) <= IMAGE_PYTHON
    for path in sorted((REPO / "runtime").rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=IMAGE_PYTHON)


def test_it_runs_as_a_user_exposes_the_ports_and_checks_readiness():
    found = instructions()
    kinds = [kind for kind, _ in found]
    user = next(rest for kind, rest in found if kind == "USER")
    assert user.strip() not in ("root", "0") and kinds.index("USER") < kinds.index("CMD")
    assert next(rest for kind, rest in found if kind == "EXPOSE").split() == ["8000", "8001", "8002"]
    health = next(rest for kind, rest in found if kind == "HEALTHCHECK")
    assert "/v2/health/ready" in health and ":8000" in health
    assert any(kind == "COPY" and rest.split()[:2] == ["model_repository", "/models"] for kind, rest in found)


def test_its_command_is_runtime_serve_with_arguments_the_cli_accepts():
    from runtime.commands.cli import main

    command = json.loads(next(rest for kind, rest in instructions() if kind == "CMD"))
    assert command[:3] == ["runtime", "serve", "/models"]
    serve = main.commands["serve"]
    context = serve.make_context("serve", [REPO_MODELS if part == "/models" else part for part in command[2:]])
    assert context.params["address"] == "0.0.0.0" and context.params["http_port"] == 8000


def test_the_build_context_holds_what_the_image_copies_and_no_environment():
    ignore = [line for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*"
    kept = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    copied = {source for kind, rest in instructions() if kind == "COPY" for source in rest.split()[:-1]}
    assert kept == copied
    assert "**/__pycache__" in ignore


def test_the_kubernetes_example_in_the_docs_probes_the_images_ports_and_health_endpoint():
    import yaml

    text = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    deployment, service = yaml.safe_load_all(blocks[0])
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    exposed = {int(port) for kind, rest in instructions() if kind == "EXPOSE" for port in rest.split()}
    assert {port["containerPort"] for port in container["ports"]} == exposed == {8000, 8001, 8002}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == exposed
    health = " ".join(rest for kind, rest in instructions() if kind == "HEALTHCHECK")
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/v2/health/ready" and f"127.0.0.1:{ready['port']}{ready['path']}" in health
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    shm = {mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == "/dev/shm"}
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    assert len(shm) == 1 and volumes[shm.pop()]["emptyDir"]["medium"] == "Memory"      # not Docker's 64 MiB
    run = re.search(r"docker run (.*?)\n```", text, re.S).group(1)
    assert "--shm-size=" in run and "-p 127.0.0.1:8000-8002:8000-8002" in run
    from runtime.triton.server import STOP_TIMEOUT_S

    grace = int(re.search(r"--stop-timeout (\d+)", run).group(1))
    assert grace > STOP_TIMEOUT_S and deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace
    assert container["command"][:3] == ["runtime", "serve", "/models"]
