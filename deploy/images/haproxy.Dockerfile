# The load balancer, from Debian's haproxy package for machines that cannot pull the official
# `haproxy` image: the binary and the libraries it links (found with ldd), CA certificates, the
# user 65532. Same interface as the official image: the configuration at
# /usr/local/etc/haproxy/haproxy.cfg, master-worker mode in the foreground, soft stop on SIGUSR1.
# deploy/build-images.sh assembles rootfs/ and builds this.
FROM scratch
ARG VERSION=unknown
LABEL org.opencontainers.image.title="busgate-haproxy" \
      org.opencontainers.image.description="HAProxy ${VERSION} from Debian, non-root, no shell" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="GPL-2.0-or-later" \
      org.opencontainers.image.source="https://www.haproxy.org/"
COPY rootfs/ /
USER 65532:65532
EXPOSE 8080 9090 8404
STOPSIGNAL SIGUSR1
ENTRYPOINT ["/usr/sbin/haproxy", "-W", "-db"]
CMD ["-f", "/usr/local/etc/haproxy/haproxy.cfg"]
