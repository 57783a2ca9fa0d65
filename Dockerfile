# meshgate: the proxy (`meshgate run`) and the operator (`meshgate operator`).
#
#   docker build -t ghcr.io/meshgate/meshgate:0.1.0 .
#
# Two stages: wheels are built (and any compiler stays) in the first; the
# runtime image holds the installed package only, and runs as a non-root user
# whose numeric UID matches the manifests' runAsUser (10001).

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels meshgate \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 meshgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin meshgate
USER 10001:10001
# 9901: the admin server (/healthz, /readyz, /metrics).
EXPOSE 9901
ENTRYPOINT ["meshgate"]
CMD ["--help"]
