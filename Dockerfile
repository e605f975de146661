# The browserfleet image: one static-ish binary (glibc, no OpenSSL: TLS is
# rustls with ring) on distroless, no shell, not root.
#
#   docker build -t registry.example.com/browserfleet:0.1.0 .
#
# The builder is bookworm's Rust image so that the binary links against the
# glibc of the runtime image (Debian 12); a newer builder (trixie) can produce
# a binary that asks for symbols Debian 12's glibc does not have.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Cargo.toml names targets under benches/ and the workspace's other members
# (the development cluster and the test kit) under crates/: cargo reads their
# manifests, but `-p browserfleet` builds the product alone, whose
# dependencies never include them.
COPY benches ./benches
COPY crates ./crates
COPY src ./src
RUN cargo build --release --locked -p browserfleet --bin browserfleet \
 && install -m 0755 target/release/browserfleet /browserfleet

# glibc, libgcc and the CA roots (/etc/ssl/certs, which the AWS SDK's and
# kube's rustls clients read); no shell, no package manager. The :nonroot
# tag runs as uid/gid 65532, the chart's runAsUser.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /browserfleet /usr/local/bin/browserfleet
USER 65532:65532
# The operator's health and metrics port (--listen).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/browserfleet"]
CMD ["operator"]
