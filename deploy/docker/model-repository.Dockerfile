# The built model repository (ONNX graphs, manifest, defense step) as an image that init
# containers copy from. Build after `make repository`, from the repository root:
#   docker build -f deploy/docker/model-repository.Dockerfile \
#       -t registry.example.com/same-defense/model-repository:0.1.0 .
# The configs inside are replaced at start by the ConfigMap same-model-configs.
FROM busybox:1.36
COPY model_repository /repository
USER 1000
