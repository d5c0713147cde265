# The controller's image: one static binary on an empty base, run as a non-root user.
#
#   docker build -t rollguard:dev .        # or buildah, podman, kaniko: any OCI builder
#
# Without a daemon or a registry to pull the build stage from, `scripts/image` builds the same
# final stage: the same static binary, files, user and entrypoint (a test keeps the two in step).

# ---- build: a statically linked binary (glibc's static libc; TLS is rustls, no OpenSSL) ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu --bin rollguard \
 && cp target/x86_64-unknown-linux-gnu/release/rollguard /rollguard \
 && strip --strip-all /rollguard \
 && /rollguard version \
 && printf 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >/passwd \
 && printf 'nogroup:x:65534:\n' >/group

# ---- image: nothing but the binary, the CA roots (for HTTPS to Prometheus and receivers) and
# the user it runs as ----
FROM scratch
COPY --from=build /rollguard /rollguard
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /passwd /etc/passwd
COPY --from=build /group /etc/group
USER 65534:65534
ENTRYPOINT ["/rollguard"]
CMD ["controller"]
