# The tests' S3-compatible store: moto's S3 server, started with MinIO's command line (`server DIR --address :PORT`),
# so deploy/compose.yaml runs unchanged with either. Deployments use MinIO (AIP_S3_IMAGE) or a cloud bucket; this
# one keeps objects in memory. Built by deploy/image.sh from the same base as the platform's image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_FIND_LINKS=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CERT=
RUN python3 -m venv /opt/moto && /opt/moto/bin/pip install -q --no-cache-dir "moto[server]==5.2.5"
COPY s3_server.py /opt/moto/s3_server.py
EXPOSE 9000
ENTRYPOINT ["/opt/moto/bin/python", "/opt/moto/s3_server.py"]
CMD ["server", "/data", "--address", ":9000"]
