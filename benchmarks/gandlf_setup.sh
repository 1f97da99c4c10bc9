#!/usr/bin/env bash
# A throwaway virtual environment with GaNDLF 0.1.5 on the CPU, for training_throughput.py --gandlf.
#
#     bash benchmarks/gandlf_setup.sh [VENV]   # default benchmarks/out/gandlf-venv (git-ignored); safe to run again
#
# GaNDLF 0.1.5 pins torch==2.7.1, which the registry here offers only as a CUDA build (several GB). The venv
# gets a CPU torch instead (TORCH_SPEC, default torch==2.13.0+cpu, found in pip's find-links; elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu) and the torchvision of that torch (TORCHVISION_SPEC), then
# GaNDLF's other requirements from its wheel's metadata, then GaNDLF itself without dependencies. The
# registry's torchvision is a CUDA build: its compiled ops (libc10_cuda.so) do not load beside a CPU torch,
# and the two lines of torchvision/_meta_registrations.py that register fake kernels for them unconditionally
# (nms, qnms) are made conditional on the ops being loaded, as the file's other registrations already are.
set -euo pipefail

VENV="${1:-$(dirname "$0")/out/gandlf-venv}"
GANDLF_SPEC="${GANDLF_SPEC:-gandlf==0.1.5}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
TORCHVISION_SPEC="${TORCHVISION_SPEC:-torchvision==0.28.0}"
PYTHON="${PYTHON:-python3}"

step() { echo "[gandlf_setup] $*"; }

make_venv() {
    if [ -x "$VENV/bin/python" ]; then
        step "venv $VENV exists"
    else
        step "creating venv $VENV with $("$PYTHON" --version)"
        "$PYTHON" -m venv "$VENV"
    fi
}

pip_install() {
    "$VENV/bin/python" -m pip install --quiet ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

gandlf_requirements() {
    local wheels
    wheels="$(mktemp -d)"
    "$VENV/bin/python" -m pip download --quiet --no-deps -d "$wheels" "$GANDLF_SPEC" 2>&1 >/dev/null \
        | { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
    "$VENV/bin/python" - "$wheels" <<'EOF'
import sys, zipfile, pathlib
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    lines = archive.read(name).decode().splitlines()
for line in lines:
    if line.startswith("Requires-Dist:"):
        requirement = line.split(":", 1)[1].strip()
        if ";" not in requirement and not requirement.startswith(("torch=", "torchvision")):
            print(requirement)
EOF
    rm -rf "$wheels"
}

patch_torchvision() {
    "$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib, re
path = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0], "_meta_registrations.py")
pattern = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$', re.MULTILINE)
guarded = r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))"
text, count = pattern.subn(guarded, path.read_text())
if count:
    path.write_text(text)
    print(f"[gandlf_setup] patched {count} line(s) of {path}: fake kernels only when torchvision's ops load")
else:
    print("[gandlf_setup] torchvision needs no patch (or has it already)")
EOF
}

main() {
    make_venv
    step "installing $TORCH_SPEC and $TORCHVISION_SPEC"
    pip_install "$TORCH_SPEC" "$TORCHVISION_SPEC"
    step "installing the requirements of $GANDLF_SPEC, torch and torchvision held"
    local listed
    listed="$(gandlf_requirements)"
    mapfile -t requirements <<< "$listed"
    pip_install "$TORCH_SPEC" "$TORCHVISION_SPEC" "${requirements[@]}"
    step "installing $GANDLF_SPEC without dependencies"
    pip_install --no-deps "$GANDLF_SPEC"
    patch_torchvision
    "$VENV/bin/python" -c 'import torch, torchvision, GANDLF; print("[gandlf_setup] GaNDLF", GANDLF.__version__,
        "torch", torch.__version__, "torchvision", torchvision.__version__)'
    step "done: $VENV/bin/gandlf"
}

main
