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
RUN pip install --no-cache-dir '.[gpu,openvino]'
COPY model_repository /models
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
