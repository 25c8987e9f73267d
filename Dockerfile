# syntax=docker/dockerfile:1
# Builds tether-agent (default) or tether-relay:
#   docker build -t tether-agent .
#   docker build --build-arg BIN=tether-relay -t tether-relay .

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
ARG BIN=tether-agent
RUN cargo build --release --locked --bin "${BIN}" \
    && install -D -m 0755 "target/release/${BIN}" /out/tether

# ---- runtime -------------------------------------------------------------
# distroless/cc: glibc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tether /usr/local/bin/tether
# Numeric non-root user (distroless "nonroot").
USER 65532:65532
# Agent: /healthz on the admin listener (set [admin] listen = "0.0.0.0:9464"
# in the container); relay: public 8080, admin 9465.
EXPOSE 9464 8080 9465
ENTRYPOINT ["/usr/local/bin/tether"]
CMD ["run", "--config", "/etc/tether/agent.toml"]
