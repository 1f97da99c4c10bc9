# Triton Inference Server with the runtime installed and model_repository/ served.
#   docker build -t medflow-triton .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 medflow-triton
# Each model's model.py (the runtime's Triton adapter) runs preprocessing, the sliding window and
# the inversion onto the input grid inside Triton's Python backend.
FROM nvcr.io/nvidia/tritonserver:24.08-py3
WORKDIR /opt/medflow
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY export export
COPY trainer trainer
# The image brings CUDA 12.6, cuDNN 9.3, TensorRT 10.3 and Python 3.10. onnxruntime-gpu 1.23.2 is
# the last release with Python 3.10 wheels, built for CUDA 12, cuDNN 9 and TensorRT 10. It replaces
# the CPU build that the runtime's requirements bring: both are the one `onnxruntime` module, and
# installed side by side the CPU build's files would win. The build stops if no CUDA provider shows.
ARG ONNXRUNTIME_GPU=onnxruntime-gpu==1.23.2
RUN pip install --no-cache-dir '.[openvino]' \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir "${ONNXRUNTIME_GPU}" \
 && python3 -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p"
COPY model_repository /models
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
