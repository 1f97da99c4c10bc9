# The runtime as a container: `docker run --rm -v $PWD:/data medflow predict /data/scan.nii.gz
#   --model /opt/medflow/model_repository/<name> --output /data/mask.nii.gz`
FROM python:3.11-slim
WORKDIR /opt/medflow
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY export export
COPY trainer trainer
RUN pip install --no-cache-dir '.[openvino]'
COPY model_repository model_repository
ENTRYPOINT ["runtime"]
CMD ["demo", "--output-dir", "/tmp/demo_output"]
