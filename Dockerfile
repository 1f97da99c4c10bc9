# Triton Inference Server with the runtime installed and model_repository/ served.
#   docker build -t medflow-triton .
#   docker run --gpus all --shm-size=2g --init --stop-timeout 40 -p 127.0.0.1:8000-8002:8000-8002 medflow-triton
# runs `runtime serve /models --address 0.0.0.0` (docs/serving.md says why: runtime serve notices a
# dead model stub, and the Python backend passes each request through shared memory, of which Docker
# gives 64 MiB). Arguments after the image name replace that command: `runtime serve /models
# --address 0.0.0.0 --poll 30` loads new versions as they land.
# Each model's model.py (the runtime's Triton adapter) runs preprocessing, the sliding window and
# the inversion onto the input grid inside Triton's Python backend. Only the runtime is installed:
# no trainer, no torch.
FROM nvcr.io/nvidia/tritonserver:24.08-py3
WORKDIR /opt/medflow
COPY pyproject.toml README.md ./
COPY runtime runtime
# The image brings CUDA 12.6, cuDNN 9.3, TensorRT 10.3 and Python 3.10. onnxruntime-gpu 1.23.2 is
# the last release with Python 3.10 wheels, built for CUDA 12, cuDNN 9 and TensorRT 10. It replaces
# the CPU build that the runtime's requirements bring: both are the one `onnxruntime` module, and
# installed side by side the CPU build's files would win. The build stops if no CUDA provider shows.
ARG ONNXRUNTIME_GPU=onnxruntime-gpu==1.23.2
RUN pip install --no-cache-dir '.[openvino,dicom]' \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir "${ONNXRUNTIME_GPU}" \
 && python3 -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p" \
 && cd / && python3 -c "import runtime.triton.model"
COPY model_repository /models
# A home of its own, writable: the OpenVINO and TensorRT caches live under ~/.cache.
RUN useradd --system --create-home --uid 10001 --home-dir /home/medflow medflow
USER medflow
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4).status != 200)"
CMD ["runtime", "serve", "/models", "--address", "0.0.0.0"]
