# syntax=docker/dockerfile:1
#
# Container image of the `invitations` gRPC service.
#
#   docker build -t invitations:local .
#   docker compose up            # PostgreSQL + migrations + the service; see docs/DEPLOY.md
#
# Two stages: a Rust builder, then a distroless runtime that holds nothing but the binary
# (no shell, no package manager), running as the distroless `nonroot` user (65532).
# The build needs no system protoc: build.rs uses the one vendored by `protoc-bin-vendored`.

# Base images are pinned by digest, so a rebuild of the same commit starts from the same
# bytes whatever the registry's tags point at by then. The tag stays in each reference for
# readability only: when a digest is given, the tag is not used to pull. Each digest is the
# one of the multi-platform index, so amd64 and arm64 builds both resolve. To update one,
# read the current digest of the same tag and replace it, then rebuild and run the tests:
#   docker buildx imagetools inspect rust:1.95-slim-bookworm    # the "Digest:" line
#   crane digest gcr.io/distroless/cc-debian12:nonroot          # the same, with crane
#
# The toolchain: keep its version in step with `rust-version` in Cargo.toml (the minimum;
# .ci/validate-deploy checks it) and with CI's toolchain. One argument holds the tag and
# its digest together, so that one cannot be changed without the other; for example
#   docker build --build-arg RUST_IMAGE=rust:1.96-slim-bookworm@sha256:<its digest> .
ARG RUST_IMAGE=rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082

# ---------------------------------------------------------------------------------------
# Builder. bookworm (glibc 2.36) matches the runtime's Debian 12: a binary built against a
# newer glibc than the runtime's would not start.
FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# 1. Dependencies only. The manifests, lockfile, build script and protos are copied with
#    stub sources, so this layer (every dependency compiled) is rebuilt only when one of
#    those changes, not on every edit under src/. The cache mount keeps downloaded crates
#    across builds whose lockfile did change (BuildKit, the default builder since Docker 23).
#    The stub builds of our own two crates are then forgotten (`invitations-*` also matches
#    `invitations-migrations-*`), so the real sources below are always recompiled.
#    A new workspace member, or a target with an explicit path, needs its manifest copied
#    and a stub here too.
COPY Cargo.toml Cargo.lock build.rs ./
COPY vendor vendor
COPY migrations/Cargo.toml migrations/Cargo.toml
COPY proto proto
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    mkdir -p src migrations/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs migrations/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src migrations/src \
        target/release/.fingerprint/invitations-* \
        target/release/deps/invitations-* \
        target/release/deps/libinvitations* \
        target/release/deps/invitations_* \
        target/release/invitations

# 2. The service itself.
COPY src src
COPY migrations/src migrations/src
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin invitations \
    && install -D -m 0755 target/release/invitations /out/invitations \
    && /out/invitations --version

# ---------------------------------------------------------------------------------------
# Runtime: glibc, libgcc and CA certificates, nothing else. Pinned by digest (see the top).
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

LABEL org.opencontainers.image.title="invitations" \
      org.opencontainers.image.description="gRPC service that lists and cancels user invitations under an enterprise scope" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/invitations /usr/local/bin/invitations

# In a container the service must listen on every interface, and logs go to a collector.
# Everything else (DATABASE_URL, secrets, tuning) comes from the environment at run time.
ENV INVITATIONS_LISTEN_ADDR=0.0.0.0:50051 \
    INVITATIONS_LOG_FORMAT=json \
    RUST_LOG=info

# Numeric, so that Kubernetes' `runAsNonRoot` can verify it without reading /etc/passwd
# (distroless names this user `nonroot`).
USER 65532:65532

# Plaintext HTTP/2 gRPC; TLS is terminated by the mesh or the ingress.
EXPOSE 50051

# Subcommands: serve (default: migrate, then serve), migrate, health-check, mint-token, dev.
ENTRYPOINT ["/usr/local/bin/invitations"]
CMD ["serve"]
