# One image for every fleet process (worker, beat, flower, the gateway, migrations). For CUDA, build FROM an
# nvidia/cuda runtime image with Python 3.11 and install onnxruntime-gpu instead of onnxruntime.
FROM python:3.11-slim
WORKDIR /opt/maas
COPY pyproject.toml README.md ./
COPY app app
COPY workers workers
COPY beat beat
COPY gateway gateway
RUN pip install --no-cache-dir .
ENV MAAS_HOME=/var/lib/maas
ENTRYPOINT []
