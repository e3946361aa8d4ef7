# Airflow image for docker-compose.yaml: the official Airflow 3.3 image plus trainyard and its pinned requirements.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt constraints.txt pyproject.toml README.md /opt/trainyard/
COPY --chown=airflow:root trainyard /opt/trainyard/trainyard
COPY --chown=airflow:root operators /opt/trainyard/operators
COPY --chown=airflow:root training_images /opt/trainyard/training_images
RUN pip install --no-cache-dir -r /opt/trainyard/requirements.txt -c /opt/trainyard/constraints.txt \
 && pip install --no-cache-dir --no-deps /opt/trainyard
