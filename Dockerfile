# fsm-init, the base image: a container init (PID 1) that runs and supervises the service
# directory /srv/$SRVNAME.  An application image needs only
#
#     FROM fsm-init
#
# plus its own srv/ directory in the build context (the ONBUILD steps below copy and check
# it), and names its service with `ENV SRVNAME=...` or `--build-arg SRVNAME=...`.
#
#     docker build -t fsm-init .
#     docker run --rm -e SRVNAME=web fsm-init
#
# Every RUN step is a subcommand of scripts/image-install; tests/integration/test_docker.py
# builds this file with a real Docker engine (classic builder) and runs the image.  Pin the
# base for reproducible builds with
# --build-arg DEBIAN_IMAGE=debian:bookworm-slim@sha256:...  No `# syntax=` line: BuildKit
# would fetch a frontend image from a registry, which an air-gapped builder cannot reach.
# Behind a TLS-intercepting proxy, give pip the proxy's CA (the builder stage only):
#     docker build --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)" .

ARG DEBIAN_IMAGE=debian:bookworm-slim

# -- builder: the wheel and the virtualenv; gcc, python3-dev and libcap-dev stay here ------
FROM ${DEBIAN_IMAGE} AS builder
# PEM certificates pip trusts besides its own bundle (a proxy's CA); never in the runtime.
ARG EXTRA_CA_CERTS=""
COPY scripts/image-install /usr/local/sbin/image-install
RUN ["image-install", "builder-packages"]
# The pinned dependencies first, in a layer that changes only with these two files.
COPY pyproject.toml constraints.txt /src/
RUN ["image-install", "deps", "/src/pyproject.toml", "/src/constraints.txt"]
COPY README.md /src/
COPY fsm_init/ /src/fsm_init/
RUN ["image-install", "wheel", "/src", "/dist"]
RUN ["image-install", "venv", "/dist", "/src/constraints.txt"]

# -- runtime ---------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="fsm-init" \
      org.opencontainers.image.description="Base image with fsm-init as PID 1: one explicit state machine runs, checks and restarts a service directory under /srv (a re-implementation of imginit)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

COPY scripts/image-install /usr/local/sbin/image-install
RUN ["image-install", "runtime-packages"]
COPY --from=builder /opt/fsm-init /opt/fsm-init
# Links fsm-init, srvctl and DoNothing into /usr/local/bin, strips every SUID/SGID bit,
# cleans up and checks that every command services rely on is on the PATH.
RUN ["image-install", "finish"]
COPY srv/ /srv/
RUN ["image-install", "srv"]

WORKDIR /srv
STOPSIGNAL SIGTERM
# docker stop sends SIGKILL after 10 s by default: the whole stop path (the service, cron,
# any other daemon, the leftovers) shares 9 s out (docs/lifecycle.md, "The stop budget").
ENV FSM_INIT_STOP_BUDGET=9
# Healthy once the service has proved itself: in status-check mode the latest check cycle
# passed, otherwise it has run for workintvl seconds (srvctl health; exit 0 or 1).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["srvctl", "health"]
# env blocks the signals before the Python interpreter starts (~20 ms): a `docker stop`
# right after `docker run` stays pending for fsm-init instead of being dropped by the kernel,
# which discards default-action signals sent to a PID namespace's init.
ENTRYPOINT ["env", "--block-signal=TERM,INT,HUP,USR1,USR2,QUIT,WINCH,CONT,CHLD", "fsm-init", "--"]
CMD []

# -- what an application image inherits: FROM fsm-init + its own srv/ -----------------------
ONBUILD ARG SRVNAME=imginit
ONBUILD ARG FSM_INIT_VALIDATE=strict
ONBUILD ENV SRVNAME=${SRVNAME}
ONBUILD COPY srv/ /srv/
# Checks every /srv/*/workcfg.json with `fsm-init validate` (a problem fails the build unless
# FSM_INIT_VALIDATE=warn), that /srv/$SRVNAME exists, and strips SUID/SGID bits under /srv.
ONBUILD RUN ["image-install", "srv"]
