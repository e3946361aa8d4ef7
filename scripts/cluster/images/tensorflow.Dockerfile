# A local stand-in for Docker Hub's tensorflow/tensorflow:2.21.0-gpu: the same TensorFlow release from PyPI on the
# python:3.11-slim stand-in. Its wheel runs on CPUs (the local cluster has no GPU); on a GPU node use the real image.
FROM python:3.11-slim
# The host's pip cache is mounted at /root/.cache/pip during the build, so the wheel is not downloaded twice.
RUN pip install tensorflow==2.21.0
