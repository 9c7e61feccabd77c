# The Prefect worker: opdlm with its pipeline, DeepSpeed and S3 extras, and the flow code the
# deployments in prefect.yaml point at (/opt/opdlm). torch comes from PyPI (CUDA build on x86_64);
# pass --build-arg PIP_EXTRA_INDEX_URL=... to use another wheel index.
FROM python:3.11-slim
ARG PIP_EXTRA_INDEX_URL=
# git: the pipeline records the code version; bubblewrap: the sandbox that runs generated code.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git bubblewrap \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/opdlm
COPY pyproject.toml README.md ./
COPY opdlm ./opdlm
COPY tasks ./tasks
COPY flows ./flows
RUN pip install --no-cache-dir -e ".[pipeline,deepspeed,s3]"
COPY configs ./configs
COPY prefect.yaml ./
ENV OPDLM_RUNS_DIR=/runs OPDLM_REPO_DIR=/opt/opdlm PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
