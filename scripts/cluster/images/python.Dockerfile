# A local stand-in for Docker Hub's python:3.11-slim, on Debian bookworm's own Python 3.11 (no registry is
# reachable here). It behaves as the official image does for what bundles do with it: `python` and `pip` on PATH,
# and `pip install` as root into the system site-packages (Debian's "externally managed" marker is removed).
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3 /usr/local/bin/python \
 && ln -s /usr/bin/pip3 /usr/local/bin/pip
ENV LANG=C.UTF-8
CMD ["python3"]
