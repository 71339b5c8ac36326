# appstrate-sidecar: the per-run credential-injecting proxy (HTTP API on 8080, forward proxy on 8081).
# Built by images/build.sh from a context holding only the static glibc executable
# (RUSTFLAGS='-C target-feature=+crt-static' cargo build --target x86_64-unknown-linux-gnu).
# It needs no CA files (rustls with bundled webpki roots) and no NSS (hickory resolver reading
# /etc/resolv.conf and /etc/hosts, which the container runtime provides).
FROM scratch
COPY appstrate-sidecar /appstrate-sidecar
EXPOSE 8080 8081
USER 65534:65534
ENTRYPOINT ["/appstrate-sidecar"]
