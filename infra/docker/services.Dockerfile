# The stack's servers: Prefect server, MLflow server and the bucket job. Versions match the
# `pipeline` extra of pyproject.toml (tests/test_infra_files.py checks it) plus the PostgreSQL
# drivers the servers need (asyncpg for Prefect, psycopg2 for MLflow).
FROM python:3.11-slim
RUN pip install --no-cache-dir \
      "prefect==3.8.*" "fastapi<0.151" "mlflow==3.17.*" "boto3>=1.34,<1.44" \
      "psycopg2-binary>=2.9,<3" "asyncpg>=0.29" \
 && useradd --create-home --uid 10001 opdlm
USER opdlm
WORKDIR /home/opdlm
