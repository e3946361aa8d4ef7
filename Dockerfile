# The Airflow image of docker-compose.yaml: the official Airflow 3.3.2 image (Python 3.11) plus trainyard and the
# pinned requirements (psycopg2 for the Postgres metadata DB, the Kubernetes and Amazon providers, the templates').
FROM apache/airflow:3.3.2-python3.11

# bubblewrap keeps user code (a bundle's train, a transform) from the store's credentials on the local runner: its
# own PID namespace, credential files hidden. Compose runs these services with seccomp unconfined so it can work.
USER root
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
USER airflow

# Named volumes mount over these; creating them here (as the image's airflow user) makes fresh volumes start out
# owned by that user, so the local runner's venv cache and the admin passwords file are writable.
RUN mkdir -p /opt/airflow/venvs /opt/airflow/auth

# Requirements before the code, so a code change does not reinstall them. requirements.txt pins apache-airflow to
# the image's version and constraints.txt pins everything else, so the image gets exactly what CI tested.
COPY --chown=airflow:root requirements.txt constraints.txt /opt/trainyard/
RUN pip install --no-cache-dir -r /opt/trainyard/requirements.txt -c /opt/trainyard/constraints.txt

# trainyard's packages, the ones pyproject.toml lists (core, operators, step entrypoints, the plugin's web UI):
# .dockerignore lets only them into the build context. The DAGs and the plugin itself are mounted by compose.
COPY --chown=airflow:root . /opt/trainyard/
RUN pip install --no-cache-dir --no-deps /opt/trainyard
