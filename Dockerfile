# syntax=docker/dockerfile:1
# One image per program, each a target of this file (docs/install-helm.md,
# "Images"); the charts' default image.repository names them:
#   docker build --target tether-agent -t ghcr.io/tether-dev/tether-agent:0.1.0 .
#   docker build --target tether-relay -t ghcr.io/tether-dev/tether-relay:0.1.0 .
# Both targets share the build stage (one cargo build of both binaries).

# ---- build ---------------------------------------------------------------
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock ./
COPY crates/wire/Cargo.toml crates/wire/Cargo.toml
COPY crates/relay/Cargo.toml crates/relay/Cargo.toml
COPY crates/sample-upstream/Cargo.toml crates/sample-upstream/Cargo.toml
COPY crates/swarm/Cargo.toml crates/swarm/Cargo.toml
RUN mkdir -p src crates/wire/src crates/relay/src crates/sample-upstream/src crates/swarm/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && touch crates/wire/src/lib.rs crates/relay/src/lib.rs crates/sample-upstream/src/lib.rs \
    && echo 'fn main() {}' > crates/relay/src/main.rs \
    && echo 'fn main() {}' > crates/sample-upstream/src/main.rs \
    && echo 'fn main() {}' > crates/swarm/src/main.rs \
    && cargo fetch --locked
COPY . .
RUN cargo build --release --locked -p tether-agent -p tether-relay \
    && install -D -m 0755 target/release/tether-agent /out/tether-agent \
    && install -D -m 0755 target/release/tether-relay /out/tether-relay

# ---- tether-relay --------------------------------------------------------
# distroless/cc: glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS tether-relay
COPY --from=build /out/tether-relay /usr/local/bin/tether-relay
# Numeric non-root user (distroless "nonroot"); its home is writable, for
# a SQLite store given as a relative path.
USER 65532:65532
WORKDIR /home/nonroot
# Public (agents, callers), admin (health, metrics, admin API), peers.
EXPOSE 8080 9465 9470
ENTRYPOINT ["/usr/local/bin/tether-relay"]
# Mount relay.toml there (the Helm chart passes its own path).
CMD ["--config", "/etc/tether/relay.toml", "serve"]

# ---- tether-agent (the default target) -----------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS tether-agent
COPY --from=build /out/tether-agent /usr/local/bin/tether-agent
USER 65532:65532
# The admin listener (/healthz, /readyz, /metrics) when agent.toml has
# [admin] listen = "0.0.0.0:9464"; the agent takes no other inbound traffic.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/tether-agent"]
# Mount agent.toml there (the Helm chart passes its own path).
CMD ["run", "--config", "/etc/tether/agent.toml"]
