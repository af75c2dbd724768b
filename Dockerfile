# syntax=docker/dockerfile:1
# Both sipsockets images, one target each. Build from the repository root:
#   docker build --target proxy -t sipsockets/proxy:0.1.0 .
#   docker build --target operator -t sipsockets/operator:0.1.0 .
# BASE_IMAGE can name any Debian-like image with python3 (>= 3.11) and its venv module, e.g. a local one
# built from a debootstrap root filesystem where no registry is reachable. BUILD_IMAGE installs the
# distribution: the same Python as BASE_IMAGE, at the same path, plus a C compiler and Python's headers for
# the proxy's compiled SIP core (mypyc, see setup.py); no image that ships carries them.
ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_IMAGE=python:3.11

# The one distribution's sources and an empty virtualenv, where each side installs its own extra.
FROM ${BUILD_IMAGE} AS source
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proxy/sipproxy proxy/sipproxy
COPY operator/sipoperator operator/sipoperator
RUN python3 -m venv /opt/sipsockets

# The proxy's stack: the SIP core compiled, uvloop, PyYAML; no kopf.
FROM source AS proxy-build
RUN /opt/sipsockets/bin/pip install --no-cache-dir ".[proxy]"

# The operator's stack: kopf; the SIP core is never run there, so it stays uncompiled, and no uvloop.
FROM source AS operator-build
ENV SIPSOCKETS_PURE_PYTHON=1
RUN /opt/sipsockets/bin/pip install --no-cache-dir ".[operator]"

# What both images ship besides their virtualenv: the non-root user of the chart's securityContext, and an
# environment that writes nothing under the (read-only) root filesystem.
FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="sipsockets"
RUN groupadd --system --gid 10001 sipsockets \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sipsockets
ENV PATH=/opt/sipsockets/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001

FROM runtime AS operator
LABEL org.opencontainers.image.title="sipsockets operator" \
      org.opencontainers.image.description="kopf operator programming SipSockets into a SIP proxy fleet"
COPY --from=operator-build /opt/sipsockets /opt/sipsockets
# What this image holds, checked as its user: the operator imports, and nothing of the proxy's stack is there
# (no uvloop, no compiled SIP core or scanner).
RUN python3 -c "import importlib.metadata as m, importlib.util as u, sipoperator.cli, kopf; \
so = [str(f) for f in m.files('sipsockets') if str(f).endswith('.so')]; \
assert not so, f'compiled modules in the operator image: {so}'; \
assert u.find_spec('uvloop') is None, 'uvloop is in the operator image'"
# /healthz and /metrics; the admission webhook.
EXPOSE 8080/tcp 9443/tcp
ENTRYPOINT ["sipsockets-operator"]

FROM runtime AS proxy
LABEL org.opencontainers.image.title="sipsockets proxy" \
      org.opencontainers.image.description="asyncio SIP proxy with runtime-managed listening sockets"
COPY --from=proxy-build /opt/sipsockets /opt/sipsockets
# What this image holds, checked as its user: the compiled engine and C scanner load, uvloop is there, and
# nothing of the operator's stack is (no kopf).
RUN python3 -c "import importlib.util as u, sipproxy.cli, uvloop, sipproxy.sip.engine as e, sipproxy.sip.scan as s; \
assert e.__file__.endswith('.so'), f'the SIP engine is not compiled: {e.__file__}'; \
assert s.SCAN_REQUEST is not None, 'the C scanner is missing'; \
assert u.find_spec('kopf') is None, 'kopf is in the proxy image'"
# MI (JSON-RPC, /healthz, /readyz, /metrics); SIP ports are whatever the config and SipSockets say.
EXPOSE 8888/tcp 5060/udp 5060/tcp
ENTRYPOINT ["sipproxy"]
CMD ["--config", "/etc/sipsockets/proxy.yaml"]
