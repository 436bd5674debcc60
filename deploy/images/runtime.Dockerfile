# The offline stand-in for gcr.io/distroless/cc-debian12:nonroot, the default BASE of
# deploy/Dockerfile: the shared libraries Busgate's binaries link (found with ldd on the machine
# that built them, so their glibc always matches), CA certificates, /etc/passwd and /etc/group
# with the user nonroot (65532), /etc/nsswitch.conf. No shell. deploy/build-images.sh assembles
# rootfs/ and builds this.
FROM scratch
LABEL org.opencontainers.image.title="busgate-runtime" \
      org.opencontainers.image.description="glibc, libgcc, CA certificates and the user 65532, from the machine that built Busgate"
COPY rootfs/ /
USER 65532:65532
