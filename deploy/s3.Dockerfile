# The tests' S3-compatible store: moto's S3 server, started with MinIO's command line (`server DIR --address :PORT`),
# so deploy/compose.yaml runs unchanged with either. Deployments use MinIO (AIP_S3_IMAGE) or a cloud bucket; this
# one keeps objects in memory. Built by deploy/image.sh from the same base as the platform's image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_FIND_LINKS=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CERT=
ENV VIRTUAL_ENV=/opt/moto UV_NO_CACHE=1
COPY install-wheels.sh /usr/local/bin/install-wheels
RUN python3 -m venv /opt/moto && /opt/moto/bin/pip install -q --no-cache-dir uv && \
    PATH=/opt/moto/bin:$PATH install-wheels "moto[server]==5.2.5"
COPY s3_server.py /opt/moto/s3_server.py
EXPOSE 9000
ENTRYPOINT ["/opt/moto/bin/python", "/opt/moto/s3_server.py"]
CMD ["server", "/data", "--address", ":9000"]
