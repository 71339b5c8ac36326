# Operator image: one static binary, nothing else. Built by images/build.sh from a context holding only
# the static glibc executable (RUSTFLAGS='-C target-feature=+crt-static' cargo build --target
# x86_64-unknown-linux-gnu), so building the image pulls nothing. TLS to the API server uses rustls with
# the service account's CA (and bundled webpki roots); the operator resolves no host names itself (the
# in-cluster API address is an IP and /health is probed through the Service's cluster IP).
FROM scratch
COPY appstrate-operator /appstrate-operator
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/appstrate-operator"]
