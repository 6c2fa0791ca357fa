# The gateway image (same-gateway, same-accounts). Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t registry.example.com/same-defense/gateway:0.1.0 .
# Not built on the project's CI machine (no Docker there); the manifests reference it.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The gateway imports none of the training stack (torch, onnx, sklearn): install the package
# without its dependencies, then only what the gateway and the account layer import.
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir "numpy>=1.24,<2" "tritonclient[grpc]>=2.50,<3" "protobuf>=4.25" \
      "redis>=5,<9" "prometheus-client>=0.20,<1" "aiohttp>=3.9,<4" \
 && useradd --uid 10001 --no-create-home same
USER 10001
ENTRYPOINT ["same-gateway"]
