# appstrate-runner: the agent process for one run (the Docker adapter's agent container).
# The binary is built beforehand by images/build.sh as a static glibc executable
# (RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu),
# so building the image pulls nothing. It needs no CA files (rustls with bundled webpki roots) and
# no NSS (reqwest's hickory resolver reads /etc/resolv.conf and /etc/hosts from the runtime).
# The container's environment is the runner contract of SPEC §15.1 and holds no secret.
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/appstrate-runner /appstrate-runner
USER 65534:65534
ENTRYPOINT ["/appstrate-runner"]
