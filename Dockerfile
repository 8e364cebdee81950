# syntax=docker/dockerfile:1
# The Pajama image: Pajama installed on the official Ray image, run as Ray's non-root user
# (ray, uid 1000, gid 100). Every Pajama pod uses it: Ray head and workers, RayJob submitters,
# the RayService and the MLflow server; only the gpu overlay's RayService serves from an image of
# its own (Dockerfile.serve-gpu: vLLM). Two variants, tagged as k8s/base expects:
#   CPU: docker build -t pajama:0.2.0-cpu .
#   GPU: docker build -t pajama:0.2.0-gpu \
#          --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128 \
#          --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# Ray tags images <ray>-py<python>-cpu, -cuXYZ, or -gpu (Ray's default CUDA): pick a -cuXYZ tag
# published for this Ray release and the PyTorch wheel index of the same CUDA version.
# tests/test_k8s.py checks that BASE_IMAGE's Ray version is spec.rayVersion of the RayCluster.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# The Ray image's Python (/home/ray/anaconda3) belongs to the ray user: no root needed to install.
USER ray

# torch first, from the index that matches the variant, so `pip install` below keeps it rather
# than pulling PyPI's default CUDA build into the CPU image.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# COPY creates the directory owned by ray (a WORKDIR created first could belong to root).
COPY --chown=ray:users . /home/ray/pajama
WORKDIR /home/ray/pajama

# A regular (non-editable) install: the recipes ship inside the package. The repository copy stays
# here because RayJobs run `python jobs/<stage>.py` from this directory (their runtime_env
# working_dir). psycopg2 lets the MLflow server keep its runs in PostgreSQL (k8s/overlays/gpu).
RUN pip install --no-cache-dir . "psycopg2-binary>=2.9,<3" \
    && python -c "import pajama, ray, torch, mlflow; print('pajama on ray', ray.__version__, 'torch', torch.__version__)"

ENV PYTHONUNBUFFERED=1
