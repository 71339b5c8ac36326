# appstrate-runner: the agent process for one run (the Docker adapter's agent container).
# Built by images/build.sh from a context holding only the static glibc executable
# (RUSTFLAGS='-C target-feature=+crt-static' cargo build --target x86_64-unknown-linux-gnu), so building
# the image pulls nothing. It needs no CA files (rustls with bundled webpki roots) and no NSS (reqwest's
# hickory resolver reads /etc/resolv.conf and /etc/hosts, which the container runtime provides).
# The container's environment is the runner contract of SPEC §15.1 and holds no secret.
FROM scratch
COPY appstrate-runner /appstrate-runner
USER 65534:65534
ENTRYPOINT ["/appstrate-runner"]
