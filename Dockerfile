# One image for every agentmesh service: `agentmesh serve NAME` picks which
# (deploy/k8s sets the args per Deployment); `agentmesh up` runs them all.
#   docker build -t agentmesh:dev .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml ./
COPY agentmesh agentmesh
COPY services services
# Wheels for the package and every dependency, so the final stage needs no compiler
# and keeps no build cache.
# torch from the CPU index: the default PyPI wheel brings gigabytes of CUDA.
RUN pip wheel --no-cache-dir --wheel-dir /wheels \
      --extra-index-url https://download.pytorch.org/whl/cpu .

FROM python:3.11-slim
# bubblewrap: the sandbox the runner and guardrails run user code in.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels agentmesh
# The uid/gid deploy/k8s runs as (runAsUser 10001); no home, no shell login.
RUN groupadd --system --gid 10001 agentmesh \
 && useradd --system --uid 10001 --gid agentmesh --home-dir /nonexistent --shell /usr/sbin/nologin agentmesh \
 && install --directory --owner agentmesh --group agentmesh /var/lib/agentmesh
# The root filesystem is read-only in Kubernetes: no .pyc files, caches in /tmp.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/cache \
    AGENTMESH_HOST=0.0.0.0 \
    AGENTMESH_DATA_DIR=/var/lib/agentmesh
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["agentmesh"]
CMD ["up"]
