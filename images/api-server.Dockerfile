# appstrate: the API server, with the runner and sidecar binaries beside it (process mode uses them, and
# Docker mode imports them as images when AGENT_IMAGE / SIDECAR_IMAGE are missing, SPEC §13.4) and the
# system packages. Built by images/build.sh from a context holding only these files (static glibc
# executables), so building the image pulls nothing. TLS uses rustls with bundled webpki roots, so no CA
# files are needed. Host names (postgres, redis, minio in docker-compose.yml) are resolved by the static
# glibc resolver, whose files and dns sources are built into libc since glibc 2.34 (no NSS modules).
FROM scratch
COPY appstrate appstrate-runner appstrate-sidecar /
COPY system-packages /system-packages
# The data directory exists and belongs to the runtime user, so a volume mounted there is writable.
COPY --chown=65534:65534 data /data
ENV SYSTEM_PACKAGES_DIR=/system-packages DATA_DIR=/data HOST=0.0.0.0
USER 65534:65534
EXPOSE 3000
ENTRYPOINT ["/appstrate"]
CMD ["serve"]
