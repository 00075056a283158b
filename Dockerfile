# syntax=docker/dockerfile:1
# runq: one image for every role; the arguments choose it (`api`, `worker --queue high`,
# `migrate`, ...). Build: docker build -t runq . (docs/deploy.md; cloudbuild.yaml in production).

ARG RUST_VERSION=1.94

# ---- build: the release binary, with the dependencies in a layer of their own --------------
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Queries are checked against the committed .sqlx/ data: building needs no database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependencies, and the workspace's Pub/Sub emulator crate (it changes rarely). This layer
#    is rebuilt only when the manifests or the emulator change: runq's own sources are
#    stand-ins here, as are the test and bench targets the manifests name (.dockerignore keeps
#    the real ones out of the context).
COPY Cargo.toml Cargo.lock ./
COPY crates/pubsub-emulator ./crates/pubsub-emulator
RUN mkdir -p src tests/it bench crates/pubsub-emulator/tests/conformance \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/it/main.rs crates/pubsub-emulator/tests/conformance/main.rs \
    && echo 'fn main() {}' > bench/api.rs \
    && mkdir -p crates/pubsub-emulator/benches \
    && echo 'fn main() {}' > crates/pubsub-emulator/benches/emulator.rs \
    && echo 'fn main() {}' > bench/e2e.rs \
    && echo 'fn main() {}' > bench/workflows.rs \
    && cargo build --release --locked --bin runq \
    && rm -rf src target/release/runq target/release/deps/runq-* target/release/deps/librunq-* \
              target/release/.fingerprint/runq-*

# 2. runq itself. sqlx's macros read .sqlx/ (offline query data) and migrations/ (embedded by
#    sqlx::migrate!) at compile time; build.rs tells cargo to rebuild when migrations/ changes.
#    The same command CI builds and tests (.ci/run).
COPY build.rs ./
COPY .sqlx ./.sqlx
COPY migrations ./migrations
COPY src ./src
RUN cargo build --release --locked --bin runq \
    && cp target/release/runq /runq

# ---- runtime: glibc + libgcc, no shell, no package manager, uid 65532 ------------------------
# rustls throughout, so no OpenSSL is needed.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /runq /runq
# Cloud Run sets PORT; runq listens on it (8080 when unset).
ENV PORT=8080
EXPOSE 8080
# The distroless "nonroot" user, by number so a runtime can check it is not root.
USER 65532:65532
ENTRYPOINT ["/runq"]
CMD ["api"]
