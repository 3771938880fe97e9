# syntax=docker/dockerfile:1
# The monivault image, for those with a container engine. It holds the same static binary
# as tests/image/build --release (which needs no engine): glibc linked in with
# -C target-feature=+crt-static, built with --target so that build scripts and
# proc-macros stay dynamic. getrandom must call glibc's getrandom() directly: its default
# finds it by dlsym, which fails in a static binary, and falls back to /dev/urandom.
# The base adds CA certificates, /etc/passwd and tzdata.
#
#   docker build -t monivault:0.1.0 .
#
# x86_64 only: the static glibc target is x86_64-unknown-linux-gnu.
FROM --platform=linux/amd64 docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS='-C target-feature=+crt-static --cfg getrandom_backend="linux_getrandom"' \
    cargo build --locked --release --bin monivault --target x86_64-unknown-linux-gnu \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/monivault /out/monivault

FROM --platform=linux/amd64 gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/monivault /usr/local/bin/monivault
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title=monivault \
      org.opencontainers.image.description="A secrets vault for synthetic monitoring on Kubernetes"
# Numeric, so that runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/monivault"]
CMD ["run"]
